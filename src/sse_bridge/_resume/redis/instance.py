"""This instance as the others see it through Redis: its heartbeat, which also probes Redis and
keeps the live streams' keys from expiring, and its stop channel, over which any instance stops a
stream that runs here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import anyio

from sse_bridge._resume.redis.client import (
    CONNECT_TIMEOUT,
    ERRORS,
    PubSub,
    Redis,
    RedisTimeoutError,
    close,
)
from sse_bridge._resume.redis.keys import text
from sse_bridge._resume.redis.shared import Shared
from sse_bridge._resume.store import StoreUnavailableError, UnknownStreamError, stream_tag

logger = logging.getLogger("sse_bridge")


class LiveStream(Protocol):
    """One of this instance's own streams, as its heartbeat and its stop channel see it."""

    @property
    def ended(self) -> bool: ...

    @property
    def events_key(self) -> str: ...

    @property
    def meta_key(self) -> str: ...

    def take_stop(self) -> Callable[[], None] | None:
        """The stream's stop, once: None after the first call."""


class InstanceStore(Shared, Protocol):
    """The store as this instance's heartbeat and stop channel see it."""

    @property
    def live(self) -> Mapping[str, LiveStream]: ...


async def beat(store: InstanceStore) -> None:
    """Tell Redis every heartbeat that this instance lives; it also probes Redis, so it is what
    notices that Redis is back, and it keeps the live streams' keys from expiring."""
    redis = store.client()
    loop = asyncio.get_running_loop()
    next_refresh = loop.time() + store.refresh_every
    while True:
        await asyncio.sleep(store.heartbeat)
        refresh = loop.time() >= next_refresh
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.set(store.keys.instance(store.instance_id), b"1", px=store.instance_ms)
                if refresh:
                    for recording in store.live.values():
                        if not recording.ended:
                            # The owner too: a Redis that lost its data between two writes has
                            # the stream again.
                            pipe.hset(recording.meta_key, "owner", store.instance_id)
                            pipe.pexpire(recording.events_key, store.live_ms)
                            pipe.pexpire(recording.meta_key, store.live_ms)
                await pipe.execute()
        except ERRORS as exc:
            store.went_down(exc)
        else:
            store.came_back()
            if refresh:
                next_refresh = loop.time() + store.refresh_every


async def subscribe(store: InstanceStore, redis: Redis) -> PubSub:
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(store.keys.stop_channel(store.instance_id))
        # Once Redis confirms, a PUBLISH from any instance reaches this one.
        with anyio.move_on_after(CONNECT_TIMEOUT):
            while True:
                message = await pubsub.get_message(timeout=CONNECT_TIMEOUT)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        raise RedisTimeoutError("Redis did not confirm the SUBSCRIBE")
    except BaseException:
        await close(pubsub)
        raise


async def listen(store: InstanceStore, pubsub: PubSub | None) -> None:
    """Stop the local streams whose ids other instances publish on this one's channel."""
    redis = store.client()
    try:
        while True:
            try:
                if pubsub is None:
                    pubsub = await subscribe(store, redis)
                outages = store.outages
                # After an outage the connection may look alive and no longer be subscribed.
                while store.outages == outages:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=store.heartbeat
                    )
                    if message is not None and message["type"] == "message":
                        stop_here(store, bytes(message["data"]).decode("ascii", "replace"))
            except ERRORS as exc:
                store.went_down(exc)
            if pubsub is not None:
                with contextlib.suppress(*ERRORS):
                    await close(pubsub)
                pubsub = None
            await store.up.wait()
    finally:
        if pubsub is not None:
            # Cancelled (aclose): unsubscribe now, so that a stop sent here is not taken for
            # delivered.
            with contextlib.suppress(*ERRORS):
                await close(pubsub)


def stop_here(store: InstanceStore, stream_id: str) -> None:
    recording = store.live.get(stream_id)
    stop = recording.take_stop() if recording is not None else None
    if stop is not None:
        try:
            stop()
        except Exception:
            logger.exception("sse_bridge: stopping stream %s failed", stream_tag(stream_id))


async def stop_elsewhere(store: InstanceStore, stream_id: str) -> None:
    """Publish ``stream_id`` on the channel of the instance that runs it (see
    :meth:`RedisStore.stop`)."""
    store.check_available()
    redis = store.client()
    try:
        meta = await redis.hgetall(store.keys.meta(stream_id))
        if not meta:
            raise UnknownStreamError(stream_id)
        owner = meta.get(b"owner")
        if b"ended" in meta or owner is None or text(owner) == store.instance_id:
            return
        if await redis.publish(store.keys.stop_channel(text(owner)), stream_id):
            return
        alive = await redis.exists(store.keys.instance(text(owner)))
    except ERRORS as exc:
        raise store.unavailable(exc) from exc
    if alive:
        raise StoreUnavailableError(
            f"the instance running stream {stream_id!r} cannot be reached now; try again"
        )
