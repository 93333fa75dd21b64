"""The emulated MLS: listing and account state, change over virtual time, record bytes.

Only per-listing *state* is kept (key, timestamps, versions); a record's JSON is
derived from it on first use and cached as bytes until the state changes, so
20,000 listings cost almost nothing to set up and a warm page is a byte join.
All public methods are thread-safe.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import random
import threading
from decimal import Decimal
from typing import Any

import orjson

from devstack.emulator import broken
from devstack.emulator.accounts import (
    generate_accounts,
    new_member,
    people_of,
    touch_account,
    unique_id,
)
from devstack.emulator.clock import VirtualClock, format_timestamp
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.fields import MASK, TIMED_LISTS, ListingState, build_standard_fields
from devstack.emulator.hooks import Hooks
from devstack.emulator.media import CUSTOM_EXPANSIONS, EXPANSIONS, build_custom, build_expansion
from devstack.emulator.sparkql import parse_datetime_literal

__all__ = ["MLS"]

logger = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_EPOCH_2005_MS = 1_104_537_600_000
_OFFSETS = (-300, -360, -420)
_SF_START = (
    len(b'{"Id":"","ResourceUri":"/v1/listings/","StandardFields":') + 52
)  # listings whose timestamps are written with an offset


class MLS:
    """Listings and accounts of one emulated MLS, generated from the config's seed."""

    def __init__(self, config: EmulatorConfig, clock: VirtualClock) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self._rng = random.Random(config.seed * 982_451_653 + 5)  # drives every change
        start = clock.start_ms
        self.accounts, self.account_mods = generate_accounts(config.seed, config.accounts, start)
        self.account_ids = sorted(self.accounts)
        self.people = people_of(self.accounts)
        self._people_gen = 0
        self._taken = set(self.accounts)
        self.listings: dict[str, ListingState] = {}
        rng = random.Random(config.seed * 32_452_843 + 3)
        r = rng.random
        keys = rng if config.key_seed is None else random.Random(config.key_seed * 32_452_843 + 3)
        for _ in range(config.listings):
            key = unique_id(keys, self._taken, _EPOCH_2005_MS, start - _DAY_MS)
            mod = start // 1000 * 1000 - 1000 - int(r() * 365 * _DAY_MS) // 1000 * 1000
            listed = mod - int(r() * 200 * _DAY_MS) // 1000 * 1000
            self.listings[key] = ListingState(
                key=key,
                mod_ms=mod,
                offset_minutes=_OFFSETS[int(r() * 3)] if r() < 0.3 else 0,
                photos_ms=listed + int(r() * (mod - listed)) // 1000 * 1000,
                videos_ms=listed,
                documents_ms=listed,
                openhouses_ms=mod,
                listed_ms=listed,
            )
        self.live_keys = sorted(self.listings)
        #: the state each listing had before its latest change (what a lagging replica serves)
        self.previous: dict[str, ListingState] = {}
        self._cache: dict[str, tuple[tuple[int, int, int], bytes]] = {}
        self._facts: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self.hooks = Hooks(config, self)
        self.removed_accounts: set[str] = set()

    # ---- reading ---------------------------------------------------------------

    def listing_state(self, key: str) -> ListingState | None:
        """The state of a live listing, or None if unknown or removed."""
        state = self.listings.get(key)
        return state if state is not None and state.live else None

    def standard_fields_bytes(self, state: ListingState) -> bytes:
        """StandardFields of a listing as JSON bytes (cached until the listing changes)."""
        return self.record_bytes(state)[_SF_START:-1]

    def record_bytes(self, state: ListingState) -> bytes:
        """The whole listing record (Id, ResourceUri, StandardFields) as JSON bytes.

        Built on first use and cached until the listing (or an account it
        shows) changes; only this one copy is kept per listing. A state that is
        not the listing's current one (an older version) is built, not cached.
        """
        stamp = (state.version, state.media_version, self._people_gen)
        hit = self._cache.get(state.key)
        if hit is not None and hit[0] == stamp and self.listings.get(state.key) is state:
            return hit[1]
        sf = self.encode(state, self.standard_fields(state))
        key = state.key.encode()
        record = b'{"Id":"%s","ResourceUri":"/v1/listings/%s","StandardFields":%s}' % (key, key, sf)
        if self.listings.get(state.key) is state:
            self._cache[state.key] = (stamp, record)
        return record

    def standard_fields(self, state: ListingState) -> dict[str, Any]:
        """StandardFields of a listing as a dict (a fresh one), exact digits kept as strings."""
        fields = build_standard_fields(self.config.seed, state, self.people, self.config.masked)
        if broken.is_bare(self.config.seed, state.key, self.config.bare_numbers):
            fields["ListPrice"] = broken.long_price(
                self.config.seed, state.key, state.version, fields["ListPrice"]
            )
        return fields

    def encode(self, state: ListingState, fields: dict[str, Any]) -> bytes:
        """StandardFields (or some of them) of this listing as the API sends them."""
        seed, key = self.config.seed, state.key
        bare = broken.is_bare(seed, key, self.config.bare_numbers)
        bad = broken.bad_of(seed, key, self.config.bad_records)
        return self.hooks.malform(key, fields, lambda f: broken.encode(f, bare, bad))

    def facts(self, state: ListingState, fields: dict[str, str]) -> dict[str, Any]:
        """The values ``_filter``/``_orderby`` compare for ``fields`` (name -> type): datetimes
        as epoch ms, decimals as Decimal; cached per listing version."""
        stamp = (state.version, state.media_version)
        hit = self._facts.get(state.key)
        if hit is not None and hit[0] == stamp and self.listings.get(state.key) is state:
            return hit[1]
        record = self.standard_fields(state)
        facts: dict[str, Any] = {}
        for name, kind in fields.items():
            value = record.get(name)
            if value is None or value == MASK:
                facts[name] = None
            elif kind == "datetime":
                facts[name] = parse_datetime_literal(value)
            elif kind == "decimal":
                facts[name] = Decimal(value.strip())
            else:
                facts[name] = value
        if self.listings.get(state.key) is state:
            self._facts[state.key] = (stamp, facts)
        return facts

    def bad(self, key: str) -> broken.Bad | None:
        """How this listing is served broken (``--bad-records``), or None."""
        return broken.bad_of(self.config.seed, key, self.config.bad_records)

    def warm(self, stop: threading.Event | None = None) -> int:
        """Build and cache every live record now (the emulator does this in the background)."""
        with self.lock:
            keys = list(self.live_keys)
        for n, key in enumerate(keys):
            if stop is not None and stop.is_set():
                return n
            state = self.listings[key]
            if state.live:
                self.record_bytes(state)
        return len(keys)

    def expansion(self, state: ListingState, name: str) -> list[dict[str, Any]]:
        """Items of one expansion (``Photos`` …) or custom-field block of a listing."""
        if name in CUSTOM_EXPANSIONS:
            return build_custom(name, self.config.seed, state.key, state.version)
        return build_expansion(name, self.config.seed, state.key, *state.list_version(name))

    def truth(self) -> dict[str, Any]:
        """Ground truth: virtual now, live listing keys with ModificationTimestamp, accounts.

        ``bare_numbers`` holds, per listing sent with bare numbers, the exact
        digits of those fields as strings; ``bad`` how each broken listing is broken.
        """
        seed, config = self.config.seed, self.config
        with self.lock:
            bare = {}
            if config.bare_numbers > 0:
                for k in self.live_keys:
                    if broken.is_bare(seed, k, config.bare_numbers):
                        fields = self.standard_fields(self.listings[k])
                        bare[k] = {n: fields[n] for n in broken.BARE_FIELDS}
            bad = {}
            if config.bad_records > 0:
                for k in self.live_keys:
                    if (how := broken.bad_of(seed, k, config.bad_records)) is not None:
                        bad[k] = how.describe()
            return {
                "bare_numbers": bare,
                "bad": bad,
                "now": format_timestamp(self.clock.now_ms()),
                "listings": {
                    k: format_timestamp(self.listings[k].mod_ms, self.listings[k].offset_minutes)
                    for k in self.live_keys
                },
                "accounts": {
                    i: orjson.loads(orjson.dumps(self.accounts[i])) for i in self.account_ids
                },
            }

    # ---- change ----------------------------------------------------------------

    def advance(
        self,
        minutes: float = 60,
        modify: float = 0.05,
        create: float = 0.01,
        remove: float = 0.005,
        media: float = 0.02,
        accounts_modify: float = 0.02,
        accounts_create: float = 0.0,
    ) -> dict[str, Any]:
        """Move the clock ``minutes`` forward and change those shares of the live records.

        Every change is stamped at its own instant inside the advanced interval.
        Returns what changed (keys and ids) and the interval; ``media_lists`` says
        which lists (``Photos``, ``Videos``, ``Documents``, ``OpenHouses``) each
        ``media`` change rebuilt (an empty list may stay empty).
        """
        for name, share in (
            ("modify", modify),
            ("create", create),
            ("remove", remove),
            ("media", media),
            ("accounts_modify", accounts_modify),
            ("accounts_create", accounts_create),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1")
        if modify + remove + media > 1.0:
            raise ValueError("modify + remove + media must not exceed 1")
        with self.lock:
            live = len(self.live_keys)
            n_mod, n_create, n_remove, n_media = (
                round(s * live) for s in (modify, create, remove, media)
            )
            n_acc_mod = round(accounts_modify * len(self.account_ids))
            n_acc_new = round(accounts_create * len(self.account_ids))
            before, after = self.clock.advance(minutes * 60)
            rng = self._rng
            instants = self._instants(
                rng, before, after, n_mod + n_create + n_media + n_acc_mod + n_acc_new
            )
            chosen = rng.sample(self.live_keys, n_mod + n_remove + n_media)
            modified, removed, touched = (
                chosen[:n_mod],
                chosen[n_mod : n_mod + n_remove],
                chosen[n_mod + n_remove :],
            )
            for key in (*modified, *touched):
                self.previous[key] = dataclasses.replace(self.listings[key])
            for key in modified:
                state = self.listings[key]
                state.version += 1
                state.mod_ms = instants.pop()
            media_lists = {}
            for key in touched:  # each media list changes on its own, with its timestamp
                state = self.listings[key]
                state.media_version += 1
                state.mod_ms = instants.pop()
                names = [n for n in TIMED_LISTS if rng.random() < 0.5] or ["Photos"]
                media_lists[key] = names
                for prefix in (TIMED_LISTS[n] for n in names):
                    setattr(state, prefix + "_v", getattr(state, prefix + "_v") + 1)
                    setattr(state, prefix + "_ms", state.mod_ms)
            for key in removed:
                self.listings[key].live = False
                del self.live_keys[bisect.bisect_left(self.live_keys, key)]
            created = []
            for _ in range(n_create):
                key = unique_id(rng, self._taken, _EPOCH_2005_MS, after)
                ms = instants.pop()
                offset = _OFFSETS[int(rng.random() * 3)] if rng.random() < 0.3 else 0
                self.listings[key] = ListingState(
                    key=key,
                    mod_ms=ms,
                    offset_minutes=offset,
                    photos_ms=ms,
                    videos_ms=ms,
                    documents_ms=ms,
                    openhouses_ms=ms,
                    listed_ms=ms,
                )
                bisect.insort(self.live_keys, key)
                created.append(key)
            acc_modified = rng.sample(self.account_ids, n_acc_mod)
            for account_id in acc_modified:
                ms = instants.pop()
                touch_account(rng, self.accounts[account_id], ms)
                self.account_mods[account_id] = ms
            if acc_modified:
                self._people_gen += 1  # listings show agent data as it is now
            acc_created = [
                self._new_account(rng, instants.pop(), first=False) for _ in range(n_acc_new)
            ]
            logger.info(
                "advanced %s minutes: %d modified, %d media, %d created, %d removed",
                minutes,
                len(modified),
                len(touched),
                len(created),
                len(removed),
            )
            return {
                "from": format_timestamp(before),
                "to": format_timestamp(after),
                "now": format_timestamp(self.clock.now_ms()),
                "modified": sorted(modified),
                "media": sorted(touched),
                "media_lists": dict(sorted(media_lists.items())),
                "created": sorted(created),
                "removed": sorted(removed),
                "accounts_modified": sorted(acc_modified),
                "accounts_created": sorted(acc_created),
            }

    def remove_listings(self, keys: list[str]) -> None:
        """Stop returning these listings (the key lost access to them, as after a status change)."""
        with self.lock:
            for key in keys:
                if self.listing_state(key) is None:
                    raise ValueError(f"no live listing {key}")
                self.listings[key].live = False
                del self.live_keys[bisect.bisect_left(self.live_keys, key)]

    def restore_listings(self, keys: list[str]) -> None:
        """Return these removed listings again, stamped now (the key regained access to them,
        as after a status change back): each comes back at its place in ListingKey order."""
        with self.lock:
            now = self.clock.now_ms()
            for key in keys:
                state = self.listings.get(key)
                if state is None or state.live:
                    raise ValueError(f"no removed listing {key}")
                self.previous[key] = dataclasses.replace(state)
                state.version += 1
                state.mod_ms, state.live = now, True
                bisect.insort(self.live_keys, key)

    def create_accounts(self, count: int, position: str = "random") -> list[str]:
        """Add member accounts stamped now; ``position="first"`` gives ids sorting before all others."""
        if count < 0 or position not in ("random", "first"):
            raise ValueError("count must be >= 0 and position 'random' or 'first'")
        with self.lock:
            now = self.clock.now_ms()
            return [
                self._new_account(self._rng, now, first=position == "first") for _ in range(count)
            ]

    def remove_accounts(self, account_ids: list[str]) -> None:
        """Stop returning these accounts (lost access); listings must not reference them."""
        with self.lock:
            referenced = [
                i
                for i in account_ids
                if i in self.people.members or self.accounts[i].get("UserType") != "Member"
            ]
            if referenced:
                raise ValueError(
                    f"listings reference {referenced[:3]}: remove only unreferenced accounts"
                )
            for account_id in account_ids:
                self.removed_accounts.add(account_id)
                del self.accounts[account_id]
                self.account_mods.pop(account_id, None)
                del self.account_ids[bisect.bisect_left(self.account_ids, account_id)]

    def _new_account(self, rng: random.Random, ms: int, first: bool) -> str:
        low = int(self.account_ids[0][:8]) if first else None
        high_ms = ms
        if low is not None:  # an id dated the year before the smallest one
            from datetime import UTC, datetime

            year = low // 10000 - 1
            start = int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1000)
            account_id = unique_id(rng, self._taken, start, start + 300 * _DAY_MS)
        else:
            account_id = unique_id(rng, self._taken, 946_684_800_000, high_ms)
        office_id = self.people.agent(rng.random())[4]
        office = self.accounts[office_id]
        domain = office["Websites"][0]["Uri"].removeprefix("http://www.")
        self.accounts[account_id] = new_member(
            rng, account_id, office_id, office["Name"], domain, ms
        )
        self.account_mods[account_id] = ms
        bisect.insort(self.account_ids, account_id)
        return account_id

    @staticmethod
    def _instants(rng: random.Random, before: int, after: int, count: int) -> list[int]:
        """``count`` distinct instants in ``(before, after]``: whole seconds when they fit, else ms."""
        if count == 0:
            return []
        # one draw from the main generator whatever the interval, so the records an
        # advance picks depend on the seed alone, not on the wall clock it started at
        rng = random.Random(rng.getrandbits(64))
        first_s, last_s = before // 1000 + 1, after // 1000
        if last_s - first_s + 1 >= count:
            return [s * 1000 for s in rng.sample(range(first_s, last_s + 1), count)]
        if after - before >= count:
            return rng.sample(range(before + 1, after + 1), count)
        raise ValueError(
            f"cannot place {count} changes at distinct instants in {after - before} ms; advance further"
        )

    def expansion_names(self) -> tuple[str, ...]:
        """Every name ``_expand`` accepts."""
        return tuple(EXPANSIONS) + CUSTOM_EXPANSIONS
