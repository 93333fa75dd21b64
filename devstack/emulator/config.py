"""Configuration of the Spark API emulator, and the parsers for its compact option strings.

``EmulatorConfig`` is the one object the emulator is built from; the CLI and the
tests construct it directly. ``parse_faults`` and ``parse_rate_limit`` turn the
command-line spellings (``"500:0.02,timeout:0.01"``, ``"100/60"``) into values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "EmulatorConfig",
    "DATA_FAULTS",
    "FAULT_KINDS",
    "LAST_PAGE_MODES",
    "RATE_LIMIT_STATUSES",
    "parse_faults",
    "parse_rate_limit",
]

logger = logging.getLogger(__name__)

#: Fault kinds the emulator can inject, in the order they are drawn. ``cut`` (a scan page
#: answered empty, without a SkipToken) and ``stale`` (one record of a listings page served
#: at its previous version) act only on the requests they fit; elsewhere they do nothing.
FAULT_KINDS = ("500", "503", "timeout", "truncate", "reset", "cut", "stale")
#: The kinds that change what the API answers instead of how the transport fails.
DATA_FAULTS = ("cut", "stale")
#: How the last page of a ``_skiptoken`` scan ends.
LAST_PAGE_MODES = ("empty", "missing", "same")
#: The HTTP status of a code 1550 answer: the error-code table says 429, one copy of the
#: docs says 503. A client must back off on either.
RATE_LIMIT_STATUSES = (429, 503)


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """Everything that shapes one emulated Spark API: data size, seed, key, pitfalls.

    ``faults`` is a comma list of ``kind:probability`` (kinds in ``FAULT_KINDS``);
    ``bare_numbers`` and ``bad_records`` are shares of listings, chosen by seed and
    key (so persistent), sent with unquoted 26-digit ids and a long ``ListPrice``,
    or broken in one of ``BAD_KINDS`` ways;
    ``rate_limit`` is ``(requests, seconds)`` for a sliding window per API key;
    ``filter_cache_seconds`` is how long the same ``_filter`` string keeps
    returning the keys it matched first (0 disables the cache); ``last_page``
    chooses how a ``_skiptoken`` scan ends (see ``LAST_PAGE_MODES``).
    """

    listings: int = 1000
    accounts: int = 200  # member accounts; offices/companies derived
    seed: int = 1
    # seed of the initial ListingKeys alone (None: the seed): two emulators with one key_seed
    # and one start_time share their keys, as two MLSs may (a merged sink keeps both)
    key_seed: int | None = None
    api_key: str = "devstack-key"
    latency_ms: float = 0.0  # mean added latency per request, with +-25% uniform jitter
    rate_limit: tuple[int, float] | None = None  # (requests, seconds)
    faults: str = ""  # e.g. "500:0.02,503:0.01,timeout:0.01,truncate:0.01,reset:0.01"
    filter_cache_seconds: float = 600.0  # 0 disables the filter cache
    last_page: str = "empty"  # "empty" | "missing" | "same"
    masked: float = 0.0  # share of listings with "********" masked values
    start_time: datetime | None = None  # virtual clock start; default now (UTC)
    retry_after: int | None = None  # seconds to put in Retry-After on 1550 (None: no header)
    rate_limit_status: int = 429  # HTTP status of a 1550 answer (RATE_LIMIT_STATUSES)
    fault_timeout_seconds: float = 30.0  # how long a "timeout" fault holds the connection
    # how far behind a "stale" replica may be: only a change younger than this (on the API's
    # clock) can be served at its previous version; None: any change, however old
    stale_lag_seconds: float | None = None
    bare_numbers: float = 0.0  # share of listings with ids and ListPrice as bare JSON numbers
    bad_records: float = 0.0  # share of listings served broken (see broken.BAD_KINDS)
    require_user_agent: bool = (
        False  # answer 400/1016 to API requests without X-SparkApi-User-Agent
    )
    date_header: bool = True  # False: no Date header (the client must find the API's clock)
    # the campaign's hooks (devstack/emulator/hooks.py)
    request_log: str | None = None  # a file: one JSON line per API request
    late_visibility_seconds: float = 0.0  # how long a change may stay unseen by _filter
    malformed: float = 0.0  # share of listings with one field served malformed
    refuse_by_key: float = 0.0  # share of removed keys answering 403 by key
    fault_boost: float = 1.0  # fault probabilities x this for requests by key
    #: caller (``/_via/<caller>``) -> fault probabilities x this for its requests
    caller_boost: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.listings < 0 or self.accounts < 1:
            raise ValueError("listings must be >= 0 and accounts >= 1")
        if self.rate_limit_status not in RATE_LIMIT_STATUSES:
            raise ValueError(
                f"rate_limit_status must be one of {RATE_LIMIT_STATUSES}, "
                f"got {self.rate_limit_status!r}"
            )
        if self.last_page not in LAST_PAGE_MODES:
            raise ValueError(f"last_page must be one of {LAST_PAGE_MODES}, got {self.last_page!r}")
        for name in ("masked", "bare_numbers", "bad_records", "malformed", "refuse_by_key"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1")
        if self.rate_limit is not None and (self.rate_limit[0] < 1 or self.rate_limit[1] <= 0):
            raise ValueError("rate_limit must be (requests >= 1, seconds > 0)")
        parse_faults(self.faults)  # validate early

    def __repr__(self) -> str:  # the dev key is not a secret, but keep logs free of keys anyway
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__dataclass_fields__
            if name != "api_key"
        )
        return f"EmulatorConfig({fields}, api_key='********')"


def parse_faults(spec: str) -> dict[str, float]:
    """``"500:0.02,reset:0.01"`` -> ``{"500": 0.02, "reset": 0.01}``; raises ValueError if bad."""
    faults: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, sep, prob = part.partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in FAULT_KINDS:
            raise ValueError(
                f"fault {part!r}: expected KIND:PROBABILITY with KIND in {FAULT_KINDS}"
            )
        try:
            value = float(prob)
        except ValueError:
            raise ValueError(f"fault {part!r}: probability is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fault {part!r}: probability must be between 0 and 1")
        faults[kind] = value
    if sum(faults.values()) > 1.0:
        raise ValueError("fault probabilities add up to more than 1")
    return faults


def parse_rate_limit(text: str) -> tuple[int, float]:
    """``"100/60"`` -> ``(100, 60.0)``: at most 100 requests in any 60 seconds."""
    requests, sep, seconds = text.partition("/")
    try:
        parsed = (int(requests), float(seconds))
    except ValueError:
        raise ValueError(f"rate limit {text!r}: expected REQUESTS/SECONDS, e.g. 100/60") from None
    if not sep or parsed[0] < 1 or parsed[1] <= 0:
        raise ValueError(f"rate limit {text!r}: expected REQUESTS/SECONDS, e.g. 100/60")
    return parsed
