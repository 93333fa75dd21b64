"""A small Iceberg REST catalog over pyiceberg's SqlCatalog: a dev and test stand-in only.

The tests start it to run the Iceberg sink against a REST catalog by URL
(``--catalog http://127.0.0.1:PORT``) over a socket, without a JVM. Production
uses a real REST catalog (Apache Polaris, Lakekeeper, Nessie, Gravitino, AWS S3
Tables, Snowflake Open Catalog …); nothing here replaces them.

It speaks the routes of Apache Iceberg's REST catalog spec
(``open-api/rest-catalog-open-api.yaml``) that a catalog client needs for
tables, as pyiceberg's ``RestCatalog`` calls them, with pyiceberg's own
request and response models:

- ``GET /v1/config``: no prefix, no overrides, and the ``endpoints`` served
  (a client then refuses the others itself);
- namespaces: list, create, load, exists (``HEAD``), drop;
- tables: list, create, load (``LoadTableResult``), exists (``HEAD``), commit
  (``CommitTableRequest`` → ``CommitTableResponse``; a requirement not met is
  ``409 CommitFailedException``, as the spec says), drop.

Errors leave as the spec's ``{"error": {"message", "type", "code"}}``. The
tables' metadata and data files live in the warehouse under ``state_dir``,
which clients read and write directly (a ``file://`` location: client and
server share the machine). Not implemented: OAuth, views, renames, multi-table
transactions, server-side scan planning, credentials vending, paging.

    with IcebergRestServer(state_dir) as catalog:
        load_catalog("x", type="rest", uri=catalog.url)
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.rest import CreateTableRequest, TableResponse
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.table import CommitTableRequest, Table

__all__ = ["IcebergRestServer", "ROUTES", "main"]

logger = logging.getLogger(__name__)

_MAX_BODY = 64 * 1024 * 1024
#: A multi-part namespace in a path: its parts joined by the unit separator (the spec's default).
_SEPARATOR = "\x1f"

#: (method, path under /v1/, handler); "{x}" segments are captured in order.
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "config", "config"),
    ("GET", "namespaces", "list_namespaces"),
    ("POST", "namespaces", "create_namespace"),
    ("GET", "namespaces/{namespace}", "load_namespace"),
    ("HEAD", "namespaces/{namespace}", "namespace_exists"),
    ("DELETE", "namespaces/{namespace}", "drop_namespace"),
    ("GET", "namespaces/{namespace}/tables", "list_tables"),
    ("POST", "namespaces/{namespace}/tables", "create_table"),
    ("GET", "namespaces/{namespace}/tables/{table}", "load_table"),
    ("HEAD", "namespaces/{namespace}/tables/{table}", "table_exists"),
    ("POST", "namespaces/{namespace}/tables/{table}", "commit_table"),
    ("DELETE", "namespaces/{namespace}/tables/{table}", "drop_table"),
]

#: pyiceberg's errors → (HTTP status, the spec's error type).
_ERRORS: list[tuple[type[Exception], int, str]] = [
    (NoSuchNamespaceError, 404, "NoSuchNamespaceException"),
    (NoSuchTableError, 404, "NoSuchTableException"),
    (NamespaceAlreadyExistsError, 409, "AlreadyExistsException"),
    (TableAlreadyExistsError, 409, "AlreadyExistsException"),
    (NamespaceNotEmptyError, 409, "NamespaceNotEmptyException"),
    (CommitFailedException, 409, "CommitFailedException"),
    (ValidationError, 400, "BadRequestException"),
    (ValueError, 400, "BadRequestException"),
]


class _NotFound(Exception):
    """No route for the method and path."""


class _Api:
    """One method per route: path captures and the JSON body in, a JSON-able value out (None:
    ``204 No Content``). Calls to the catalog are serialized: SQLite takes one writer."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.lock = threading.Lock()

    def config(self, body: Any) -> Any:
        served = [f"{m} /v1/{{prefix}}/{p}" for m, p, _ in ROUTES if p != "config"]
        return {"defaults": {}, "overrides": {}, "endpoints": served}

    def list_namespaces(self, body: Any) -> Any:
        return {"namespaces": [list(n) for n in self.catalog.list_namespaces()]}

    def create_namespace(self, body: Any) -> Any:
        namespace = tuple(body["namespace"])
        properties = body.get("properties") or {}
        self.catalog.create_namespace(namespace, properties)
        return {"namespace": list(namespace), "properties": properties}

    def load_namespace(self, body: Any, namespace: tuple[str, ...]) -> Any:
        properties = self.catalog.load_namespace_properties(namespace)
        return {"namespace": list(namespace), "properties": properties}

    def namespace_exists(self, body: Any, namespace: tuple[str, ...]) -> Any:
        self.catalog.load_namespace_properties(namespace)

    def drop_namespace(self, body: Any, namespace: tuple[str, ...]) -> Any:
        self.catalog.drop_namespace(namespace)

    def list_tables(self, body: Any, namespace: tuple[str, ...]) -> Any:
        found = self.catalog.list_tables(namespace)
        return {"identifiers": [{"namespace": list(t[:-1]), "name": t[-1]} for t in found]}

    def create_table(self, body: Any, namespace: tuple[str, ...]) -> Any:
        # the optional fields are required by pyiceberg's model, and its client leaves out a null
        optional = {"location": None, "partition-spec": None, "write-order": None}
        request = CreateTableRequest.model_validate(optional | body)
        if request.stage_create:
            raise ValueError("staged creation is not supported by this stand-in")
        kwargs: dict[str, Any] = {"location": request.location, "properties": request.properties}
        if request.partition_spec is not None:
            kwargs["partition_spec"] = request.partition_spec
        if request.write_order is not None:
            kwargs["sort_order"] = request.write_order
        table = self.catalog.create_table(
            (*namespace, request.name), request.table_schema, **kwargs
        )
        return _loaded(table)

    def load_table(self, body: Any, namespace: tuple[str, ...], table: str) -> Any:
        return _loaded(self.catalog.load_table((*namespace, table)))

    def table_exists(self, body: Any, namespace: tuple[str, ...], table: str) -> Any:
        self.catalog.load_table((*namespace, table))

    def commit_table(self, body: Any, namespace: tuple[str, ...], table: str) -> Any:
        request = CommitTableRequest.model_validate(body)
        current = self.catalog.load_table((*namespace, table))
        response = self.catalog.commit_table(current, request.requirements, request.updates)
        return json.loads(response.model_dump_json())

    def drop_table(self, body: Any, namespace: tuple[str, ...], table: str) -> Any:
        self.catalog.drop_table((*namespace, table))


def _loaded(table: Table) -> Any:
    """The spec's ``LoadTableResult`` of ``table``."""
    result = TableResponse(metadata_location=table.metadata_location, metadata=table.metadata)
    return json.loads(result.model_dump_json())


def _route(method: str, path: str) -> tuple[str, list[Any]]:
    """The handler's name and its arguments (a namespace as a tuple of its parts)."""
    segments = [unquote(s) for s in path.strip("/").split("/")]
    if not segments or segments[0] != "v1":
        raise _NotFound(path)
    segments = segments[1:]
    for verb, pattern, name in ROUTES:
        parts = pattern.split("/")
        if verb != method or len(parts) != len(segments):
            continue
        captured: list[Any] = []
        for part, segment in zip(parts, segments, strict=True):
            if part == "{namespace}":
                captured.append(tuple(segment.split(_SEPARATOR)))
            elif part.startswith("{"):
                captured.append(segment)
            elif part != segment:
                break
        else:
            return name, captured
    raise _NotFound(path)


def _make_handler(api: _Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "devstack-iceberg-rest"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

        def _serve(self, method: str) -> None:
            status, reply = 200, None
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    raise ValueError(f"request body over {_MAX_BODY} bytes")
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                name, args = _route(method, urlsplit(self.path).path)
                call: Callable[..., Any] = getattr(api, name)
                with api.lock:
                    reply = call(body, *args)
                if reply is None:
                    status = 204
            except _NotFound:
                status, reply = 404, _error(404, "NotFoundException", f"no route {self.path}")
            except json.JSONDecodeError as e:
                status, reply = 400, _error(400, "BadRequestException", f"malformed JSON: {e}")
            except Exception as e:  # noqa: BLE001 - every error leaves as the spec's JSON
                status, kind = next(
                    ((s, k) for t, s, k in _ERRORS if isinstance(e, t)),
                    (500, "ServiceFailureException"),
                )
                if status == 500:
                    logger.exception("iceberg rest stand-in: %s %s failed", method, self.path)
                reply = _error(status, kind, str(e))
            payload = b"" if reply is None else json.dumps(reply).encode()
            self.send_response(status)
            if payload and method != "HEAD":
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(0 if method == "HEAD" else len(payload)))
            self.end_headers()
            if method != "HEAD" and payload:
                self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve("HEAD")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

    return Handler


def _error(code: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


class IcebergRestServer:
    """An Iceberg REST catalog on 127.0.0.1, its SqlCatalog (SQLite) and warehouse under
    ``state_dir``. Use as ``with IcebergRestServer(tmp_path) as c: ... c.url``."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def warehouse(self) -> str:
        """Where the tables' files go: ``file://<state_dir>/warehouse``."""
        return f"file://{(self.state_dir / 'warehouse').resolve()}"

    def start(self) -> IcebergRestServer:
        """Open the catalog and serve in a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("IcebergRestServer is already running")
        (self.state_dir / "warehouse").mkdir(parents=True, exist_ok=True)
        catalog = load_catalog(
            "devstack_rest",
            type="sql",
            uri=f"sqlite:///{(self.state_dir / 'catalog.db').resolve()}",
            warehouse=self.warehouse,
        )
        httpd = ThreadingHTTPServer((self.host, self.port), _make_handler(_Api(catalog)))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True,
            name=f"iceberg-rest:{httpd.server_address[1]}",
        )  # fmt: skip
        self._thread.start()
        logger.info("dev iceberg rest catalog serving %s (state in %s)", self.url, self.state_dir)
        return self

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``; only while running."""
        if self._httpd is None:
            raise RuntimeError("IcebergRestServer is not running; call start() first")
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

    def __enter__(self) -> IcebergRestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m devstack.iceberg_rest --state-dir DIR [--port N]``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.iceberg_rest",
        description="Dev/test stand-in for an Iceberg REST catalog, on 127.0.0.1.",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="catalog and warehouse")
    parser.add_argument("--port", type=int, default=8181, help="TCP port (default 8181)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with IcebergRestServer(args.state_dir, port=args.port) as server:
        print(f"iceberg rest catalog at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
