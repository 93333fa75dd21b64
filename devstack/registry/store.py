"""Operations of the dev Schema Registry, one method per REST call.

The HTTP layer (``server.py``) calls one ``SchemaStore`` method per request;
each runs under the state's lock, validates its input and raises
``RegistryError`` carrying Confluent's HTTP status and error code. Data,
persistence and shared lookups live in ``state.py``; Avro parsing and the
compatibility rules in ``compat.py``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from devstack.registry.avro import InvalidSchemaError, Parsed, parse
from devstack.registry.compat import DEFAULT_LEVEL, Previous, check_compatibility
from devstack.registry.config import in_scope, populated, to_update_shape, updated
from devstack.registry.state import (
    RegistryError,
    RegistryState,
    schema_not_found,
    subject_not_found,
    version_not_found,
)

__all__ = ["SchemaStore"]

logger = logging.getLogger(__name__)

_MAX_VERSION = 2**31 - 1


class SchemaStore(RegistryState):
    """The registry's operations; ``SchemaStore(state_dir)`` loads any saved state."""

    @staticmethod
    def parse_version(text: str) -> int | None:
        """``latest``/``-1`` -> None; a version number in range -> int; else 42202."""
        if text in ("latest", "-1"):
            return None
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= _MAX_VERSION:
            raise RegistryError(
                422, 42202,
                f"The specified version '{text}' is not a valid version id. Allowed values are "
                f"between [1, {_MAX_VERSION}] and the string \"latest\"",
            )  # fmt: skip
        return value

    def _pick(self, subject: str, version: str, deleted: bool) -> dict[str, Any]:
        number = self.parse_version(version)
        entries = self._require_subject(subject, deleted)
        if number is None:
            return entries[-1]
        for entry in entries:
            if entry["version"] == number:
                return entry
        raise version_not_found(subject, number)

    def _parse_body(self, body: Any, strict: bool) -> tuple[dict[str, Any], Parsed]:
        """Validate a request body ``{"schema", "schemaType", "references", ...}``.

        ``strict`` is Confluent's "validate as new" (register, compatibility test): strict
        names and checked defaults; lookups parse leniently, as stored schemas are."""
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise RegistryError(422, 42201, "Invalid schema: the body needs a 'schema' string")
        schema_type = str(body.get("schemaType") or "AVRO").upper()
        if schema_type != "AVRO":
            raise RegistryError(
                422, 42201,
                f"Invalid schema: schemaType {schema_type} is not supported by this dev registry; "
                f"only AVRO is. Use Confluent Schema Registry for JSON or PROTOBUF schemas.",
            )  # fmt: skip
        references = body.get("references") or []
        if not isinstance(references, list) or not all(isinstance(r, dict) for r in references):
            raise RegistryError(
                422, 42201, "Invalid schema: 'references' must be a list of objects"
            )
        try:
            parsed = parse(body["schema"], self._reference_texts(references), strict=strict)
        except InvalidSchemaError as e:
            raise RegistryError(422, 42201, f"Invalid schema of type AVRO, details: {e}") from e
        request = {"schemaType": "AVRO", "schema": parsed.canonical, "references": references}
        for key in ("metadata", "ruleSet"):
            if body.get(key) is not None:
                request[key] = body[key]
        return request, parsed

    def _same(self, schema_id: int, request: dict[str, Any], parsed: Parsed) -> bool:
        """Same schema? Compared in Avro's canonical form, as Confluent's lookup cache does,
        so key order, whitespace and ``{"type": "string"}`` vs ``"string"`` never differ."""
        rec = self._schemas[schema_id]
        for key in ("references", "metadata", "ruleSet"):
            if (rec.get(key) or None) != (request.get(key) or None):
                return False
        return self._parsed_schema(schema_id).canonical == parsed.canonical

    def _config(self, subject: str | None) -> dict[str, Any]:
        """The config in scope for ``subject`` (its own merged over the global one)."""
        own = self._subject_configs.get(subject) if subject is not None else None
        return in_scope(self._global_config, own)

    def _check(self, subject: str, parsed: Parsed, request: dict, previous: list) -> list[str]:
        """Confluent's compatibility messages for ``parsed`` against ``previous`` entries."""
        config = self._config(subject)
        group = config.get("compatibilityGroup")
        if group is not None:
            value = ((request.get("metadata") or {}).get("properties") or {}).get(group)
            previous = [
                e for e in previous
                if ((self._schemas[e["id"]].get("metadata") or {}).get("properties") or {}).get(
                    group
                ) == value
            ]  # fmt: skip
        olds = [Previous(self._parsed_schema(e["id"]), e["version"]) for e in previous]
        return check_compatibility(
            config["compatibilityLevel"], parsed, olds, bool(config.get("validateFields"))
        )

    # -- subjects and versions ------------------------------------------------------------------

    def register(self, subject: str, body: Any, normalize: bool) -> dict[str, Any]:
        """POST /subjects/{subject}/versions: idempotent; ids are global across subjects."""
        with self._lock:
            config = self._config(subject)
            strict = config.get("validateNewSchemas", True)
            request, parsed = self._parse_body(body, strict=strict)
            if normalize or config.get("normalize"):
                request["schema"] = parsed.normalized
            live = self._versions(subject)
            for entry in live:
                if self._same(entry["id"], request, parsed):
                    return {"id": entry["id"], "guid": self._schemas[entry["id"]]["guid"]}
            messages = self._check(subject, parsed, request, live)
            if messages:
                raise RegistryError(
                    409, 40901,
                    f"Schema being registered is incompatible with an earlier schema for subject "
                    f"\"{subject}\", details: [{', '.join(messages)}]",
                )  # fmt: skip
            schema_id = next(
                (i for i in sorted(self._schemas) if self._same(i, request, parsed)),
                None,
            )
            if schema_id is None:
                schema_id = self._next_id
                self._next_id += 1
                self._schemas[schema_id] = {"id": schema_id, "guid": str(uuid.uuid4()), **request}
            all_versions = self._subjects.setdefault(subject, [])
            version = max((e["version"] for e in all_versions), default=0) + 1
            all_versions.append({"version": version, "id": schema_id, "deleted": False})
            self._save()
            logger.info("registered subject %s version %d as id %d", subject, version, schema_id)
            return {"id": schema_id, "guid": self._schemas[schema_id]["guid"]}

    def lookup(self, subject: str, body: Any, normalize: bool, deleted: bool) -> dict[str, Any]:
        """POST /subjects/{subject}: the version under which this schema is registered."""
        with self._lock:
            entries = self._require_subject(subject, deleted)
            request, parsed = self._parse_body(body, strict=False)
            for entry in reversed(entries):
                if self._same(entry["id"], request, parsed):
                    return self._view(entry["id"], entry, subject)
            raise RegistryError(404, 40403, f"Schema not found under subject '{subject}'.")

    def subjects(self, prefix: str, deleted: bool, deleted_only: bool) -> list[str]:
        """GET /subjects."""
        with self._lock:
            out = []
            for name in sorted(self._subjects):
                if not name.startswith(prefix):
                    continue
                is_live = bool(self._versions(name))
                if (deleted_only and not is_live) or (not deleted_only and (is_live or deleted)):
                    out.append(name)
            return out

    def versions(
        self, subject: str, deleted: bool, deleted_only: bool, deleted_as_negative: bool = False
    ) -> list[int]:
        """GET /subjects/{subject}/versions (``deletedAsNegative`` wins over ``deletedOnly``,
        which wins over ``deleted``, as in Confluent)."""
        with self._lock:
            entries = self._require_subject(subject, deleted or deleted_only)
            if deleted_as_negative:
                entries = self._versions(subject, deleted=True)
                return [-e["version"] if e["deleted"] else e["version"] for e in entries]
            if deleted_only:
                return [e["version"] for e in entries if e["deleted"]]
            return [e["version"] for e in entries]

    def version(self, subject: str, version: str, deleted: bool) -> dict[str, Any]:
        """GET /subjects/{subject}/versions/{version} (``latest`` allowed)."""
        with self._lock:
            entry = self._pick(subject, version, deleted)
            return self._view(entry["id"], entry, subject)

    def referenced_by(self, subject: str, version: str) -> list[int]:
        """GET /subjects/{subject}/versions/{version}/referencedby: ids of referencing schemas."""
        with self._lock:
            number = self._pick(subject, version, False)["version"]
            return sorted(
                i
                for i, rec in self._schemas.items()
                if any(
                    r.get("subject") == subject and r.get("version") == number
                    for r in rec.get("references") or []
                )
            )

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        """DELETE /subjects/{subject}: soft first; ``permanent`` only after a soft delete."""
        with self._lock:
            entries = self._subjects.get(subject) or []
            if not entries:
                raise subject_not_found(subject)
            live = [e for e in entries if not e["deleted"]]
            self._check_not_referenced(subject, {e["version"] for e in entries}, permanent)
            if permanent:
                if live:
                    raise RegistryError(
                        404, 40405,
                        f"Subject '{subject}' was not deleted first before being permanently "
                        f"deleted; soft-delete it first.",
                    )  # fmt: skip
                del self._subjects[subject]
                self._subject_configs.pop(subject, None)
                self._drop_unused_schemas()
                self._save()
                return [e["version"] for e in entries]
            if not live:
                raise RegistryError(
                    404, 40404,
                    f"Subject '{subject}' was soft deleted. Set permanent=true to delete "
                    f"permanently",
                )  # fmt: skip
            for entry in live:
                entry["deleted"] = True
            self._save()
            return [e["version"] for e in live]

    def delete_version(self, subject: str, version: str, permanent: bool) -> int:
        """DELETE /subjects/{subject}/versions/{version}: soft, or permanent after soft."""
        with self._lock:
            number = self.parse_version(version)
            entries = self._subjects.get(subject) or []
            if not entries:
                raise subject_not_found(subject)
            if number is None:
                live = [e for e in entries if not e["deleted"]]
                if not live:
                    raise version_not_found(subject, "latest")
                number = live[-1]["version"]
            entry = next((e for e in entries if e["version"] == number), None)
            if entry is None:
                raise version_not_found(subject, number)
            self._check_not_referenced(subject, {number}, permanent)
            if permanent:
                if not entry["deleted"]:
                    raise RegistryError(
                        404, 40407,
                        f"Subject '{subject}' Version {number} was not deleted first before "
                        f"being permanently deleted",
                    )  # fmt: skip
                entries.remove(entry)
                if not entries:
                    del self._subjects[subject]
                self._drop_unused_schemas()
            elif entry["deleted"]:
                raise RegistryError(
                    404, 40406,
                    f"Subject '{subject}' Version {number} was soft deleted. Set permanent=true "
                    f"to delete permanently",
                )  # fmt: skip
            else:
                entry["deleted"] = True
            self._save()
            return number

    # -- schemas by id --------------------------------------------------------------------------

    def schema_by_id(self, schema_id: str) -> dict[str, Any]:
        """GET /schemas/ids/{id}."""
        with self._lock:
            rec = self._schemas.get(int(schema_id)) if schema_id.isdigit() else None
            if rec is None:
                raise schema_not_found(schema_id)
            view = self._view(rec["id"])
            view.pop("id")
            return view

    def schema_by_guid(self, guid: str) -> dict[str, Any]:
        """GET /schemas/guids/{guid}."""
        with self._lock:
            for schema_id, rec in self._schemas.items():
                if rec["guid"] == guid:
                    return self._view(schema_id)
            raise schema_not_found(guid)

    def id_usages(self, schema_id: str, deleted: bool) -> list[dict[str, Any]]:
        """GET /schemas/ids/{id}/versions: every (subject, version) holding this id."""
        with self._lock:
            self.schema_by_id(schema_id)
            return [
                {"subject": name, "version": e["version"]}
                for name in sorted(self._subjects)
                for e in self._versions(name, deleted)
                if e["id"] == int(schema_id)
            ]

    def schemas(self, prefix: str, deleted: bool, latest_only: bool) -> list[dict[str, Any]]:
        """GET /schemas: registered schemas, optionally one (the latest) per subject."""
        with self._lock:
            out = []
            for name in sorted(self._subjects):
                if name.startswith(prefix):
                    entries = self._versions(name, deleted)
                    for entry in entries[-1:] if latest_only else entries:
                        out.append(self._view(entry["id"], entry, name))
            return out

    # -- configuration and compatibility --------------------------------------------------------

    def get_config(self, subject: str | None, default_to_global: bool) -> dict[str, Any]:
        """GET /config and /config/{subject} (Confluent's Config entity)."""
        with self._lock:
            if subject is None:
                return populated(self._global_config) or {"compatibilityLevel": DEFAULT_LEVEL}
            if default_to_global:
                return self._config(subject)
            own = populated(self._subject_configs.get(subject))
            if own is None:
                raise RegistryError(
                    404, 40408,
                    f"Subject '{subject}' does not have subject-level compatibility configured",
                )  # fmt: skip
            return own

    def set_config(self, subject: str | None, body: Any) -> dict[str, Any]:
        """PUT /config and /config/{subject} with a ConfigUpdateRequest (see ``config.py``)."""
        with self._lock:
            old = self._global_config if subject is None else self._subject_configs.get(subject)
            new = updated(old, body)
            if subject is None:
                self._global_config = new
            else:
                self._subject_configs[subject] = new
            self._save()
            return to_update_shape(new)

    def delete_config(self, subject: str | None) -> dict[str, Any]:
        """DELETE /config (back to the defaults) and /config/{subject} (40401 if it has none)."""
        with self._lock:
            if subject is None:
                old = self.get_config(None, default_to_global=False)
                self._global_config = None
            else:
                if subject not in self._subject_configs:
                    raise subject_not_found(subject)
                old = populated(self._subject_configs.pop(subject))
            self._save()
            return old

    def test_compatibility(
        self, subject: str, version: str | None, body: Any, verbose: bool
    ) -> dict[str, Any]:
        """POST /compatibility/subjects/{subject}/versions[/{version}]."""
        with self._lock:
            try:
                strict = self._config(subject).get("validateNewSchemas", True)
                request, parsed = self._parse_body(body, strict=strict)
            except RegistryError as e:
                if not verbose or e.error_code != 42201:
                    raise
                return {"is_compatible": False, "messages": [e.message]}
            if version is None:
                previous = self._versions(subject)
            elif self.parse_version(version) is None and not self._versions(subject):
                previous = []  # nothing registered yet: anything is compatible
            else:
                previous = [self._pick(subject, version, False)]
            messages = self._check(subject, parsed, request, previous)
            result: dict[str, Any] = {"is_compatible": not messages}
            if verbose:
                result["messages"] = messages
            return result
