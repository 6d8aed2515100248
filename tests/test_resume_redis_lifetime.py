"""The Redis store's life as a server sees it: aclose() sends what the writer holds and says
that this instance has left, a store closed during an outage opens again, a task that fails says
so, the heartbeat says again whose stream it is, and a Redis that restarted between two calls is
not taken for one that is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import anyio
import anyio.abc
import pytest
from redis.asyncio import Redis

from loadtests.stack import free_port
from sse_bridge._resume.redis import instance
from sse_bridge._resume.redis.store import RedisStore
from sse_bridge._resume.store import StoreUnavailableError
from tests._redis import RedisServer
from tests.test_resume_redis import (
    DEADLINE,
    FAST,
    numbered,
    opened,
    read,
    read_to_end,
    until_unavailable,
)

pytestmark = pytest.mark.anyio

SLOW = 10.0


async def test_aclose_sends_what_the_writer_holds_and_says_this_instance_left(
    url: str, client: Redis
) -> None:
    store = RedisStore(url, heartbeat=SLOW, key_prefix="leave:")
    await store.open()
    instance_key = store.keys.instance(store.instance_id)
    assert await client.exists(instance_key)
    recording = store.record(lambda: None)
    recording.append([b"e1", b"e2"])
    await store.aclose()
    assert not store.tasks
    assert not await client.exists(instance_key)
    async with opened(url, key_prefix="leave:") as other:
        follower = await other.follow(recording.stream_id, 0)
        assert follower.owner == store.instance_id
        assert await read(follower, 2) == numbered([b"e1", b"e2"])


async def test_a_store_closed_while_redis_was_away_opens_again(server: RedisServer) -> None:
    store = RedisStore(server.url, heartbeat=FAST)
    await store.open()
    server.stop(save=True)
    await until_unavailable(store)
    await store.aclose()
    server.start()
    await store.open()
    try:
        assert store.available
        recording = store.record(lambda: None)
        recording.append([b"e1"])
        recording.finish()
        assert await store.drain(DEADLINE)
        assert await read_to_end(await store.follow(recording.stream_id, 0)) == numbered([b"e1"])
    finally:
        await store.aclose()


@pytest.mark.parametrize("name", ["resume writer", "heartbeat"])
async def test_a_store_task_that_fails_says_which_and_why(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.ERROR, logger="sse_bridge")
    async with opened(url, watched=False, heartbeat=FAST, key_prefix="task-failed:") as store:
        (task,) = [task for task in store.tasks if task.get_name() == name]

        def broken(*args: Any) -> None:
            raise RuntimeError(f"the {name} broke")

        async def broken_flush(*args: Any) -> None:
            broken()

        if name == "resume writer":
            monkeypatch.setattr(store.writer, "flush", broken_flush)
            store.record(lambda: None)
        else:
            # What the heartbeat does after each round trip that went through.
            monkeypatch.setattr(store, "came_back", broken)
        with anyio.fail_after(DEADLINE):
            await asyncio.wait([task])
        assert task not in store.tasks
    (record,) = caplog.records
    assert record.getMessage() == f"sse_bridge: resume store task {name} failed"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == f"the {name} broke"


async def test_the_heartbeat_says_again_whose_stream_it_is(url: str, client: Redis) -> None:
    # ttl 0.3 s: a live stream's keys are refreshed every 0.1 s.
    async with opened(url, heartbeat=0.05, ttl=0.3, key_prefix="owner-again:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1"])
        assert await store.drain(DEADLINE)
        # As after a Redis that lost the stream's meta between two of its writes.
        assert await client.hdel(recording.meta_key, "owner") == 1
        with anyio.fail_after(DEADLINE):
            for _ in range(int(DEADLINE / 0.01)):
                if await client.hget(recording.meta_key, "owner") is not None:
                    break
                await anyio.sleep(0.01)
        assert await client.hget(recording.meta_key, "owner") == store.instance_id.encode()


async def test_a_redis_restarted_between_two_calls_is_not_taken_for_away(
    server: RedisServer,
) -> None:
    async with (
        opened(server.url, heartbeat=SLOW) as owner,
        opened(server.url, heartbeat=SLOW) as other,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1"])
        assert await owner.drain(DEADLINE)
        assert await other.bound_to(recording.stream_id) is None
        # The pooled connections are closed by the restart; the next call finds out, and its
        # one retry on a new connection goes through.
        server.stop(save=True)
        server.start()
        follower = await other.follow(recording.stream_id, 0)
        assert other.available
        assert await read(follower, 1) == [(1, b"e1")]


@pytest.mark.parametrize("first", ["writer", "stop listener", "heartbeat"])
async def test_the_task_that_finds_redis_gone_logs_why(
    server: RedisServer, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    async with opened(server.url, heartbeat=FAST if first == "heartbeat" else SLOW) as store:
        recording = store.record(lambda: None)
        assert await store.drain(DEADLINE)
        if first != "stop listener":
            # The stop channel's subscriber would see its connection close first.
            (listener,) = [task for task in store.tasks if task.get_name() == "stop listener"]
            listener.cancel()
            with anyio.fail_after(DEADLINE):
                await asyncio.wait([listener])
        server.stop()
        # Each one alone to find out (no heartbeat before the test ends, but for its own).
        if first == "writer":
            recording.append([b"e1"])
        await until_unavailable(store)
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith("sse_bridge: resume store unavailable: ")
        # redis-py's words for it, which name where Redis was.
        assert f"127.0.0.1:{server.port}" in line


async def test_each_heartbeat_sets_the_instance_key_to_three_heartbeats(
    url: str, client: Redis
) -> None:
    async with opened(url, heartbeat=0.05, key_prefix="beat:") as store:
        key = store.keys.instance(store.instance_id)
        assert await client.pexpire(key, 1_000_000)
        with anyio.fail_after(DEADLINE):
            for _ in range(int(DEADLINE / 0.01)):
                if 0 < await client.pttl(key) <= 150:
                    break
                await anyio.sleep(0.01)


async def test_open_says_what_went_wrong_in_so_many_words(url: str) -> None:
    async with opened(url, key_prefix="open-twice:") as store:
        with pytest.raises(RuntimeError) as twice:
            await store.open()
    assert str(twice.value) == "RedisStore.open() was called twice (without aclose() between)"
    with pytest.raises(RuntimeError) as closed:
        store.record(lambda: None)
    assert str(closed.value) == "RedisStore.open() must be awaited first"
    port = free_port()
    with pytest.raises(StoreUnavailableError) as away:
        await RedisStore(f"redis://127.0.0.1:{port}/0").open()
    prefix = f"cannot reach Redis at redis://127.0.0.1:{port}/0: "
    assert str(away.value).startswith(prefix)
    # redis-py's reason, which names where it looked.
    assert f"127.0.0.1:{port}" in str(away.value).removeprefix(prefix)


async def test_a_stop_channel_message_that_is_not_an_id_is_ignored(url: str, client: Redis) -> None:
    async with (
        opened(url, key_prefix="stop-garbage:") as a,
        opened(url, key_prefix="stop-garbage:") as b,
    ):
        stopped = anyio.Event()
        recording = a.record(stopped.set)
        assert await a.drain(DEADLINE)
        # Bytes that no stream id is made of: the channel goes on listening.
        assert await client.publish(a.keys.stop_channel(a.instance_id), b"\xff\xfe") == 1
        await b.stop(recording.stream_id)
        with anyio.fail_after(DEADLINE):
            await stopped.wait()


# A server's replies: HELLO's in RESP3 (redis-py asks for it), SUBSCRIBE's never, +OK for the
# rest.
REPLIES = {
    b"HELLO": b"%1\r\n$5\r\nproto\r\n:3\r\n",
    b"PING": b"+PONG\r\n",
    b"SUBSCRIBE": b"",
}


async def test_a_redis_that_never_confirms_the_subscribe_cannot_be_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(instance, "CONNECT_TIMEOUT", 0.2)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        buffered = b""
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    buffered += await stream.receive()
                    # One command per RESP array: "*<n>", then "$<len>" and the word, n times.
                    while b"\r\n" in buffered:
                        lines = buffered.split(b"\r\n")
                        count = int(lines[0][1:])
                        if len(lines) <= 2 * count + 1:
                            break
                        buffered = b"\r\n".join(lines[1 + 2 * count :])
                        await stream.send(REPLIES.get(lines[2].upper(), b"+OK\r\n"))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle)
        with pytest.raises(StoreUnavailableError) as caught:
            await RedisStore(f"redis://127.0.0.1:{port}/0").open()
        tasks.cancel_scope.cancel()
    assert str(caught.value) == (
        f"cannot reach Redis at redis://127.0.0.1:{port}/0: Redis did not confirm the SUBSCRIBE"
    )
