"""The ``/v1`` resources: listings, listing subresources, accounts; query semantics.

Pure request -> (status, JSON bytes) logic, no sockets: the server calls
:meth:`SparkAPI.handle` after authentication, rate limiting and fault draws.
Bodies use Spark's envelope, ``{"D": {"Success": …, "Results": […]}}``, and its
error codes (1040 invalid ``_filter``, 1041 filter too long, 1053 parameter constraint in
:mod:`devstack.emulator.params`, 403/1500 and 404 for broken subresources).
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from typing import Any
from urllib.parse import parse_qs

import orjson

from devstack.emulator.config import EmulatorConfig
from devstack.emulator.fields import field_type
from devstack.emulator.media import SUBRESOURCES
from devstack.emulator.params import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_SKIP,
    Reject,
    constraint,
    error_body,
    expansions,
    first_row,
    integer,
    not_found,
    ordered,
    pagination,
    pagination_mode,
)
from devstack.emulator.sparkql import NOW, SparkQLError, compile_filter
from devstack.emulator.store import MLS
from devstack.emulator.vocab import CHOICE_FIELDS

__all__ = ["SparkAPI", "LISTING_FILTER_FIELDS", "ACCOUNT_FILTER_FIELDS"]

logger = logging.getLogger(__name__)

LISTING_FILTER_FIELDS = {
    "ModificationTimestamp": "datetime",
    "PhotosChangeTimestamp": "datetime",
    "VideosChangeTimestamp": "datetime",
    "DocumentsChangeTimestamp": "datetime",
    "OpenHousesChangeTimestamp": "datetime",
    "StatusChangeTimestamp": "datetime",
    "PriceChangeTimestamp": "datetime",
    "ListingKey": "character",
    "MlsStatus": "character",
    "StandardStatus": "character",
    "ListPrice": "decimal",
}
#: Longest ``_filter`` accepted (characters); longer ones answer 400 / code 1041. The real
#: limit is not published; this one is ours (a few hundred keys' worth of ``ListingKey Eq``).
MAX_FILTER_LENGTH = 8_000
ACCOUNT_FILTER_FIELDS = {
    "ModificationTimestamp": "datetime",
    "Id": "character",
    "UserType": "character",
    "Name": "character",
}
_STATE_FIELDS = {"ListingKey", "ModificationTimestamp"}
#: Fields whose values come from a list of choices (``HasList`` in /v1/standardfields).
LIST_FIELDS = frozenset(
    {"City", "StateOrProvince", "PropertyType", "PropertySubType", "StandardStatus", "MlsStatus"}
    | set(CHOICE_FIELDS)
)


#: A ``_filter`` that only lists keys (``ListingKey Eq '…' Or ListingKey Eq '…'``), the
#: purge's and reconcile's re-check by key: answered by lookup instead of a scan.
_KEY = re.compile(r"ListingKey Eq '([^']*)'")
_KEY_LIST = re.compile(r"ListingKey Eq '[^']*'(?: Or ListingKey Eq '[^']*')*")


class SparkAPI:
    """Answers ``GET /v1/...`` requests from the MLS state."""

    def __init__(self, mls: MLS, config: EmulatorConfig) -> None:
        self.mls = mls
        self.config = config
        self._filters: dict[str, Any] = {}
        self._cache: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self._cache_lock = threading.Lock()
        self._field_names: frozenset[str] | None = None
        #: Tests' switches for answers the data cannot produce: ``served`` maps a ListingKey
        #: or account Id to the JSON bytes sent in place of its record, in pages and by key;
        #: ``gone_status`` is what a removed record answers by key (404, or 403/1500 as some
        #: backends answer for a record the key may no longer see).
        self.served: dict[str, bytes] = {}
        #: ``"<ListingKey>/<path>"`` -> the elements (JSON bytes each) of that subresource.
        self.served_items: dict[str, list[bytes]] = {}
        #: ListingKey -> a non-record element (JSON bytes) sent after that listing in pages, as
        #: ``--bad-records``' ``element`` kind does for the listings it picks, on a chosen key.
        self.junk_after: dict[str, bytes] = {}
        self.gone_status = 404

    def _gone(self, what: str) -> Reject:
        if self.gone_status == 403:
            return Reject(
                403, 1500, "The requested resource is not available at your service level"
            )
        return not_found(what)

    def clear_filter_cache(self) -> None:
        """Forget every cached filter result."""
        with self._cache_lock:
            self._cache.clear()

    def handle(
        self, path: str, query: str, api_key: str, fault: str | None = None
    ) -> tuple[int, bytes, list[Any] | None]:
        """Route one authenticated GET; returns ``(HTTP status, body, applied fault)``.

        ``fault`` is a data fault drawn for this request (``"cut"``, ``"stale"``); the
        third value is ``[kind]`` or ``[kind, ListingKey]`` when it applied, else None.
        """
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        parts = [p for p in path.split("/") if p]
        applied: list[Any] = []
        try:
            if len(parts) < 2 or parts[0] != "v1":
                raise Reject(404, 404, "Not Found")
            resource, rest = parts[1], parts[2:]
            if resource == "listings":
                if not rest:
                    return 200, self._listings(params, api_key, fault, applied), applied or None
                if len(rest) == 1:
                    return 200, self._listing(rest[0], params), None
                if rest[1] in SUBRESOURCES and len(rest) <= 3:
                    body = self._subresource(rest[0], rest[1], rest[2:], params)
                    return 200, body, None
            elif resource == "standardfields" and len(rest) <= 1:
                return 200, self._standard_fields(rest[0] if rest else None), None
            elif resource == "my" and rest == ["account"]:
                return 200, self._my_account(), None
            elif resource == "accounts":
                if not rest:
                    return 200, self._accounts(params, fault, applied), applied or None
                if len(rest) == 1:
                    return 200, self._account(rest[0], params), None
            raise Reject(404, 404, "Not Found")
        except Reject as e:
            return e.status, error_body(e.code, e.message, **e.extra), None

    # ---- parameters ---------------------------------------------------------------

    def _field_set(self) -> frozenset[str]:
        if self._field_names is None:
            with self.mls.lock:
                key = self.mls.live_keys[0] if self.mls.live_keys else None
                state = self.mls.listings[key] if key else None
            if state is None:
                return frozenset(_STATE_FIELDS)
            self._field_names = frozenset(self.mls.standard_fields(state))
        return self._field_names

    def _select(self, params: dict[str, str]) -> list[str] | None:
        names = [n.strip() for n in params.get("_select", "").split(",") if n.strip()]
        if not names:
            return None
        unknown = [n for n in names if n not in self._field_set() and n != "Id"]
        if unknown:
            raise constraint(
                "_select", f"_select names unknown fields: {', '.join(unknown)}", unknown
            )
        return names

    def _compiled(self, text: str, fields: dict[str, str], kind: str):
        if len(text) > MAX_FILTER_LENGTH:
            raise Reject(
                400, 1041, f"The _filter is too long ({len(text)} > {MAX_FILTER_LENGTH} characters)"
            )
        cache_key = f"{kind}\x00{text}"
        predicate = self._filters.get(cache_key)
        if predicate is None:
            try:
                predicate = compile_filter(text, fields)
            except SparkQLError as e:
                errors = [
                    {
                        "Token": e.token,
                        "Status": "Fatal",
                        "Message": e.message,
                        "Syntax": not e.constraint,
                        "Constraint": e.constraint,
                    }
                ]
                raise Reject(
                    400, 1040, f"Invalid _filter: {e.message}", SparkQLErrors=errors
                ) from None
            if len(self._filters) > 1000:
                self._filters.clear()
            self._filters[cache_key] = predicate
        return predicate

    # ---- listings -------------------------------------------------------------------

    def _matching_keys(self, text: str, api_key: str) -> list[str]:
        predicate = self._compiled(text, LISTING_FILTER_FIELDS, "listings")
        mls = self.mls
        now = mls.clock.now_ms()
        ttl_ms = self.config.filter_cache_seconds * 1000
        if ttl_ms > 0:
            with self._cache_lock:
                hit = self._cache.get((api_key, text))
            if hit is not None and now - hit[0] < ttl_ms:
                with mls.lock:  # the cached index, with current content; removed ones vanish
                    return [k for k in hit[1] if mls.listings[k].live]
        wanted = _KEY_LIST.fullmatch(text) and _KEY.findall(text)
        with mls.lock:
            if wanted:  # ListingKey Eq … Or …: looked up, as an indexed API would (same answer)
                keys = sorted(k for k in set(wanted) if k in mls.listings and mls.listings[k].live)
            else:
                keys = [k for k in mls.live_keys if predicate(self._getter(mls.listings[k], now))]
                self._late(predicate, keys, now)
        if ttl_ms > 0:
            with self._cache_lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[(api_key, text)] = (now, keys)
        return keys

    def _late(self, predicate, keys: list[str], now: int) -> None:
        """Note each listing a lagging index kept out of these ``keys`` (hooks: late)."""
        if not self.config.late_visibility_seconds:
            return
        since = now - self.config.late_visibility_seconds * 1000
        matched = set(keys)
        for key in self.mls.live_keys:
            state = self.mls.listings[key]
            if state.mod_ms > since and key not in matched:
                if predicate(self._getter(state, now, indexed=False)):
                    self.mls.hooks.hit("late", key)

    def _getter(self, state, now: int, indexed: bool = True):
        """``field -> value`` of a listing for ``_filter`` and ``_orderby``: cheap fields from
        its state, the others from its record (built once per version). ``indexed``: the
        ModificationTimestamp a lagging index holds (hooks: late visibility)."""
        facts: dict[str, Any] | None = None

        def get(name: str) -> Any:
            nonlocal facts
            if name == "ModificationTimestamp":
                return self.mls.hooks.indexed_ms(state, now) if indexed else state.mod_ms
            if name == "ListingKey":
                return state.key
            if name == NOW:
                return now
            if facts is None:
                facts = self.mls.facts(state, LISTING_FILTER_FIELDS)
            return facts[name]

        return get

    def _listings(
        self, params: dict[str, str], api_key: str, fault: str | None, applied: list[Any]
    ) -> bytes:
        limit = integer(params, "_limit", DEFAULT_LIMIT, 0, MAX_LIMIT["listings"], "listings")
        skip = first_row(params, limit, "listings")
        mode = pagination_mode(params)
        select = self._select(params)
        nested, custom = expansions(params)
        text = params.get("_filter", "").strip()
        mls = self.mls
        if text:
            keys = self._matching_keys(text, api_key)
        else:
            with mls.lock:
                keys = list(mls.live_keys)
        now = mls.clock.now_ms()
        with mls.lock:
            keys = ordered(
                params,
                keys,
                LISTING_FILTER_FIELDS,
                lambda k: self._getter(mls.listings[k], now),
            )
        total = len(keys)
        tail = b""
        token = params.get("_skiptoken")
        if fault == "cut" and token:  # a flaky backend ends the scan: no rows, no SkipToken
            applied.append("cut")
            if mode != "0":
                tail += b',"Pagination":' + orjson.dumps(
                    pagination(total, limit, bisect.bisect_right(keys, token), False)
                )
            return b'{"D":{"Success":true,"Results":[]' + tail + b"}}"
        if token is not None:
            start = bisect.bisect_right(keys, token) if token else 0
            page_keys = keys[start : start + limit]
            last = start + limit >= total
            next_token: str | None = page_keys[-1] if page_keys else None
            if last and self.config.last_page == "missing":
                next_token = None
            elif last and self.config.last_page == "same":
                next_token = token
            if next_token is not None and mode != "count":
                tail += b',"SkipToken":' + orjson.dumps(next_token)
            offset = start
        else:
            page_keys = keys[skip : skip + limit]
            offset = skip
        if mode != "0":
            tail += b',"Pagination":' + orjson.dumps(
                pagination(total, limit, offset, with_offset="_skip" in params)
            )
        if mode == "count":  # only the Pagination hash, as the fixture count.json
            return b'{"D":{"Success":true' + tail + b"}}"
        with mls.lock:
            states = [mls.listings[k] for k in page_keys]
            if fault == "stale":  # a lagging replica: one record at its previous version
                lag = self.config.stale_lag_seconds
                since = None if lag is None else mls.clock.now_ms() - lag * 1000
                for i, key in enumerate(page_keys):
                    if key in mls.previous and (since is None or states[i].mod_ms > since):
                        states[i] = mls.previous[key]
                        applied.extend(("stale", key))
                        break
        if select is None or not _STATE_FIELDS.issuperset(select):
            mls.hooks.served(page_keys)
        items = []
        for state in states:
            items.append(self.served.get(state.key) or self._record(state, select, nested, custom))
            bad = mls.bad(state.key)
            if bad is not None and bad.kind == "element":
                items.append(orjson.dumps(bad.element))
            if state.key in self.junk_after:
                items.append(self.junk_after[state.key])
        return b'{"D":{"Success":true,"Results":[' + b",".join(items) + b"]" + tail + b"}}"

    def _record(
        self, state, select: list[str] | None, nested: list[str], custom: list[str]
    ) -> bytes:
        mls = self.mls
        if select is not None:  # Id is the record's own, next to StandardFields
            select = [n for n in select if n != "Id"]
        if select is None and not nested and not custom:
            return mls.record_bytes(state)
        if select is None:
            sf = mls.standard_fields_bytes(state)
        elif not select:
            sf = b"{}"
        elif _STATE_FIELDS.issuperset(select):
            sf = orjson.dumps(
                {n: (state.key if n == "ListingKey" else self._mod_text(state)) for n in select}
            )
        else:
            fields = mls.standard_fields(state)
            sf = mls.encode(state, {n: fields[n] for n in select})
        if nested:
            extra = b"".join(
                b',"%s":%s' % (n.encode(), orjson.dumps(mls.expansion(state, n))) for n in nested
            )
            sf = sf[:-1] + (extra[1:] if sf == b"{}" else extra) + b"}"
        key = state.key.encode()
        out = b'{"Id":"%s","ResourceUri":"/v1/listings/%s","StandardFields":%s' % (key, key, sf)
        for name in custom:
            out += b',"%s":%s' % (name.encode(), orjson.dumps(mls.expansion(state, name)))
        return out + b"}"

    @staticmethod
    def _mod_text(state) -> str:
        from devstack.emulator.clock import format_timestamp

        return format_timestamp(state.mod_ms, state.offset_minutes)

    def _live(self, key: str):
        with self.mls.lock:
            state = self.mls.listing_state(key)
        if state is None:
            raise self._gone(f"Listing {key}")
        return state

    def _listing(self, key: str, params: dict[str, str]) -> bytes:
        self._refused("listings", key)
        state = self._live(key)
        self.mls.hooks.served([key])
        select = self._select(params)
        nested, custom = expansions(params)
        record = self.served.get(key) or self._record(state, select, nested, custom)
        bad = self.mls.bad(key)
        if bad is not None and bad.kind == "element":
            record += b"," + orjson.dumps(bad.element)
        return b'{"D":{"Success":true,"Results":[' + record + b"]}}"

    def _subresource(self, key: str, path: str, rest: list[str], params: dict[str, str]) -> bytes:
        state = self._live(key)
        name = SUBRESOURCES[path]
        bad = self.mls.bad(key)
        if bad is not None and bad.kind == "subresource" and bad.path == path:
            if bad.status == 403:
                raise Reject(
                    403, 1500, "The requested resource is not available at your service level"
                )
            raise not_found(f"{name} of listing {key}")
        # no _limit: every item; _limit=0 (the docs allow >= 0): none
        limit = integer(params, "_limit", -1, 0, MAX_LIMIT["other"], "listing subresources")
        skip = integer(params, "_skip", 0, 0, MAX_SKIP, "listing subresources")
        served = self.served_items.get(f"{key}/{path}")
        if served is not None and not rest:
            page = served[skip : skip + limit] if limit else served
            return b'{"D":{"Success":true,"Results":[' + b",".join(page) + b"]}}"
        items = self.mls.expansion(state, name)
        if rest:
            items = [i for i in items if i["Id"] == rest[0]]
            if not items:
                raise not_found(f"{name} item {rest[0]}")
        elif limit >= 0:
            items = items[skip : skip + limit]
        return orjson.dumps({"D": {"Success": True, "Results": items}})

    # ---- metadata -------------------------------------------------------------------

    def _standard_fields(self, only: str | None) -> bytes:
        """Field metadata, shaped as the fixture ``standardfields/standardfields.json``.

        Types come from the generator (decimals are sent as strings but typed
        Decimal); ``Searchable`` is true exactly for the fields ``_filter`` accepts.
        """
        mls = self.mls
        with mls.lock:
            states = [mls.listings[k] for k in mls.live_keys[:50]]
        samples = [mls.standard_fields(s) for s in states]
        names = samples[0] if samples else dict.fromkeys(_STATE_FIELDS)
        if only is not None and only not in names:
            raise not_found(f"Standard field {only}")
        meta = {}
        for name in names if only is None else [only]:
            value = next((s[name] for s in samples if s[name] is not None), None)
            meta[name] = {
                "ResourceUri": f"/v1/standardfields/{name}",
                "HasList": name in LIST_FIELDS or isinstance(value, list),
                "Searchable": name in LISTING_FILTER_FIELDS,
                "Type": field_type(name, value),
            }
        return orjson.dumps({"D": {"Success": True, "Results": [meta]}})

    def _my_account(self) -> bytes:
        """The key's own account (``/v1/my/account``): the first member, fixture-shaped."""
        with self.mls.lock:
            mls = self.mls
            member = next(i for i in mls.account_ids if mls.accounts[i]["UserType"] == "Member")
            return orjson.dumps({"D": {"Success": True, "Results": [mls.accounts[member]]}})

    # ---- accounts ---------------------------------------------------------------------

    def _accounts(self, params: dict[str, str], fault: str | None, applied: list[Any]) -> bytes:
        if "_skiptoken" in params:
            raise constraint(
                "_skiptoken",
                "The _skiptoken parameter is not supported for the accounts "
                "resource; paginate with _skip",
            )
        limit = integer(params, "_limit", DEFAULT_LIMIT, 0, MAX_LIMIT["accounts"], "accounts")
        skip = first_row(params, limit, "accounts")
        mode = pagination_mode(params)
        names = [n.strip() for n in params.get("_select", "").split(",") if n.strip()]
        text = params.get("_filter", "").strip()
        mls = self.mls
        predicate = self._compiled(text, ACCOUNT_FILTER_FIELDS, "accounts") if text else None
        now = mls.clock.now_ms()

        def get_of(account_id: str):
            return {
                "ModificationTimestamp": mls.account_mods[account_id],
                "Id": account_id,
                "UserType": (a := mls.accounts[account_id])["UserType"],
                "Name": a["Name"],
                NOW: now,
            }.get

        with mls.lock:
            ids = mls.account_ids
            if predicate is not None:
                ids = [i for i in ids if predicate(get_of(i))]
            ids = ordered(params, list(ids), ACCOUNT_FILTER_FIELDS, get_of)
            total = len(ids)
            page = [mls.accounts[i] for i in ids[skip : skip + limit]] if mode != "count" else []
            if fault == "cut" and skip > 0:  # a flaky backend ends the scan early
                applied.append("cut")
                page = []
            if names:
                keep = {"Id", "ResourceUri", *names}
                page = [{k: v for k, v in a.items() if k in keep} for a in page]
            page = [
                orjson.Fragment(self.served[a["Id"]]) if a["Id"] in self.served else a for a in page
            ]
            body: dict[str, Any] = {"Success": True}
            if mode != "count":
                body["Results"] = page
            if mode != "0":
                body["Pagination"] = pagination(total, limit, skip, with_offset="_skip" in params)
            return orjson.dumps({"D": body})

    def _refused(self, resource: str, key: str) -> None:
        """A removed record the key no longer sees answers 403 by key (hooks: refused)."""
        mls = self.mls
        with mls.lock:
            gone = (key in mls.listings and not mls.listings[key].live) or (
                resource == "accounts" and key in mls.removed_accounts
            )
        if gone and mls.hooks.refused(key):
            mls.hooks.hit("refused_by_key", key, 403)
            raise Reject(403, 1500, "The requested resource is not available at your service level")

    def _account(self, account_id: str, params: dict[str, str]) -> bytes:
        self._refused("accounts", account_id)
        with self.mls.lock:
            record = self.mls.accounts.get(account_id)
            if record is None:
                raise self._gone(f"Account {account_id}")
            record = (
                orjson.Fragment(self.served[account_id]) if account_id in self.served else record
            )
            return orjson.dumps({"D": {"Success": True, "Results": [record]}})
