"""The one way a secret is hidden, wherever text leaves the process.

:func:`mask` takes free text (a log line, an error message, a dead-letter
header, ``spark-relay config``'s output) and hides:

- the password in a URL's userinfo (``postgresql://user:PASSWORD@host``);
- the value of a URL query parameter whose name holds a secret word
  (``?password=…``, ``&sslpassword=…``, ``?api_key=…``);
- the value of ``name=value`` or ``name: value`` whose name holds a secret word
  (``SPARK_RELAY_KAFKA_SASL_PASSWORD=…``, ``sasl.password=…``,
  ``clientSecret=…``, ``Authorization: Bearer …``);
- the value of every ``sasl.*config`` property
  (``sasl.oauthbearer.config=clientSecret=… scope=…``), whole;
- every secret value registered with :func:`register` (the API key, the
  registry's credentials), wherever it appears.

:func:`mask_setting` hides a setting's value by its name alone (``spark-relay
config``, a ``[kafka]`` or ``[sink.<name>]`` property).

A secret word is ``password``, ``secret``, ``token`` or ``key`` (in any case,
anywhere in the name), plus ``authorization`` and ``credential``; the few
names that hold such a word and no secret (the API's ``_skiptoken``, a
``ListingKey``, a dead letter's ``dlq.key``) are listed in :data:`_NOT_SECRET`.

A :class:`Secret` holds one such value (the API key, the registry's credentials):
it registers the value when it is made, and never prints it.
"""

from __future__ import annotations

import re
import threading

__all__ = ["MASK", "Secret", "mask", "mask_setting", "register", "secret_name"]

MASK = "********"

_WORDS = ("password", "passwd", "secret", "token", "key", "authorization", "credential")
#: Names that hold a secret word but no secret: the API's paging token, a listing's key.
_NOT_SECRET = frozenset({"_skiptoken", "skiptoken", "listingkey", "dlq.key", "key"})


def secret_name(name: str) -> bool:
    """Whether a setting, property or parameter called ``name`` holds a secret."""
    lowered = name.lower().strip("\"'")
    if lowered in _NOT_SECRET:
        return False
    sasl_config = lowered.startswith(("sasl.", "sasl_")) and lowered.endswith("config")
    return sasl_config or any(word in lowered for word in _WORDS)


def mask_setting(name: str, value: object) -> str:
    """``value`` as shown for the setting ``name``: masked whole if the name says secret."""
    text = "" if value is None else str(value)
    if text and secret_name(name):
        return MASK
    return mask(text)


_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@")
#: ``sasl.<mechanism>.config=<anything to the end of the line>``: a JAAS-like value of many parts.
_SASL_CONFIG = re.compile(r"""(?i)(\bsasl[._][a-z0-9._]*config["']?\s*[=:]\s*["']?)[^\r\n"']+""")
#: ``name=value`` (URL queries, properties, variables) and ``name: value`` (headers, JSON).
_PAIR = re.compile(
    r"""(?ix)
    (?P<name>\b[a-z_][a-z0-9_.\-]*)
    (?P<sep>["']?\s*(?:=|:\s)\s*["']?)
    (?P<scheme>(?:bearer|basic)\s+)?
    (?P<value>[^\s&"',;})\]]+)
    """
)


def _pair(match: re.Match[str]) -> str:
    if not secret_name(match["name"]) or match["value"] == MASK:
        return match[0]
    return f"{match['name']}{match['sep']}{match['scheme'] or ''}{MASK}"


_registered: set[str] = set()
_lock = threading.Lock()


def register(value: str) -> None:
    """Mask ``value`` wherever it appears from now on (the API key, the registry's credentials)."""
    if value and len(value) >= 4:  # a one-letter "secret" would mask every word
        with _lock:
            _registered.add(value)


def mask(text: str) -> str:
    """``text`` with every secret form listed in the module's documentation masked."""
    if not text:
        return text
    for value in sorted(_registered, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _SASL_CONFIG.sub(rf"\1{MASK}", text)
    return _PAIR.sub(_pair, text)


class Secret:
    """A string that never prints itself. Use :meth:`reveal` at the one place that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)  # masked in every line that leaves the process
        if ":" in value:  # user:password: the password alone, too
            register(value.partition(":")[2])

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "********" if self._value else ""
