"""The poller at the API's edges (issue 10): exact numbers, bad records, refused subresources.

Over real sockets: the emulator with its ``bare_numbers`` and ``bad_records``
switches, the devstack broker and registry. Values are read back with
confluent-kafka's stock ``AvroDeserializer`` (``tests.kafka_helpers.read_topic``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from producer.cli import build_poller
from producer.pages import identity
from producer.poller import content_hash
from producer.redrive import redrive_poller
from producer.spark_client import SparkClient
from producer.state import open_state
from producer.topics import contract_specs, ensure_contract
from schemas import json_dumps, json_loads, listing_from_record
from spark_relay.errors import ConfigError, TransientSourceError
from spark_relay.settings import load_settings
from spark_relay.status import collect_status
from tests.kafka_helpers import cli_env, read_topic
from tests.producer.test_poller import API_HEADERS

BIN = Path(sys.executable).parent / "spark-relay"
ID_FIELDS = ("ListAgentId", "ListOfficeId", "CoListAgentId", "BuyerAgentId")


def _latest(settings) -> dict:
    latest = {}
    for key, value, _ in read_topic(
        settings.kafka_bootstrap, settings.topic("listings"), settings.schema_registry_url
    ):
        latest[key] = value
    return latest


# -- item 1: exact numbers -------------------------------------------------------------


def test_ids_beyond_64_bits_and_long_decimals_read_back_digit_for_digit(emulator, relay):
    emu = emulator(listings=300, accounts=20, bare_numbers=0.2)
    settings = relay(emu)
    with build_poller(settings) as poller:
        assert poller.snapshot().published == 300
        emu.advance(minutes=7, modify=0.3, create=0.0, remove=0.0, media=0.0)
        assert poller.update().published > 0
        again = poller.update()  # re-reads the overlap: the same records, bare numbers and all
    bare = emu.truth()["bare_numbers"]
    assert len(bare) > 20
    latest = _latest(settings)
    for key, exact in bare.items():
        record = latest[key]
        assert len(exact["ListAgentId"]) >= 20
        for name in ID_FIELDS:  # typed string fields: the digits, not 2.01e+25
            assert record[name] == exact[name], (key, name)
        text = record["standard_fields_json"]
        for name in ID_FIELDS:
            if exact[name] is not None:
                assert f'"{name}":{exact[name]}' in text  # still a bare number, every digit
        assert f'"ListPrice":{exact["ListPrice"]}' in text
        standard = listing_from_record(record)["StandardFields"]
        assert standard["ListAgentId"] == int(exact["ListAgentId"])
        assert standard["ListPrice"] == Decimal(exact["ListPrice"])
    # the content hash of an exact record is stable: a quiet window re-sends nothing
    assert again.records > 0 and again.published == 0


def test_exact_json_round_trips_and_keeps_the_fast_types():
    text = (
        b'{"Id":"20140227182254340000000","N":20140227182254340000000,'
        b'"P":250000.12345678901234567,"Q":-116.3237,"R":[-99999999999999999999999,3]}'
    )
    value = json_loads(text)
    assert value["N"] == 20140227182254340000000 and type(value["N"]) is int
    assert value["P"] == Decimal("250000.12345678901234567")
    assert type(value["Q"]) is float  # a decimal a double holds stays a float
    assert json_dumps(value) == text.decode()
    assert type(json_loads(b'{"a":1.5,"b":"12345678901234567890"}')["a"]) is float


def test_the_content_hash_ignores_key_order_and_sees_every_digit():
    a = {"StandardFields": {"ListPrice": 1.5, "City": "Fargo"}, "Id": "1"}
    b = {"Id": "1", "StandardFields": {"City": "Fargo", "ListPrice": 1.5}}
    assert content_hash(a) == content_hash(b)
    big = json_loads(b'{"N":20140227182254340000001}')
    near = json_loads(b'{"N":20140227182254340000002}')
    assert content_hash(big) != content_hash(near)  # floats would make them equal


@pytest.mark.parametrize("bad", [b'"b":NaN', b'"b":-Infinity', b'"b":"\\ud800"'])
def test_the_exact_path_refuses_what_orjson_refuses(bad):
    # a body with a long number takes the standard library's parser: it must agree with
    # orjson's, or a lone surrogate gets in and crashes the encoder for good
    for body in (b'{"a":1,' + bad + b"}", b'{"a":20140227182254340923000000,' + bad + b"}"):
        with pytest.raises(ValueError):
            json_loads(body)
    assert json_loads(b'{"a":20140227182254340923000000,"b":"\\ud83d\\ude00"}')["b"] == "\U0001f600"


def test_the_media_state_keeps_every_digit(tmp_path):
    items = json_loads(b'[{"Id":20140227182254340000000,"Size":0.12345678901234567891}]')
    state = open_state(str(tmp_path), "", "t")
    try:
        with state.transaction():
            state.record_media([("k1", "Photos", "2026-01-01T00:00:00Z", items)])
        stored = state.media("k1")["Photos"][1]
    finally:
        state.close()
    assert stored == items and json_dumps(stored) == json_dumps(items)


# -- item 8: one bad record never stalls replication -----------------------------------


def _bad(truth: dict, kind: str) -> dict[str, dict]:
    return {k: how for k, how in truth["bad"].items() if how["kind"] == kind}


def test_broken_elements_are_dead_lettered_and_the_rest_published(emulator, relay):
    emu = emulator(listings=400, accounts=20, bad_records=0.1)
    settings = relay(emu, page_size=100)
    with build_poller(settings) as poller:
        stats = poller.snapshot()
    truth = emu.truth()
    element, escape = _bad(truth, "element"), _bad(truth, "escape")
    assert element and escape
    assert stats.completed
    latest = _latest(settings)
    # every sound record is published, and so is a record next to a non-object element
    assert set(latest) == set(truth["listings"]) - set(escape)
    letters = read_topic(settings.kafka_bootstrap, f"{settings.topic_prefix}.dlq.poller")
    assert stats.dead_lettered == len(letters) == len(element) + len(escape)
    by_key: dict[str, dict] = {}
    nulls = []
    for key, value, headers in letters:
        headers = {k: v.decode() for k, v in headers}
        assert headers["dlq.resource"] == "listings" and headers["dlq.stage"] == "convert"
        assert headers["dlq.error"] and headers["dlq.key"] == (key or "")
        if key:
            by_key[key] = headers
            assert b"\\q" in value  # the record's own bytes, as the API sent them
            assert "invalid JSON" in headers["dlq.error"]
        else:
            nulls.append(json.loads(value))
            assert "expected a JSON object" in headers["dlq.error"]
    assert set(by_key) == set(escape)
    assert sorted(map(str, nulls)) == sorted(str(how["element"]) for how in element.values())


def test_a_page_of_broken_records_only_is_dead_lettered_and_the_scan_goes_on(emulator, relay):
    # keys come from the start time: a fixed one holds escapes and elements (forty listings
    # from the clock's own start could hold none: CI once drew a world without an escape)
    start = datetime(2026, 3, 2, 12, 0)
    emu = emulator(listings=40, accounts=20, bad_records=0.3, start_time=start)
    settings = relay(emu, page_size=1)  # a page whose one record is broken holds nothing sound
    with build_poller(settings) as poller:
        stats = poller.snapshot()
    truth = emu.truth()
    escape, element = _bad(truth, "escape"), _bad(truth, "element")
    assert escape and element and stats.completed
    assert set(_latest(settings)) == set(truth["listings"]) - set(escape)
    assert stats.dead_lettered == len(escape) + len(element)


def test_a_refused_subresource_leaves_the_listing_published_without_it(emulator, relay):
    emu = emulator(listings=300, accounts=20, bad_records=0.15)
    settings = relay(emu, subresources="Photos,Rooms,OpenHouses,Videos,VirtualTours,Documents")
    with build_poller(settings) as poller:
        stats = poller.snapshot()
    refused = _bad(emu.truth(), "subresource")
    assert refused and stats.completed
    names = {
        "photos": "Photos",
        "rooms": "Rooms",
        "openhouses": "OpenHouses",
        "videos": "Videos",
        "virtualtours": "VirtualTours",
        "documents": "Documents",
    }
    expected = [how for how in refused.values() if how["path"] in names]
    assert stats.subresources_missing == len(expected) > 0
    latest = _latest(settings)
    for key, how in refused.items():
        if how["path"] not in names:
            continue
        standard = listing_from_record(latest[key])["StandardFields"]
        assert names[how["path"]] not in standard, key
        assert set(names.values()) - {names[how["path"]]} <= set(standard)


@pytest.mark.parametrize(
    "body",
    [
        b'{"D":{"Success":true,"Results":[{"Id":"1"},{"Id":"2","A":"\\q"}',  # cut short
        b'{"D":{"Success":true,"Results":[{"Id":"1"} {"Id":"2"}]}}',  # no comma
    ],
)
def test_a_broken_frame_is_not_split_into_records(body):
    from producer.pages import _split_results

    assert _split_results(body) is None


def test_redrive_poller_refetches_every_dead_lettered_key(emulator, relay):
    start = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # the same MLS, served broken then fixed
    broken = emulator(listings=300, accounts=20, bad_records=0.1, start_time=start)
    settings = relay(broken, page_size=100)
    with build_poller(settings) as poller:
        first = poller.snapshot()
    escape = set(_bad(broken.truth(), "escape"))
    elements = len(_bad(broken.truth(), "element"))
    assert escape and first.dead_lettered == len(escape) + elements

    fixed = emulator(listings=300, accounts=20, start_time=start)
    assert fixed.truth()["listings"] == broken.truth()["listings"]
    settings = dataclasses.replace(settings, api_url=fixed.url)
    stats = redrive_poller(settings)
    assert (stats.resent, stats.skipped) == (len(escape), elements)
    latest = _latest(settings)
    assert set(latest) == set(fixed.truth()["listings"])  # the broken ones are in now
    for key in escape:
        assert "\\q" not in latest[key]["standard_fields_json"]
        assert latest[key]["source"]["procedure"] == "redrive"
    again = redrive_poller(settings)
    assert (again.resent, again.skipped) == (0, 0)  # each dead letter re-driven once


# -- issue 14 item 7 and issue 10 item 9: topics -------------------------------------


def _topic_configs(settings, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AdminClient(settings.kafka_config("admin"))
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    out = {}
    for resource, future in admin.describe_configs(resources, request_timeout=30).items():
        out[resource.name] = {k: v.value for k, v in future.result(timeout=30).items()}
    return out


def test_topics_create_makes_every_dead_letter_topic_with_the_producers_limit(make_settings):
    settings = make_settings(delete_retention_days=2)
    settings = dataclasses.replace(
        settings, kafka={**settings.kafka, "message.max.bytes": "3000000"}
    )
    lines = list(ensure_contract(settings, partitions=2))
    prefix = settings.topic_prefix
    sinks = {ep.name for ep in entry_points(group="spark_relay.sinks")}
    assert sinks >= {"postgres", "search", "files"}
    dlqs = [f"{prefix}.dlq.{name}" for name in ("poller", *sinks)]
    data = [settings.topic(name) for name in ("listings", "accounts", "purges")]
    metadata = AdminClient(settings.kafka_config("admin")).list_topics(timeout=30).topics
    assert set(dlqs + data) <= set(metadata), lines
    configs = _topic_configs(settings, dlqs + data)
    for name in dlqs + data:
        assert configs[name]["max.message.bytes"] == "3000000", name
    for name in data[:2]:
        assert configs[name]["cleanup.policy"] == "compact"
        assert configs[name]["delete.retention.ms"] == str(2 * 24 * 3600 * 1000)
    # the requested replication factor reaches every topic, dead-letter topics too
    specs = contract_specs(settings, partitions=3, replication_factor=3)
    assert {spec.name for spec in specs} == set(dlqs + data)
    assert {spec.replication_factor for spec in specs} == {3}
    # an existing topic is brought to the limit the producers allow now
    raised = dataclasses.replace(settings, kafka={**settings.kafka, "message.max.bytes": "4000000"})
    list(ensure_contract(raised, partitions=2))
    assert {c["max.message.bytes"] for c in _topic_configs(settings, dlqs + data).values()} == {
        "4000000"
    }


def test_status_warns_when_a_group_is_behind_longer_than_tombstones_last(make_settings):
    settings = make_settings(delete_retention_days=7)
    list(ensure_contract(settings, partitions=1))
    topic = settings.topic("listings")
    producer = Producer(settings.kafka_config("producer"))
    now_ms = int(time.time() * 1000)
    for age_days, key in ((8, b"old"), (1, b"recent")):
        producer.produce(topic, key=key, value=None, timestamp=now_ms - age_days * 86_400_000)
    producer.flush(30)
    for group, offset in (("sink-slow", 0), ("sink-ok", 1)):
        consumer = Consumer(settings.kafka_config("consumer", **{"group.id": group}))
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        consumer.close()
    status = collect_status(settings)
    assert status.groups["sink-slow"]["lag"] == 2 and status.groups["sink-ok"]["lag"] == 1
    warnings = [p for p in status.problems if "tombstones" in p]
    assert len(warnings) == 1 and "sink-slow" in warnings[0], status.problems
    assert "reconcile --repair" in warnings[0]
    relaxed = collect_status(dataclasses.replace(settings, delete_retention_days=10))
    assert not [p for p in relaxed.problems if "tombstones" in p]


# -- item 4: subresources without a change timestamp, and the setting ------------------


def test_rooms_and_units_refresh_when_the_listing_changes_and_only_then(emulator, relay):
    emu = emulator(listings=200, accounts=20)
    settings = relay(emu, subresources="Rooms,Units")
    fetched: list[tuple[str, str]] = []
    with build_poller(settings) as poller:
        real = poller.subresource

        def spy(key: str, segment: str):
            fetched.append((key, segment))
            return real(key, segment)

        poller.subresource = spy
        poller.snapshot()
        assert len(fetched) == 400
        fetched.clear()
        modified = emu.advance(minutes=7, modify=0.1, create=0.0, remove=0.0, media=0.0)["modified"]
        poller.update()
        assert sorted(fetched) == sorted((k, s) for k in modified for s in ("rooms", "units"))
        fetched.clear()
        quiet = poller.update()  # the overlap re-reads the same versions: nothing fetched
    assert quiet.records > 0 and fetched == []
    latest = _latest(settings)
    with httpx.Client(base_url=emu.url, headers=API_HEADERS) as http:
        for key in modified:
            rooms = http.get(f"/v1/listings/{key}/rooms", params={"_limit": 200}).json()["D"]
            assert listing_from_record(latest[key])["StandardFields"]["Rooms"] == rooms["Results"]


@pytest.mark.parametrize("value", ["CustomFields", "Photos,Floorplans"])
def test_an_unknown_subresource_is_a_settings_error(make_settings, value):
    settings = make_settings(api_url="http://127.0.0.1:9", api_key="k")
    env = cli_env(settings, subresources=value)
    result = subprocess.run(
        [BIN, "poll", "update"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "SPARK_RELAY_SUBRESOURCES" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="SPARK_RELAY_SUBRESOURCES"):
        load_settings(environ={"SPARK_RELAY_SUBRESOURCES": value})


# -- item 10: smaller traps -------------------------------------------------------------


def test_snapshot_restart_republish_refills_a_lost_topic(emulator, relay, topic_prefix):
    emu = emulator(listings=1200, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        assert poller.snapshot().published == 1200
    # the topics are lost (a new prefix stands for a wiped cluster); the state is not
    lost = dataclasses.replace(settings, topic_prefix=f"{topic_prefix}r")
    list(ensure_contract(lost))
    with build_poller(lost) as poller:
        assert poller.snapshot(restart=True).published == 0  # unchanged: nothing re-sent
        stats = poller.snapshot(restart=True, republish=True)
    assert stats.published == 1200
    assert set(_latest(lost)) == set(emu.truth()["listings"])
    refused = subprocess.run(
        [BIN, "poll", "snapshot", "--republish"],
        env=cli_env(lost),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--restart" in refused.stderr


def test_the_accounts_scan_is_ordered_and_a_short_page_is_not_its_end(emulator, relay, monkeypatch):
    emu = emulator(listings=20, accounts=1200)
    settings = relay(emu, page_size=500)
    requests: list[dict] = []
    real_get = SparkClient.get

    def short_first_page(self, path, params=None):
        page = real_get(self, path, params)
        if path == "/v1/accounts" and "_skip" in (params or {}):
            requests.append(dict(params))
            if params["_skip"] == 0:  # a backend that answers fewer rows than _limit
                short = page.results[:-3]  # its edges those of the page it sends
                edges = (identity(short[0]), identity(short[-1]))
                page = dataclasses.replace(page, results=short, edges=edges)
        return page

    monkeypatch.setattr(SparkClient, "get", short_first_page)
    with build_poller(settings) as poller:
        stats = poller.accounts()
    assert stats.completed and stats.purged == 0
    counts = collections.Counter(
        k for k, _, _ in read_topic(settings.kafka_bootstrap, settings.topic("accounts"))
    )
    assert set(counts) == set(emu.truth()["accounts"]) and set(counts.values()) == {1}
    assert all(r.get("_orderby") == "Id" for r in requests) and len(requests) >= 3


def test_an_accounts_scan_cut_short_fails_and_resumes(emulator, relay):
    start = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    cut = emulator(listings=20, accounts=1200, faults="cut:1.0", start_time=start)
    settings = relay(cut, page_size=500)
    with build_poller(settings) as poller:
        with pytest.raises(TransientSourceError, match="empty page at 500"):
            poller.accounts()
    sound = emulator(listings=20, accounts=1200, start_time=start)
    assert sound.truth()["accounts"] == cut.truth()["accounts"]
    with build_poller(dataclasses.replace(settings, api_url=sound.url)) as poller:
        stats = poller.accounts()
    assert stats.completed and stats.purged == 0
    counts = collections.Counter(
        k for k, _, _ in read_topic(settings.kafka_bootstrap, settings.topic("accounts"))
    )
    assert set(counts) == set(sound.truth()["accounts"]) and set(counts.values()) == {1}


def test_select_applies_to_update_windows_as_to_the_snapshot(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    chosen = {"ListingKey", "ModificationTimestamp", "City", "ListPrice"}
    settings = relay(emu, select=",".join(sorted(chosen)))
    with build_poller(settings) as poller:
        poller.snapshot()
        modified = emu.advance(minutes=7, modify=0.1, create=0.0, remove=0.0, media=0.0)["modified"]
        assert poller.update().published == len(modified)
    events = read_topic(
        settings.kafka_bootstrap, settings.topic("listings"), settings.schema_registry_url
    )
    assert len(events) == 300 + len(modified)
    for _, value, _ in events:  # snapshot and update events alike: the selected fields only
        assert set(listing_from_record(value)["StandardFields"]) == chosen
    with pytest.raises(ConfigError, match="ModificationTimestamp"):
        load_settings(environ={"SPARK_RELAY_SELECT": "ListingKey,City"})


@pytest.mark.parametrize(
    "text, expected",
    [
        (" 2026-01-05T12:00:00Z ", datetime(2026, 1, 5, 12, tzinfo=UTC)),
        ("2026-01-05T13:00:00+0100", datetime(2026, 1, 5, 12, tzinfo=UTC)),
        ("2026-01-05T07:00:00-05:00", datetime(2026, 1, 5, 12, tzinfo=UTC)),
        ("2026-01-05T12:00:00.123456", datetime(2026, 1, 5, 12, 0, 0, 123456, tzinfo=UTC)),
        (1767614400, None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_one_timestamp_parser(text, expected):
    from schemas import parse_timestamp

    assert parse_timestamp(text) == expected


def test_odd_stored_timestamps_never_crash_a_purge(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu)
    odd = {
        "99999999999999999999990001": " 2026-01-05T12:00:00Z ",
        "99999999999999999999990002": "2026-01-05T13:00:00+0100",
        "99999999999999999999990003": 1767614400,
    }
    with build_poller(settings) as poller:
        poller.snapshot()
        with poller.state.transaction():  # published once, gone from the API since
            poller.state.record_published("listings", [(k, m, "x") for k, m in odd.items()])
        stats = poller.purge()
    assert stats.completed and stats.purged == 3
    purges = read_topic(
        settings.kafka_bootstrap, settings.topic("purges"), settings.schema_registry_url
    )
    last = {v["key"]: v["last_modification_timestamp"] for _, v, _ in purges}
    noon = datetime(2026, 1, 5, 12, tzinfo=UTC)
    assert last == {
        "99999999999999999999990001": noon,
        "99999999999999999999990002": noon,
        "99999999999999999999990003": None,
    }


def test_a_purge_over_broken_records_removes_nothing(emulator, relay):
    emu = emulator(listings=400, accounts=20, bad_records=0.1)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        stats = poller.purge()
    assert stats.completed and stats.purged == 0
    tombstones = [
        k
        for k, v, _ in read_topic(settings.kafka_bootstrap, settings.topic("listings"))
        if v is None
    ]
    assert tombstones == []
