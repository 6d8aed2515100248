"""Races the Redis store must win, made to happen on cue: a reader that finishes an orphan while
its owner, alive after all, writes the next event or refreshes the stream's keys between the
reader's check and its EXEC; and a Redis that restarts empty twice."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from sse_bridge._resume.redis.store import RedisStore
from sse_bridge._resume.store import stream_tag
from tests._redis import RedisServer
from tests.test_resume_redis import (
    DEADLINE,
    FAST,
    numbered,
    opened,
    read_to_end,
    until_available,
    until_unavailable,
)

pytestmark = pytest.mark.anyio

SLOW = 10.0


def before_exec(
    monkeypatch: pytest.MonkeyPatch, store: RedisStore, action: Callable[[], Awaitable[object]]
) -> list[str]:
    """Run ``action`` once, just before the next pipeline of ``store`` is sent (the EXEC of a
    transaction: the commands before it, under WATCH, went at once). Returns the log of sends."""
    real = store.client().pipeline
    sends: list[str] = []

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        async def interrupted(*args: Any, **kwargs: Any) -> Any:
            if not sends:
                await action()
            sends.append("exec")
            return await execute(*args, **kwargs)

        monkeypatch.setattr(pipe, "execute", interrupted)
        return pipe

    monkeypatch.setattr(store.client(), "pipeline", pipeline)
    return sends


async def test_an_orphan_finish_that_loses_to_the_living_owner_writes_nothing(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        opened(url, heartbeat=SLOW, key_prefix="race-event:") as owner,
        opened(url, heartbeat=SLOW, key_prefix="race-event:") as reader,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1", b"e2"])
        assert await owner.drain(DEADLINE)

        async def owner_writes_on() -> None:
            recording.append([b"e3"])
            assert await owner.drain(DEADLINE)

        sends = before_exec(monkeypatch, reader, owner_writes_on)
        # The reader took the owner for dead after event 2; the owner wrote event 3 meanwhile.
        await reader.finish_orphan(recording.stream_id, 2, [b"error"])
        assert sends == ["exec"]
        assert not await reader.finished_at(recording.stream_id, 3)
        recording.append([b"e4"])
        recording.finish()
        assert await owner.drain(DEADLINE)
        assert not recording.taken_over
        follower = await reader.follow(recording.stream_id, 0)
        assert await read_to_end(follower) == numbered([b"e1", b"e2", b"e3", b"e4"])


async def test_an_orphan_is_finished_even_if_its_keys_were_refreshed_meanwhile(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        opened(url, heartbeat=SLOW, key_prefix="race-refresh:") as owner,
        opened(url, heartbeat=SLOW, key_prefix="race-refresh:") as reader,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1", b"e2"])
        assert await owner.drain(DEADLINE)
        client = Redis.from_url(url)
        try:

            async def owner_refreshes() -> None:
                # The owner's last heartbeat before it died: no event, only the keys' expiry.
                await client.pexpire(recording.meta_key, 1_000_000)

            sends = before_exec(monkeypatch, reader, owner_refreshes)
            await reader.finish_orphan(recording.stream_id, 2, [b"error"])
        finally:
            await client.aclose()
        # The first EXEC found its keys touched; the second, after a fresh look, went through.
        assert sends == ["exec", "exec"]
        assert await reader.finished_at(recording.stream_id, 3)
        follower = await reader.follow(recording.stream_id, 0)
        assert await read_to_end(follower) == numbered([b"e1", b"e2", b"error"])


async def test_after_each_empty_restart_of_redis_the_owner_says_again_whose_stream_it_is(
    server: RedisServer,
) -> None:
    async with (
        opened(server.url, heartbeat=FAST) as owner,
        opened(server.url, heartbeat=FAST) as other,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1"])
        # This one sends nothing after the first event: Redis learns it again all the same.
        quiet = owner.record(lambda: None)
        quiet.append([b"q1"])
        assert await owner.drain(DEADLINE)
        for n in (2, 3):
            # Redis restarts without its data: the stream's keys, its owner's too, are gone.
            server.stop(save=False)
            await until_unavailable(owner)
            server.start()
            await until_available(owner)
            await until_available(other)
            recording.append([b"e%d" % n])
            assert await owner.drain(DEADLINE)
            # Another instance finds the stream and its owner, from where the events are kept.
            follower = await other.follow(recording.stream_id, n - 1)
            assert follower.owner == owner.instance_id
            assert (await other.follow(quiet.stream_id, 1)).owner == owner.instance_id
        recording.finish()
        assert await read_to_end(follower) == [(3, b"e3")]


async def test_an_owner_taken_for_dead_stops_its_stream_and_says_why(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    async with (
        opened(url, heartbeat=SLOW, key_prefix="taken:") as owner,
        opened(url, heartbeat=SLOW, key_prefix="taken:") as reader,
    ):
        stops: list[str] = []
        recording = owner.record(lambda: stops.append("stopped"))
        recording.append([b"e1"])
        assert await owner.drain(DEADLINE)
        # A reader took the owner for dead after event 1 and ended the stream for it.
        await reader.finish_orphan(recording.stream_id, 1, [b"error"])
        recording.append([b"e2", b"e3"])
        assert await owner.drain(DEADLINE)
        assert stops == ["stopped"]
        assert recording.taken_over
        # What it still held for Redis is no longer counted against max_pending_bytes.
        assert owner.backlog.bytes == 0
        assert [r.getMessage() for r in caplog.records] == [
            f"sse_bridge: stream {stream_tag(recording.stream_id)} was ended by another "
            "instance, which took this one for dead; its client gets an error"
        ]
        # Nothing more of it is stored, and the owner has nothing left to send.
        recording.append([b"e4"])
        recording.finish()
        assert await owner.drain(DEADLINE)
        assert not owner.writer.dirty
        assert recording.stream_id not in owner.live
        client = Redis.from_url(url)
        try:
            ids = [entry_id for entry_id, _ in await client.xrange(recording.events_key) or []]
            # One end, the reader's (an event of the round trip that found the stream taken may
            # have gone in after it: no reader reads past an end).
            assert ids[:3] == [b"1-0", b"2-0", b"2-1"]
            assert [i for i in ids if isinstance(i, bytes) and i.endswith(b"-1")] == [b"2-1"]
            assert await client.hget(recording.meta_key, "owner") == owner.instance_id.encode()
            assert await client.hget(recording.meta_key, "ended_by") == (
                reader.instance_id.encode()
            )
        finally:
            await client.aclose()
        follower = await reader.follow(recording.stream_id, 0)
        assert await read_to_end(follower) == numbered([b"e1", b"error"])
        await owner.stop(recording.stream_id)
        assert stops == ["stopped"]


@pytest.mark.parametrize("asked", ["answered", "not answered"])
async def test_a_round_trip_whose_reply_is_lost_is_sent_again_without_a_gap_or_a_double(
    url: str, monkeypatch: pytest.MonkeyPatch, asked: str
) -> None:
    async with opened(url, heartbeat=FAST, key_prefix="half-done:") as owner:
        if asked == "not answered":
            # Whether another instance ended the stream cannot be told just then either: the
            # owner goes on as if not, and the next round trip asks again.
            hget = owner.client().hget
            failures = [RedisConnectionError("Connection reset by peer")]

            async def flaky_hget(*args: Any) -> Any:
                if failures:
                    raise failures.pop()
                return await hget(*args)

            monkeypatch.setattr(owner.client(), "hget", flaky_hget)
        real = owner.client().pipeline
        lost: list[int] = []

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real(*args, **kwargs)
            execute = pipe.execute

            async def reply_lost(*args: Any, **kwargs: Any) -> Any:
                writes = any(command[0][0] == "XADD" for command in pipe.command_stack)
                result = await execute(*args, **kwargs)
                if writes and not lost:
                    # Redis did it all; the connection broke before its reply came.
                    lost.append(len(result))
                    raise RedisConnectionError("Connection reset by peer")
                return result

            monkeypatch.setattr(pipe, "execute", reply_lost)
            return pipe

        monkeypatch.setattr(owner.client(), "pipeline", pipeline)
        recording = owner.record(lambda: None)
        recording.append([b"e1", b"e2"])
        assert await owner.drain(DEADLINE)
        assert lost
        recording.append([b"e3"])
        recording.finish()
        assert await owner.drain(DEADLINE)
        assert not recording.taken_over
        follower = await owner.follow(recording.stream_id, 0)
        assert await read_to_end(follower) == numbered([b"e1", b"e2", b"e3"])


@pytest.mark.parametrize("meanwhile", ["an event", "the end", "an event and the end"])
async def test_what_comes_while_a_round_trip_is_under_way_goes_in_the_next(
    url: str, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    async with opened(url, heartbeat=SLOW, key_prefix="meanwhile:") as store:
        recording = store.record(lambda: None)
        assert await store.drain(DEADLINE)

        async def the_generation_goes_on() -> None:
            if "event" in meanwhile:
                recording.append([b"e2"])
            if "end" in meanwhile:
                recording.finish()

        sends = before_exec(monkeypatch, store, the_generation_goes_on)
        recording.append([b"e1"])
        # drain(): every event appended so far, and the end if given, is in Redis.
        assert await store.drain(DEADLINE)
        assert len(sends) == 2
        expected = [b"e1", b"e2"] if "event" in meanwhile else [b"e1"]
        client = Redis.from_url(url)
        try:
            entries = await client.xrange(recording.events_key) or []
        finally:
            await client.aclose()
        ends = [(b"%d-1" % len(expected), {b"end": b"1"})] if "end" in meanwhile else []
        assert (
            entries == [(b"%d-0" % seq, {b"e": event}) for seq, event in numbered(expected)] + ends
        )
