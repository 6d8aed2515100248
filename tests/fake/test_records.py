"""The record book: a test waits for a record, in a thread or on an event loop, without polling.

Each wait below is shown to be asleep before the change that should wake it: the predicate
runs under the book's lock, so once it has seen the records and the change could take the lock,
the waiter is inside `Condition.wait` and only a notification brings it back before `timeout`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from sse_bridge._testing.fake import RecordBook, RequestRecord
from sse_bridge._testing.fake.records import Outcome

# A waiter must be woken within WAKE seconds. Its own timeout is far longer: a missed wake-up
# must fail the test, not pass late because the timeout makes the waiter look once more.
WAKE = 3.0
ASLEEP = 60.0


def record(path: str = "/api/chat", outcome: Outcome | None = None) -> RequestRecord:
    return RequestRecord(id=0, method="POST", path=path, headers={}, started_at=0, outcome=outcome)


def watching(
    condition: Callable[[RequestRecord], bool],
) -> tuple[Callable[[RequestRecord], bool], threading.Event]:
    """`condition`, and an event set once it has been asked: the waiter has looked."""
    looked = threading.Event()

    def predicate(r: RequestRecord) -> bool:
        looked.set()
        return condition(r)

    return predicate, looked


def in_thread(wait: Callable[[], RequestRecord]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(wait())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_the_book_reads_as_a_sequence_and_numbers_what_it_keeps() -> None:
    book = RecordBook()
    first, second = record("/a"), record("/b")
    book.add(first)
    book.add(second)
    assert (len(book), book[0], book[-1], book[1:]) == (2, first, second, [second])
    assert [r.id for r in book] == [1, 2]
    assert "path='/b'" in repr(book)
    book.clear()
    assert list(book) == []
    book.add(third := record())
    assert third.id == 3  # ids keep counting, so old and new never collide


def test_wait_filters_and_times_out_with_what_was_recorded() -> None:
    book = RecordBook()
    book.add(record("/a", outcome="completed"))
    book.add(record("/b", outcome="failed"))
    book.add(record("/c"))
    assert book.wait_for_blocking(path="/b").id == 2
    assert book.wait_for_blocking(outcome="completed").id == 1
    assert book.wait_for_blocking(predicate=lambda r: r.id == 2).path == "/b"
    assert book.wait_for_blocking(path="/c").id == 3
    started = time.monotonic()
    with pytest.raises(TimeoutError) as timed_out:
        book.wait_for_blocking(path="/c", finished=True, timeout=0.05)
    assert time.monotonic() - started < 2
    assert str(timed_out.value) == (
        "no request matched path='/c' outcome=None finished=True within 0.05 s; recorded "
        "(id, method, path, outcome): [(1, 'POST', '/a', 'completed'), (2, 'POST', '/b', "
        "'failed'), (3, 'POST', '/c', None)]"
    )
    with pytest.raises(TimeoutError, match=r"^no request matched path='/a' outcome='failed'"):
        book.wait_for_blocking(path="/a", outcome="failed", timeout=0.05)
    with pytest.raises(TimeoutError, match=r"outcome=None and the predicate within"):
        book.wait_for_blocking(predicate=lambda r: r.id == 9, timeout=0)


def test_a_blocked_thread_wakes_when_a_record_is_added() -> None:
    book = RecordBook()
    book.add(record("/api/tags"))
    predicate, looked = watching(lambda r: r.path == "/api/chat")
    thread, outcome = in_thread(lambda: book.wait_for_blocking(predicate=predicate, timeout=ASLEEP))
    assert looked.wait(WAKE)
    book.add(added := record("/api/chat"))
    thread.join(WAKE)
    assert outcome == [added]


def test_a_blocked_thread_wakes_when_a_record_finishes_or_progresses() -> None:
    book = RecordBook()
    book.add(running := record())
    predicate, looked = watching(lambda r: r.tokens_sent >= 2)
    thread, progressed = in_thread(
        lambda: book.wait_for_blocking(predicate=predicate, timeout=ASLEEP)
    )
    assert looked.wait(WAKE)
    looked.clear()
    book.tokens_sent(running, 1)
    assert looked.wait(WAKE)  # woken, looked again, and went back to sleep
    book.tokens_sent(running, 2)
    thread.join(WAKE)
    assert progressed == [running]

    predicate, looked = watching(lambda r: r.outcome is not None)
    thread, finished = in_thread(
        lambda: book.wait_for_blocking(predicate=predicate, timeout=ASLEEP)
    )
    assert looked.wait(WAKE)
    book.finish(running, "cancelled", "streaming")
    thread.join(WAKE)
    assert finished == [running]
    assert (running.outcome, running.cancelled_phase) == ("cancelled", "streaming")
    assert running.ended_at is not None


@pytest.mark.anyio
async def test_an_awaited_wait_leaves_the_loop_free_for_the_app_that_records() -> None:
    # The fake called in-process runs on the loop that awaits: a wait that blocked the loop
    # would keep the record it waits for from ever being written.
    book = RecordBook()
    book.add(running := record())
    predicate, looked = watching(lambda r: r.outcome == "completed")
    found: list[RequestRecord] = []

    async def wait() -> None:
        found.append(await book.wait_for(predicate=predicate, timeout=ASLEEP))

    with anyio.fail_after(WAKE):
        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            assert await anyio.to_thread.run_sync(looked.wait, WAKE)
            book.headers_sent(running, 200)
            book.finish(running, "completed")
    assert found == [running]
    assert running.status == 200


@pytest.mark.anyio
async def test_an_awaited_wait_wakes_on_a_change_made_in_another_thread() -> None:
    book = RecordBook()
    book.add(record("/api/tags"))
    predicate, looked = watching(lambda r: r.path == "/api/chat")
    added = record("/api/chat")

    def add_once_looked() -> None:
        if looked.wait(WAKE):
            book.add(added)

    writer = threading.Thread(target=add_once_looked, daemon=True)
    writer.start()
    with anyio.fail_after(WAKE):
        assert await book.wait_for(predicate=predicate, timeout=ASLEEP) is added
    writer.join(WAKE)
    with pytest.raises(TimeoutError, match=r"^no request matched path='/nope'"):
        await book.wait_for(path="/nope", timeout=0.05)


@pytest.mark.anyio
async def test_a_cancelled_wait_lets_its_thread_go_at_once() -> None:
    book = RecordBook()
    book.add(record())
    predicate, looked = watching(lambda r: False)
    with anyio.move_on_after(WAKE) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: book.wait_for(predicate=predicate, timeout=ASLEEP))
            assert await anyio.to_thread.run_sync(looked.wait, WAKE)
            looked.clear()
            group.cancel_scope.cancel()
    assert not scope.cancelled_caught
    # The abandoned thread looks once more, sees it is abandoned and ends, long before ASLEEP.
    assert await anyio.to_thread.run_sync(looked.wait, WAKE)


def test_the_book_equals_a_list_of_the_same_records() -> None:
    book = RecordBook()
    assert book == []
    assert book != [1]
    assert book == RecordBook()
    assert (book == object()) is False
