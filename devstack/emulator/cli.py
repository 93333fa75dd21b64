"""``spark-relay emulator``: run the Spark API emulator in the foreground."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime

import click

from devstack.emulator.config import (
    FAULT_KINDS,
    LAST_PAGE_MODES,
    EmulatorConfig,
    parse_faults,
    parse_rate_limit,
)
from devstack.emulator.server import Emulator

__all__ = ["emulator_command"]

logger = logging.getLogger(__name__)

_ENV = "SPARK_RELAY_EMULATOR_"


def _rate_limit(ctx: click.Context, param: click.Parameter, value: str | None):
    if not value:
        return None
    try:
        return parse_rate_limit(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _faults(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_faults(value or "")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value or ""


def _boosts(value: str) -> dict[str, float]:
    boosts = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, factor = part.partition("=")
        try:
            boosts[name.strip()] = float(factor)
        except ValueError:
            raise click.BadParameter(f"expected NAME[:KIND]=FACTOR, got {part!r}") from None
        kind = name.partition(":")[2].strip()
        if not name.strip() or boosts[name.strip()] < 1 or (kind and kind not in FAULT_KINDS):
            raise click.BadParameter(
                f"expected NAME[:KIND]=FACTOR, KIND one of {', '.join(FAULT_KINDS)} and "
                f"FACTOR >= 1, got {part!r}"
            )
    return boosts


@click.command(
    "emulator",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Every option can also be set with an environment variable SPARK_RELAY_EMULATOR_<OPTION> "
        "(e.g. SPARK_RELAY_EMULATOR_PORT=8123).\n\n"
        "Test-only admin paths (no token): POST /_emulator/advance, GET /_emulator/truth, "
        "POST /_emulator/create_accounts, GET /_emulator/stats, POST /_emulator/stats/reset, "
        "POST /_emulator/filter_cache/clear. See docs/emulator.md."
    ),
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar=_ENV + "HOST",
    help="Address to listen on.",
)
@click.option(
    "--port",
    default=8123,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar=_ENV + "PORT",
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--listings",
    default=1000,
    show_default=True,
    type=click.IntRange(0),
    envvar=_ENV + "LISTINGS",
    help="Number of listings generated at start.",
)
@click.option(
    "--accounts",
    default=200,
    show_default=True,
    type=click.IntRange(1),
    envvar=_ENV + "ACCOUNTS",
    help="Number of member accounts (offices and companies are added: 1 per 10 members, 1 per 4 offices).",
)
@click.option(
    "--seed",
    default=1,
    show_default=True,
    type=int,
    envvar=_ENV + "SEED",
    help="Seed of the generated data, the changes and the fault sequence; same seed, same run.",
)
@click.option(
    "--key-seed",
    type=int,
    envvar=_ENV + "KEY_SEED",
    help="Seed of the initial ListingKeys alone [default: --seed]: two emulators with one "
    "--key-seed and one --start-time serve the same keys (two MLSs whose keys collide).",
)
@click.option(
    "--api-key",
    default="devstack-key",
    show_default=True,
    envvar=_ENV + "API_KEY",
    help="The bearer token the emulator accepts (a development key, not a secret).",
)
@click.option(
    "--latency-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    envvar=_ENV + "LATENCY_MS",
    help="Mean latency added to every API request (uniform jitter of +-25%).",
)
@click.option(
    "--rate-limit",
    callback=_rate_limit,
    metavar="REQ/SECONDS",
    envvar=_ENV + "RATE_LIMIT",
    help="Answer code 1550 beyond REQ requests in any SECONDS window per key, e.g. 100/60.",
)
@click.option(
    "--rate-limit-status",
    default=429,
    show_default=True,
    type=click.Choice(["429", "503"]),
    callback=lambda _ctx, _param, value: int(value),
    envvar=_ENV + "RATE_LIMIT_STATUS",
    help="HTTP status of a code 1550 answer: 429 as the error-code table says, or 503 as one "
    "copy of the docs says.",
)
@click.option(
    "--retry-after",
    type=click.IntRange(1),
    envvar=_ENV + "RETRY_AFTER",
    help="Put a Retry-After header (seconds) on 1550 answers; none by default, like the real API.",
)
@click.option(
    "--faults",
    default="",
    callback=_faults,
    metavar="SPEC",
    envvar=_ENV + "FAULTS",
    help="Faults to inject, KIND:PROBABILITY comma list, drawn per API request; kinds 500, 503, "
    "timeout, truncate, reset; cut (a scan page after the first, i.e. /v1/listings with a "
    "non-empty _skiptoken or /v1/accounts with _skip > 0, answers 200 with Results [] and no "
    "SkipToken: a backend ending a scan early); stale (one record of a /v1/listings page that "
    "changed since start is served at its previous version: a lagging replica). "
    "E.g. 500:0.02,503:0.01,timeout:0.01,truncate:0.01,reset:0.01. Replayable for a seed.",
)
@click.option(
    "--fault-timeout-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    envvar=_ENV + "FAULT_TIMEOUT_SECONDS",
    help="How long a 'timeout' fault holds the connection.",
)
@click.option(
    "--filter-cache-seconds",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0),
    envvar=_ENV + "FILTER_CACHE_SECONDS",
    help="Server-side filter cache: the same _filter string returns the keys it first matched "
    "for this long (virtual time). 0 disables it.",
)
@click.option(
    "--last-page",
    default="empty",
    show_default=True,
    type=click.Choice(LAST_PAGE_MODES),
    envvar=_ENV + "LAST_PAGE",
    help="How a _skiptoken scan ends: an extra empty page, no SkipToken on the last page, "
    "or a SkipToken equal to the one sent.",
)
@click.option(
    "--masked",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    envvar=_ENV + "MASKED",
    help='Share of listings whose restricted fields read "********".',
)
@click.option(
    "--bare-numbers",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    metavar="SHARE",
    envvar=_ENV + "BARE_NUMBERS",
    help="Share of listings (chosen by seed, for the whole run) sending ListAgentId, "
    "ListOfficeId, CoListAgentId, BuyerAgentId as bare 26-digit JSON numbers and ListPrice as "
    "a bare decimal with more digits than a double holds. /_emulator/truth keeps the exact digits.",
)
@click.option(
    "--bad-records",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    metavar="SHARE",
    envvar=_ENV + "BAD_RECORDS",
    help="Share of listings (chosen by seed, for the whole run) served broken, one way each: a "
    "null or bare string next to the record in Results; an invalid JSON escape in "
    "PublicRemarks; or one subresource path answering 403/1500 or 404/404. "
    "/_emulator/truth lists them under 'bad'.",
)
@click.option(
    "--require-user-agent/--no-require-user-agent",
    default=False,
    show_default=True,
    envvar=_ENV + "REQUIRE_USER_AGENT",
    help="Answer 400 / code 1016 to API requests without an X-SparkApi-User-Agent header, "
    "which the API documents as required.",
)
@click.option(
    "--stale-lag-seconds",
    type=click.FloatRange(0),
    envvar=_ENV + "STALE_LAG_SECONDS",
    help="How far behind a 'stale' replica may be, on the API's clock (default: any change).",
)
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False),
    envvar=_ENV + "REQUEST_LOG",
    help="Append one JSON line per API request to this file: caller (an API URL ending in "
    "/_via/NAME names it), path, paging parameters, status and the faults it met.",
)
@click.option(
    "--late-visibility-seconds",
    default=0.0,
    type=click.FloatRange(0),
    envvar=_ENV + "LATE_VISIBILITY_SECONDS",
    help="A lagging search index: a change matches ModificationTimestamp in a _filter only "
    "up to this many seconds (virtual) after it was made; scans and look-ups by key see it.",
)
@click.option(
    "--malformed",
    default=0.0,
    type=click.FloatRange(0, 1),
    metavar="SHARE",
    envvar=_ENV + "MALFORMED",
    help="Share of listings (chosen by seed) with one StandardFields field served malformed: "
    "another JSON type, deep nesting, 1e400, quotes in a field name. Listed in the truth.",
)
@click.option(
    "--refuse-by-key",
    default=0.0,
    type=click.FloatRange(0, 1),
    metavar="SHARE",
    envvar=_ENV + "REFUSE_BY_KEY",
    help="Share of removed listings and accounts (chosen by seed) answering 403 / code 1500 "
    "instead of 404 when asked for by key.",
)
@click.option(
    "--fault-boost",
    default=1.0,
    type=click.FloatRange(1),
    envvar=_ENV + "FAULT_BOOST",
    help="Multiply the --faults probabilities by this for requests by key (/v1/listings/KEY, "
    "/v1/accounts/ID, a ListingKey Eq filter): few, so rarely faulted otherwise.",
)
@click.option(
    "--caller-boost",
    default="",
    envvar=_ENV + "CALLER_BOOST",
    callback=lambda ctx, param, value: _boosts(value),
    help="NAME[:KIND]=FACTOR,…: multiply the --faults probabilities (KIND's only, with :KIND) "
    "by FACTOR for the requests of caller NAME (an API URL ending in /_via/NAME; NAME/PATH: "
    "only its requests under PATH, e.g. poller/v1/accounts:cut=8; NAME/by-key: only its "
    "requests by key, e.g. poller/by-key:stale=6), on top of --fault-boost: "
    "a campaign's rare callers (reconcile, a final snapshot) meet faults too.",
)
@click.option(
    "--start-time",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    envvar=_ENV + "START_TIME",
    help="Start of the virtual clock, UTC (default: now).",
)
@click.option(
    "--date-header/--no-date-header",
    default=True,
    show_default=True,
    envvar=_ENV + "DATE_HEADER",
    help="Send the virtual clock in a Date header on every answer; without it a client "
    "must find the API's clock another way.",
)
def emulator_command(
    host,
    port,
    listings,
    accounts,
    seed,
    key_seed,
    api_key,
    latency_ms,
    rate_limit,
    rate_limit_status,
    retry_after,
    faults,
    fault_timeout_seconds,
    filter_cache_seconds,
    last_page,
    masked,
    bare_numbers,
    bad_records,
    require_user_agent,
    stale_lag_seconds,
    request_log,
    late_visibility_seconds,
    malformed,
    refuse_by_key,
    fault_boost,
    caller_boost,
    start_time,
    date_header,
) -> None:
    """Serve an emulated Spark API replication endpoint until Ctrl-C or SIGTERM.

    A deterministic MLS (listings, photos and other media, member/office/company
    accounts) with the API's envelope, errors and paging, for tests and demos.
    Listens on 127.0.0.1 by default.
    """
    if not logging.getLogger().handlers:
        from spark_relay.logs import configure_logging

        configure_logging()
    start = start_time.replace(tzinfo=None) if isinstance(start_time, datetime) else None
    config = EmulatorConfig(
        listings=listings,
        accounts=accounts,
        seed=seed,
        key_seed=key_seed,
        api_key=api_key,
        latency_ms=latency_ms,
        rate_limit=rate_limit,
        faults=faults,
        filter_cache_seconds=filter_cache_seconds,
        last_page=last_page,
        masked=masked,
        bare_numbers=bare_numbers,
        bad_records=bad_records,
        require_user_agent=require_user_agent,
        start_time=start,
        retry_after=retry_after,
        rate_limit_status=rate_limit_status,
        fault_timeout_seconds=fault_timeout_seconds,
        stale_lag_seconds=stale_lag_seconds,
        date_header=date_header,
        request_log=request_log,
        late_visibility_seconds=late_visibility_seconds,
        malformed=malformed,
        refuse_by_key=refuse_by_key,
        fault_boost=fault_boost,
        caller_boost=caller_boost,
    )
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    emulator = Emulator(config, host=host, port=port).start()
    click.echo(f"Spark API emulator listening on {emulator.url}")
    click.echo(f"API key (development only): {api_key}")
    click.echo(
        f"Try: curl -H 'Authorization: Bearer {api_key}' '{emulator.url}/v1/listings?_limit=1'",
        err=True,
    )
    try:
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        signal.signal(signal.SIGTERM, previous)
        click.echo("Spark API emulator stopped.", err=True)
