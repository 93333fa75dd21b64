"""Commits behind the fetch: a page's delivery wait and state write off the poller's path.

The poller produces a page, seals its events (:meth:`Publisher.seal`) and hands
the commit to :meth:`Committer.submit`; a thread waits until Kafka acknowledged
that page, then writes it (published keys, checkpoint) in one state transaction,
page after page in the order submitted. The poller meanwhile fetches and
produces the next page. At most ``depth`` pages wait behind the one being
committed, so a crash re-publishes at most ``depth + 2`` pages (the one being
committed, those queued, the one being produced) and never skips one: a
checkpoint is written only after its page and every page before it.

A commit that fails (a delivery error, the state store) stops the thread: no
later checkpoint is written, and the error is raised on the poller's thread by
the next :meth:`submit` or :meth:`drain`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from producer.publisher import Delivery, Publisher

__all__ = ["Committer"]

logger = logging.getLogger(__name__)

#: A page's state write, called on the committer's thread once its events are acknowledged.
Write = Callable[[], None]


class Committer:
    """Write each page's state once Kafka acknowledged it, in order, on a thread of its own.

    Use as a context manager: leaving the block drains what was submitted.
    """

    def __init__(self, publisher: Publisher, depth: int = 1):
        self.publisher = publisher
        self._queue: queue.Queue[tuple[Delivery, Write, object, list] | None] = queue.Queue(
            maxsize=depth
        )
        self._error: BaseException | None = None
        #: name → (value, the submit that set it), until that submit's commit is written
        self._pending: dict[Hashable, tuple[Any, object]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            delivery, write, token, names = item
            try:
                if self._error is None:
                    self.publisher.wait(delivery)
                    write()
                    with self._lock:
                        for name in names:
                            if self._pending.get(name, (None, None))[1] is token:
                                del self._pending[name]
            except BaseException as e:  # handed to the poller's thread
                self._error = e
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, write: Write, pending: dict[Hashable, Any] | None = None) -> None:
        """Commit what was produced since the last submit with ``write``, once acknowledged.

        ``pending``: what ``write`` records, answered by :meth:`pending` until it is
        written. Blocks while ``depth`` pages wait already; raises the error of a
        failed commit.
        """
        self._raise()
        token, pending = object(), pending or {}
        with self._lock:
            self._pending.update((name, (value, token)) for name, value in pending.items())
        self._queue.put((self.publisher.seal(), write, token, list(pending)))

    def pending(self, names: Iterable[Hashable]) -> dict[Hashable, Any]:
        """Of ``names``, those a commit under way records, with their values."""
        with self._lock:
            return {name: self._pending[name][0] for name in names if name in self._pending}

    def drain(self) -> None:
        """Wait until every page submitted is committed; raise the error of a failed commit."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> Committer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.drain()
            else:
                self._queue.join()  # what was produced and acknowledged is still committed
        finally:
            self.close()
