"""The dev Schema Registry, driven by confluent-kafka's own client and Avro serde over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import (
    Schema,
    SchemaReference,
    SchemaRegistryClient,
    ServerConfig,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.schema_registry_client import ConfigCompatibilityLevel
from confluent_kafka.serialization import MessageField, SerializationContext

from devstack.registry import RegistryServer
from devstack.registry.state import STATE_FILE, RegistryStateError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def record(*fields: dict[str, Any], name: str = "Listing", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "spark", "fields": list(fields), **extra}


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def avro(schema: Any) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


V1 = record(f("id", "string"))
V2 = record(f("id", "string"), f("status", "string", default="Active"))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path / "registry") as server:
        yield server


@pytest.fixture
def make_client(registry: RegistryServer) -> Iterator[Callable[[], SchemaRegistryClient]]:
    """Fresh clients (the client caches), as separate processes would have."""
    clients: list[SchemaRegistryClient] = []

    def make() -> SchemaRegistryClient:
        clients.append(SchemaRegistryClient({"url": registry.url, "max.retries": 0}))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[[], SchemaRegistryClient]) -> SchemaRegistryClient:
    return make_client()


@pytest.fixture
def http(registry: RegistryServer) -> Iterator[httpx.Client]:
    """Raw HTTP for the paths confluent-kafka's client has no method for."""
    with httpx.Client(base_url=registry.url, timeout=5) as raw:
        yield raw


def error_of(call: Callable[[], Any]) -> tuple[int, int, str]:
    with pytest.raises(SchemaRegistryError) as info:
        call()
    return info.value.http_status_code, info.value.error_code, info.value.error_message


# -- register, lookup, read ---------------------------------------------------------------------


def test_register_is_idempotent_and_ids_are_global(client: SchemaRegistryClient) -> None:
    first = client.register_schema("listings-value", avro(V1))
    assert client.register_schema("listings-value", avro(V1)) == first
    assert make_fresh(client).register_schema("listings-value", avro(V1)) == first
    assert client.get_versions("listings-value") == [1]
    assert client.register_schema("other-value", avro(V1)) == first  # same global id
    second = client.register_schema("listings-value", avro(V2))
    assert second != first
    assert client.get_versions("listings-value") == [1, 2]
    assert client.get_versions("other-value") == [1]


def make_fresh(client: SchemaRegistryClient) -> SchemaRegistryClient:
    return SchemaRegistryClient(client.config())


def test_schema_by_id_and_its_raw_forms(client: SchemaRegistryClient, http: httpx.Client) -> None:
    schema_id = client.register_schema("a-value", avro(V1))
    client.register_schema("b-value", avro(V1))

    fetched = make_fresh(client).get_schema(schema_id, subject_name="a-value", fmt="serialized")
    assert json.loads(fetched.schema_str) == V1
    assert fetched.schema_type == "AVRO"

    raw = http.get(f"/schemas/ids/{schema_id}/schema")
    assert raw.status_code == 200 and raw.headers["content-type"] == CONTENT_TYPE
    assert raw.json() == V1
    versions = client.get_schema_versions(schema_id)
    assert [(v.subject, v.version) for v in versions] == [("a-value", 1), ("b-value", 1)]
    assert client.get_subjects_by_schema_id(schema_id) == ["a-value", "b-value"]
    assert http.get("/subjects/a-value/versions/1/schema").json() == V1
    assert http.get("/subjects/a-value/versions/latest/schema").json() == V1
    guid = http.get(f"/schemas/ids/{schema_id}").json()["guid"]
    assert json.loads(make_fresh(client).get_schema_by_guid(guid).schema_str) == V1
    assert client.get_schema_types() == ["AVRO"]


def test_lookup_schema(client: SchemaRegistryClient) -> None:
    client.register_schema("listings-value", avro(V1))
    v2_id = client.register_schema("listings-value", avro(V2))
    found = make_fresh(client).lookup_schema("listings-value", avro(V2))
    assert (found.schema_id, found.version, found.subject) == (v2_id, 2, "listings-value")
    # whitespace and formatting do not matter
    spaced = Schema(json.dumps(V2, indent=4), "AVRO")
    assert make_fresh(client).lookup_schema("listings-value", spaced).version == 2

    other = avro(record(f("id", "string"), f("x", "int", default=0)))
    assert error_of(lambda: client.lookup_schema("listings-value", other))[:2] == (404, 40403)
    assert error_of(lambda: client.lookup_schema("nope", avro(V1)))[:2] == (404, 40401)


def test_equivalent_texts_are_the_same_schema(client: SchemaRegistryClient) -> None:
    """Key order, {"type": "string"} vs "string" and namespaces do not make a new schema."""
    schema_id = client.register_schema("n-value", avro(V1), normalize_schemas=True)
    equivalent = {
        "name": "spark.Listing",
        "fields": [{"type": {"type": "string"}, "name": "id"}],
        "type": "record",
    }
    found = client.lookup_schema("n-value", avro(equivalent), normalize_schemas=True)
    assert (found.version, found.schema_id) == (1, schema_id)
    assert make_fresh(client).lookup_schema("n-value", avro(equivalent)).version == 1
    assert make_fresh(client).register_schema("n-value", avro(equivalent)) == schema_id
    assert client.get_versions("n-value") == [1]
    # normalize=true stores the canonical text
    stored = json.loads(client.get_latest_version("n-value").schema.schema_str)
    assert stored == {"fields": [{"name": "id", "type": "string"}], "name": "spark.Listing",
                      "type": "record"}  # fmt: skip


def test_subjects_versions_and_latest(client: SchemaRegistryClient) -> None:
    client.register_schema("b/odd subject", avro(V1))
    id1 = client.register_schema("a-value", avro(V1))
    id2 = client.register_schema("a-value", avro(V2))
    assert client.get_subjects() == ["a-value", "b/odd subject"]
    assert client.get_subjects(subject_prefix="b/") == ["b/odd subject"]
    assert client.get_versions("a-value") == [1, 2]
    assert client.get_versions("b/odd subject") == [1]

    latest = client.get_latest_version("a-value")
    assert (latest.version, latest.schema_id, latest.subject) == (2, id2, "a-value")
    assert json.loads(latest.schema.schema_str) == V2
    first = client.get_version("a-value", 1)
    assert (first.version, first.schema_id) == (1, id1)
    assert client.get_version("a-value", "latest").version == 2


def test_error_codes(client: SchemaRegistryClient) -> None:
    client.register_schema("s-value", avro(V1))
    assert error_of(lambda: client.get_latest_version("missing"))[:2] == (404, 40401)
    assert error_of(lambda: client.get_versions("missing"))[:2] == (404, 40401)
    assert error_of(lambda: client.get_version("s-value", 99))[:2] == (404, 40402)
    assert error_of(lambda: client.get_version("s-value", 0))[:2] == (422, 42202)
    assert error_of(lambda: client.get_schema(9999))[:2] == (404, 40403)

    status, code, message = error_of(lambda: client.register_schema("s-value", avro({"type": "x"})))
    assert (status, code) == (422, 42201) and "x" in message
    not_json = Schema("{not json", "AVRO")
    assert error_of(lambda: client.register_schema("s-value", not_json))[1] == 42201
    no_fields = avro({"type": "record", "name": "R"})
    assert "fields" in error_of(lambda: client.register_schema("s-value", no_fields))[2]
    bad_default = avro(record(f("n", "int", default="seven")))
    assert error_of(lambda: client.register_schema("s-value", bad_default))[1] == 42201
    json_schema = Schema('{"type": "object"}', "JSON")
    status, code, message = error_of(lambda: client.register_schema("j-value", json_schema))
    assert (status, code) == (422, 42201) and "only AVRO" in message

    incompatible = avro(record(f("id", "int")))
    status, code, message = error_of(lambda: client.register_schema("s-value", incompatible))
    assert (status, code) == (409, 40901) and "TYPE_MISMATCH" in message

    status, code, message = error_of(lambda: client.set_compatibility(level="SIDEWAYS"))
    assert (status, code) == (422, 42203) and message.startswith("Invalid compatibility level.")


def test_http_level_errors(http: httpx.Client) -> None:
    bad = http.post(
        "/subjects/s/versions", content=b"{oops", headers={"Content-Type": CONTENT_TYPE}
    )
    assert bad.status_code == 400 and bad.json()["error_code"] == 400
    unknown = http.get("/no/such/path")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == 404
    assert http.put("/subjects").status_code == 405
    assert http.get("/mode").json() == {"mode": "READWRITE"}
    assert http.get("/").json() == {}


# -- deletes --------------------------------------------------------------------------------------


def test_delete_subject_soft_then_permanent(client: SchemaRegistryClient) -> None:
    v1_id = client.register_schema("d-value", avro(V1))
    client.register_schema("d-value", avro(V2))
    keep_id = client.register_schema("keep-value", avro(V2))

    assert error_of(lambda: client.delete_subject("d-value", permanent=True))[:2] == (404, 40405)
    assert client.delete_subject("d-value") == [1, 2]
    assert client.get_subjects() == ["keep-value"]
    assert client.get_subjects(deleted=True) == ["d-value", "keep-value"]
    assert error_of(lambda: client.get_versions("d-value"))[:2] == (404, 40401)
    assert client.get_versions("d-value", deleted=True) == [1, 2]
    assert make_fresh(client).get_version("d-value", 1, deleted=True).schema_id == v1_id
    assert error_of(lambda: client.delete_subject("d-value"))[:2] == (404, 40404)
    # ids stay readable after a soft delete (old messages still decode)
    assert json.loads(make_fresh(client).get_schema(v1_id).schema_str) == V1

    assert client.delete_subject("d-value", permanent=True) == [1, 2]
    assert client.get_subjects(deleted=True) == ["keep-value"]
    assert error_of(lambda: client.delete_subject("d-value"))[:2] == (404, 40401)
    assert error_of(lambda: make_fresh(client).get_schema(v1_id))[:2] == (404, 40403)
    assert json.loads(make_fresh(client).get_schema(keep_id).schema_str) == V2  # still used

    # a new subject under the same name starts again at version 1
    client.register_schema("d-value", avro(V1))
    assert client.get_versions("d-value") == [1]


def test_deleted_only_as_the_server_reads_it(
    client: SchemaRegistryClient, http: httpx.Client
) -> None:
    """Confluent's server reads ``deletedOnly`` (and ``deletedAsNegative``); the Python
    client's ``deleted_only`` spelling is not a server parameter and is ignored."""
    client.register_schema("gone-value", avro(V1))
    client.register_schema("half-value", avro(V1))
    client.register_schema("half-value", avro(V2))
    client.register_schema("live-value", avro(V1))
    client.delete_subject("gone-value")
    client.delete_version("half-value", 1)

    assert http.get("/subjects", params={"deletedOnly": "true"}).json() == ["gone-value"]
    both = {"deleted": "true", "deletedOnly": "true"}  # deletedOnly wins
    assert http.get("/subjects", params=both).json() == ["gone-value"]
    assert http.get("/subjects", params={"deleted": "true"}).json() == [
        "gone-value", "half-value", "live-value"
    ]  # fmt: skip
    # the client's spelling is not a parameter: the live subjects come back
    assert http.get("/subjects", params={"deleted_only": "true"}).json() == [
        "half-value", "live-value"
    ]  # fmt: skip

    versions = "/subjects/half-value/versions"
    assert http.get(versions, params={"deletedOnly": "true"}).json() == [1]
    assert http.get(versions, params={"deleted": "true"}).json() == [1, 2]
    assert http.get(versions, params={"deleted_only": "true"}).json() == [2]
    assert http.get(versions, params={"deletedAsNegative": "true"}).json() == [-1, 2]
    assert http.get("/subjects/live-value/versions", params={"deletedOnly": "true"}).json() == []
    # a subject with only deleted versions exists for deletedOnly, not otherwise
    gone = "/subjects/gone-value/versions"
    assert http.get(gone, params={"deletedOnly": "true"}).json() == [1]
    assert http.get(gone).json()["error_code"] == 40401


def test_delete_version(client: SchemaRegistryClient) -> None:
    client.register_schema("v-value", avro(V1))
    client.register_schema("v-value", avro(V2))
    assert error_of(lambda: client.delete_version("v-value", 2, permanent=True))[1] == 40407
    assert client.delete_version("v-value", 2) == 2
    assert client.get_versions("v-value") == [1]
    assert make_fresh(client).get_latest_version("v-value").version == 1
    assert error_of(lambda: client.delete_version("v-value", 2))[1] == 40406
    assert error_of(lambda: client.delete_version("v-value", 7))[:2] == (404, 40402)
    assert client.delete_version("v-value", 2, permanent=True) == 2
    assert client.get_versions("v-value", deleted=True) == [1]
    # after a hard delete the number is free again
    make_fresh(client).register_schema("v-value", avro(V2))
    assert client.get_versions("v-value") == [1, 2]


def test_references_are_stored_and_returned(client: SchemaRegistryClient) -> None:
    address = {"type": "record", "name": "Address", "namespace": "spark",
               "fields": [f("city", "string")]}  # fmt: skip
    client.register_schema("address", avro(address))
    ref = SchemaReference(name="spark.Address", subject="address", version=1)
    person = Schema(json.dumps(record(f("home", "spark.Address"))), "AVRO", [ref])
    person_id = client.register_schema("person-value", person)

    fetched = make_fresh(client).get_schema(person_id)
    assert fetched.references == [ref]
    assert client.get_latest_version("person-value").schema.references == [ref]
    assert client.get_referenced_by("address", 1) == [person_id]
    status, code, _ = error_of(lambda: client.delete_version("address", 1))
    assert (status, code) == (422, 42206)

    dangling = SchemaReference(name="spark.Nope", subject="nope", version=1)
    bad = Schema(json.dumps(record(f("x", "spark.Nope"))), "AVRO", [dangling])
    assert error_of(lambda: client.register_schema("bad-value", bad))[1] == 42201


# -- configuration ---------------------------------------------------------------------------------


def test_global_and_subject_config(client: SchemaRegistryClient, http: httpx.Client) -> None:
    assert client.get_config().compatibility_level == ConfigCompatibilityLevel.BACKWARD
    full = ServerConfig(compatibility=ConfigCompatibilityLevel.FULL)
    assert client.set_config(config=full) == {"compatibility": "FULL"}
    assert client.get_compatibility() == "FULL"

    assert client.set_compatibility("s-value", "forward_transitive") == {
        "compatibility": "FORWARD_TRANSITIVE"
    }
    assert client.get_config("s-value").compatibility_level == "FORWARD_TRANSITIVE"
    assert error_of(lambda: client.get_config("t-value"))[:2] == (404, 40408)
    assert http.get("/config/t-value", params={"defaultToGlobal": "true"}).json() == {
        "compatibilityLevel": "FULL"
    }
    assert client.delete_config("s-value").compatibility_level == "FORWARD_TRANSITIVE"
    assert error_of(lambda: client.get_config("s-value"))[1] == 40408
    assert client.delete_config().compatibility_level == "FULL"
    assert client.get_compatibility() == "BACKWARD"
    assert client.get_global_mode() == "READWRITE"
    assert client.update_global_mode("READWRITE") == "READWRITE"
    assert error_of(lambda: client.update_global_mode("READONLY"))[:2] == (422, 42204)


# -- compatibility levels -------------------------------------------------------------------------

NO_DEFAULT_STATUS = record(f("id", "string"), f("status", "string"))
WITH_NOTE = record(f("id", "string"), f("status", "string", default="Active"),
                   f("note", ["null", "string"], default=None))  # fmt: skip
PRICED = record(f("id", "string"), f("price", "int"))
PRICED_DEFAULT = record(f("id", "string"), f("price", "int", default=0))
UNPRICED = record(f("id", "string"))
PRICED_EXTRA = record(f("id", "string"), f("price", "int"), f("extra", "string"))

# (level, registered chain oldest first, candidate, compatible)
LEVEL_CASES = [
    ("BACKWARD", [V1], V2, True),  # new field with a default
    ("BACKWARD", [V1], NO_DEFAULT_STATUS, False),  # new field without default
    ("FORWARD", [V1], NO_DEFAULT_STATUS, True),  # old reader ignores the new field
    ("FORWARD", [PRICED], UNPRICED, False),  # old reader needs price, which has no default
    ("FULL", [V1], V2, True),
    ("FULL", [V1], NO_DEFAULT_STATUS, False),
    ("FULL", [PRICED], UNPRICED, False),
    ("NONE", [V1], record(f("id", "int")), True),  # even a type change passes
    ("NONE", [PRICED], UNPRICED, True),
    # transitive: the candidate fits the latest version, only an older one breaks it
    ("BACKWARD", [V1, V2], NO_DEFAULT_STATUS, True),
    ("BACKWARD_TRANSITIVE", [V1, V2], NO_DEFAULT_STATUS, False),
    ("BACKWARD_TRANSITIVE", [V1, V2], WITH_NOTE, True),
    ("FORWARD", [PRICED, PRICED_DEFAULT], UNPRICED, True),
    ("FORWARD_TRANSITIVE", [PRICED, PRICED_DEFAULT], UNPRICED, False),
    ("FORWARD_TRANSITIVE", [PRICED, PRICED_DEFAULT], PRICED_EXTRA, True),
    ("FULL", [V1, V2], NO_DEFAULT_STATUS, True),
    ("FULL_TRANSITIVE", [V1, V2], NO_DEFAULT_STATUS, False),
    ("FULL_TRANSITIVE", [V1, V2], WITH_NOTE, True),
]


@pytest.mark.parametrize(
    ("level", "chain", "candidate", "compatible"),
    LEVEL_CASES,
    ids=[
        f"{c[0]}-{len(c[1]) + 1}v-{'pass' if c[3] else 'fail'}-{i}"
        for i, c in enumerate(LEVEL_CASES)
    ],
)
def test_compatibility_levels(
    client: SchemaRegistryClient,
    http: httpx.Client,
    level: str,
    chain: list[dict],
    candidate: dict,
    compatible: bool,
) -> None:
    subject = "levels-value"
    client.set_compatibility(subject, "NONE")  # build the chain unchecked
    for schema in chain:
        client.register_schema(subject, avro(schema))
    client.set_compatibility(subject, level)

    assert client.test_compatibility_all_versions(subject, avro(candidate)) is compatible
    verbose = http.post(
        f"/compatibility/subjects/{subject}/versions", params={"verbose": "true"},
        json={"schema": json.dumps(candidate)},
    ).json()  # fmt: skip
    assert verbose["is_compatible"] is compatible
    assert bool(verbose["messages"]) is not compatible
    if compatible:
        client.register_schema(subject, avro(candidate))
        assert client.get_versions(subject) == list(range(1, len(chain) + 2))
    else:
        assert error_of(lambda: client.register_schema(subject, avro(candidate)))[:2] == (
            409,
            40901,
        )
        assert client.get_versions(subject) == list(range(1, len(chain) + 1))


def test_compatibility_against_one_version(client: SchemaRegistryClient) -> None:
    client.set_compatibility("one-value", "NONE")
    client.register_schema("one-value", avro(V1))
    client.register_schema("one-value", avro(V2))
    client.set_compatibility("one-value", "BACKWARD_TRANSITIVE")
    # against version 2 only: fine; against version 1 (or all, transitively): not
    assert client.test_compatibility("one-value", avro(NO_DEFAULT_STATUS), version=2) is True
    assert client.test_compatibility("one-value", avro(NO_DEFAULT_STATUS), version="latest")
    assert client.test_compatibility("one-value", avro(NO_DEFAULT_STATUS), version=1) is False
    assert client.test_compatibility("one-value", avro(NO_DEFAULT_STATUS), verbose=True) is True
    assert error_of(lambda: client.test_compatibility("one-value", avro(V1), version=5))[1] == (
        40402
    )
    # nothing registered yet: anything is compatible with "latest"
    assert client.test_compatibility("fresh-value", avro(V1)) is True


# -- Avro schema-resolution rules (reader = new schema, writer = registered one; BACKWARD) ------


def wrap(type_: Any) -> dict[str, Any]:
    return record(f("v", type_))


ENUM_AB = {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}
ENUM_A = {"type": "enum", "name": "Kind", "symbols": ["A"]}
ENUM_A_DEFAULT = {"type": "enum", "name": "Kind", "symbols": ["A", "OTHER"], "default": "OTHER"}
NODE = {"type": "record", "name": "Node",
        "fields": [f("value", "int"), f("next", ["null", "Node"], default=None)]}  # fmt: skip
NODE_LONG = {"type": "record", "name": "Node",
             "fields": [f("value", "long"), f("next", ["null", "Node"], default=None)]}  # fmt: skip
NODE_STR = {"type": "record", "name": "Node",
            "fields": [f("value", "string"), f("next", ["null", "Node"], default=None)]}  # fmt: skip

# (rule id, writer schema, reader schema, compatible)
RESOLUTION_CASES = [
    ("int->long", wrap("int"), wrap("long"), True),
    ("int->float", wrap("int"), wrap("float"), True),
    ("int->double", wrap("int"), wrap("double"), True),
    ("long->float", wrap("long"), wrap("float"), True),
    ("long->double", wrap("long"), wrap("double"), True),
    ("float->double", wrap("float"), wrap("double"), True),
    ("string->bytes", wrap("string"), wrap("bytes"), True),
    ("bytes->string", wrap("bytes"), wrap("string"), True),
    ("long->int-narrowing", wrap("long"), wrap("int"), False),
    ("double->float-narrowing", wrap("double"), wrap("float"), False),
    ("string->int-mismatch", wrap("string"), wrap("int"), False),
    ("boolean->null-mismatch", wrap("boolean"), wrap("null"), False),
    ("record-name-mismatch", record(f("v", "int")), record(f("v", "int"), name="Other"), False),
    ("record-alias", record(f("v", "int")),
     record(f("v", "int"), name="Renamed", aliases=["spark.Listing"]), True),
    ("record-same-name-other-namespace", record(f("v", "int")),
     {**record(f("v", "int")), "namespace": "elsewhere"}, True),
    ("field-alias", record(f("old", "int")), record(f("new", "int", aliases=["old"])), True),
    ("reader-field-missing-default", record(f("a", "int")),
     record(f("a", "int"), f("b", "int")), False),
    ("reader-field-with-default", record(f("a", "int")),
     record(f("a", "int"), f("b", "int", default=1)), True),
    ("writer-field-dropped", record(f("a", "int"), f("b", "int")), record(f("a", "int")), True),
    ("enum-symbol-added", wrap(ENUM_A), wrap(ENUM_AB), True),
    ("enum-symbol-removed", wrap(ENUM_AB), wrap(ENUM_A), False),
    ("enum-symbol-removed-reader-default", wrap(ENUM_AB), wrap(ENUM_A_DEFAULT), True),
    ("enum-name-mismatch", wrap(ENUM_A), wrap({**ENUM_A, "name": "Sort"}), False),
    ("union-reader-gains-null", wrap("int"), wrap(["null", "int"]), True),
    ("union-reader-promotes-branch", wrap("int"), wrap(["null", "string", "long"]), True),
    ("union-writer-branch-unreadable", wrap(["null", "int"]), wrap("int"), False),
    ("union-to-union-promotion", wrap(["int", "string"]), wrap(["string", "long"]), True),
    ("union-branch-dropped", wrap(["null", "int", "string"]), wrap(["null", "int"]), False),
    ("array-items-promotion", wrap({"type": "array", "items": "int"}),
     wrap({"type": "array", "items": "long"}), True),
    ("array-items-mismatch", wrap({"type": "array", "items": "int"}),
     wrap({"type": "array", "items": "string"}), False),
    ("array-vs-map", wrap({"type": "array", "items": "int"}),
     wrap({"type": "map", "values": "int"}), False),
    ("map-values-promotion", wrap({"type": "map", "values": "float"}),
     wrap({"type": "map", "values": "double"}), True),
    ("map-values-mismatch", wrap({"type": "map", "values": "string"}),
     wrap({"type": "map", "values": "boolean"}), False),
    ("fixed-same", wrap({"type": "fixed", "name": "H", "size": 16}),
     wrap({"type": "fixed", "name": "H", "size": 16}), True),
    ("fixed-size-mismatch", wrap({"type": "fixed", "name": "H", "size": 16}),
     wrap({"type": "fixed", "name": "H", "size": 8}), False),
    ("fixed-name-mismatch", wrap({"type": "fixed", "name": "H", "size": 16}),
     wrap({"type": "fixed", "name": "G", "size": 16}), False),
    ("named-type-recursive-promotion", wrap(NODE), wrap(NODE_LONG), True),
    ("named-type-recursive-mismatch", wrap(NODE), wrap(NODE_STR), False),
    ("named-type-reference-reuse",
     record(f("a", {"type": "record", "name": "P", "fields": [f("x", "int")]}), f("b", "P")),
     record(f("a", {"type": "record", "name": "P", "fields": [f("x", "long")]}), f("b", "P")),
     True),
    ("logical-type-ignored", wrap({"type": "int", "logicalType": "date"}), wrap("int"), True),
    ("logical-type-promotion", wrap({"type": "int", "logicalType": "date"}),
     wrap({"type": "long", "logicalType": "timestamp-millis"}), True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("writer", "reader", "compatible"),
    [c[1:] for c in RESOLUTION_CASES],
    ids=[c[0] for c in RESOLUTION_CASES],
)
def test_avro_resolution_rule(
    client: SchemaRegistryClient, writer: dict, reader: dict, compatible: bool
) -> None:
    client.register_schema("rule-value", avro(writer))
    assert client.test_compatibility("rule-value", avro(reader)) is compatible


def test_forward_checks_the_other_direction(client: SchemaRegistryClient) -> None:
    client.register_schema("dir-value", avro(wrap("long")))
    client.set_compatibility("dir-value", "FORWARD")
    # old reader (long) reads new writer (int): promotion, fine
    assert client.test_compatibility("dir-value", avro(wrap("int"))) is True
    # old reader (long) cannot read new writer (double)
    assert client.test_compatibility("dir-value", avro(wrap("double"))) is False


# -- serde round trip and persistence --------------------------------------------------------------


def test_serializer_round_trip(make_client: Callable[[], SchemaRegistryClient]) -> None:
    schema = record(f("id", "string"), f("price", ["null", "long"], default=None),
                    f("kind", ENUM_AB))  # fmt: skip
    ctx = SerializationContext("listings", MessageField.VALUE)
    serialize = AvroSerializer(make_client(), json.dumps(schema))
    value = {"id": "L1", "price": 350000, "kind": "B"}
    data = serialize(value, ctx)

    reader = make_client()
    registered = reader.get_latest_version("listings-value")
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == registered.schema_id
    assert AvroDeserializer(make_client())(data, ctx) == value


def test_state_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with RegistryServer(state) as first:
        client = SchemaRegistryClient({"url": first.url})
        id1 = client.register_schema("p-value", avro(V1))
        id2 = client.register_schema("p-value", avro(V2))
        client.register_schema("gone-value", avro(PRICED))
        client.delete_subject("gone-value")
        client.set_compatibility("p-value", "FULL")
        old_url = first.url
    assert (state / STATE_FILE).exists()
    assert [p.name for p in state.iterdir()] == [STATE_FILE]  # no temp files left behind

    with RegistryServer(state) as second:
        client = SchemaRegistryClient({"url": second.url})
        assert json.loads(client.get_schema(id1).schema_str) == V1
        assert client.get_latest_version("p-value").schema_id == id2
        assert client.register_schema("p-value", avro(V2)) == id2
        assert client.get_compatibility("p-value") == "FULL"
        assert client.get_subjects() == ["p-value"]
        assert client.get_subjects(deleted=True) == ["gone-value", "p-value"]
        new_id = client.register_schema("q-value", avro(WITH_NOTE))
        assert new_id not in (id1, id2) and new_id > id2
    assert old_url.startswith("http://127.0.0.1:")


def test_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{truncated", encoding="utf-8")
    with pytest.raises(RegistryStateError, match=STATE_FILE):
        RegistryServer(tmp_path).start()


def test_server_interface(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    assert server.start() is server
    url = server.url
    try:
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.url) as raw:  # keep-alive: many calls, one socket
            for _ in range(3):
                assert raw.get("/subjects").json() == []
    finally:
        server.stop()
        server.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/subjects", timeout=1)


# -- fidelity with Confluent's server (issue 9) ---------------------------------------------------


def post_schema(http: httpx.Client, path: str, schema: Any, **params: str) -> httpx.Response:
    return http.post(path, params=params, json={"schema": json.dumps(schema)})


INVALID_AS_NEW = {
    "record-name": {"type": "record", "name": "my-rec", "fields": []},
    "field-name": record(f("a-b", "int")),
    "namespace": {"type": "record", "name": "R", "namespace": "1com.x", "fields": []},
    "non-ascii-name": {"type": "record", "name": "Prix€", "fields": []},
    "enum-symbol": wrap({"type": "enum", "name": "E", "symbols": ["OK", "not-ok"]}),
    "alias-name": record(f("id", "string"), aliases=["bad-alias"]),
    "record-default-missing-field": record(
        f("inner", {"type": "record", "name": "Inner", "fields": [f("x", "int"), f("y", "int")]},
          default={"x": 1})
    ),
    "int-default-out-of-range": record(f("n", "int", default=2**31)),
    "long-default-not-integral": record(f("n", "long", default=1.5)),
    "array-default-item": record(f("a", {"type": "array", "items": "string"}, default=[1])),
    "union-default-no-branch": record(f("u", ["null", "string"], default=5)),
    "enum-default-not-a-symbol": wrap(
        {"type": "enum", "name": "E", "symbols": ["A"], "default": "B"}
    ),
}  # fmt: skip


@pytest.mark.parametrize("schema", INVALID_AS_NEW.values(), ids=INVALID_AS_NEW.keys())
def test_new_schemas_are_validated_as_confluent_does(http: httpx.Client, schema: dict) -> None:
    answer = post_schema(http, "/subjects/strict-value/versions", schema)
    assert (answer.status_code, answer.json()["error_code"]) == (422, 42201)
    assert answer.json()["message"].startswith("Invalid schema of type AVRO, details: ")
    assert http.get("/subjects").json() == []


def test_valid_defaults_and_names_pass(http: httpx.Client) -> None:
    """What Avro 1.12 accepts: a union default on any branch, a record default completed by
    its fields' own defaults, float defaults given as text."""
    schema = record(
        f("u", ["null", "string"], default="x"),
        f("inner", {"type": "record", "name": "Inner",
                    "fields": [f("x", "int"), f("y", "int", default=0)]}, default={"x": 1}),
        f("ratio", "double", default="0.5"),
        f("_ok9", "int"),
    )  # fmt: skip
    answer = post_schema(http, "/subjects/ok-value/versions", schema)
    assert answer.status_code == 200, answer.text


ALIAS_CASES = [
    # (writer, reader, compatible): a bare alias is qualified with the reader's namespace
    ({"namespace": "com.a", "name": "Old"}, {"namespace": "com.b", "name": "New",
                                             "aliases": ["Old"]}, False),
    ({"namespace": "com.a", "name": "Old"}, {"namespace": "com.b", "name": "New",
                                             "aliases": ["com.a.Old"]}, True),
    ({"namespace": "com.a", "name": "Old"}, {"namespace": "com.a", "name": "New",
                                             "aliases": ["Old"]}, True),
    ({"name": "Old"}, {"namespace": "com.b", "name": "New", "aliases": ["Old"]}, False),
    ({"name": "Old"}, {"name": "New", "aliases": ["Old"]}, True),
    # the simple names match whatever the namespaces (Avro's schemaNameEquals)
    ({"namespace": "com.a", "name": "Same"}, {"namespace": "com.b", "name": "Same"}, True),
]  # fmt: skip


@pytest.mark.parametrize(("writer", "reader", "compatible"), ALIAS_CASES)
def test_aliases_resolve_as_avro_does(
    http: httpx.Client, writer: dict, reader: dict, compatible: bool
) -> None:
    fields = [f("v", "int")]
    assert (
        post_schema(
            http, "/subjects/alias-value/versions", {"type": "record", "fields": fields, **writer}
        ).status_code
        == 200
    )
    candidate = {"type": "record", "fields": fields, **reader}
    tested = post_schema(http, "/compatibility/subjects/alias-value/versions/latest", candidate)
    assert tested.json()["is_compatible"] is compatible
    answer = post_schema(http, "/subjects/alias-value/versions", candidate)
    if compatible:
        assert answer.status_code == 200
    else:
        assert (answer.status_code, answer.json()["error_code"]) == (409, 40901)
        assert "errorType:'NAME_MISMATCH'" in answer.json()["message"]
        assert "additionalInfo:'expected: " in answer.json()["message"]  # fmt: skip


def test_subject_config_delete_without_one_is_40401(http: httpx.Client) -> None:
    answer = http.delete("/config/never-configured")
    assert (answer.status_code, answer.json()["error_code"]) == (404, 40401)
    assert answer.json()["message"] == "Subject 'never-configured' not found."


def test_config_takes_confluents_keys(http: httpx.Client) -> None:
    body = {"compatibility": "full", "normalize": True, "validateFields": False,
            "compatibilityGroup": "application.major.version", "alias": "other",
            "validateRules": True, "compatibilityPolicy": "strict", "unknownKey": 1}  # fmt: skip
    answer = http.put("/config", json=body)
    assert answer.status_code == 200
    assert answer.json() == {"alias": "other", "normalize": True, "validateFields": False,
                             "validateRules": True, "compatibility": "FULL",
                             "compatibilityPolicy": "STRICT",
                             "compatibilityGroup": "application.major.version"}  # fmt: skip
    stored = http.get("/config").json()
    assert stored["compatibilityLevel"] == "FULL" and stored["normalize"] is True
    assert "compatibility" not in stored and "unknownKey" not in stored
    # a partial update keeps the other keys; an explicit null unsets one
    answer = http.put("/config", json={"alias": None, "compatibility": "NONE"})
    assert "alias" not in answer.json() and answer.json()["normalize"] is True
    assert answer.json()["compatibility"] == "NONE"
    # the old configuration comes back from DELETE, then the defaults apply
    assert http.delete("/config").json()["compatibilityLevel"] == "NONE"
    assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}

    # a subject config without a level reads as the server default, not the global level
    http.put("/config", json={"compatibility": "FULL"})
    assert http.put("/config/s-value", json={"normalize": True}).json() == {"normalize": True}
    assert http.get("/config/s-value").json() == {
        "normalize": True,
        "compatibilityLevel": "BACKWARD",
    }
    in_scope = http.get("/config/s-value", params={"defaultToGlobal": "true"}).json()
    assert in_scope == {"normalize": True, "compatibilityLevel": "BACKWARD"}
    assert http.delete("/config/s-value").json() == {
        "normalize": True,
        "compatibilityLevel": "BACKWARD",
    }


def test_config_normalize_and_group_take_effect(http: httpx.Client) -> None:
    http.put("/config/n-value", json={"normalize": True})
    post_schema(http, "/subjects/n-value/versions", V1)
    stored = json.loads(http.get("/subjects/n-value/versions/1").json()["schema"])
    assert stored["name"] == "spark.Listing" and "namespace" not in stored  # normalized

    # compatibilityGroup: only schemas with the same metadata property are compared
    http.put("/config/g-value", json={"compatibilityGroup": "major"})

    def body(schema: dict, major: str) -> dict:
        return {"schema": json.dumps(schema), "metadata": {"properties": {"major": major}}}

    assert http.post("/subjects/g-value/versions", json=body(V1, "1")).status_code == 200
    breaking = record(f("id", "int"))
    assert http.post("/subjects/g-value/versions", json=body(breaking, "1")).status_code == 409
    assert http.post("/subjects/g-value/versions", json=body(breaking, "2")).status_code == 200


def test_schema_text_is_avros_canonical_form(http: httpx.Client) -> None:
    """Confluent stores and returns ``AvroSchema.canonicalString()``: Avro's own JSON with its
    key order, names relative to the enclosing namespace, and no whitespace."""
    text = """{
      "fields": [
        {"type": {"type": "string"}, "name": "id", "doc": "the key"},
        {"name": "price", "default": null, "type": ["null", {"type": "long"}]},
        {"name": "when", "type": {"logicalType": "timestamp-millis", "type": "long"}},
        {"name": "kind", "type": {"symbols": ["A", "B"], "name": "Kind", "type": "enum"}},
        {"name": "again", "type": "spark.Kind", "default": "A", "order": "DESCENDING"},
        {"name": "elsewhere", "type": {"type": "fixed", "size": 4, "name": "other.Hash"}},
        {"name": "ratio", "type": "double", "default": 10000000}
      ],
      "namespace": "spark", "x-owner": "relay", "type": "record", "name": "Listing",
      "aliases": ["spark.OldListing"]
    }"""
    canonical = (
        '{"type":"record","name":"Listing","namespace":"spark","fields":['
        '{"name":"id","type":"string","doc":"the key"},'
        '{"name":"price","type":["null","long"],"default":null},'
        '{"name":"when","type":{"type":"long","logicalType":"timestamp-millis"}},'
        '{"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},'
        '{"name":"again","type":"Kind","default":"A","order":"descending"},'
        '{"name":"elsewhere","type":{"type":"fixed","name":"Hash","namespace":"other","size":4}},'
        '{"name":"ratio","type":"double","default":10000000}'
        '],"x-owner":"relay","aliases":["OldListing"]}'
    )
    schema_id = http.post("/subjects/c-value/versions", json={"schema": text}).json()["id"]
    assert http.get(f"/schemas/ids/{schema_id}").json()["schema"] == canonical
    assert http.get(f"/schemas/ids/{schema_id}/schema").text == canonical
    assert http.get("/subjects/c-value/versions/1").json()["schema"] == canonical
    # the same schema written differently is the same version and id
    again = http.post("/subjects/c-value/versions", json={"schema": canonical}).json()
    assert again["id"] == schema_id
    assert http.post("/subjects/c-value", json={"schema": text}).json()["version"] == 1

    # a referenced type stays a name
    address = {"type": "record", "name": "Address", "namespace": "spark",
               "fields": [f("city", "string")]}  # fmt: skip
    post_schema(http, "/subjects/address/versions", address)
    person = {
        "schema": json.dumps(record(f("home", "spark.Address"), name="Person")),
        "references": [{"name": "spark.Address", "subject": "address", "version": 1}],
    }
    person_id = http.post("/subjects/person-value/versions", json=person).json()["id"]
    assert http.get(f"/schemas/ids/{person_id}").json()["schema"] == (
        '{"type":"record","name":"Person","namespace":"spark",'
        '"fields":[{"name":"home","type":"Address"}]}'
    )


def test_incompatible_schema_message_is_confluents(http: httpx.Client) -> None:
    post_schema(http, "/subjects/m-value/versions", V1)
    answer = post_schema(http, "/subjects/m-value/versions", record(f("id", "int")))
    assert answer.status_code == 409
    old = '{"type":"record","name":"Listing","namespace":"spark","fields":[{"name":"id","type":"string"}]}'
    assert answer.json() == {
        "error_code": 40901,
        "message": "Schema being registered is incompatible with an earlier schema for subject "
        "\"m-value\", details: [{errorType:'TYPE_MISMATCH', description:'The type (path "
        "'/fields/0/type') of a field in the new schema does not match with the old schema', "
        "additionalInfo:'reader type: INT not compatible with writer type: STRING'}, "
        f"{{oldSchemaVersion: 1}}, {{oldSchema: '{old}'}}, "
        "{validateFields: 'false', compatibility: 'BACKWARD'}]",
    }


def test_incompatibility_list_per_level(http: httpx.Client) -> None:
    """FULL lists the old-reads-new problems first (without the old schema), then the
    new-reads-old ones with it; the verbose test answers with the same list."""
    post_schema(http, "/subjects/full-value/versions", PRICED)
    http.put("/config/full-value", json={"compatibility": "FULL"})
    candidate = record(f("id", "string"), f("status", ["null", "string"]))
    verbose = post_schema(http, "/compatibility/subjects/full-value/versions", candidate,
                          verbose="true").json()  # fmt: skip
    assert verbose["is_compatible"] is False
    old = http.get("/subjects/full-value/versions/1").json()["schema"]
    assert verbose["messages"] == [
        "{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE', description:'The field 'price' at path "
        "'/fields/1' in the old schema has no default value and is missing in the new schema', "
        "additionalInfo:'price'}",
        "{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE', description:'The field 'status' at "
        "path '/fields/1' in the new schema has no default value and is missing in the old "
        "schema', additionalInfo:'status'}",
        "{oldSchemaVersion: 1}",
        f"{{oldSchema: '{old}'}}",
        "{validateFields: 'false', compatibility: 'FULL'}",
    ]
    answer = post_schema(http, "/subjects/full-value/versions", candidate)
    assert answer.json()["message"].endswith(", details: [" + ", ".join(verbose["messages"]) + "]")

    # unions and enums: Avro's locations and wording
    post_schema(http, "/subjects/u-value/versions", wrap(["null", "int", "string"]))
    messages = post_schema(http, "/compatibility/subjects/u-value/versions",
                           wrap(["null", "int"]), verbose="true").json()["messages"]  # fmt: skip
    assert messages[0] == (
        "{errorType:'MISSING_UNION_BRANCH', description:'The new schema is missing a type inside "
        "a union field at path '/fields/0/type/2' in the old schema', additionalInfo:'reader "
        "union lacking writer type: STRING'}"
    )
    post_schema(http, "/subjects/e-value/versions", wrap(ENUM_AB))
    http.put("/config/e-value", json={"compatibility": "FORWARD"})
    messages = post_schema(http, "/compatibility/subjects/e-value/versions",
                           wrap({**ENUM_AB, "symbols": ["A", "B", "C", "D"]}),
                           verbose="true").json()["messages"]  # fmt: skip
    assert messages[0] == (
        "{errorType:'MISSING_ENUM_SYMBOLS', description:'The old schema is missing enum symbols "
        "'[C, D]' at path '/fields/0/type/symbols' in the new schema', additionalInfo:'[C, D]'}"
    )
