"""The convergence campaign's hooks: who asked, what each request met, and three faults
that only a campaign needs. All are off unless configured; the API is unchanged without them.

- **Caller.** An API URL ending in ``/_via/<name>`` (``SPARK_RELAY_API_URL=http://host:port/
  _via/poller``) names the process that asks; the prefix is stripped before routing.
- **Request log** (``request_log``, a path): one JSON line per API request, written when it
  was answered: wall time, number, caller, path, the parameters that say what it was
  (``_filter`` cut to 60 characters, ``_skiptoken``, ``_skip``, ``_select``), the status
  (0: no answer, the connection was reset) and every fault it met, as ``[kind, detail…]``.
  ``chaos/coverage.py`` counts what happened from it.
- **Late visibility** (``late_visibility_seconds``): a search index that lags behind its
  store. A listing modified at T matches ``ModificationTimestamp`` in a ``_filter`` only
  from T + lag on, lag drawn per (seed, key, T) below the maximum; until then the index
  holds its previous timestamp (a new listing: none). Scans without a filter and look-ups
  by key read the store. A request that missed a record this way met fault ``late``.
- **Malformed elements** (``malformed``, a share of listings chosen by seed and key for
  the whole run): one field of StandardFields served broken in one of ``SHAPES``: a value of
  another JSON type, deep nesting, a number beyond a double (``1e400``), or a field name
  and value with quotes. ``truth()`` says which field and the JSON text served.
- **Fault boost** (``fault_boost``): the fault probabilities times this factor for a
  request by key (``/v1/listings/<key>``, ``/v1/accounts/<id>``, a ``ListingKey Eq``
  filter): those are few, and a campaign wants faults there too.
- **Caller boost** (``caller_boost``, ``caller`` or ``caller:kind`` -> factor): the fault
  probabilities (or that kind's) times the factor for the requests of that caller, on top
  of the fault boost: reconcile or a final snapshot makes few requests, and a campaign
  wants a rare fault (a stale answer, a timeout) there too. ``caller/path`` (``poller/v1/
  accounts:cut``) names the caller's requests under that path only: its accounts scan;
  ``caller/by-key`` its requests by key (a re-check shares the listings path with scans).
- **Refused by key** (``refuse_by_key``, a share of keys): a removed listing or account,
  asked for by key (``/v1/listings/<key>``, ``/v1/accounts/<id>``), answers 403 (code
  1500) instead of 404, as the API does for a record that left the key's view.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import orjson

__all__ = ["Hooks", "Malformed", "SHAPES", "malformed_of", "split_via"]

logger = logging.getLogger(__name__)

VIA = "/_via/"
#: How a malformed element is broken.
SHAPES = ("wrong_type", "deep", "exponent", "quote")
#: Values of each JSON type; a ``wrong_type`` field gets one whose type its value has not.
_WRONG = (
    ["a", 1],
    {"nested": {"x": [1, None]}},
    17,
    -0.5,
    True,
    "not what you expect",
    None,
)
_EXPONENTS = ("1e400", "-1e400", "1e-400", "123.456e-400", "9.99E+999")
_DEPTHS = (40, 600, 3000)
_PLACEHOLDER = "\x00malformed\x00"
_QUOTED_NAME = 'Owner\'s "Note"'


def split_via(path: str) -> tuple[str, str]:
    """``/_via/poller/v1/listings`` -> ``("poller", "/v1/listings")``; ``""`` when unnamed."""
    if not path.startswith(VIA):
        return "", path
    name, _, rest = path[len(VIA) :].partition("/")
    return name, "/" + rest


def _by_key(path: str, query: str) -> bool:
    """A request by key: ``/v1/listings/<key>``, ``/v1/accounts/<id>``, a ``ListingKey`` filter."""
    return path.strip("/").count("/") == 2 or "_filter=ListingKey" in query


def _rng(seed: int, key: str, salt: str) -> random.Random:
    return random.Random(f"{seed}:{key}:{salt}")


class Malformed:
    """One listing's broken field: ``shape`` in ``SHAPES``, the ``field`` and the raw JSON
    ``text`` served for it (for ``quote``, an added field whose name has quotes)."""

    def __init__(self, shape: str, field: str, text: str) -> None:
        self.shape, self.field, self.text = shape, field, text

    def apply(self, fields: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """The fields to encode, and the raw bytes to put in place of the placeholder."""
        if self.field not in fields and self.shape != "quote":
            return fields, None  # a selection without the field: served whole
        out = dict(fields)
        out[self.field] = _PLACEHOLDER
        return out, self.text.encode()

    def describe(self) -> dict[str, str]:
        return {"shape": self.shape, "field": self.field, "json": self.text}


def malformed_of(seed: int, key: str, share: float, names: list[str]) -> Malformed | None:
    """How this listing is malformed (``names``: its StandardFields, sorted), or None."""
    if share <= 0:
        return None
    rng = _rng(seed, key, "malformed")
    if rng.random() >= share:
        return None
    shape = SHAPES[int(rng.random() * len(SHAPES))]
    field = names[int(rng.random() * len(names))]
    if shape == "wrong_type":
        return Malformed(
            shape, field, orjson.dumps(_WRONG[int(rng.random() * len(_WRONG))]).decode()
        )
    if shape == "deep":
        depth = _DEPTHS[int(rng.random() * len(_DEPTHS))]
        return Malformed(shape, field, "[" * depth + "1" + "]" * depth)
    if shape == "exponent":
        return Malformed(shape, field, _EXPONENTS[int(rng.random() * len(_EXPONENTS))])
    return Malformed(shape, _QUOTED_NAME, orjson.dumps("it's \"quoted\" 'twice'").decode())


class Hooks:
    """The hooks of one emulator (see the module's doc); thread-safe."""

    def __init__(self, config: Any, mls: Any) -> None:
        self.config = config
        self.mls = mls
        self._local = threading.local()
        self._lock = threading.Lock()
        path = getattr(config, "request_log", None)
        self._log = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives long
        self._names: list[str] | None = None

    # ---- the request log ------------------------------------------------------------

    def begin(self, number: int, caller: str, path: str, query: str) -> None:
        """A request starts on this thread."""
        self._local.caller = caller
        if self._log is None:
            return
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        entry: dict[str, Any] = {
            "t": round(time.time(), 3),
            "n": number,
            "caller": caller,
            "path": path,
            "status": 0,
            "faults": [],
        }
        for name in ("_filter", "_skiptoken", "_skip", "_select"):
            if name in params:
                entry[name.lstrip("_")] = params[name][:60]
        self._local.entry = entry

    def hit(self, kind: str, *detail: Any) -> None:
        """The request under way met fault ``kind``."""
        entry = getattr(self._local, "entry", None)
        if entry is not None:
            entry["faults"].append([kind, *detail])

    def status(self, code: int) -> None:
        entry = getattr(self._local, "entry", None)
        if entry is not None:
            entry["status"] = code

    def end(self) -> None:
        entry = getattr(self._local, "entry", None)
        self._local.entry = None
        if entry is not None and self._log is not None:
            line = json.dumps(entry) + "\n"
            with self._lock:
                self._log.write(line)

    def boost(self, path: str, query: str) -> float:
        """The factor of the fault probabilities for this request (see ``fault_boost``)."""
        factor = 1.0
        for name, f in getattr(self.config, "caller_boost", {}).items():
            if ":" not in name and self._asks(name, path, query):
                factor *= f
        return factor * (getattr(self.config, "fault_boost", 1.0) if _by_key(path, query) else 1.0)

    def kind_boost(self, path: str, query: str) -> dict[str, float]:
        """Fault kind -> its further factor for this request (``caller[/path]:kind``)."""
        kinds: dict[str, float] = {}
        for name, f in getattr(self.config, "caller_boost", {}).items():
            who, _, kind = name.partition(":")
            if kind and self._asks(who, path, query):
                kinds[kind] = kinds.get(kind, 1.0) * f
        return kinds

    def _asks(self, name: str, path: str, query: str) -> bool:
        """Whether this request is ``name``'s: its caller, its caller and path prefix
        (``poller/v1/accounts``), or its caller's requests by key (``poller/by-key``)."""
        caller = self._caller()
        if name == caller + "/by-key":
            return _by_key(path, query)
        return name == caller or (
            name.startswith(caller + "/") and path.startswith(name[len(caller) :])
        )

    def _caller(self) -> str:
        return getattr(self._local, "caller", "")

    # ---- late visibility --------------------------------------------------------------

    def indexed_ms(self, state: Any, now: int) -> int | None:
        """The ModificationTimestamp a ``_filter`` sees for this listing at ``now`` (ms)."""
        lag = getattr(self.config, "late_visibility_seconds", 0.0)
        if not lag or state.mod_ms + self._lag_ms(state, lag) <= now:
            return state.mod_ms
        previous = self.mls.previous.get(state.key)
        return previous.mod_ms if previous is not None and previous.mod_ms < state.mod_ms else None

    def _lag_ms(self, state: Any, lag: float) -> int:
        return int(_rng(self.config.seed, state.key, str(state.mod_ms)).random() * lag * 1000)

    # ---- malformed elements ----------------------------------------------------------------

    def malformed(self, key: str) -> Malformed | None:
        share = getattr(self.config, "malformed", 0.0)
        if share <= 0:
            return None
        if self._names is None:
            with self.mls.lock:
                first = self.mls.listings[self.mls.live_keys[0]]
            names = self.mls.standard_fields(first)
            self._names = sorted(names)
        return malformed_of(self.config.seed, key, share, self._names)

    def malform(self, key: str, fields: dict[str, Any], encode) -> bytes:
        """``encode(fields)``, with this listing's broken field when it has one."""
        how = self.malformed(key)
        if how is None:
            return encode(fields)
        fields, raw = how.apply(fields)
        out = encode(fields)
        if raw is None:
            return out
        return out.replace(orjson.dumps(_PLACEHOLDER), raw, 1)

    def served(self, keys: list[str]) -> None:
        """Note the malformed listings among ``keys`` served whole by this request."""
        for key in keys:
            how = self.malformed(key)
            if how is not None:
                self.hit("malformed", key, how.shape)

    # ---- refused by key -----------------------------------------------------------------

    def refused(self, key: str) -> bool:
        """Whether this removed record answers 403 when asked for by key."""
        share = getattr(self.config, "refuse_by_key", 0.0)
        return share > 0 and _rng(self.config.seed, key, "refused").random() < share

    def truth(self) -> dict[str, Any]:
        """What the hooks serve broken: ``{"malformed": {key: {shape, field, json}}}``."""
        if getattr(self.config, "malformed", 0.0) <= 0:
            return {"malformed": {}}
        with self.mls.lock:
            keys = list(self.mls.live_keys)
        out = {}
        for key in keys:
            how = self.malformed(key)
            if how is not None:
                out[key] = how.describe()
        return {"malformed": out}
