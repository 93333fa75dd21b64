"""The API's clock: the upper bound of an update window and the start of a snapshot.

A window ``ModificationTimestamp Bt <from>,<to>`` must end at or before the API's
own clock: ending later (``<to>`` in the API's future) commits an upper bound no
change has reached yet, and the next window, reaching back only the overlap,
starts after changes made in between. So the clock is the API's ``Date`` header.

An API that sends no ``Date`` leaves the local clock, checked against the API's
data (its newest ModificationTimestamp, which the API's clock has passed):

- a newest change further in the local clock's future than the overlap means the
  local clock is behind the API's by more than the overlap: :class:`ClockSkew`,
  an error that names both clocks, never a window on a guess;
- a local clock ahead of the newest change is not trusted past it: the window
  ends at the newest change, so a local clock that runs ahead (which no answer of
  the API can tell from a quiet feed) costs a re-read of the overlap, never a
  change.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from producer.spark_client import SparkClient
from schemas import parse_timestamp
from spark_relay.errors import ClockSkew

__all__ = ["api_now"]

logger = logging.getLogger(__name__)


def api_now(client: SparkClient, overlap: timedelta) -> datetime:
    """The API's clock now: its ``Date``, or without one the local clock as checked above."""
    page = client.get("/v1/listings", {"_limit": 1, "_select": "ListingKey"})
    if page.server_time is not None:
        return page.server_time
    local = datetime.now(UTC).replace(microsecond=0)
    newest = _newest_change(client)
    if newest is None:
        logger.warning("the API sent no Date header and has no listing: the local clock it is")
        return local
    if newest - local > overlap:
        raise ClockSkew(
            f"the API sent no Date header, and its newest change ({newest.isoformat()}) is "
            f"{(newest - local).total_seconds():.0f}s ahead of the local clock "
            f"({local.isoformat()}), more than the overlap ({overlap.total_seconds():.0f}s): "
            "an update window on this clock could miss changes. Set the clock right (NTP), or "
            "raise SPARK_RELAY_OVERLAP above the difference"
        )
    upper = min(local, newest)
    logger.warning(
        "the API sent no Date header: the window ends at %s, the earlier of the local clock "
        "and the API's newest change",
        upper.isoformat(),
    )
    return upper


def _newest_change(client: SparkClient) -> datetime | None:
    """The newest ModificationTimestamp of a listing (the API's clock has passed it)."""
    page = client.get(
        "/v1/listings",
        {
            "_limit": 1,
            "_select": "ListingKey,ModificationTimestamp",
            "_orderby": "-ModificationTimestamp",
        },
    )
    for result in page.results:
        fields = result.get("StandardFields")
        if isinstance(fields, dict):
            moment = parse_timestamp(fields.get("ModificationTimestamp"))
            if moment is not None:
                return moment.astimezone(UTC)
    return None
