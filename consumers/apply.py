"""One batch: decode its messages, write them to the sink, commit; dead-letter the bad records.

:meth:`Applier.apply` takes the messages of a batch and the next offset of
every partition in it, and:

1. decodes keys (UTF-8) and values (:meth:`schemas.Serde.deserialize`); a
   message that cannot be decoded is dead-lettered, but a registry in trouble
   is a broken store (:func:`registry_unavailable`), not the message's fault;
2. calls ``sink.write(batch)``; on a :class:`~consumers.base.BadRecord`,
   writes the events one at a time and dead-letters those that raise it alone;
3. stops if more than ``dead_letter_limit`` letters in a row share one reason,
   else waits until Kafka acknowledged the batch's letters;
4. calls ``sink.commit(offsets)`` (dead letters included, so the partition
   moves on); on a :class:`~consumers.base.BadRecord`, writes and commits the
   events one at a time, dead-letters those whose commit raises it, and checks
   the storm guard again before the batch's offsets are committed.

A :class:`~spark_relay.errors.SinkUnavailableError` (the store is broken)
leaves at once: the runner drops the batch and waits for the store; messages
dead-lettered before it are not sent again when the batch comes back
(:class:`~consumers.letters.Letters`). Any other exception of a sink is a bug
of the sink, and stops the runner (:class:`SinkError`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from confluent_kafka import Message
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumers.base import BadRecord, Batch, Event, Offsets, Sink
from consumers.dlq import error_class, origin_of
from consumers.lag import observe_applied
from consumers.letters import Letters, NotRedrivable, Rereader, Truncated
from consumers.positions import tp_of
from schemas import Serde
from schemas.serde import TRANSPORT_ERRORS
from spark_relay.errors import SinkError, SinkUnavailableError
from spark_relay.metrics import SINK_BATCH_SECONDS

__all__ = ["Applier", "registry_unavailable"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: Registry answers that say nothing about the message: credentials, a wrong URL, overload.
_REGISTRY_TROUBLE = frozenset({401, 403, 404, 407, 408, 429})
_SCHEMA_NOT_FOUND = 40403  # the registry's code for "no schema has this id": the message is bad


def registry_unavailable(error: BaseException) -> bool:
    """A decode failure that says nothing about the message: the registry is down or erring.

    Only "no schema has this id" (404 with error code 40403) and other client
    errors blame the message; 401, 403, a 404 of the registry itself (a wrong
    URL), 407, 408, 429, 5xx and network errors are a broken store.
    """
    if isinstance(error, SchemaRegistryError):
        status = error.http_status_code
        if status == 404:
            return error.error_code != _SCHEMA_NOT_FOUND
        return status in _REGISTRY_TROUBLE or not 400 <= status < 500
    return isinstance(error, TRANSPORT_ERRORS)


class Applier:
    """Applies batches of one sink; the runner owns the messages, the group and the offsets."""

    def __init__(
        self,
        sink: Sink,
        serde: Serde,
        letters: Letters,
        rereader: Rereader,
        *,
        sources: tuple[str, ...],
        dlq_topic: str,
        redrive: bool,
        feeds: dict[str, str] | None = None,
    ) -> None:
        self.sink = sink
        self.serde = serde
        self.letters = letters
        self.rereader = rereader
        self.sources = sources
        self.dlq_topic = dlq_topic
        self.redrive = redrive
        #: source topic → its feed's name ('': the unnamed feed), stamped on each event
        self.feeds = feeds or {}
        self.applied = 0  # events applied, over the run

    def apply(self, messages: list[Message], offsets: Offsets) -> None:
        """Decode, write, dead-letter and commit one batch (see the module docstring)."""
        started = time.perf_counter()
        events: list[Event] = []
        taken: list[Message] = []  # the message each event came from, as consumed
        for message in messages:
            if self.letters.sent(message):
                continue  # dead-lettered by an earlier try of this batch
            event = self._decode(message)
            if event is not None:
                events.append(event)
                taken.append(message)
        written = self._write(events, taken) if events else []
        self.letters.check_storm(messages)
        self.letters.dlq.flush()
        try:
            self._call("commit", self.sink.commit, dict(offsets))
        except BadRecord as e:
            self._commit_one_by_one(written, messages, offsets, e)
        self.letters.committed(messages, offsets)
        SINK_BATCH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)

    def _call(self, stage: str, call: Callable[..., T], *args: Any) -> T:
        """Call the sink: a bad record, a broken store or the sink's own error pass; anything
        else is a bug of the sink, which stops the runner."""
        try:
            return call(*args)
        except SinkError:
            raise
        except Exception as e:
            raise SinkError(
                f"sink {self.sink.name}: {stage} raised {error_class(e)}: {e}; a sink says "
                "BadRecord (the record) or SinkUnavailableError (the store), so this is a bug "
                "of the sink: stopping with nothing committed"
            ) from e

    # ---- decode ------------------------------------------------------------------------

    def _decode(self, message: Message) -> Event | None:
        """The event of ``message``; None when it was dead-lettered or cannot be re-driven."""
        content = message
        try:
            try:
                return self._event(message)
            except Truncated as e:
                found = self.rereader.reread(e.origin)
                if found is None:
                    return None
                content = found
                return self._event(found)
        except SinkUnavailableError:
            raise
        except NotRedrivable as e:
            self.rereader.not_redriven.append(str(e))
            logger.warning("%s: not re-driven", e)
        except Exception as e:
            if registry_unavailable(e):
                raise SinkUnavailableError(f"schema registry unavailable: {e}") from e
            self.letters.send(message, e, "decode", content)
        return None

    def _event(self, message: Message) -> Event:
        origin = origin_of(message, self.dlq_topic if self.redrive else "")
        if origin.topic not in self.sources:
            raise NotRedrivable(
                f"{message.topic()}[{message.partition()}]@{message.offset()}: a letter of "
                f"{origin.topic}[{origin.partition}]@{origin.offset}, no topic of this sink"
            )
        if origin.truncated:
            raise Truncated(origin)
        key = self.serde.deserialize_key(message.key())
        value = self.serde.deserialize(origin.topic, message.value())
        return Event(
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            key=key,
            value=value,
            timestamp=None
            if origin.timestamp is None
            else datetime.fromtimestamp(origin.timestamp / 1000, UTC),
            headers=origin.headers,
            feed=self.feeds.get(origin.topic, ""),
        )

    # ---- write and commit ------------------------------------------------------------------

    def _write(self, events: list[Event], taken: list[Message]) -> list[tuple[Event, Message]]:
        """Write the batch (else its events one by one); return the events written."""
        try:
            self._call("write", self.sink.write, Batch(events))
            self._applied(events)
            return list(zip(events, taken, strict=True))
        except BadRecord as e:
            logger.warning(
                "sink %s: a batch of %d events holds a bad record (%s); writing them one by one",
                self.sink.name,
                len(events),
                e,
            )
        written = []
        for event, message in zip(events, taken, strict=True):
            try:
                self._call("write", self.sink.write, Batch([event]))
            except BadRecord as e:
                self.letters.send(message, e, "write")
                continue
            self._applied([event])
            written.append((event, message))
        return written

    def _commit_one_by_one(
        self,
        written: list[tuple[Event, Message]],
        messages: list[Message],
        offsets: Offsets,
        error: BadRecord,
    ) -> None:
        """The commit refused a record (a Tantivy add, an OpenSearch mapping conflict): the sink
        dropped the writes since its last commit. Write and commit each event alone, dead-letter
        those whose commit refuses them, check the storm guard, then commit the batch's offsets."""
        logger.warning(
            "sink %s: committing %d events refused a record (%s); committing them one by one",
            self.sink.name,
            len(written),
            error,
        )
        for event, message in written:
            try:
                self._call("write", self.sink.write, Batch([event]))
                self._call("commit", self.sink.commit, {tp_of(message): message.offset() + 1})
            except BadRecord as e:
                self.applied -= 1
                self.letters.send(message, e, "commit")
                self.letters.dlq.flush()  # before a later commit moves past it
        self.letters.check_storm(messages)
        self._call("commit", self.sink.commit, dict(offsets))

    def _applied(self, events: list[Event]) -> None:
        self.applied += len(events)
        observe_applied(self.sink.name, events)
