"""One validation boundary (issue 21 item 2): before a procedure reads an element of
``Results``, it is a valid record or a dead letter with a reason.

The emulator's ``served`` switch sends any bytes in place of one record, in pages
and by key. The property tests (Hypothesis) put arbitrary JSON into any field of a
listing or an account: each element is either published exactly or dead-lettered
with a reason, and a run never raises, but for one case: an element whose key cannot
be read, sent in place of the record, is no record of TotalRows, so the scan cannot be
shown complete (:mod:`producer.scan`: a junk element next to the records must not hide
a record the scan missed); it fails as a short scan, the element dead-lettered first.
``HYPOTHESIS_PROFILE=thorough`` runs more examples than ``make test``.
"""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.cli import build_poller
from producer.records import listing_key
from producer.scan import ScanIncomplete
from schemas import account_from_record, json_dumps, json_loads, listing_from_record
from tests.kafka_helpers import read_topic

EXAMPLES = 150 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 8
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _letters(settings_) -> list:
    return read_topic(settings_.kafka_bootstrap, f"{settings_.topic_prefix}.dlq.poller")


def test_an_element_whose_standard_fields_is_a_string_is_dead_lettered_by_update(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings_ = relay(emu, page_size=100)
    with build_poller(settings_) as poller:
        assert poller.snapshot().completed
        changed = emu.advance(minutes=10, modify=0.2, create=0, remove=0, media=0)["modified"]
        broken = sorted(changed)[0]
        emu.api.served[broken] = b'{"Id":"%s","StandardFields":"a string"}' % broken.encode()
        stats = poller.update()
    assert stats.completed and stats.dead_lettered == 1
    ((key, _, headers),) = _letters(settings_)
    headers = dict(headers)
    assert key == broken and headers["dlq.key"] == broken.encode()
    assert b"StandardFields" in headers["dlq.error"]


# -- arbitrary JSON in any field ------------------------------------------------------

_NUMBER = st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,4})?\Z")
_SCALAR = st.one_of(
    st.just(b"null"),
    st.just(b"true"),
    st.just(b"false"),
    _NUMBER.map(str.encode),
    st.text(max_size=20).map(lambda text: json_dumps(text).encode()),
)


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _object(pairs: dict[str, bytes]) -> bytes:
    return b"{" + b",".join(json_dumps(k).encode() + b":" + v for k, v in pairs.items()) + b"}"


_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).map(_object),
    ),
    max_leaves=12,
)
_DEEP = st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth)
_VALUE = st.one_of(_JSON, _DEEP)


def _with(record: dict, path: tuple[str, ...], value: bytes) -> bytes:
    """``record`` as JSON bytes with the field at ``path`` (or the whole) replaced by ``value``."""
    if not path:
        return value
    marker = "\x00replaced\x00"
    holder = record
    for name in path[:-1]:
        holder = holder[name]
    holder[path[-1]] = marker
    return json_dumps(record).encode().replace(json_dumps(marker).encode(), value)


def _decoded(text: bytes):
    try:
        return json_loads(text), True
    except (ValueError, RecursionError):
        return None, False


def _check(element: bytes, latest: dict, key_of, letters_before: int, letters: list) -> None:
    """``element`` is the latest event of its key, exactly, or a new dead letter with a reason."""
    value, readable = _decoded(element)
    key = key_of(value) if readable and isinstance(value, dict) else None
    if isinstance(key, str) and key in latest and latest[key] == value:
        return  # published exactly
    assert len(letters) > letters_before, f"neither published nor dead-lettered: {element[:200]!r}"
    assert all(dict(headers)["dlq.error"] for _, _, headers in letters), "a letter without reason"


def _run(procedure, element: bytes, key_of):
    """``procedure()``'s stats; a short scan only when ``element`` carries no key."""
    value, readable = _decoded(element)
    keyed = readable and isinstance(value, dict) and isinstance(key_of(value), str)
    try:
        stats = procedure()
    except ScanIncomplete:
        assert not keyed, f"a scan failed though its element has a key: {element[:200]!r}"
        return None
    assert stats.completed
    return stats


def _latest(settings_, topic: str, decode) -> dict:
    latest = {}  # a key's events are in one partition, in order: the last one wins
    for key, value, _ in read_topic(
        settings_.kafka_bootstrap, settings_.topic(topic), settings_.schema_registry_url
    ):
        latest[key] = decode(value) if value is not None else None
    return latest


@pytest.fixture
def one_listing(emulator, relay):
    """An emulator, and settings whose state is fresh in each example (``_fresh``)."""
    emu = emulator(listings=3, accounts=20)
    return emu, relay(emu, page_size=10)


def _fresh(settings_):
    """Each example its own state: what an earlier example dead-lettered is not remembered."""
    return dataclasses.replace(settings_, state_dir=f"{settings_.state_dir}/{uuid.uuid4().hex}")


_LISTING_PATHS = st.sampled_from(
    [
        (),
        ("Id",),
        ("StandardFields",),
        ("StandardFields", "ListingKey"),
        ("StandardFields", "ModificationTimestamp"),
        ("StandardFields", "ListPrice"),
        ("StandardFields", "City"),
        ("StandardFields", "PublicRemarks"),
    ]
)


@pytest.mark.slow(seconds=35)
@PROPERTY
@given(path=_LISTING_PATHS, value=_VALUE)
def test_any_json_in_any_field_of_a_listing_is_published_exactly_or_dead_lettered(
    one_listing, path, value
):
    emu, settings_ = one_listing
    key = sorted(emu.truth()["listings"])[0]
    emu.api.served.pop(key, None)
    with build_poller(_fresh(settings_)) as poller:
        record = poller.client.get(f"/v1/listings/{key}").results[0]
        element = _with(record, path, value)
        emu.api.served[key] = element
        before = len(_letters(settings_))
        _run(lambda: poller.snapshot(restart=True, republish=True), element, listing_key)
    latest = _latest(settings_, "listings", listing_from_record)
    _check(element, latest, listing_key, before, _letters(settings_))


_ACCOUNT_PATHS = st.sampled_from([(), ("Id",), ("ModificationTimestamp",), ("Name",), ("Emails",)])


@pytest.mark.slow(seconds=30)
@PROPERTY
@given(path=_ACCOUNT_PATHS, value=_VALUE)
def test_any_json_in_any_field_of_an_account_is_published_exactly_or_dead_lettered(
    one_listing, path, value
):
    emu, settings_ = one_listing
    account = sorted(emu.truth()["accounts"])[0]
    emu.api.served.pop(account, None)
    with build_poller(_fresh(settings_)) as poller:
        record = poller.client.get(f"/v1/accounts/{account}").results[0]
        element = _with(record, path, value)
        emu.api.served[account] = element
        before = len(_letters(settings_))
        _run(lambda: poller.accounts(force=True), element, lambda a: a.get("Id"))
    latest = _latest(settings_, "accounts", account_from_record)
    _check(element, latest, lambda account: account.get("Id"), before, _letters(settings_))


# -- exponents and quotes ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["1e400", "-1E+400", "1e-400", "2.5E-330", "7e1"])
def test_an_exponent_is_kept_exactly_never_rounded(text):
    import math
    from decimal import Decimal

    from schemas._values import REJECT, to_double

    element = b'{"StandardFields":{"ListPrice":%s}}' % text.encode()
    value = json_loads(element)["StandardFields"]["ListPrice"]
    assert Decimal(str(value)) == Decimal(text)  # not infinity, not 0
    assert json_loads(json_dumps([value])) == [value]
    double = float(text)
    fits = math.isfinite(double) and double != 0  # else no double holds it: left unparsed
    assert to_double(value) == double if fits else to_double(value) is REJECT


def test_quotes_in_keys_are_escaped_in_every_filter_we_build():
    from devstack.emulator.api import LISTING_FILTER_FIELDS
    from devstack.emulator.sparkql import compile_filter
    from producer.pipeline import by_keys

    keys = ["20260101000000000000000001", "it's", "a'b'c"]
    matches = compile_filter(by_keys(keys), LISTING_FILTER_FIELDS)
    for key in [*keys, "its", "ab'c"]:
        assert matches({"ListingKey": key}.get) is (key in keys), key


@pytest.mark.parametrize("status", [200, 503])
def test_a_truncated_body_nested_too_deep_to_read_is_an_invalid_body_not_a_crash(status):
    """A page cut short (the emulator's ``truncate``) inside an element nested 3,000 deep,
    with a long bare number (the emulator's ``--bare-numbers``):
    the reader recurses out before it sees the cut, and the split by element cannot help a
    cut body. That is a broken body, which the client retries, never a RecursionError out of
    the daemon (seed 1 of the eighth 20-seed run: the poller died on one)."""
    from producer.pages import parse_success, read_envelope

    # a bare number of 16 digits or more: read by the standard library, which recurses
    head = b'{"D": {"Success": true, "Results": [{"ListingKey": "K", "N": 12345678901234567890, '
    body = head + b'"X": ' + b"[" * 3000
    with pytest.raises(ValueError):
        read_envelope(body, status)
    assert parse_success(body, None) is None
