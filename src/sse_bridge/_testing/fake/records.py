"""What the fake saw of each request, kept in a book that a test can wait on without polling.

The app writes records on its server's event loop, often in another thread than the test that
reads them. Every write goes through the `RecordBook`, under one `threading.Condition`, and
wakes whoever waits: a blocked thread directly, a coroutine through the worker thread that
`anyio.to_thread` runs the same wait in.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import anyio.to_thread

Outcome = Literal["completed", "cancelled", "failed"]
Phase = Literal["before_headers", "streaming", "stalled"]


@dataclass
class RequestRecord:
    """What the fake saw of one request and how it ended.

    The app updates a record from the server's event loop while a test may read it from another
    thread: every field is written once or only grows, and ``outcome`` is written last.

    Attributes:
        id: 1, 2, 3... in arrival order.
        method: the HTTP method.
        path: the request path, without the query string.
        headers: request headers with lower-case names; repeated headers are joined by ", ".
        started_at: ``time.monotonic()`` when the request arrived.
        body: the parsed JSON body when it was an object, else None.
        status: the response status, once headers were sent.
        headers_sent_at: ``time.monotonic()`` when the response headers were sent.
        ended_at: ``time.monotonic()`` when the response ended, failed or was cancelled.
        tokens_sent: token lines written (or generated, for a non-streaming answer).
        outcome: "completed", "cancelled" (the client went away) or "failed" (injected failure).
        cancelled_phase: for "cancelled": "before_headers", "streaming" or "stalled".
    """

    id: int
    method: str
    path: str
    headers: dict[str, str]
    started_at: float
    body: dict[str, Any] | None = None
    status: int | None = None
    headers_sent_at: float | None = None
    ended_at: float | None = None
    tokens_sent: int = 0
    outcome: Outcome | None = None
    cancelled_phase: Phase | None = None


@dataclass(frozen=True)
class _Criteria:
    path: str | None
    outcome: Outcome | None
    finished: bool
    predicate: Callable[[RequestRecord], bool] | None

    def match(self, record: RequestRecord) -> bool:
        return (
            (self.path is None or record.path == self.path)
            and (self.outcome is None or record.outcome == self.outcome)
            and (not self.finished or record.outcome is not None)
            and (self.predicate is None or self.predicate(record))
        )

    def __str__(self) -> str:
        text = f"path={self.path!r} outcome={self.outcome!r}"
        text += " finished=True" if self.finished else ""
        return text + (" and the predicate" if self.predicate else "")


class RecordBook(Sequence[RequestRecord]):
    """The requests a `FakeOllama` saw, in arrival order, and a way to wait for one.

    A read-only sequence (``len(book)``, ``book[-1]``, ``book[2:]``, iteration) that any thread
    may read. `wait_for` and `wait_for_blocking` return the first record that matches, waiting
    until a request arrives or one changes (its body read, headers sent, a token sent, its end)
    for as long as ``timeout``.
    """

    def __init__(self) -> None:
        self._records: list[RequestRecord] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...

    def __getitem__(self, index: int | slice) -> RequestRecord | list[RequestRecord]:
        with self._changed:
            return self._records[index]

    def __iter__(self) -> Iterator[RequestRecord]:
        with self._changed:
            return iter(list(self._records))

    def __eq__(self, other: object) -> bool:
        # Equal to a list of the same records, as when records was a list.
        if isinstance(other, (RecordBook, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # it changes: a mutable sequence's rule

    def __repr__(self) -> str:
        return f"RecordBook({list(self)!r})"

    async def wait_for(
        self,
        *,
        path: str | None = None,
        outcome: Outcome | None = None,
        finished: bool = False,
        predicate: Callable[[RequestRecord], bool] | None = None,
        # Not anyio.fail_after: the waiting thread keeps the deadline, so that the error can
        # list what was recorded.
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> RequestRecord:
        """Wait until a record matches every given criterion, and return the first that does.

        Works whether the app runs on this event loop or on a server's loop in another thread.

        Args:
            path: the record's path must equal this.
            outcome: the record's outcome must equal this ("completed", "cancelled", "failed").
            finished: the record must have an outcome, whichever it is.
            predicate: any further condition on the record, called with the book locked.
            timeout: seconds to wait before giving up.

        Raises:
            TimeoutError: nothing matched in time; the message lists what was recorded.
        """
        criteria = _Criteria(path, outcome, finished, predicate)
        abandoned = False

        def wait() -> RequestRecord:
            return self._wait(criteria, timeout, lambda: abandoned)

        try:
            return await anyio.to_thread.run_sync(wait, abandon_on_cancel=True)
        finally:
            # A cancelled caller leaves the thread behind: wake it so that it ends now.
            with self._changed:
                abandoned = True
                self._changed.notify_all()

    def wait_for_blocking(
        self,
        *,
        path: str | None = None,
        outcome: Outcome | None = None,
        finished: bool = False,
        predicate: Callable[[RequestRecord], bool] | None = None,
        timeout: float = 5.0,
    ) -> RequestRecord:
        """`wait_for` for a thread that may block: a synchronous test with the app in a server.

        Never call it on the event loop that runs the app: the app could not record anything
        until it returned.
        """
        return self._wait(_Criteria(path, outcome, finished, predicate), timeout, lambda: False)

    def _wait(
        self, criteria: _Criteria, timeout: float, abandoned: Callable[[], bool]
    ) -> RequestRecord:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self._records:
                    if criteria.match(record):
                        return record
                left = deadline - time.monotonic()
                # An abandoned wait's error goes nowhere: its caller was cancelled.
                if left <= 0 or abandoned():
                    seen = [(r.id, r.method, r.path, r.outcome) for r in self._records]
                    raise TimeoutError(
                        f"no request matched {criteria} within {timeout} s; "
                        f"recorded (id, method, path, outcome): {seen}"
                    )
                self._changed.wait(left)

    # What the app writes, each change waking every waiter.

    def add(self, record: RequestRecord) -> None:
        """Number `record` and keep it."""
        with self._changed:
            record.id = next(self._ids)
            self._records.append(record)
            self._changed.notify_all()

    def clear(self) -> None:
        """Forget every record; the ids go on counting, so old and new never collide."""
        with self._changed:
            self._records.clear()
            self._changed.notify_all()

    def body_read(self, record: RequestRecord, body: dict[str, Any] | None) -> None:
        with self._changed:
            record.body = body
            self._changed.notify_all()

    def headers_sent(self, record: RequestRecord, status: int) -> None:
        with self._changed:
            record.status = status
            record.headers_sent_at = time.monotonic()
            self._changed.notify_all()

    def tokens_sent(self, record: RequestRecord, count: int) -> None:
        with self._changed:
            record.tokens_sent = count
            self._changed.notify_all()

    def finish(self, record: RequestRecord, outcome: Outcome, phase: Phase | None = None) -> None:
        with self._changed:
            # Readers without the lock wait on `outcome`, so it is written last.
            record.ended_at = time.monotonic()
            record.cancelled_phase = phase
            record.outcome = outcome
            self._changed.notify_all()
