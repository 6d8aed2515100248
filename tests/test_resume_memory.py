"""The memory store's promises to the letter: which events its bounds keep, how long a finished
stream stays, when a stream counts as attended, and the words of its errors. A fake clock stands
in for the store's own, so the edges are exact, not raced."""

from __future__ import annotations

import re

import pytest

from sse_bridge._resume import memory
from sse_bridge._resume.memory import MemoryStore
from sse_bridge._resume.open import check_resume, open_store
from sse_bridge._resume.redis.store import RedisStore
from sse_bridge._resume.store import (
    ATTENDED_FOR,
    BadPositionError,
    EventsGoneError,
    UnknownStreamError,
    new_stream_id,
    parse_position,
)

pytestmark = pytest.mark.anyio

TEN = b"0123456789"
FIVE = b"01234"


class Clock:
    """The memory store's ``time``: it moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(memory, "time", fake)
    return fake


async def kept(store: MemoryStore, stream_id: str) -> list[tuple[int, bytes]]:
    """Every event of the stream a reader can still get, with its number."""
    after = 0
    while True:
        try:
            follower = await store.follow(stream_id, after)
        except EventsGoneError:
            after += 1
            continue
        try:
            batch = await follower.next(0)
        finally:
            await follower.aclose()
        assert batch is not None
        return batch


def live(store: MemoryStore, *events: bytes) -> str:
    recording = store.record(lambda: None)
    recording.append(list(events))
    return recording.stream_id


def finished(store: MemoryStore, *events: bytes) -> str:
    recording = store.record(lambda: None)
    recording.append(list(events))
    recording.finish()
    return recording.stream_id


# --- the bounds ------------------------------------------------------------------------------


async def test_one_stream_keeps_its_bound_exactly() -> None:
    store = MemoryStore(max_stream_bytes=10)
    # At the bound, nothing goes.
    whole = live(store, FIVE, b"abcde")
    assert await kept(store, whole) == [(1, FIVE), (2, b"abcde")]
    # One byte past it, the oldest event goes; both events of one read are counted.
    over = live(store, b"x", TEN)
    assert await kept(store, over) == [(2, TEN)]


async def test_a_stream_keeps_its_last_event_whatever_its_size() -> None:
    store = MemoryStore(max_stream_bytes=5)
    big = live(store, TEN)
    assert await kept(store, big) == [(1, TEN)]
    two = live(store, FIVE, b"abcde")
    assert await kept(store, two) == [(2, b"abcde")]
    # The next read of a stream already at its bound pushes out the one before it.
    recording = store.record(lambda: None)
    recording.append([TEN])
    recording.append([FIVE])
    assert await kept(store, recording.stream_id) == [(2, FIVE)]


async def test_a_finished_stream_stays_while_the_total_is_within_its_bound() -> None:
    store = MemoryStore(max_stream_bytes=10, max_bytes=20)
    done = finished(store, TEN)
    # The growing stream passes its own bound, not the total: only its own oldest event goes.
    growing = live(store, FIVE, TEN)
    assert store.total == 20
    assert await kept(store, done) == [(1, TEN)]
    assert await kept(store, growing) == [(2, TEN)]


async def test_past_the_total_the_oldest_finished_stream_goes_first_and_alone() -> None:
    store = MemoryStore(max_bytes=20)
    oldest = finished(store, TEN)
    newer = finished(store, TEN)
    growing = live(store, FIVE)
    with pytest.raises(UnknownStreamError):
        await store.follow(oldest, 0)
    assert await kept(store, newer) == [(1, TEN)]
    assert await kept(store, growing) == [(1, FIVE)]
    assert store.total == 15


async def test_with_no_finished_stream_the_growing_one_gives_up_its_oldest_events() -> None:
    store = MemoryStore(max_stream_bytes=10, max_bytes=20)
    other = live(store, TEN)
    # Its own bound leaves two events and the total exactly at its bound: they stay.
    growing = live(store, FIVE, FIVE, b"abcde")
    assert await kept(store, growing) == [(2, FIVE), (3, b"abcde")]
    assert await kept(store, other) == [(1, TEN)]

    store = MemoryStore(max_bytes=10)
    other = live(store, FIVE)
    growing = live(store, FIVE, b"abcde")
    assert await kept(store, growing) == [(2, b"abcde")]
    # The last event of the growing stream stays, even past the total.
    store = MemoryStore(max_bytes=10)
    other = live(store, b"01234567")
    growing = live(store, FIVE)
    assert await kept(store, growing) == [(1, FIVE)]
    assert await kept(store, other) == [(1, b"01234567")]
    assert store.total == 13


@pytest.mark.parametrize("name", ["max_stream_bytes", "max_bytes"])
async def test_a_bound_of_one_byte_is_taken(name: str) -> None:
    store = MemoryStore(**{name: 1})
    stream = live(store, b"a", b"b")
    assert await kept(store, stream) == [(2, b"b")]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            {"ttl": -1},
            "resume ttl must be a finite number of seconds >= 0 "
            "(how long a finished stream stays resumable), got -1",
        ),
        (
            {"max_stream_bytes": 0},
            "max_stream_bytes must be an integer >= 1 (bytes of events one stream keeps), got 0",
        ),
        (
            {"max_bytes": 0},
            "max_bytes must be an integer >= 1 (bytes of events all streams keep), got 0",
        ),
    ],
)
def test_the_bounds_and_the_ttl_are_refused_in_words(option: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MemoryStore(**option)


# --- the clock -------------------------------------------------------------------------------


async def test_a_finished_stream_stays_for_its_ttl_and_no_longer(clock: Clock) -> None:
    store = MemoryStore(ttl=10)
    stream = finished(store, b"a")
    clock.now += 9.5
    assert await store.finished_at(stream, 1)
    clock.now += 0.5
    with pytest.raises(UnknownStreamError):
        await store.finished_at(stream, 1)
    assert store.total == 0


async def test_a_stream_is_attended_while_read_and_for_a_second_after(clock: Clock) -> None:
    clock.now = 0.0  # the monotonic clock's origin is anyone's
    store = MemoryStore()
    recording = store.record(lambda: None)
    assert not await recording.attended()
    first = await store.follow(recording.stream_id, 0)
    second = await store.follow(recording.stream_id, 0)
    await first.aclose()
    await first.aclose()  # closing twice leaves once
    clock.now += ATTENDED_FOR + 1
    assert await recording.attended()  # the second reader is still there
    await second.aclose()
    clock.now += ATTENDED_FOR / 2
    assert await recording.attended()
    clock.now += ATTENDED_FOR / 2
    assert not await recording.attended()


# --- the end of a stream ---------------------------------------------------------------------


async def test_an_orphan_is_not_ended_by_a_reader_behind_its_top() -> None:
    store = MemoryStore()
    stream = live(store, b"a", b"b")
    # This reader saw one event: another may have read on since; it must look again.
    await store.finish_orphan(stream, 1, [b"end"])
    follower = await store.follow(stream, 0)
    assert await follower.next(0) == [(1, b"a"), (2, b"b")]
    assert await follower.next(0) == []
    await store.finish_orphan(stream, 2, [b"end"])
    assert await follower.next(0) == [(3, b"end")]
    assert await follower.next(0) is None


async def test_a_reader_at_the_end_of_an_ended_stream_reads_the_end() -> None:
    store = MemoryStore()
    stream = finished(store, b"a")
    follower = await store.follow(stream, 1)
    assert await follower.next(0) is None
    with pytest.raises(BadPositionError) as bad:
        await store.follow(stream, 2)
    assert str(bad.value) == f"stream {stream!r} sent 1 events, so none after 2"


# --- the words of the errors -----------------------------------------------------------------


async def test_events_no_longer_kept_are_named() -> None:
    store = MemoryStore(max_stream_bytes=4)
    recording = store.record(lambda: None)
    follower = await store.follow(recording.stream_id, 0)
    recording.append([b"ab", b"cd", b"ef"])
    message = "the events after 0 are no longer kept (the oldest kept is 2); start a new request"
    with pytest.raises(EventsGoneError) as behind:
        await follower.next(0)
    assert str(behind.value) == message
    with pytest.raises(EventsGoneError) as late:
        await store.follow(recording.stream_id, 0)
    assert str(late.value) == message


async def test_an_unknown_stream_is_named() -> None:
    store = MemoryStore()
    stream = new_stream_id()
    with pytest.raises(UnknownStreamError) as unknown:
        await store.follow(stream, 0)
    assert str(unknown.value) == f"no stream {stream!r}: it never existed here or has expired"


def test_the_largest_position_is_eighteen_digits() -> None:
    assert parse_position("9" * 18, None) == (None, 10**18 - 1)
    with pytest.raises(BadPositionError):
        parse_position("1" + "0" * 18, None)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/1", "unix:///run/redis.sock"]
)
def test_each_redis_scheme_names_a_redis_store(url: str) -> None:
    check_resume(url)
    store = open_store(url, ttl=7)
    assert isinstance(store, RedisStore)
    assert (store.url, store.ttl) == (url, 7)
