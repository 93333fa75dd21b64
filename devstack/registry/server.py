"""HTTP front of the dev Schema Registry: Confluent's REST paths over ``http.server``.

``RegistryServer`` serves in a background thread (HTTP/1.1 keep-alive, one
thread per connection) on 127.0.0.1. Each route is one line in ``_ROUTES`` and
one small method that reads path/query/body and calls ``SchemaStore``; errors
leave as Confluent's ``{"error_code": N, "message": "..."}`` JSON.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devstack.registry.state import RegistryError
from devstack.registry.store import SchemaStore

__all__ = ["RegistryServer", "CONTENT_TYPE"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_MAX_BODY = 16 * 1024 * 1024

# (method, path pattern, handler method name); "{x}" segments are captured in order.
_ROUTES: list[tuple[str, str, str]] = [
    ("GET", "", "root"),
    ("GET", "subjects", "list_subjects"),
    ("POST", "subjects/{s}", "lookup"),
    ("DELETE", "subjects/{s}", "delete_subject"),
    ("GET", "subjects/{s}/versions", "list_versions"),
    ("POST", "subjects/{s}/versions", "register"),
    ("GET", "subjects/{s}/versions/{v}", "get_version"),
    ("DELETE", "subjects/{s}/versions/{v}", "delete_version"),
    ("GET", "subjects/{s}/versions/{v}/schema", "get_version_schema"),
    ("GET", "subjects/{s}/versions/{v}/referencedby", "referenced_by"),
    ("GET", "schemas", "list_schemas"),
    ("GET", "schemas/types", "schema_types"),
    ("GET", "schemas/ids/{id}", "schema_by_id"),
    ("GET", "schemas/ids/{id}/schema", "schema_by_id_raw"),
    ("GET", "schemas/ids/{id}/subjects", "id_subjects"),
    ("GET", "schemas/ids/{id}/versions", "id_versions"),
    ("GET", "schemas/guids/{g}", "schema_by_guid"),
    ("GET", "config", "get_config"),
    ("PUT", "config", "set_config"),
    ("DELETE", "config", "delete_config"),
    ("GET", "config/{s}", "get_config"),
    ("PUT", "config/{s}", "set_config"),
    ("DELETE", "config/{s}", "delete_config"),
    ("GET", "mode", "get_mode"),
    ("PUT", "mode", "set_mode"),
    ("GET", "mode/{s}", "get_mode"),
    ("PUT", "mode/{s}", "set_mode"),
    ("DELETE", "mode/{s}", "get_mode"),
    ("GET", "contexts", "contexts"),
    ("POST", "compatibility/subjects/{s}/versions", "test_compatibility"),
    ("POST", "compatibility/subjects/{s}/versions/{v}", "test_compatibility"),
]


def _match(pattern: str, segments: list[str]) -> list[str] | None:
    parts = pattern.split("/") if pattern else []
    if len(parts) != len(segments):
        return None
    captured = []
    for part, seg in zip(parts, segments, strict=True):
        if part.startswith("{"):
            captured.append(seg)
        elif part != seg:
            return None
    return captured


class _Request:
    """Query helpers for one request."""

    def __init__(self, query: dict[str, list[str]], body: Any) -> None:
        self.query = query
        self.body = body

    def text(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return self.text(name).strip().lower() == "true"

    def page(self, items: list) -> list:
        try:
            offset = max(int(self.text("offset", "0")), 0)
            limit = int(self.text("limit", "-1"))
        except ValueError as e:
            raise RegistryError(400, 400, f"offset and limit must be integers: {e}") from e
        items = items[offset:]
        return items if limit < 0 else items[:limit]


class _Api:
    """One method per route; each returns a JSON-able value (or raw text via ``_Raw``)."""

    def __init__(self, store: SchemaStore) -> None:
        self.store = store

    def root(self, r: _Request) -> Any:
        return {}

    def list_subjects(self, r: _Request) -> Any:
        subjects = self.store.subjects(
            r.text("subjectPrefix"), r.flag("deleted"), r.flag("deletedOnly")
        )
        return r.page(subjects)

    def lookup(self, r: _Request, s: str) -> Any:
        return self.store.lookup(s, r.body, r.flag("normalize"), r.flag("deleted"))

    def delete_subject(self, r: _Request, s: str) -> Any:
        return self.store.delete_subject(s, r.flag("permanent"))

    def list_versions(self, r: _Request, s: str) -> Any:
        versions = self.store.versions(
            s, r.flag("deleted"), r.flag("deletedOnly"), r.flag("deletedAsNegative")
        )
        return r.page(versions)

    def register(self, r: _Request, s: str) -> Any:
        return self.store.register(s, r.body, r.flag("normalize"))

    def get_version(self, r: _Request, s: str, v: str) -> Any:
        return self.store.version(s, v, r.flag("deleted"))

    def delete_version(self, r: _Request, s: str, v: str) -> Any:
        return self.store.delete_version(s, v, r.flag("permanent"))

    def get_version_schema(self, r: _Request, s: str, v: str) -> Any:
        return _Raw(self.store.version(s, v, r.flag("deleted"))["schema"])

    def referenced_by(self, r: _Request, s: str, v: str) -> Any:
        return r.page(self.store.referenced_by(s, v))

    def list_schemas(self, r: _Request) -> Any:
        found = self.store.schemas(r.text("subjectPrefix"), r.flag("deleted"), r.flag("latestOnly"))
        return r.page(found)

    def schema_types(self, r: _Request) -> Any:
        return ["AVRO"]

    def schema_by_id(self, r: _Request, id: str) -> Any:
        return self.store.schema_by_id(id)

    def schema_by_id_raw(self, r: _Request, id: str) -> Any:
        return _Raw(self.store.schema_by_id(id)["schema"])

    def id_subjects(self, r: _Request, id: str) -> Any:
        usages = self.store.id_usages(id, r.flag("deleted"))
        wanted = r.text("subject")
        names = sorted({u["subject"] for u in usages if not wanted or u["subject"] == wanted})
        return r.page(names)

    def id_versions(self, r: _Request, id: str) -> Any:
        usages = self.store.id_usages(id, r.flag("deleted"))
        wanted = r.text("subject")
        return r.page([u for u in usages if not wanted or u["subject"] == wanted])

    def schema_by_guid(self, r: _Request, g: str) -> Any:
        return self.store.schema_by_guid(g)

    def get_config(self, r: _Request, s: str | None = None) -> Any:
        return self.store.get_config(s, r.flag("defaultToGlobal"))

    def set_config(self, r: _Request, s: str | None = None) -> Any:
        return self.store.set_config(s, r.body)

    def delete_config(self, r: _Request, s: str | None = None) -> Any:
        return self.store.delete_config(s)

    def get_mode(self, r: _Request, s: str | None = None) -> Any:
        return {"mode": "READWRITE"}

    def set_mode(self, r: _Request, s: str | None = None) -> Any:
        mode = r.body.get("mode") if isinstance(r.body, dict) else None
        if mode != "READWRITE":
            raise RegistryError(
                422, 42204, f"Invalid mode {mode!r}: this dev registry only runs in READWRITE"
            )
        return {"mode": mode}

    def contexts(self, r: _Request) -> Any:
        return ["."]

    def test_compatibility(self, r: _Request, s: str, v: str | None = None) -> Any:
        return self.store.test_compatibility(s, v, r.body, r.flag("verbose"))


class _Raw(str):
    """A response body that is already JSON text (a schema), sent as is."""


def _make_handler(api: _Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # one write per response, no Nagle: otherwise keep-alive clients wait ~40 ms per call
        wbufsize = 1 << 16
        disable_nagle_algorithm = True
        server_version = "spark-relay-dev-registry/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("%s %s", self.address_string(), format % args)

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._dispatch("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

        def _dispatch(self, method: str) -> None:
            try:
                result = self._handle(method)
                status = 200
            except RegistryError as e:
                status, result = e.http_status, {"error_code": e.error_code, "message": e.message}
            except Exception:
                logger.exception("registry request %s %s failed", method, self.path)
                status = 500
                result = {"error_code": 50001, "message": "Internal error in the dev registry"}
            body = result if isinstance(result, _Raw) else json.dumps(result)
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> Any:
            body = self._read_body()
            url = urlsplit(self.path)
            segments = [unquote(p) for p in url.path.strip("/").split("/")] if url.path else []
            segments = [] if segments == [""] else segments
            path_known = False
            for route_method, pattern, name in _ROUTES:
                captured = _match(pattern, segments)
                if captured is None:
                    continue
                path_known = True
                if route_method == method:
                    request = _Request(parse_qs(url.query, keep_blank_values=True), body)
                    return getattr(api, name)(request, *captured)
            if path_known:
                raise RegistryError(405, 405, f"HTTP 405 Method {method} Not Allowed")
            raise RegistryError(404, 404, f"HTTP 404 Not Found: {url.path}")

        def _read_body(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError as e:
                raise RegistryError(400, 400, "Content-Length must be an integer") from e
            if length > _MAX_BODY:
                self.close_connection = True
                raise RegistryError(413, 413, f"Request body over {_MAX_BODY} bytes")
            raw = self.rfile.read(length) if length > 0 else b""
            if not raw.strip():
                return None
            try:
                return json.loads(raw)
            except ValueError as e:
                raise RegistryError(400, 400, f"Request body is not valid JSON: {e}") from e

    return Handler


class RegistryServer:
    """A Confluent-compatible Schema Registry for dev and tests, persisted under ``state_dir``.

    Use as ``with RegistryServer(tmp_path) as reg: SchemaRegistryClient({"url": reg.url})``.
    """

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RegistryServer:
        """Load the state and serve in a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("RegistryServer is already running")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        api = _Api(SchemaStore(self.state_dir))
        httpd = ThreadingHTTPServer((self.host, self.port), _make_handler(api))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True,
            name=f"schema-registry:{httpd.server_address[1]}",
        )  # fmt: skip
        self._thread.start()
        logger.info("dev schema registry serving %s (state in %s)", self.url, self.state_dir)
        return self

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``; only while running."""
        if self._httpd is None:
            raise RuntimeError("RegistryServer is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        logger.info("dev schema registry stopped")

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
