"""State of the dev Schema Registry: the data, its JSON file, and lookup helpers.

``RegistryState`` holds schemas (by global id), subjects (their versions, soft
deleted or not) and configs (global and per subject). ``SchemaStore`` (``store.py``) builds
the REST operations on top of it. Every change is written to
``<state_dir>/schema-registry.json`` at once (temp file, fsync, rename), so ids
and versions survive a restart of the server; a corrupt file stops the start
with ``RegistryStateError`` naming the file rather than starting empty.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from devstack.registry.avro import InvalidSchemaError, Parsed, parse

__all__ = [
    "RegistryError",
    "RegistryStateError",
    "RegistryState",
    "STATE_FILE",
    "subject_not_found",
    "version_not_found",
    "schema_not_found",
]

logger = logging.getLogger(__name__)

STATE_FILE = "schema-registry.json"
_FORMAT = 1


class RegistryError(Exception):
    """A request the registry refuses; carries the HTTP status and Confluent error code."""

    def __init__(self, http_status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.message = message


class RegistryStateError(RuntimeError):
    """The state file exists but cannot be read; the message names the file."""


def subject_not_found(subject: str) -> RegistryError:
    """40401: no (live) versions under this subject."""
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: Any) -> RegistryError:
    """40402: the subject exists but not this version."""
    return RegistryError(404, 40402, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(what: Any) -> RegistryError:
    """40403: no schema with this id or guid."""
    return RegistryError(404, 40403, f"Schema {what} not found.")


class RegistryState:
    """All registry data plus the helpers the operations share; callers hold ``_lock``."""

    def __init__(self, state_dir: Path) -> None:
        self._path = Path(state_dir) / STATE_FILE
        self._lock = threading.RLock()
        self._next_id = 1
        self._global_config: dict[str, Any] | None = None  # Confluent's Config entity keys
        self._subject_configs: dict[str, dict[str, Any]] = {}
        self._schemas: dict[int, dict[str, Any]] = {}  # id -> schema record
        self._subjects: dict[str, list[dict[str, Any]]] = {}  # subject -> versions (ascending)
        self._parsed: dict[int, Parsed] = {}
        self._load()

    # -- persistence ----------------------------------------------------------------------------

    def _load(self) -> None:
        if not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            self._next_id = int(data["next_id"])
            if "configs" in data:
                self._global_config = data["configs"]["global"]
                self._subject_configs = dict(data["configs"]["subjects"])
            else:  # written before configs had more than a level
                self._global_config = {"compatibilityLevel": data["global_level"]}
                self._subject_configs = {
                    k: {"compatibilityLevel": v} for k, v in data["subject_levels"].items()
                }
            self._schemas = {int(s["id"]): s for s in data["schemas"]}
            self._subjects = {k: list(v) for k, v in data["subjects"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RegistryStateError(f"cannot read registry state {self._path}: {e}") from e
        logger.info("loaded %d schemas, %d subjects from %s", len(self._schemas),
                    len(self._subjects), self._path)  # fmt: skip

    def _save(self) -> None:
        data = {
            "format": _FORMAT,
            "next_id": self._next_id,
            "configs": {"global": self._global_config, "subjects": self._subject_configs},
            "schemas": [self._schemas[i] for i in sorted(self._schemas)],
            "subjects": self._subjects,
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)

    # -- helpers --------------------------------------------------------------------------------

    def _parsed_schema(self, schema_id: int) -> Parsed:
        """A registered schema, parsed as Confluent parses stored ones (not as new)."""
        if schema_id not in self._parsed:
            rec = self._schemas[schema_id]
            refs = self._reference_texts(rec.get("references") or [])
            self._parsed[schema_id] = parse(rec["schema"], refs, strict=False)
        return self._parsed[schema_id]

    def _reference_texts(self, references: list[dict[str, Any]]) -> list[str]:
        """Texts of the referenced schemas, transitively, dependencies first."""
        out: list[str] = []
        seen: set[int] = set()

        def visit(refs: list[dict[str, Any]], depth: int) -> None:
            if depth > 32:
                raise InvalidSchemaError("schema references nest too deeply (cycle?)")
            for ref in refs:
                entry = self._find_version(ref.get("subject"), ref.get("version"), deleted=True)
                if entry is None:
                    raise InvalidSchemaError(
                        f"reference {ref.get('name')!r} points to subject "
                        f"{ref.get('subject')!r} version {ref.get('version')!r}, which does not exist"
                    )
                if entry["id"] in seen:
                    continue
                seen.add(entry["id"])
                rec = self._schemas[entry["id"]]
                visit(rec.get("references") or [], depth + 1)
                out.append(rec["schema"])

        visit(references, 0)
        return out

    def _find_version(self, subject: Any, version: Any, deleted: bool) -> dict[str, Any] | None:
        for entry in self._subjects.get(subject, []) if isinstance(subject, str) else []:
            if entry["version"] == version and (deleted or not entry["deleted"]):
                return entry
        return None

    def _versions(self, subject: str, deleted: bool = False) -> list[dict[str, Any]]:
        return [e for e in self._subjects.get(subject, []) if deleted or not e["deleted"]]

    def _require_subject(self, subject: str, deleted: bool = False) -> list[dict[str, Any]]:
        entries = self._versions(subject, deleted)
        if not entries:
            raise subject_not_found(subject)
        return entries

    def _view(self, schema_id: int, entry: dict[str, Any] | None = None, subject: str = "") -> dict:
        rec = self._schemas[schema_id]
        out: dict[str, Any] = {}
        if entry is not None:
            out.update(subject=subject, version=entry["version"])
        out.update(id=schema_id, guid=rec["guid"], schema=rec["schema"])
        for key in ("references", "metadata", "ruleSet"):
            if rec.get(key):
                out[key] = rec[key]
        return out

    def _drop_unused_schemas(self) -> None:
        used = {e["id"] for entries in self._subjects.values() for e in entries}
        for schema_id in [i for i in self._schemas if i not in used]:
            del self._schemas[schema_id]
            self._parsed.pop(schema_id, None)

    def _check_not_referenced(self, subject: str, versions: set[int], permanent: bool) -> None:
        """42206 if another subject's schema references one of ``versions``.

        A soft delete only looks at live referrers; a permanent one also at soft-deleted
        ones, which still need the referenced text to be parsed."""
        for other, entries in self._subjects.items():
            for entry in entries if other != subject else ():
                if entry["deleted"] and not permanent:
                    continue
                for ref in self._schemas[entry["id"]].get("references") or []:
                    if ref.get("subject") == subject and ref.get("version") in versions:
                        raise RegistryError(
                            422, 42206,
                            f"Subject '{subject}' version {ref.get('version')} is referenced by "
                            f"subject '{other}' version {entry['version']}; delete that first.",
                        )  # fmt: skip
