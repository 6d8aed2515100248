"""Streams the Redis store lets go while they still run: dropped for the backlog's bound, or
abandoned because Redis refuses their writes. Their clients go on; nothing of them stays counted
against ``max_pending_bytes``, and a stop no longer reaches them."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from redis.asyncio import Redis

from sse_bridge._resume.store import EventsGoneError, UnknownStreamError, stream_tag
from tests._redis import RedisServer
from tests.test_resume_redis import DEADLINE, FAST, opened, read_to_end, until_unavailable

pytestmark = pytest.mark.anyio

EVENT = b"x" * 100


async def test_a_dropped_stream_keeps_nothing_more_and_is_not_stopped(server: RedisServer) -> None:
    async with opened(server.url, heartbeat=FAST, max_pending_bytes=250) as store:
        stops: list[str] = []
        recording = store.record(lambda: stops.append("stopped"))
        recording.append([b"e1"])
        assert await store.drain(DEADLINE)
        # Redis restarts with its data (the stream's first event too) after an outage.
        server.stop(save=True)
        await until_unavailable(store)
        recording.append([EVENT] * 3)
        assert recording.dropped
        assert store.backlog.bytes == 0
        # Its generation goes on for its own client: nothing of it is kept any more.
        recording.append([EVENT] * 2)
        assert not recording.pending
        assert store.backlog.bytes == 0
        # It is not resumable, so not stoppable either: the live client keeps its stream.
        await store.stop(recording.stream_id)
        assert stops == []
        server.start()
        assert await store.drain(DEADLINE)
        assert store.backlog.bytes == 0
        with pytest.raises(UnknownStreamError):
            await store.follow(recording.stream_id, 0)
        # Both its keys are gone, not only the one that makes it known.
        client = Redis.from_url(server.url)
        try:
            assert await client.exists(recording.events_key, recording.meta_key) == 0
        finally:
            await client.aclose()


async def test_a_stream_redis_refuses_leaves_nothing_counted_against_the_bound(url: str) -> None:
    async with opened(url, key_prefix="refused-bytes:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1"])
        assert await store.drain(DEADLINE)
        client = Redis.from_url(url)
        try:
            await client.delete(recording.events_key)
            await client.set(recording.events_key, b"not a stream")
        finally:
            await client.aclose()
        recording.append([EVENT, EVENT])
        assert store.backlog.bytes == 200
        assert await store.drain(DEADLINE)
        assert store.backlog.bytes == 0
        recording.append([EVENT])
        assert store.backlog.bytes == 0


@pytest.mark.parametrize("refused_key", ["meta", "events"])
async def test_a_refusal_among_new_trimmed_ending_streams_abandons_only_its_own(
    url: str, refused_key: str
) -> None:
    # Each stream's first round says who owns it, trims, ends and sets the expiry: every kind
    # of command in one round trip, and the refused one's errors right at its first command.
    client = Redis.from_url(url)
    try:
        async with opened(url, flush_window=0.5, max_stream_bytes=10, key_prefix="mixed:") as store:
            first, refused, last = (store.record(lambda: None) for _ in range(3))
            for recording in (first, refused, last):
                recording.append([b"a" * 6, b"b" * 6])
                recording.finish()
            assert len(store.writer.dirty) == 3
            # Within the writer's flush window: one round trip of 500 ms against one of ours.
            key = refused.meta_key if refused_key == "meta" else refused.events_key
            await client.set(key, b"not a stream's")
            assert await store.drain(DEADLINE)
            for recording in (first, last):
                follower = await store.follow(recording.stream_id, 1)
                assert await read_to_end(follower) == [(2, b"b" * 6)]
            with pytest.raises(UnknownStreamError):
                await store.follow(refused.stream_id, 1)
    finally:
        await client.aclose()


async def test_the_backlog_may_be_full_to_the_byte_and_its_line_says_what_went(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    async with opened(server.url, heartbeat=FAST, max_pending_bytes=600) as store:
        server.stop(save=False)
        await until_unavailable(store)
        old, newer, live = (store.record(lambda: None) for _ in range(3))
        for recording in (old, newer):
            recording.append([EVENT] * 3)
            recording.finish()
        # 600 bytes of 600: nothing goes.
        assert store.backlog.bytes == 600
        assert (old.dropped, newer.dropped) == (False, False)
        # 900: the oldest finished stream goes, and 600 are left, which is within the bound.
        live.append([EVENT] * 3)
        assert (old.dropped, newer.dropped, live.dropped) == (True, False, False)
        assert store.backlog.bytes == 600
        assert [r.getMessage() for r in caplog.records if "backlog" in r.getMessage()] == [
            "sse_bridge: resume store backlog over max_pending_bytes=600 while Redis is away: "
            "1 stream(s) are no longer resumable (3 events dropped; live clients get every "
            "event); more may follow until Redis is back"
        ]


async def test_each_stream_of_a_round_gets_its_own_results_whatever_it_sends(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One round trip: new streams (who owns them, a trim, the end, the expiry), a dropped one
    and a stream that sends events only, refused ones between good ones: a miscount of any
    stream's commands would hand a neighbour another's error."""
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    client = Redis.from_url(url)
    try:
        async with opened(
            url, flush_window=0.5, max_stream_bytes=10, max_pending_bytes=100, key_prefix="kinds:"
        ) as store:
            plain = store.record(lambda: None)
            plain.append([b"p1"])
            assert await store.drain(DEADLINE)
            before, refused_new, between, dropped = (store.record(lambda: None) for _ in range(4))
            # More than max_pending_bytes at once: it stops being resumable at once.
            dropped.append([b"x" * 200])
            assert dropped.dropped
            plain.append([b"p2", b"p3"])
            after = store.record(lambda: None)
            for recording in (before, refused_new, between, after):
                recording.append([b"a" * 6, b"b" * 6])
                recording.finish()
            order = [before, refused_new, between, dropped, plain, after]
            assert list(store.writer.dirty.values()) == order
            # Within the writer's flush window: every command of one fails, and every event of
            # the other.
            await client.set(refused_new.meta_key, b"not a hash")
            await client.set(refused_new.events_key, b"not a stream")
            await client.delete(plain.events_key)
            await client.set(plain.events_key, b"not a stream")
            assert await store.drain(DEADLINE)
            for recording in (before, between, after):
                follower = await store.follow(recording.stream_id, 1)
                assert await read_to_end(follower) == [(2, b"b" * 6)]
            for recording in (refused_new, dropped, plain):
                with pytest.raises(UnknownStreamError):
                    await store.follow(recording.stream_id, 0)
            # Refused: the two whose keys hold something else, and no other.
            refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert len(refusals) == 2, refusals
            assert stream_tag(refused_new.stream_id) in refusals[0]
            assert stream_tag(plain.stream_id) in refusals[1]
    finally:
        await client.aclose()


async def test_streams_that_write_within_the_flush_window_share_a_round_trip(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(url, flush_window=0.5, key_prefix="window:") as store:
        first = store.record(lambda: None)
        assert await store.drain(DEADLINE)
        rounds: list[int] = []
        flush = store.writer.flush

        async def counted(recordings: list[Any]) -> None:
            rounds.append(len(recordings))
            await flush(recordings)

        monkeypatch.setattr(store.writer, "flush", counted)
        first.append([b"e1"])
        # The writer wakes up for the first stream and lets the others gather.
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        second = store.record(lambda: None)
        second.append([b"e1"])
        assert await store.drain(DEADLINE)
        assert rounds == [2]


async def test_finished_streams_go_before_an_older_live_one_and_one_line_counts_them_all(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    async with opened(server.url, heartbeat=FAST, max_pending_bytes=600) as store:
        # Sent before the outage: nothing of it waits, so nothing of it can be dropped.
        sent = store.record(lambda: None)
        sent.append([EVENT])
        assert await store.drain(DEADLINE)
        server.stop(save=False)
        await until_unavailable(store)
        live = store.record(lambda: None)
        live.append([EVENT] * 2)
        done = [store.record(lambda: None) for _ in range(2)]
        for recording in done:
            recording.append([EVENT] * 2)
            recording.finish()
        assert store.backlog.bytes == 600
        # 900: both finished streams go, newer than the live one as they are, in one call.
        live.append([EVENT] * 3)
        assert [r.dropped for r in (sent, live, *done)] == [False, False, True, True]
        assert store.backlog.bytes == 500
        assert [r.getMessage() for r in caplog.records if "backlog" in r.getMessage()] == [
            "sse_bridge: resume store backlog over max_pending_bytes=600 while Redis is away: "
            "2 stream(s) are no longer resumable (4 events dropped; live clients get every "
            "event); more may follow until Redis is back"
        ]
        # Only live streams left: the one with events waiting goes, not the one without.
        live.append([EVENT] * 2)
        assert [r.dropped for r in (sent, live)] == [False, True]


async def test_the_byte_bound_trims_from_the_first_event_on(url: str) -> None:
    async with opened(url, max_stream_bytes=10, key_prefix="first-trim:") as store:
        recording = store.record(lambda: None)
        recording.append([b"a" * 6])
        assert await store.drain(DEADLINE)
        # 12 bytes: event 1, in Redis already, goes.
        recording.append([b"b" * 6])
        recording.finish()
        assert await store.drain(DEADLINE)
        with pytest.raises(EventsGoneError, match=r"events after 0 .* oldest kept is 2\)"):
            await store.follow(recording.stream_id, 0)
        assert await read_to_end(await store.follow(recording.stream_id, 1)) == [(2, b"b" * 6)]
