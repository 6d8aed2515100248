"""Streams bound to their owner: anyone else gets exactly what an unknown id gets, on any instance.

A stream alice started is resumed (GET), stopped (DELETE) and resumed by Last-Event-ID by
alice, bob and a request with no owner, on the instance that runs it and on another one over
Redis; each answer to bob and to nobody is compared with the answer to an id never seen.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from sse_bridge import SSEBridgeMiddleware, create_proxy
from sse_bridge._resume.binding import Binding, owner_hash
from sse_bridge._resume.memory import MemoryStore
from sse_bridge._resume.store import UnknownStreamError, new_stream_id
from sse_bridge._sidecar.options import SidecarOptions
from sse_bridge._types import Receive, Scope, Send
from sse_bridge.resume import RedisStore
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._redis import redis_server
from tests._servers import serve
from tests._wire import fetch
from tests.test_resume_sidecar import SSE, chat, events

pytestmark = pytest.mark.anyio

USER = "x-auth-request-user"


def who(name: str | None) -> dict[str, str]:
    return {} if name is None else {USER: name}


async def attempts(url: str, sid: str, name: str | None) -> dict[str, Any]:
    """What ``name`` gets for stream ``sid``: GET, a Last-Event-ID resume, then DELETE."""
    headers = {**SSE, **who(name)}
    get = await fetch(f"{url}/streams/{sid}", method="GET", body=b"", headers=headers)
    by_id = await fetch(
        f"{url}/api/chat", body=chat(), headers={**headers, "last-event-id": f"{sid}:1"}
    )
    delete = await fetch(f"{url}/streams/{sid}", method="DELETE", body=b"", headers=headers)
    return {
        "get": (get.status, get.body.replace(sid.encode(), b"<id>")),
        "get_headers": sorted(k for k in get.headers if k not in ("date", "content-length")),
        # A resume continues the stream under its id; a new request gets a new one.
        "resumed": by_id.headers.get("x-stream-id") == sid,
        "delete": (delete.status, delete.body.replace(sid.encode(), b"<id>")),
    }


@contextlib.contextmanager
def two_bridges(upstream: str, store: str) -> Iterator[tuple[str, str]]:
    def bridge() -> Any:
        return create_proxy(
            upstream=upstream,
            dialect="ollama",
            resume=store,
            event_ids=True,
            resume_owner_header=USER,
        )

    with serve(bridge()) as a, serve(bridge()) as b:
        yield a, b


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_stream_bound_to_alice_is_unknown_to_anyone_else(store: str) -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=3))
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server()) if store == "redis" else "memory"
        upstream = stack.enter_context(serve(fake))
        a, b = stack.enter_context(two_bridges(upstream, url))
        # With the memory store each instance knows its own streams only: B is A's twin.
        other = b if store == "redis" else a
        original = await fetch(f"{a}/api/chat", body=chat(), headers={**SSE, **who("alice")})
        sid = original.headers["x-stream-id"]
        unknown = new_stream_id()
        generations = len(fake.records)
        seen = {
            (instance, name): await attempts(instance, sid, name)
            for instance in (a, other)
            for name in ("bob", None)
        }
        never = await attempts(other, unknown, "alice")
        assert len(fake.records) == generations + 5  # every Last-Event-ID was a new request
        mine = await fetch(
            f"{other}/streams/{sid}", method="GET", body=b"", headers={**SSE, **who("alice")}
        )
        stopped = await fetch(
            f"{other}/streams/{sid}", method="DELETE", body=b"", headers=who("alice")
        )
    assert never["get"][0] == 404
    assert json.loads(never["get"][1]) == {
        "error": "no stream '<id>': it never existed here or has expired"
    }
    assert never["delete"][0] == 404
    assert never["resumed"] is False
    for answer in seen.values():
        assert answer == never
    assert mine.status == 200
    assert events(mine.body) == events(original.body)
    assert stopped.status == 204


async def test_as_middleware_the_owner_comes_from_the_apps_auth_outside_it() -> None:
    async def ndjson(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"response":"hi","done":true}\n'})

    bridge = SSEBridgeMiddleware(
        ndjson, dialect="ollama", resume="memory", resume_owner=lambda scope: scope.get("user")
    )

    async def auth(scope: Scope, receive: Receive, send: Send) -> None:
        # The app's own auth, outside the bridge: it has set the user before the bridge runs.
        if scope["type"] == "http":
            token = dict(scope["headers"]).get(b"authorization", b"").decode()
            scope = {**scope, "user": token.removeprefix("Bearer ") or None}
        await bridge(scope, receive, send)

    with serve(auth) as url:
        original = await fetch(f"{url}/x", body=b"{}", headers={**SSE, "authorization": "Bearer a"})
        sid = original.headers["x-stream-id"]
        resume = f"{url}/streams/{sid}"
        alice = await fetch(resume, method="GET", body=b"", headers={"authorization": "Bearer a"})
        bob = await fetch(resume, method="GET", body=b"", headers={"authorization": "Bearer b"})
        nobody = await fetch(resume, method="GET", body=b"")
    assert alice.status == 200
    assert (bob.status, nobody.status) == (404, 404)
    assert bob.body == nobody.body


async def test_the_stores_keep_the_owner_hashed() -> None:
    store = MemoryStore()
    recording = store.record(lambda: None, owner_hash("alice"))
    assert await store.bound_to(recording.stream_id) == owner_hash("alice")
    assert "alice" not in owner_hash("alice")
    assert owner_hash("alice") != owner_hash("bob")
    with pytest.raises(UnknownStreamError):
        await store.bound_to(new_stream_id())
    with redis_server() as url:
        redis = RedisStore(url)
        await redis.open()
        try:
            bound = redis.record(lambda: None, owner_hash("alice"))
            bound.append([b"data: 1\n\n"])
            bound.finish()
            assert await redis.drain(5)
            # What another instance reads from Redis (this one's own streams are known live).
            redis.live.clear()
            assert await redis.bound_to(bound.stream_id) == owner_hash("alice")
            meta = await redis.client().hgetall(redis.keys.meta(bound.stream_id))
            assert "alice" not in repr(meta)
            with pytest.raises(UnknownStreamError):
                await redis.bound_to(new_stream_id())
        finally:
            await redis.aclose()


def test_an_owner_function_must_return_a_string_or_none() -> None:
    with pytest.raises(TypeError, match="must return a string or None"):
        Binding(lambda scope: 42).of({})  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="resume_owner must be a function"):
        SSEBridgeMiddleware(lambda *_: None, resume="memory", resume_owner="user")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give one"):
        create_proxy(upstream="http://h", resume_owner_header="x-user", resume_owner=lambda s: None)

    class OldStore:
        def record(self, stop: object) -> None: ...
        def follow(self) -> None: ...
        def stop(self) -> None: ...
        def finished_at(self) -> None: ...

    with pytest.raises(ValueError, match="needs the bound_to method"):
        SSEBridgeMiddleware(lambda *_: None, resume=OldStore(), resume_owner=lambda s: None)  # type: ignore[arg-type]
    SSEBridgeMiddleware(lambda *_: None, resume=OldStore())  # type: ignore[arg-type]
    options = SidecarOptions(upstream="http://h", resume_owner=lambda s: None)
    with pytest.raises(ValueError, match="resume_owner must be a name"):
        options.to_json()
