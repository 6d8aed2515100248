"""The resume and stop endpoints to the letter: each answer's status, headers and body as the
server is handed them, what a request's context reports (status, outcome, bytes), and the
edges of a resumed stream (a reader that leaves, one cancelled by its server, an orphan at
its top). Called as ASGI in process, as tests/test_resume.py does."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from sse_bridge._core.context import ABORT_EXTENSION, STREAM_KEY, Outcome, StreamContext
from sse_bridge._resume import http
from sse_bridge._resume.binding import owner_hash
from sse_bridge._resume.http import OPEN_RETRY, with_stream_id
from sse_bridge._resume.memory import MemoryStore
from sse_bridge._resume.open import open_store
from sse_bridge._resume.store import (
    Batch,
    OwnerLostError,
    StoreUnavailableError,
    new_stream_id,
    stream_tag,
)
from sse_bridge._types import Message, Receive, Scope, Send
from tests.test_middleware import NDJSON, http_scope
from tests.test_resume import (
    DONE,
    OWNER_LOST,
    Generation,
    Leaver,
    Scripted,
    bridge,
    chunk,
    get,
    orphan,
    run,
    uninterrupted,
)

pytestmark = pytest.mark.anyio


class Paused:
    """A generation that sends one chunk, then waits for ``release`` to send the rest (or is
    stopped)."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        self.started += 1
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        await send({"type": "http.response.body", "body": chunk(0), "more_body": True})
        async with anyio.create_task_group() as group:

            async def listen() -> None:
                # A stop reaches the app as its client's disconnect.
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(listen)
            await self.release.wait()
            await send({"type": "http.response.body", "body": chunk(1), "more_body": True})
            await send({"type": "http.response.body", "body": DONE + b"\n", "more_body": False})
            group.cancel_scope.cancel()


def read(message: Message) -> dict[str, Any]:
    """A message as a server reads it, with ASGI's defaults for the keys it may leave out."""
    if message["type"] == "http.response.start":
        return {
            "type": message["type"],
            "status": message["status"],
            "headers": message.get("headers", []),
        }
    return {
        "type": message["type"],
        "body": message.get("body", b""),
        "more_body": message.get("more_body", False),
    }


def answer(client: Leaver) -> list[dict[str, Any]]:
    return [read(message) for _, message in client.sent]


NO_CONTENT = [
    {"type": "http.response.start", "status": 204, "headers": []},
    {"type": "http.response.body", "body": b"", "more_body": False},
]


async def until(client: Leaver, body: bytes) -> None:
    """Wait until ``client`` has been sent a body message of exactly ``body``."""
    with anyio.fail_after(5):
        while body not in [m.get("body") for m in client.bodies]:
            await client.changed.wait()


async def original_stream(mw: Any, group: anyio.abc.TaskGroup) -> str:
    """Start a stream of ``mw`` in ``group``; its id once its first event is out."""
    original = Leaver()
    group.start_soon(run, mw, original)
    await original.until(1)
    return original.headers[b"x-stream-id"].decode()


# --- a resumed stream ------------------------------------------------------------------------


async def test_a_resumed_stream_is_200_and_only_its_last_message_ends_it() -> None:
    app = Paused()
    mw = bridge(app, keepalive=0.05, retry=1500)
    context = StreamContext()
    reader = Leaver()
    async with anyio.create_task_group() as group:
        sid = await original_stream(mw, group)
        group.start_soon(run, mw, reader, {**get(f"/streams/{sid}"), STREAM_KEY: context})
        await reader.until(1)
        await until(reader, b": ping\n\n")  # the generation is silent: a keepalive
        app.release.set()
    messages = answer(reader)
    assert messages[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"x-stream-id", sid.encode()),
            (b"cache-control", b"no-cache, no-transform"),
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-accel-buffering", b"no"),
            (b"connection", b"keep-alive"),
        ],
    }
    assert messages[1] == {
        "type": "http.response.body",
        "body": b"retry: 1500\n\n",
        "more_body": True,
    }
    # The retry, the events and the keepalives keep the response open; the end closes it.
    assert [m["more_body"] for m in messages[1:]] == [True] * (len(messages) - 2) + [False]
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert reader.data == await uninterrupted(2)
    assert reader.ids == [f"{sid}:1", f"{sid}:2", f"{sid}:3"]
    # What the access log and the metrics read of the request.
    assert context.status == 200
    assert context.outcome is Outcome.COMPLETED
    assert context.stream_id == sid
    assert context.events == 3
    assert context.bytes == len(reader.body_bytes)
    assert context.first_event is not None


async def test_an_http2_resume_has_no_connection_header() -> None:
    mw = bridge(Generation())
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    reader = Leaver()
    await run(mw, reader, get(f"/streams/{sid}", http_version="2"))
    assert b"connection" not in reader.headers
    assert reader.data == original.data


async def test_a_reader_that_leaves_ends_its_resume_while_the_stream_goes_on() -> None:
    app = Paused()
    mw = bridge(app)
    context = StreamContext()
    reader = Leaver(after=1)
    async with anyio.create_task_group() as group:
        sid = await original_stream(mw, group)
        await run(mw, reader, {**get(f"/streams/{sid}"), STREAM_KEY: context})
        # The resume has returned while the generation still waits.
        assert not app.release.is_set()
        assert context.outcome is Outcome.CLIENT_DISCONNECTED
        app.release.set()
    assert reader.data == (await uninterrupted(2))[:1]


async def test_a_reader_cancelled_by_its_server_still_leaves_the_stream() -> None:
    closed: list[int] = []

    class Slow(MemoryStore):
        """A store whose followers close with a round trip, as Redis's do."""

        async def follow(self, stream_id: str, after: int) -> Any:
            inner = await super().follow(stream_id, after)

            class Follower:
                async def next(self, wait: float) -> Batch | None:
                    return await inner.next(wait)

                async def aclose(self) -> None:
                    await anyio.lowlevel.checkpoint()
                    await inner.aclose()
                    closed.append(after)

            return Follower()

    app = Paused()
    store = Slow()
    mw = bridge(app, resume=store)
    async with anyio.create_task_group() as group:
        sid = await original_stream(mw, group)
        async with anyio.create_task_group() as request:
            reader = Leaver()
            request.start_soon(run, mw, reader, get(f"/streams/{sid}"))
            await reader.until(1)
            request.cancel_scope.cancel()  # as a server cancels a request's task
        app.release.set()
    assert closed == [0]


async def test_a_stream_id_in_the_resume_path_with_a_trailing_slash() -> None:
    mw = bridge(Generation(), resume_path="/streams/")
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    reader = Leaver()
    await run(mw, reader, get(f"/streams/{sid}"))
    assert reader.start["status"] == 200
    assert reader.data == original.data


async def test_a_scope_without_a_query_string_reads_from_the_start() -> None:
    mw = bridge(Generation())
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    scope = get(f"/streams/{sid}")
    del scope["query_string"]
    reader = Leaver()
    await run(mw, reader, scope)
    assert reader.data == original.data


async def test_the_store_is_opened_once() -> None:
    class Counted(MemoryStore):
        opened = 0

        async def open(self) -> None:
            self.opened += 1

    store = Counted()
    mw = bridge(Generation(), resume=store)
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    for _ in range(2):
        await run(mw, Leaver(), get(f"/streams/{sid}"))
    await run(mw, Leaver(), get(f"/streams/{sid}", method="DELETE"))
    assert store.opened == 1


# --- 204 and the errors ----------------------------------------------------------------------


async def test_a_stop_and_a_read_to_the_end_are_204_with_nothing_else() -> None:
    app = Paused()
    mw = bridge(app)
    stop, stop_context = Leaver(), StreamContext()
    async with anyio.create_task_group() as group:
        sid = await original_stream(mw, group)
        scope = {**get(f"/streams/{sid}", method="DELETE"), STREAM_KEY: stop_context}
        await run(mw, stop, scope)
    assert answer(stop) == NO_CONTENT
    assert (stop_context.status, stop_context.outcome) == (204, Outcome.STOPPED)
    assert stop_context.stream_id == sid
    done, done_context = Leaver(), StreamContext()
    last = (b"last-event-id", f"{sid}:2".encode())  # the token and the stop's final event
    await run(mw, done, {**get(f"/streams/{sid}", [last]), STREAM_KEY: done_context})
    assert answer(done) == NO_CONTENT
    assert (done_context.status, done_context.outcome) == (204, Outcome.COMPLETED)
    assert done_context.stream_id == sid


def json_error(status: int, message: str, *extra: tuple[bytes, bytes]) -> list[dict[str, Any]]:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    return [
        {"type": "http.response.start", "status": status, "headers": [*headers, *extra]},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


@pytest.mark.parametrize(
    ("path", "headers", "method", "status", "error"),
    [
        (
            "/streams/short",
            [],
            "GET",
            404,
            "no stream 'short': it never existed here or has expired",
        ),
        (
            "/streams/{sid}",
            [(b"last-event-id", b"{other}:3")],
            "GET",
            400,
            "Last-Event-ID '{other}:3' names another stream than '{sid}'",
        ),
        ("/streams/{sid}", [], "PUT", 405, "PUT is not allowed here: GET resumes, DELETE stops"),
    ],
)
async def test_each_refusal_is_exact(
    path: str, headers: list[tuple[bytes, bytes]], method: str, status: int, error: str
) -> None:
    mw = bridge(Generation())
    original = Leaver()
    await run(mw, original)
    names = {"{sid}": original.headers[b"x-stream-id"].decode(), "{other}": new_stream_id()}
    for name, value in names.items():
        path, error = path.replace(name, value), error.replace(name, value)
        headers = [(k, v.replace(name.encode(), value.encode())) for k, v in headers]
    client, context = Leaver(), StreamContext()
    await run(mw, client, {**get(path, headers, method=method), STREAM_KEY: context})
    extra = [(b"allow", b"GET, DELETE")] if status == 405 else []
    assert answer(client) == json_error(status, error, *extra)
    assert context.status == status
    # A method refused is no stream at all; a resume refused is one that ended in error.
    assert context.outcome is (None if status == 405 else Outcome.UPSTREAM_ERROR)


async def test_an_unavailable_store_is_503_with_retry_after() -> None:
    class Down(MemoryStore):
        async def finished_at(self, stream_id: str, after: int) -> bool:
            raise StoreUnavailableError("the resume store went away")

    client = Leaver()
    await run(bridge(Generation(), resume=Down()), client, get(f"/streams/{new_stream_id()}"))
    assert answer(client) == json_error(503, "the resume store went away", (b"retry-after", b"1"))


# --- Last-Event-ID on the original path ------------------------------------------------------


async def test_a_request_the_bridge_would_not_convert_is_never_a_resume() -> None:
    app = Generation()
    mw = bridge(app, event_ids=True)
    original = Leaver()
    await run(mw, original)
    last = (b"last-event-id", original.ids[3].encode())
    plain = Leaver()
    await run(mw, plain, http_scope([(b"accept", b"application/json"), last]))
    assert app.started == 2
    assert plain.headers[b"content-type"] == NDJSON[0][1]


async def test_a_last_event_id_that_names_no_stream_id_is_not_looked_up() -> None:
    asked: list[str] = []

    class Spy(MemoryStore):
        async def finished_at(self, stream_id: str, after: int) -> bool:
            asked.append(stream_id)
            return await super().finished_at(stream_id, after)

    app = Generation()
    mw = bridge(app, event_ids=True, resume=Spy())
    for value in (b"short:3", b"a/b:3"):
        client = Leaver()
        await run(mw, client, http_scope([*get("/")["headers"], (b"last-event-id", value)]))
    assert asked == []
    assert app.started == 2


# --- the end of a stream whose owner died ----------------------------------------------------


@pytest.mark.parametrize("through", ["GET", "Last-Event-ID"])
async def test_a_reader_already_at_the_top_of_an_orphan_ends_it_in_the_store(through: str) -> None:
    store = Scripted([OwnerLostError("gone")])
    mw = bridge(Generation(), resume=store, event_ids=True)
    sid = orphan(store)
    last = (b"last-event-id", f"{sid}:2".encode())
    scope = (
        get(f"/streams/{sid}", [last])
        if through == "GET"
        else http_scope([*get("/")["headers"], last])
    )
    reader = Leaver()
    await run(mw, reader, scope)
    assert [json.loads(d) for d in reader.data] == [{"error": OWNER_LOST, "finished": True}]
    assert reader.ids == [f"{sid}:3"]  # the end is the stream's, kept for every reader
    assert [seq for seq, _ in store.orphaned] == [2]


async def test_a_resumed_stream_that_fails_says_so_in_its_dialect_and_its_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Scripted([StoreUnavailableError("the resume store went away")])
    mw = bridge(Generation(), resume=store, dialect="ai-sdk")
    sid = orphan(store)
    reader, context = Leaver(), StreamContext()
    with caplog.at_level(logging.WARNING, logger="sse_bridge"):
        await run(
            mw, reader, {**get(f"/streams/{sid}", [(b"last-event-id", b"2")]), STREAM_KEY: context}
        )
    assert reader.body_bytes.endswith(
        b'data: {"type":"error","errorText":"the resume store went away"}\n\ndata: [DONE]\n\n'
    )
    assert context.outcome is Outcome.UPSTREAM_ERROR
    assert [r.getMessage() for r in caplog.records] == [
        f"sse_bridge: resumed stream {stream_tag(sid)} ended: the resume store went away"
    ]


async def test_an_unreachable_store_is_logged_once_not_at_each_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Flaky(MemoryStore):
        reachable = False

        async def open(self) -> None:
            if not self.reachable:
                raise StoreUnavailableError("cannot reach Redis")

    store = Flaky()
    mw = bridge(Generation(), resume=store)
    assert mw.endpoints is not None
    with caplog.at_level(logging.WARNING, logger="sse_bridge"):
        for reachable in (False, False, True):
            store.reachable = reachable
            mw.endpoints.retry_at -= OPEN_RETRY  # the pause after a failed connect is over
            client = Leaver()
            await run(mw, client)
            assert (b"x-stream-id" in client.headers) is reachable
    assert [r.getMessage() for r in caplog.records] == [
        "sse_bridge: streams are not resumable for now: cannot reach Redis"
    ]


def test_a_dialects_own_id_line_gives_way_and_the_rest_of_the_event_stays() -> None:
    event = b"id: 7\nevent: message\ndata: {}\n\n"
    assert with_stream_id(b"id: S:", 3, event) == b"id: S:3\nevent: message\ndata: {}\n\n"
    assert with_stream_id(b"id: S:", 3, b"data: {}\n\n") == b"id: S:3\ndata: {}\n\n"


# --- a reader that stalls, or waits in silence -----------------------------------------------


class Stalled(Leaver):
    """A client that accepts the response's start, then not one byte."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            await anyio.sleep_forever()
        await super().send(message)


@pytest.mark.parametrize("offered", [True, False])
async def test_a_reader_that_accepts_nothing_is_cut_off_at_the_send_timeout(offered: bool) -> None:
    mw = bridge(Generation(), send_timeout=0.05)
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    aborted: list[int] = []
    reader, context = Stalled(), StreamContext()
    scope = {**get(f"/streams/{sid}"), STREAM_KEY: context}
    if offered:  # the server's way to drop the connection at once
        scope["extensions"] = {ABORT_EXTENSION: {"abort": lambda: aborted.append(1)}}
    await run(mw, reader, scope)
    assert reader.start["status"] == 200
    assert context.outcome is Outcome.CLIENT_STALLED
    assert aborted == ([1] if offered else [])


async def test_without_keepalives_a_silent_resume_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "IDLE_WAIT", 0.01)  # waits of 30 s, made short

    class Watched(MemoryStore):
        """A store that tells when a reader's wait ended with nothing."""

        idle = 0
        waited = anyio.Event()

        async def follow(self, stream_id: str, after: int) -> Any:
            inner = await super().follow(stream_id, after)
            store = self

            class Follower:
                async def next(self, wait: float) -> Batch | None:
                    batch = await inner.next(wait)
                    if batch == []:
                        store.idle += 1
                        store.waited.set()
                        store.waited = anyio.Event()
                    return batch

                async def aclose(self) -> None:
                    await inner.aclose()

            return Follower()

    app = Paused()
    store = Watched()
    mw = bridge(app, resume=store)
    reader = Leaver()
    async with anyio.create_task_group() as group:
        sid = await original_stream(mw, group)
        group.start_soon(run, mw, reader, get(f"/streams/{sid}"))
        with anyio.fail_after(5):
            while store.idle < 3:
                await store.waited.wait()
        app.release.set()
    assert b": ping\n\n" not in [m.get("body") for m in reader.bodies]
    assert reader.data == await uninterrupted(2)


# --- what stores and logs keep of owners and ids ---------------------------------------------


def test_an_owner_hash_is_the_same_on_every_instance_and_version() -> None:
    # Instances of different versions share one Redis: the hash of an owner must not change.
    alice = "b2b51f192be9e63035de2bff1a9771196c41300d675ffdb0e4666a1b899f8ced"
    assert owner_hash("alice") == alice
    # Any text an owner function returns is hashed, even one no codec would encode.
    assert owner_hash("\udcff") != owner_hash("\udcfe")


def test_a_stream_tag_is_the_first_12_hex_digits_of_the_ids_sha256() -> None:
    sid = "Plk-6c6osv3LRV1c2DND1Q"
    assert stream_tag(sid) == hashlib.sha256(sid.encode()).hexdigest()[:12] == "1d8546d25204"
    assert stream_tag("\udcff") != stream_tag("\udcfe")


# --- the readers' bound, owners, stores of the first version -----------------------------------


async def test_a_stream_at_its_most_readers_refuses_one_more_by_either_way() -> None:
    app = Paused()
    mw = bridge(app, event_ids=True, resume_max_readers=1)
    full = "this stream has 1 readers already (the most); retry later"
    async with anyio.create_task_group() as group:
        sid = await original_stream(mw, group)
        other = await original_stream(mw, group)
        readers = [Leaver(), Leaver()]
        for reader, stream in zip(readers, (sid, other), strict=True):
            group.start_soon(run, mw, reader, get(f"/streams/{stream}"))
            await reader.until(1)  # each stream's bound is its own
        by_get, get_context = Leaver(), StreamContext()
        await run(mw, by_get, {**get(f"/streams/{sid}"), STREAM_KEY: get_context})
        by_id = Leaver()
        last = (b"last-event-id", f"{sid}:0".encode())
        await run(mw, by_id, http_scope([*get("/")["headers"], last]))
        app.release.set()
    for refused in (by_get, by_id):
        assert answer(refused) == json_error(429, full, (b"retry-after", b"1"))
    assert (get_context.status, get_context.outcome) == (429, Outcome.UPSTREAM_ERROR)
    assert app.started == 2
    whole = await uninterrupted(2)
    assert [reader.data for reader in readers] == [whole, whole]


async def test_an_owner_stops_its_own_stream() -> None:
    app = Paused()
    mw = bridge(app, resume_owner=lambda scope: "alice")
    original = Leaver()
    async with anyio.create_task_group() as group:
        group.start_soon(run, mw, original)
        await original.until(1)
        sid = original.headers[b"x-stream-id"].decode()
        stop = Leaver()
        await run(mw, stop, get(f"/streams/{sid}", method="DELETE"))
    assert stop.start["status"] == 204
    assert json.loads(original.data[-1]) == {"finished": True, "done_reason": "stopped"}
    assert not app.release.is_set()


async def test_an_owner_resumes_its_own_stream_through_last_event_id() -> None:
    app = Generation()
    mw = bridge(app, event_ids=True, resume_owner=lambda scope: "alice")
    original = Leaver()
    await run(mw, original)
    again = Leaver()
    last = (b"last-event-id", original.ids[4].encode())
    await run(mw, again, http_scope([*get("/")["headers"], last]))
    assert app.started == 1
    assert again.data == original.data[4:]


async def test_a_store_of_the_protocols_first_version_keeps_streams() -> None:
    class FirstVersion(MemoryStore):
        """Its ``record`` takes no owner: written before streams could have one."""

        def record(self, stop: Callable[[], None]) -> Any:  # type: ignore[override]
            return super().record(stop)

    mw = bridge(Generation(), resume=FirstVersion())
    original = Leaver()
    await run(mw, original)
    reader = Leaver()
    await run(mw, reader, get(f"/streams/{original.headers[b'x-stream-id'].decode()}"))
    assert reader.data == original.data


def test_a_redis_url_without_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the resume extra were not installed: the Redis store's modules import afresh.
    for name in ("sse_bridge._resume.redis.store", "sse_bridge._resume.redis.client"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    message = "the Redis resume store needs redis-py: pip install 'sse-bridge[resume]'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        open_store("redis://127.0.0.1:6379/0")
