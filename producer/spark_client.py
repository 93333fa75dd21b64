"""The Spark API over HTTP, and nothing else: auth, pacing, retries (paging: producer.scan).

Retry decisions are data (:data:`RETRY_TABLE`): 429 and 5xx answers, timeouts,
connection resets and truncated or unreadable JSON are retried with exponential
backoff and jitter (``Retry-After`` honoured when the API sends it); 401, 403,
an invalid filter and the other 4xx end the run at once. A client-side limiter
keeps under the configured request rate instead of bouncing off 429s.

Numbers are read exactly (integers beyond 64 bits, decimals longer than a double
keeps). A body whose frame is whole but one element of ``Results`` is not a JSON
object, or not valid JSON (an invalid escape), is not retried: the other
elements are the page's ``results``, the broken ones its ``rejected``.

The API key travels in the ``Authorization`` header only; it is never part of
a URL, a log line or an exception message.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)

from producer.pages import Page, Parse, Rejected, parse_success, read_envelope
from spark_relay import __version__
from spark_relay.errors import PermanentSourceError, TransientSourceError
from spark_relay.health import HEALTH
from spark_relay.masking import Secret
from spark_relay.metrics import API_REQUESTS, API_RETRIES, RATE_LIMIT_WAIT

__all__ = ["SparkClient", "Page", "Rejected", "RateLimiter", "RETRY_TABLE", "NotFound", "Forbidden"]

logger = logging.getLogger(__name__)

#: HTTP status → retry? Anything not listed: 2xx is success, other 4xx fail at once, 5xx retry.
RETRY_TABLE: dict[int, bool] = {
    400: False,  # 1040 invalid _filter, 1053 parameter out of bounds …
    401: False,  # 1000 invalid key, 1010 key disabled, 1020 session expired
    403: False,  # 1005/1015/1019/1021 (wrong endpoint for a replication key) …
    404: False,
    405: False,
    409: False,
    422: False,
    429: True,  # 1550 over rate limit
    500: True,
    502: True,
    503: True,  # 1510 temporarily unavailable, 1515/1516 took too long
    504: True,
}

_HINTS = {
    401: "check SPARK_RELAY_API_KEY",
    403: "the key may lack replication access or need the replication endpoint (SPARK_RELAY_API_URL)",
}


class NotFound(PermanentSourceError):
    """The API answered 404 for a record or subresource."""


class Forbidden(PermanentSourceError):
    """The API answered 403 (the key may not see this resource)."""


class _Retry(TransientSourceError):
    """Internal: a transient failure, with the server's Retry-After when it sent one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    """At most ``rate`` requests per second, spaced evenly (a token bucket of one).

    The wait ends early when ``stop`` is set, so a SIGTERM is not held up by it.
    """

    def __init__(self, rate: float, stop: threading.Event | None = None):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._stop = stop or threading.Event()
        self.waited = 0.0

    def acquire(self) -> float:
        with self._lock:
            now = time.monotonic()
            wait = max(0.0, self._next - now)
            self._next = max(now, self._next) + self.interval
        if wait:
            self._stop.wait(wait)
            self.waited += wait
            RATE_LIMIT_WAIT.inc(wait)
        return wait


def _server_time(response: httpx.Response) -> datetime | None:
    header = response.headers.get("date")
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class SparkClient:
    """A keep-alive HTTP client for the replication endpoint.

    ``stats`` counts requests by status, retries and rate-limit waits, for the
    run summary and the metrics endpoint.
    """

    def __init__(
        self,
        api_url: str,
        api_key: Secret,
        *,
        rate_limit: float = 5.0,
        timeout: float = 60.0,
        max_attempts: int = 8,
        max_backoff: float = 60.0,
        stop: threading.Event | None = None,
    ):
        if not api_key:
            raise PermanentSourceError(
                "SPARK_RELAY_API_KEY is not set: expected the replication key"
            )
        self._http = httpx.Client(
            base_url=api_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={
                "Authorization": f"Bearer {api_key.reveal()}",
                "Accept": "application/json",
                "User-Agent": f"spark-relay/{__version__}",
                "X-SparkApi-User-Agent": f"spark-relay/{__version__}",
            },
        )
        self.stop = stop or threading.Event()
        self.limiter = RateLimiter(rate_limit, self.stop)
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff  # also the cap on a server's Retry-After
        self.stats: dict[str, float] = {"requests": 0, "retries": 0, "rate_limited": 0}
        self.last_server_time: datetime | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SparkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ------------------------------------------------------

    def get(
        self, path: str, params: dict[str, Any] | None = None, parse: Parse | None = None
    ) -> Page:
        """GET ``path`` with retries; a :class:`Page` on success, an error otherwise.

        ``parse`` reads a 2xx body in place of the client (see :func:`parse_success`,
        the client's own reading); when it returns None, the client reads the body.
        """
        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            stop=stop_after_attempt(self.max_attempts) | stop_when_event_set(self.stop),
            wait=self._wait,
            sleep=self.stop.wait,  # a SIGTERM ends the backoff at once
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._get_once, path, params or {}, parse)
        except _Retry as e:
            if self.stop.is_set():
                raise TransientSourceError(f"GET {path}: stopped while retrying: {e}") from e
            raise TransientSourceError(
                f"GET {path} failed after {self.max_attempts} attempts: {e}"
            ) from e

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(multiplier=0.5, max=self.max_backoff)(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            return backoff
        return min(max(backoff, retry_after), self.max_backoff)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.stats["retries"] += 1
        API_RETRIES.inc()
        error = state.outcome.exception() if state.outcome else None
        if error is not None and "Spark code 1550" in str(error) and state.next_action:
            RATE_LIMIT_WAIT.inc(state.next_action.sleep)
        logger.warning(
            "retrying in %.1fs (attempt %d of %d): %s",
            state.next_action.sleep if state.next_action else 0,
            state.attempt_number,
            self.max_attempts,
            error,
        )

    def _get_once(self, path: str, params: dict[str, Any], parse: Parse | None) -> Page:
        HEALTH.beat()
        self.limiter.acquire()
        self.stats["requests"] += 1
        try:
            response = self._http.get(path, params=params)
            body = response.read()
        except httpx.TimeoutException as e:
            API_REQUESTS.labels("0").inc()
            raise _Retry(f"timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:  # resets, refused, broken chunking …
            API_REQUESTS.labels("0").inc()
            raise _Retry(f"connection failed ({type(e).__name__}: {e})") from None
        status = response.status_code
        API_REQUESTS.labels(str(status)).inc()
        self.stats[f"status_{status}"] = self.stats.get(f"status_{status}", 0) + 1
        server_time = _server_time(response)
        if server_time is not None:
            self.last_server_time = server_time

        if status < 300:
            page = (parse or parse_success)(body, server_time)
            if page is not None:
                if page.rejected:
                    logger.warning(
                        "GET %s: %d element(s) of Results rejected", path, len(page.rejected)
                    )
                return page
        # not a plain success: a broken body, Success false, or an error
        try:
            envelope, _, _, _ = read_envelope(body, status)
        except ValueError:
            if status < 300 or RETRY_TABLE.get(status, status >= 500):
                raise _Retry(
                    f"HTTP {status} with a truncated or invalid body ({len(body)} bytes)",
                    _retry_after(response),
                ) from None
            if status == 404:
                raise NotFound(f"GET {path}: HTTP 404 {response.reason_phrase}") from None
            raise PermanentSourceError(
                f"GET {path}: HTTP {status} {response.reason_phrase}"
            ) from None

        code = envelope.get("Code")
        message = f"HTTP {status}, Spark code {code}: {envelope.get('Message', 'no message')}"
        if envelope.get("SparkQLErrors"):
            message += f" {envelope['SparkQLErrors']}"
        if status == 429 or code == 1550:
            self.stats["rate_limited"] += 1
            raise _Retry(message, _retry_after(response))
        if RETRY_TABLE.get(status, status >= 500):
            raise _Retry(message, _retry_after(response))
        if status == 404:
            raise NotFound(f"GET {path}: {message}")
        if status == 403:
            raise Forbidden(f"GET {path}: {message} ({_HINTS[403]})")
        hint = _HINTS.get(status)
        raise PermanentSourceError(f"GET {path}: {message}" + (f" ({hint})" if hint else ""))
