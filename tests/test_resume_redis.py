"""RedisStore against a real redis-server: two store objects in one event loop, each with its own
instance id, stand for two bridge instances behind a load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from loadtests.stack import free_port
from sse_bridge._resume.redis import writer as _redis_writer
from sse_bridge._resume.redis.keys import Keys, entries, parse_id, text
from sse_bridge._resume.redis.store import RedisStore, redact
from sse_bridge._resume.store import (
    BadPositionError,
    Batch,
    EventsGoneError,
    OwnerLostError,
    ResumeError,
    StoreUnavailableError,
    UnknownStreamError,
    stream_tag,
)
from tests._redis import RedisServer, ping, redis_binary

pytestmark = pytest.mark.anyio

# Bounds for every wait below: a test that would hang fails instead.
DEADLINE = 10.0
POLL = 0.5
# A short heartbeat where a test waits for an instance to be declared dead or Redis to be back.
FAST = 0.1


@contextlib.asynccontextmanager
async def opened(url: str, *, watched: bool = True, **options: Any) -> AsyncIterator[RedisStore]:
    """An open store; unless not ``watched``, a task of it that fails fails the test at once
    (rather than when a wait on what the task would have done runs out)."""
    store = RedisStore(url, **options)
    await store.open()
    test = asyncio.current_task()

    def failed(task: asyncio.Task[None]) -> None:
        if test is not None and not task.cancelled() and task.exception() is not None:
            test.cancel(f"the store's task {task.get_name()!r} failed: {task.exception()!r}")

    tasks = list(store.tasks) if watched else []
    for task in tasks:
        task.add_done_callback(failed)
    try:
        yield store
    finally:
        for task in tasks:
            task.remove_done_callback(failed)
        await store.aclose()


async def read(follower: Any, count: int) -> Batch:
    """The next ``count`` events, in as many calls as it takes."""
    events: Batch = []
    with anyio.fail_after(DEADLINE):
        for _ in range(1000):
            if len(events) >= count:
                break
            batch = await follower.next(POLL)
            assert batch is not None, f"the stream ended after {events}"
            events += batch
    assert len(events) == count, events
    return events


async def read_to_end(follower: Any) -> Batch:
    events: Batch = []
    with anyio.fail_after(DEADLINE):
        for _ in range(1000):
            batch = await follower.next(POLL)
            if batch is None:
                return events
            events += batch
    raise AssertionError(f"no end after {events}")


async def until_unavailable(store: RedisStore, available: bool = False) -> None:
    """Until the store has seen Redis go (or come back): at its next heartbeat."""
    with anyio.fail_after(DEADLINE):
        for _ in range(1000):
            if store.available is available:
                return
            await anyio.sleep(FAST / 2)


async def until_available(store: RedisStore) -> None:
    await until_unavailable(store, available=True)


def numbered(events: list[bytes], first: int = 1) -> Batch:
    return list(enumerate(events, first))


async def test_events_are_replayed_after_a_position_then_followed_live(url: str) -> None:
    async with opened(url, key_prefix="replay:") as a, opened(url, key_prefix="replay:") as b:
        recording = a.record(lambda: None)
        sid = recording.stream_id
        recording.append([b"e1", b"e2"])
        recording.append([b"e3"])
        assert await a.drain(DEADLINE)
        from_start = await b.follow(sid, 0)
        from_two = await b.follow(sid, 2)
        assert await read(from_start, 3) == numbered([b"e1", b"e2", b"e3"])
        assert await read(from_two, 1) == [(3, b"e3")]
        assert await from_start.next(0.05) == []
        recording.append([b"e4"])
        assert await read(from_start, 1) == [(4, b"e4")]
        assert await read(from_two, 1) == [(4, b"e4")]
        assert not await b.finished_at(sid, 4)
        recording.finish()
        recording.append([b"after the end"])
        assert await read_to_end(from_start) == []
        assert await from_start.next(POLL) is None
        assert await read_to_end(from_two) == []
        assert await b.finished_at(sid, 4)
        assert not await b.finished_at(sid, 3)
        # The keys are where the module docstring says, under the prefix.
        client = Redis.from_url(url)
        try:
            assert await client.hget(f"replay:{sid}:meta", "owner") == a.instance_id.encode()
            assert await client.hget(f"replay:{sid}:meta", "ended") == b"4"
            entries = await client.xrange(f"replay:{sid}:events")
            assert entries is not None
            ids = [entry[0] for entry in entries]
            assert ids == [b"1-0", b"2-0", b"3-0", b"4-0", b"4-1"]
            assert await client.exists(f"replay:instance:{a.instance_id}")
        finally:
            await client.aclose()


async def test_several_followers_on_both_instances_each_get_every_event(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        recording = a.record(lambda: None)
        recording.append([b"e1"])
        # The owner knows its stream before Redis does; the others once it is there.
        followers = [await a.follow(recording.stream_id, 0)]
        assert await a.drain(DEADLINE)
        followers += [await b.follow(recording.stream_id, 0) for _ in range(2)]
        for follower in followers:
            assert await read(follower, 1) == [(1, b"e1")]
        for n in range(2, 12):
            recording.append([f"e{n}".encode()])
        recording.finish()
        expected = numbered([f"e{n}".encode() for n in range(2, 12)], 2)
        for follower in followers:
            assert await read_to_end(follower) == expected
            await follower.aclose()


async def test_a_stream_without_events_ends_at_once(url: str) -> None:
    async with opened(url) as a:
        recording = a.record(lambda: None)
        recording.finish()
        assert await a.drain(DEADLINE)
        follower = await a.follow(recording.stream_id, 0)
        assert await follower.next(POLL) is None
        assert await a.finished_at(recording.stream_id, 0)
        with pytest.raises(BadPositionError):
            await a.follow(recording.stream_id, 1)


async def test_unknown_streams_and_positions_past_the_end(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: b.follow("x" * 22, 0),
            lambda: b.finished_at("x" * 22, 0),
            lambda: b.stop("x" * 22),
            lambda: b.finish_orphan("x" * 22, 0, [b"error"]),
        ]
        for call in calls:
            with pytest.raises(UnknownStreamError) as caught:
                await call()
            assert caught.value.status == 404
        recording = a.record(lambda: None)
        recording.append([b"e1", b"e2"])
        assert await a.drain(DEADLINE)
        # A live stream may be followed from past its last event: they are still to come.
        ahead = await b.follow(recording.stream_id, 5)
        assert await ahead.next(0.05) == []
        recording.finish()
        assert await a.drain(DEADLINE)
        with pytest.raises(BadPositionError) as bad:
            await b.follow(recording.stream_id, 3)
        assert bad.value.status == 400
        assert await read_to_end(await b.follow(recording.stream_id, 2)) == []


async def test_the_byte_bound_trims_the_oldest_events(url: str) -> None:
    async with opened(url, max_stream_bytes=50) as a, opened(url) as b:
        recording = a.record(lambda: None)
        sid = recording.stream_id

        async def send(first: int, last: int) -> None:
            # Events of 10 bytes, in Redis before the next ones come, so that Redis trims them.
            for n in range(first, last + 1):
                recording.append([b"%09d\n" % n])
                assert await a.drain(DEADLINE)

        await send(1, 10)
        with pytest.raises(EventsGoneError) as gone:
            await b.follow(sid, 4)
        assert gone.value.status == 410
        lagging = await b.follow(sid, 5)
        # Fifteen more: the events after 5 go before the lagging reader reads them.
        await send(11, 25)
        with pytest.raises(EventsGoneError):
            await lagging.next(POLL)
        recent = await b.follow(sid, 20)
        recording.finish()
        assert [seq for seq, _ in await read_to_end(recent)] == [21, 22, 23, 24, 25]


async def test_a_finished_stream_expires_after_the_ttl_and_a_live_one_does_not(url: str) -> None:
    async with opened(url, ttl=0.3, heartbeat=FAST) as a:
        recording = a.record(lambda: None)
        recording.append([b"e1"])
        follower = await a.follow(recording.stream_id, 0)
        assert await read(follower, 1) == [(1, b"e1")]
        # Nothing for more than three ttls: the live stream's keys are kept alive meanwhile.
        assert await follower.next(1.0) == []
        assert await a.finished_at(recording.stream_id, 1) is False
        recording.finish()
        assert await follower.next(POLL) is None
        with anyio.fail_after(DEADLINE):
            for _ in range(1000):
                try:
                    await a.follow(recording.stream_id, 0)
                except UnknownStreamError:
                    break
                await anyio.sleep(0.05)


async def test_stop_reaches_the_owner_from_another_instance(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        stops: list[str] = []
        stopped = anyio.Event()
        recording = a.record(lambda: stops.append("first"))
        marker = a.record(stopped.set)
        assert await a.drain(DEADLINE)
        await b.stop(recording.stream_id)
        await b.stop(recording.stream_id)
        # The channel keeps the order: once the marker's stop has arrived, both the others have.
        await b.stop(marker.stream_id)
        with anyio.fail_after(DEADLINE):
            await stopped.wait()
        assert stops == ["first"]
        recording.finish()
        assert await a.drain(DEADLINE)
        await b.stop(recording.stream_id)  # ended: nothing to do
        # The owner stops its own streams itself (Redis or not).
        local = a.record(lambda: stops.append("local"))
        await a.stop(local.stream_id)
        await a.stop(local.stream_id)
        assert stops == ["first", "local"]


async def test_resp3_replies_are_read_too(url: str) -> None:
    async with opened(f"{url}?protocol=3") as a, opened(f"{url}?protocol=3") as b:
        recording = a.record(lambda: None)
        recording.append([b"e1", b"e2"])
        recording.finish()
        assert await a.drain(DEADLINE)
        assert await read_to_end(await b.follow(recording.stream_id, 0)) == numbered([b"e1", b"e2"])
        assert await b.finished_at(recording.stream_id, 2)


async def test_a_failing_stop_is_logged_and_the_next_stops_still_arrive(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sse_bridge")
    async with opened(url) as a, opened(url) as b:

        def fail() -> None:
            raise RuntimeError("the app could not stop")

        failing = a.record(fail)
        stopped = anyio.Event()
        marker = a.record(stopped.set)
        assert await a.drain(DEADLINE)
        await b.stop(failing.stream_id)
        await b.stop(marker.stream_id)
        with anyio.fail_after(DEADLINE):
            await stopped.wait()
        assert f"stopping stream {stream_tag(failing.stream_id)} failed" in caplog.text
        assert failing.stream_id not in caplog.text
        assert "the app could not stop" in caplog.text


async def test_a_stop_for_an_owner_that_lives_but_does_not_listen_asks_to_retry(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        recording = a.record(lambda: None)
        assert await a.drain(DEADLINE)
        (listener,) = [task for task in a.tasks if task.get_name() == "stop listener"]
        listener.cancel()
        with anyio.fail_after(DEADLINE):
            await asyncio.wait([listener])
        with pytest.raises(StoreUnavailableError, match="cannot be reached now; try again"):
            await b.stop(recording.stream_id)


async def test_stops_reach_the_owner_again_once_redis_is_back(server: RedisServer) -> None:
    async with opened(server.url, heartbeat=FAST) as a, opened(server.url, heartbeat=FAST) as b:
        stopped = anyio.Event()
        recording = a.record(stopped.set)
        assert await a.drain(DEADLINE)
        server.stop(save=True)
        await until_unavailable(a)
        assert not await recording.attended()  # no reader here, and the others cannot tell
        server.start()
        await until_available(a)
        await until_available(b)
        # The owner subscribes again at its next heartbeat; until then a stop asks to retry.
        with anyio.fail_after(DEADLINE):
            for _ in range(1000):
                try:
                    await b.stop(recording.stream_id)
                    break
                except StoreUnavailableError:
                    await anyio.sleep(FAST / 2)
            await stopped.wait()


def test_the_store_must_be_open_to_record() -> None:
    with pytest.raises(RuntimeError, match=r"open\(\) must be awaited first"):
        RedisStore("redis://127.0.0.1:1").record(lambda: None)


async def test_open_twice_is_a_mistake_but_open_after_aclose_is_not(url: str) -> None:
    store = RedisStore(url)
    async with opened(url) as a:
        with pytest.raises(RuntimeError, match="called twice"):
            await a.open()
        # A server checks its store at startup, closes it, and opens it again to serve.
        await store.open()
        await store.aclose()
        await store.open()
        try:
            recording = store.record(lambda: None)
            recording.append([b"e1"])
            assert await store.drain(DEADLINE)
            assert await read(await a.follow(recording.stream_id, 0), 1) == [(1, b"e1")]
        finally:
            await store.aclose()


async def test_attended_sees_readers_on_this_and_other_instances(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        recording = a.record(lambda: None)
        assert await a.drain(DEADLINE)
        assert not await recording.attended()
        remote = await b.follow(recording.stream_id, 0)
        assert await remote.next(0.05) == []
        assert await recording.attended()
        other = a.record(lambda: None)
        assert await a.drain(DEADLINE)
        local = await a.follow(other.stream_id, 0)
        assert await other.attended()
        await local.aclose()
        assert not await other.attended()


CHILD = """
import asyncio, sys
from sse_bridge._resume.redis.store import RedisStore, redact

async def main() -> None:
    store = RedisStore(sys.argv[1], heartbeat=float(sys.argv[2]))
    await store.open()
    recording = store.record(lambda: None)
    recording.append([b"e1", b"e2"])
    if not await store.drain(10):
        raise SystemExit("the events did not reach Redis")
    print(recording.stream_id, flush=True)
    await asyncio.sleep(60)  # until killed

asyncio.run(main())
"""


@pytest.mark.timing
async def test_a_killed_owner_is_noticed_and_its_stream_finished_by_a_reader(url: str) -> None:
    process = await anyio.open_process([sys.executable, "-c", CHILD, url, str(FAST)])
    try:
        assert process.stdout is not None
        with anyio.fail_after(DEADLINE):
            sid = (await process.stdout.receive()).decode().strip()
        async with opened(url, heartbeat=FAST) as b:
            follower = await b.follow(sid, 0)
            assert await read(follower, 2) == numbered([b"e1", b"e2"])
            # While the owner lives, silence is only silence.
            assert await follower.next(6 * FAST) == []
            process.send_signal(signal.SIGKILL)
            # Within a second: three heartbeats for the key to expire, two to be sure, and a
            # heartbeat's read.
            with anyio.fail_after(10 * FAST), pytest.raises(OwnerLostError):
                await read(follower, 1)
            await b.stop(sid)  # its owner is gone: nothing to stop, and no error
            await b.finish_orphan(sid, 2, [b"error"])
            # A second reader that saw the same: the first finish stands.
            await b.finish_orphan(sid, 2, [b"other error", b"more"])
            assert await read_to_end(follower) == [(3, b"error")]
            assert await read_to_end(await b.follow(sid, 0)) == numbered([b"e1", b"e2", b"error"])
            assert await b.finished_at(sid, 3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with anyio.fail_after(DEADLINE):
            await process.wait()
        await process.aclose()


async def test_an_orphan_reader_ahead_of_redis_ends_the_stream_after_what_it_got(
    url: str,
) -> None:
    async with opened(url) as a, opened(url) as b:
        recording = a.record(lambda: None)
        recording.append([b"e1", b"e2"])
        assert await a.drain(DEADLINE)
        # This reader got event 3 from the owner, which died before its writer stored it.
        await b.finish_orphan(recording.stream_id, 3, [b"error"])
        assert await read_to_end(await b.follow(recording.stream_id, 3)) == [(4, b"error")]
        behind = await b.follow(recording.stream_id, 0)
        assert await read(behind, 2) == numbered([b"e1", b"e2"])
        with pytest.raises(EventsGoneError):
            await behind.next(POLL)


def transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "sse_bridge" and "resume store" in record.getMessage()
    ]


async def test_redis_lost_mid_stream_holds_the_events_and_sends_them_when_it_returns(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    async with opened(server.url, heartbeat=FAST) as a:
        recording = a.record(lambda: None)
        sid = recording.stream_id
        recording.append([b"e1", b"e2", b"e3"])
        follower = await a.follow(sid, 0)
        assert await read(follower, 3) == numbered([b"e1", b"e2", b"e3"])

        async with anyio.create_task_group() as tasks:
            failures: list[BaseException] = []

            async def follow() -> None:
                try:
                    await follower.next(DEADLINE)
                except StoreUnavailableError as error:
                    failures.append(error)

            tasks.start_soon(follow)
            await anyio.wait_all_tasks_blocked()  # in XREAD
            server.stop(save=True)
        assert len(failures) == 1, "a reader whose Redis went away must get a 503"
        assert failures[0].__class__ is StoreUnavailableError

        recording.append([b"e4"])
        recording.append([b"e5"])
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: a.follow(sid, 0),
            lambda: a.finished_at("x" * 22, 0),
            lambda: a.stop("x" * 22),
            lambda: a.finish_orphan("x" * 22, 0, []),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailableError) as unavailable:
                await call()
            assert unavailable.value.status == 503
        # What concerns its own streams, the owner answers alone.
        assert not await a.finished_at(sid, 5)
        # Several failed heartbeats, one line.
        assert not await a.drain(10 * FAST)
        lines = transitions(caplog)
        assert len(lines) == 1, lines
        assert lines[0].startswith("sse_bridge: resume store unavailable: ")

        server.start()
        assert await a.drain(DEADLINE)
        assert transitions(caplog)[1:] == ["sse_bridge: resume store available again"]
        recording.append([b"e6"])
        recording.finish()
        again = await a.follow(sid, 0)
        expected = numbered([b"e1", b"e2", b"e3", b"e4", b"e5", b"e6"])
        assert await read_to_end(again) == expected
        assert len(transitions(caplog)) == 2


async def test_a_redis_restart_that_lost_the_data_keeps_the_new_events(
    server: RedisServer,
) -> None:
    async with opened(server.url, heartbeat=FAST) as a, opened(server.url, heartbeat=FAST) as b:
        recording = a.record(lambda: None)
        sid = recording.stream_id
        recording.append([b"e1", b"e2"])
        # This one sends nothing more before its end.
        quiet = a.record(lambda: None)
        quiet.append([b"q1", b"q2"])
        assert await a.drain(DEADLINE)
        early = await b.follow(quiet.stream_id, 0)
        server.stop(save=False)
        await until_unavailable(a)
        recording.append([b"e3"])
        server.start()
        assert await a.drain(DEADLINE)
        recording.finish()
        quiet.finish()
        assert await a.drain(DEADLINE)
        await until_available(b)
        # Only its end is left: whoever had not read its events learns that they are gone.
        with pytest.raises(EventsGoneError):
            await early.next(POLL)
        with pytest.raises(EventsGoneError):
            await a.follow(quiet.stream_id, 1)
        assert await read_to_end(await a.follow(quiet.stream_id, 2)) == []
        # A reader at 2 misses nothing; one from the start learns that e1 and e2 are gone.
        assert await read_to_end(await b.follow(sid, 2)) == [(3, b"e3")]
        with pytest.raises(EventsGoneError):
            await b.follow(sid, 0)


async def test_an_outage_longer_than_the_byte_bound_keeps_the_newest_events(
    server: RedisServer,
) -> None:
    async with opened(server.url, heartbeat=FAST, max_stream_bytes=30) as a:
        recording = a.record(lambda: None)
        sid = recording.stream_id
        recording.append([b"e1"])
        assert await a.drain(DEADLINE)
        server.stop(save=True)
        await until_unavailable(a)
        recording.append([b"%09d\n" % n for n in range(2, 12)])  # ten events of 10 bytes
        assert not await a.drain(2 * FAST)
        # What waits for Redis is bounded like what Redis keeps.
        assert [seq for seq, _ in recording.pending] == [9, 10, 11]
        server.start()
        assert await a.drain(DEADLINE)
        recording.finish()
        with pytest.raises(EventsGoneError):
            await a.follow(sid, 0)
        assert [seq for seq, _ in await read_to_end(await a.follow(sid, 8))] == [9, 10, 11]


async def test_a_stream_redis_refuses_stops_being_resumable_rather_than_keep_a_gap(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    async with opened(url) as a:
        recording = a.record(lambda: None)
        recording.append([b"e1"])
        assert await a.drain(DEADLINE)
        client = Redis.from_url(url)
        try:
            # Anything that makes XADD fail: here the events key holds a string.
            await client.delete(a.keys.events(recording.stream_id))
            await client.set(a.keys.events(recording.stream_id), b"not a stream")
        finally:
            await client.aclose()
        recording.append([b"e2"])
        assert await a.drain(DEADLINE)
        recording.append([b"e3"])
        recording.finish()
        assert await a.drain(DEADLINE)
        with pytest.raises(UnknownStreamError):
            await a.follow(recording.stream_id, 0)
        lines = transitions(caplog)
        assert len(lines) == 1, lines
        assert (
            f"refused stream {stream_tag(recording.stream_id)}, which cannot be resumed" in lines[0]
        )


@pytest.mark.timing
async def test_aclose_sends_what_the_writers_hold_and_announces_the_leave(url: str) -> None:
    a = RedisStore(url)
    await a.open()
    recording = a.record(lambda: None)
    recording.append([b"e1", b"e2"])
    await a.aclose()
    await a.aclose()
    async with opened(url, heartbeat=FAST) as b:
        follower = await b.follow(recording.stream_id, 0)
        assert await read(follower, 2) == numbered([b"e1", b"e2"])
        # The owner's key went with it: its readers need not wait the three seconds (three of
        # its heartbeats) that the key would have lived.
        with anyio.fail_after(1.5), pytest.raises(OwnerLostError):
            await read(follower, 1)


async def test_aclose_does_not_wait_for_a_redis_that_is_away(server: RedisServer) -> None:
    a = RedisStore(server.url, heartbeat=FAST)
    await a.open()
    recording = a.record(lambda: None)
    server.stop()
    await until_unavailable(a)
    recording.append([b"e1"])
    with anyio.fail_after(2.0):
        await a.aclose()


async def test_open_tells_which_redis_it_cannot_reach() -> None:
    port = free_port()
    store = RedisStore(f"redis://user:secret@127.0.0.1:{port}/0")
    with pytest.raises(StoreUnavailableError) as caught:
        await store.open()
    message = str(caught.value)
    assert message.startswith(f"cannot reach Redis at redis://user:***@127.0.0.1:{port}/0: ")
    assert "secret" not in message
    assert isinstance(caught.value, ResumeError)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://user:secret@host:6380/1", "rediss://user:***@host:6380/1"),
        ("redis://:secret@host", "redis://:***@host"),
        ("unix:///run/redis.sock?db=1&password=secret", "unix:///run/redis.sock?db=1&password=***"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("http://user:secret@localhost:6379", {}, "must start with redis://"),
        ("localhost:6379", {}, "must start with redis://"),
        ("redis://localhost", {"ttl": -1}, "ttl must be"),
        ("redis://localhost", {"max_stream_bytes": 0}, "max_stream_bytes must be"),
        ("redis://localhost", {"heartbeat": 0}, "heartbeat must be"),
    ],
)
def test_bad_options_are_refused(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        RedisStore(url, **options)
    assert "secret" not in str(caught.value)


def test_without_redis_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # The import of redis-py is in redis/client.py, which every part of the store imports.
    monkeypatch.delitem(sys.modules, "sse_bridge._resume.redis.store")
    monkeypatch.delitem(sys.modules, "sse_bridge._resume.redis.client")
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"pip install 'sse-bridge\[resume\]'"):
        importlib.import_module("sse_bridge._resume.redis.store")


def test_without_redis_server_the_tests_fail_and_say_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs it"):
        redis_binary()


def test_the_redis_server_helper_restarts_on_the_same_port(server: RedisServer) -> None:
    port = server.port
    assert ping(port)
    server.stop()
    assert not ping(port)
    server.start()
    assert server.port == port
    assert ping(port)


@pytest.mark.parametrize(
    ("bound", "expected_rounds"),
    # Each stream is 1 + 2 + 2 + 2 commands, taken whole: a round takes streams until it holds
    # the bound's number of commands or more.
    [(4, 3), (7, 3), (8, 2), (14, 2), (15, 1)],
)
async def test_one_round_trip_carries_many_streams_within_its_bound(
    url: str, monkeypatch: pytest.MonkeyPatch, bound: int, expected_rounds: int
) -> None:
    monkeypatch.setattr(_redis_writer, "ROUND_COMMANDS", bound)
    async with opened(url, flush_window=0.05) as store:
        recordings = [store.record(lambda: None) for _ in range(3)]
        for i, recording in enumerate(recordings):
            recording.append([b"a%d" % i, b"b%d" % i])
            recording.finish()
        rounds = 0
        flush = store.writer.flush

        async def counted(batch: Any) -> None:
            nonlocal rounds
            rounds += 1
            await flush(batch)

        monkeypatch.setattr(store.writer, "flush", counted)
        assert await store.drain(DEADLINE)
        assert rounds == expected_rounds
        for i, recording in enumerate(recordings):
            follower = await store.follow(recording.stream_id, 0)
            assert await read_to_end(follower) == numbered([b"a%d" % i, b"b%d" % i])


def test_the_flush_window_is_checked(url: str) -> None:
    with pytest.raises(ValueError, match="flush_window must be a finite number of seconds"):
        RedisStore(url, flush_window=-1)


ENTRY = (b"1-0", {b"e": b"x"})


@pytest.mark.parametrize(
    "response",
    [
        pytest.param([[b"k", [ENTRY]]], id="RESP2"),
        pytest.param({b"k": [[ENTRY]]}, id="RESP3"),
    ],
)
def test_an_xread_reply_gives_the_entries_of_its_one_stream(response: object) -> None:
    assert entries(response) == [ENTRY]


@pytest.mark.parametrize(
    ("entry_id", "expected"),
    [(b"3-0", (3, True)), ("3-1", (3, False)), (b"0-1", (0, False)), (b"12-0", (12, True))],
)
def test_an_entry_id_is_an_event_or_the_end(entry_id: object, expected: tuple[int, bool]) -> None:
    assert parse_id(entry_id) == expected


def test_a_reply_of_an_unexpected_type_is_refused() -> None:
    assert text("s") == text(b"s") == "s"
    with pytest.raises(TypeError, match="unexpected reply from Redis: 1"):
        text(1)
    with pytest.raises(TypeError, match="to XREAD"):
        entries(None)


def test_every_key_and_channel_is_under_the_prefix() -> None:
    keys = Keys("p:")
    assert [
        keys.events("s"),
        keys.meta("s"),
        keys.attended("s"),
        keys.instance("i"),
        keys.stop_channel("i"),
    ] == ["p:s:events", "p:s:meta", "p:s:attended", "p:instance:i", "p:stop:i"]
