"""The Redis store at its edges: orphans finished on every kind of stream, the byte bound at one
event, local readers counted once, a stop for a stream nobody runs, and Redis failing under a
call, each told with the figures and words the caller sees."""

from __future__ import annotations

import logging

import anyio
import pytest
from redis.asyncio import Redis

from sse_bridge._resume.redis.client import reason
from sse_bridge._resume.redis.store import RedisStore, redact
from sse_bridge._resume.store import (
    BadPositionError,
    EventsGoneError,
    StoreUnavailableError,
    UnknownStreamError,
    stream_tag,
)
from tests._redis import RedisServer
from tests.test_resume_redis import DEADLINE, numbered, opened, read, read_to_end

pytestmark = pytest.mark.anyio

SLOW = 10.0


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("redis://:secret@/0", "redis://:***@/0"),
        ("redis://user:secret@[::1/0", "<an unparsable URL>"),
    ],
)
def test_urls_without_a_host_or_unparsable_are_shown_without_their_password(
    given: str, shown: str
) -> None:
    assert redact(given) == shown


async def test_an_orphan_is_finished_right_after_the_last_event_it_got(url: str) -> None:
    async with opened(url, heartbeat=SLOW, key_prefix="orphan:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1", b"e2"])
        assert await store.drain(DEADLINE)
        sid = recording.stream_id
        # Another instance: this store's own live stream would be answered locally.
        async with opened(url, heartbeat=SLOW, key_prefix="orphan:") as reader:
            await reader.finish_orphan(sid, 2, [b"error"])
            # A second reader that saw the same: the first finish stands, without an error.
            await reader.finish_orphan(sid, 2, [b"other", b"more"])
            events = await read_to_end(await reader.follow(sid, 0))
    assert events == numbered([b"e1", b"e2", b"error"])


async def test_an_orphan_without_events_is_finished_too(url: str) -> None:
    async with opened(url, heartbeat=SLOW, key_prefix="orphan-empty:") as store:
        recording = store.record(lambda: None)
        assert await store.drain(DEADLINE)
        async with opened(url, heartbeat=SLOW, key_prefix="orphan-empty:") as reader:
            await reader.finish_orphan(recording.stream_id, 0, [b"error"])
            events = await read_to_end(await reader.follow(recording.stream_id, 0))
    assert events == numbered([b"error"])


async def test_a_stream_that_ended_is_not_finished_again(url: str) -> None:
    async with opened(url, key_prefix="orphan-ended:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1", b"e2"])
        recording.finish()
        assert await store.drain(DEADLINE)
        await store.finish_orphan(recording.stream_id, 2, [b"error"])
        events = await read_to_end(await store.follow(recording.stream_id, 0))
    assert events == numbered([b"e1", b"e2"])


async def test_finishing_an_unknown_orphan_names_it(url: str) -> None:
    async with opened(url, key_prefix="orphan-unknown:") as store:
        with pytest.raises(UnknownStreamError, match="no-such-stream"):
            await store.finish_orphan("no-such-stream", 0, [b"error"])


async def test_the_byte_bound_keeps_the_last_event_and_only_it(url: str) -> None:
    async with opened(url, max_stream_bytes=10, key_prefix="bound-one:") as store:
        recording = store.record(lambda: None)
        recording.append([b"a" * 15])
        assert await store.drain(DEADLINE)
        # Larger than the bound alone, and still kept: a stream keeps at least its last event.
        assert await read(await store.follow(recording.stream_id, 0), 1) == [(1, b"a" * 15)]
        recording.append([b"b" * 6, b"c" * 6])
        recording.finish()
        assert await store.drain(DEADLINE)
        with pytest.raises(EventsGoneError):
            await store.follow(recording.stream_id, 0)
        follower = await store.follow(recording.stream_id, 2)
        assert await read_to_end(follower) == [(3, b"c" * 6)]


async def test_local_readers_are_counted_once_each(url: str) -> None:
    async with opened(url, key_prefix="readers:") as store:
        recording = store.record(lambda: None)
        first = await store.follow(recording.stream_id, 0)
        second = await store.follow(recording.stream_id, 0)
        await first.aclose()
        await first.aclose()  # closing twice counts once
        assert await recording.attended()
        await second.aclose()
        assert not await recording.attended()


async def test_a_stop_for_a_stream_this_instance_does_not_run_is_ignored(
    url: str, client: Redis
) -> None:
    async with (
        opened(url, key_prefix="stop-unknown:") as a,
        opened(url, key_prefix="stop-unknown:") as b,
    ):
        stopped = anyio.Event()
        recording = a.record(stopped.set)
        assert await a.drain(DEADLINE)
        assert await client.publish(a.keys.stop_channel(a.instance_id), b"no-such-stream") == 1
        await b.stop(recording.stream_id)
        with anyio.fail_after(DEADLINE):
            await stopped.wait()


async def test_a_failing_stop_is_logged_in_so_many_words(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sse_bridge")
    async with opened(url, key_prefix="stop-log:") as a, opened(url, key_prefix="stop-log:") as b:

        def fail() -> None:
            raise RuntimeError("the app could not stop")

        failing = a.record(fail)
        assert await a.drain(DEADLINE)
        await b.stop(failing.stream_id)
        with anyio.fail_after(DEADLINE):
            for _ in range(int(DEADLINE / 0.01)):
                if caplog.records:
                    break
                await anyio.sleep(0.01)
    (record,) = caplog.records
    assert (
        record.getMessage() == f"sse_bridge: stopping stream {stream_tag(failing.stream_id)} failed"
    )


async def test_redis_failing_under_a_call_is_told_with_its_reason(server: RedisServer) -> None:
    store = RedisStore(server.url, heartbeat=SLOW)
    await store.open()
    try:
        server.stop()
        # Before any heartbeat: the call itself finds Redis gone.
        with pytest.raises(StoreUnavailableError) as caught:
            await store.follow("some-stream", 0)
        message = str(caught.value)
        assert message.startswith(f"the resume store (Redis at {server.url}) failed: ")
        assert not message.endswith("failed: None")
        assert not store.available
    finally:
        await store.aclose()


async def test_an_attended_check_that_finds_redis_gone_says_no(server: RedisServer) -> None:
    store = RedisStore(server.url, heartbeat=SLOW)
    await store.open()
    try:
        recording = store.record(lambda: None)
        server.stop()
        assert await recording.attended() is False
        assert not store.available
    finally:
        await store.aclose()


def test_a_reason_is_the_errors_text_or_its_type() -> None:
    assert reason(ConnectionError("Connection refused")) == "Connection refused"
    assert reason(TimeoutError()) == "TimeoutError"


async def test_each_refusal_names_the_stream_and_the_positions(url: str) -> None:
    async with opened(url, max_stream_bytes=10, key_prefix="words:") as store:
        recording = store.record(lambda: None)
        recording.append([b"a" * 6, b"b" * 6])
        recording.finish()
        assert await store.drain(DEADLINE)
        sid = recording.stream_id
        async with opened(url, key_prefix="words:") as other:
            with pytest.raises(
                BadPositionError, match=f"stream '{sid}' sent 2 events, so none after 5"
            ):
                await other.follow(sid, 5)
            with pytest.raises(EventsGoneError, match=r"events after 0 .* oldest kept is 2\)"):
                await other.follow(sid, 0)
            with pytest.raises(UnknownStreamError, match="no-such-stream"):
                await other.follow("no-such-stream", 0)
            with pytest.raises(UnknownStreamError, match="no-such-stream"):
                await other.stop("no-such-stream")
            # Its end is recorded where the store looks for it.
            assert await other.finished_at(sid, 2)


async def test_a_finished_stream_of_a_dead_owner_is_not_lost(url: str, client: Redis) -> None:
    async with (
        opened(url, heartbeat=SLOW, key_prefix="dead-ended:") as owner,
        opened(url, heartbeat=SLOW, key_prefix="dead-ended:") as reader,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1"])
        assert await owner.drain(DEADLINE)
        follower = await reader.follow(recording.stream_id, 1)
        await reader.finish_orphan(recording.stream_id, 1, [b"error"])
        assert await reader.finished_at(recording.stream_id, 2)
        await client.delete(owner.keys.instance(owner.instance_id))
        # Its end is in Redis: a missing owner no longer matters, however long it has been.
        await follower.check_owner(100.0)
        await follower.check_owner(100.0 + 10 * SLOW)


async def test_a_stop_after_the_finish_and_before_the_write_is_quiet(url: str) -> None:
    async with opened(url, key_prefix="stop-finished:") as store:
        recording = store.record(lambda: None)
        recording.finish()
        await store.stop(recording.stream_id)
        assert await store.drain(DEADLINE)


async def test_an_unavailable_store_says_so_and_logs_why(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    store = RedisStore(server.url, heartbeat=SLOW)
    await store.open()
    try:
        server.stop()
        with pytest.raises(StoreUnavailableError) as caught:
            await store.follow("some-stream", 0)
        why = str(caught.value).split(" failed: ", 1)[1]
        assert [r.getMessage() for r in caplog.records] == [
            f"sse_bridge: resume store unavailable: {why}"
        ]
        with pytest.raises(StoreUnavailableError, match=r"is unavailable; try again later$"):
            await store.follow("some-stream", 0)
    finally:
        await store.aclose()
