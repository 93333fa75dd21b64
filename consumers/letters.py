"""Dead letters as the runner sends them: once per message, counted by the storm guard; re-drive.

A message becomes a dead letter when it cannot be decoded, or when the sink
says it is a :class:`~consumers.base.BadRecord` at ``write`` or at ``commit``.
:class:`Letters` keeps the letters of the messages not committed yet, by their
coordinates, so a batch applied again after a broken store (or read again
from Kafka) does not send them a second time: the runner skips them. The storm
guard counts every letter of the batch in offset order, whichever stage sent it,
from the streak the last committed batch left.

A re-drive (``spark-relay dlq redrive <sink>``) decodes each letter as the
message it was (:func:`~consumers.dlq.origin_of`). A letter stored truncated
is replaced by its original, read again from its source topic at its
coordinates (:class:`Rereader`); if the topic no longer holds it, it is
reported, not applied.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from consumers.base import Offsets
from consumers.base import TopicPartition as TP
from consumers.dlq import DeadLetters, Origin, error_class
from consumers.positions import end_offsets
from spark_relay.errors import SinkError, SinkUnavailableError

__all__ = ["Letters", "NotRedrivable", "Truncated", "Rereader"]

logger = logging.getLogger(__name__)


class Letters:
    """The dead letters of the messages in hand, and the storm guard over them."""

    def __init__(self, dlq: DeadLetters, sink: str, limit: int) -> None:
        self.dlq = dlq
        self.sink = sink
        self.limit = limit  # more than this many letters in a row for one reason stop; 0: never
        self._sent: dict[tuple[str, int, int], tuple[str, str]] = {}  # coordinates → reason
        self._streak: tuple[str, int] = ("", 0)  # as the last committed batch left it

    @staticmethod
    def _where(message: Message) -> tuple[str, int, int]:
        return message.topic(), message.partition(), message.offset()

    def sent(self, message: Message) -> bool:
        """Whether ``message`` was dead-lettered already (an earlier try of its batch)."""
        return self._where(message) in self._sent

    def send(
        self, message: Message, error: BaseException, stage: str, content: Message | None = None
    ) -> None:
        """Dead-letter ``message`` (``stage``: decode, write or commit); the runner asks
        :meth:`sent` first, and skips a message sent already.

        ``content``: what the letter holds when it is not ``message`` itself (a
        re-driven letter stored truncated, replaced by its original).
        """
        self.dlq.send(content or message, error, stage)
        self._sent[self._where(message)] = (f"{stage} {error_class(error)}", str(error)[:300])

    def check_storm(self, messages: list[Message]) -> None:
        """More than ``limit`` letters in a row for one reason stop the sink (:class:`SinkError`).

        Like Kafka Connect's ``errors.tolerance``, but bounded: a storm of letters for
        one reason says the sink or its input is broken, not the messages. Called
        before each commit of the batch, counting its messages in the order they
        came, with the letters of every stage so far.
        """
        self._count(messages, self.limit)

    def committed(self, messages: list[Message], offsets: Offsets) -> None:
        """The batch of ``messages`` is committed up to ``offsets``: its letters are done."""
        self._streak = self._count(messages, limit=0)  # checked before the commit
        self._sent = {
            (t, p, o): v for (t, p, o), v in self._sent.items() if o >= offsets.get((t, p), 0)
        }

    def _count(self, messages: list[Message], limit: int) -> tuple[str, int]:
        """The streak after ``messages``, from the last committed batch's; raise past ``limit``."""
        reason, count = self._streak
        for message in messages:
            found, detail = self._sent.get(self._where(message), ("", ""))
            count = count + 1 if found and found == reason else int(bool(found))
            reason = found
            if limit and count > limit:
                raise SinkError(
                    f"sink {self.sink}: more than {limit} dead letters in a row, each "
                    f"{found}: {detail}; stopping with this batch uncommitted. Fix the cause "
                    "(or raise --dead-letter-limit) and start the sink again"
                )
        return reason, count

    def forget(self, tps: set[TP]) -> None:
        """Partitions left this member: their next owner decides about their letters."""
        self._sent = {(t, p, o): v for (t, p, o), v in self._sent.items() if (t, p) not in tps}


class NotRedrivable(Exception):
    """A dead letter that cannot be applied again: from no topic of this sink."""


class Truncated(Exception):
    """A dead letter stored truncated: its original is read again from its source topic."""

    def __init__(self, origin: Origin) -> None:
        super().__init__(f"{origin.topic}[{origin.partition}]@{origin.offset}")
        self.origin = origin


class Rereader:
    """Reads the originals of letters stored truncated, at their coordinates (a re-drive)."""

    def __init__(self, consumer_settings: dict[str, Any], group_id: str, sources: tuple[str, ...]):
        self._settings = consumer_settings
        self._group = f"{group_id}.reread"
        self._sources = sources
        self._ends: Offsets | None = None
        self._reader: Consumer | None = None
        self.not_redriven: list[str] = []  # letters not applied, with their coordinates

    def reread(self, origin: Origin) -> Message | None:
        """The original of a letter stored truncated, read again at its coordinates.

        None when the source topic no longer holds it: compaction removed it
        because its key has a later record there (which this sink read after it),
        or retention did; the letter is then reported, not applied.
        """
        where = f"{origin.topic}[{origin.partition}]@{origin.offset}"
        if self._ends is None:  # an offset at or past the end: the topic was recreated
            self._ends = end_offsets(self._settings, self._sources)
        if origin.offset >= self._ends.get((origin.topic, origin.partition), 0):
            return self._gone(where)
        if self._reader is None:
            self._reader = Consumer(
                {
                    **self._settings,
                    "group.id": self._group,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "error",  # an offset no longer held is an answer
                }
            )
        self._reader.assign([TopicPartition(origin.topic, origin.partition, origin.offset)])
        deadline = time.monotonic() + 60
        gone = (
            KafkaError._PARTITION_EOF,
            KafkaError._AUTO_OFFSET_RESET,
            KafkaError.OFFSET_OUT_OF_RANGE,
        )
        while time.monotonic() < deadline:
            found = self._reader.poll(1.0)
            if found is None:
                continue
            error = found.error()
            if error is not None and error.code() not in gone:
                raise SinkUnavailableError(f"reading {where} again: {error.str()}")
            if error is None and found.offset() == origin.offset:
                logger.info("%s: letter stored truncated, its original read again", where)
                return found
            break
        else:
            raise SinkUnavailableError(f"reading {where} again: no answer in 60 s")
        return self._gone(where)

    def _gone(self, where: str) -> None:
        self.not_redriven.append(where)
        logger.warning(
            "%s: letter stored truncated and its original is no longer in the topic (compacted "
            "away by a later record of its key, or expired): not re-driven",
            where,
        )
        return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
