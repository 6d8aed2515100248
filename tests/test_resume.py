"""Resumable streams in process: the memory store, and the middleware's ids, grace, stop and
endpoints, called as ASGI with a recording send (as tests/test_middleware.py does)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
import pytest

from sse_bridge import ServerSentEvent, SSEBridgeMiddleware
from sse_bridge._core.context import STREAM_KEY, Outcome, StreamContext
from sse_bridge._middleware.receive import SharedReceive
from sse_bridge._resume.http import OPEN_RETRY
from sse_bridge._resume.memory import MemoryStore, _MemoryRecording
from sse_bridge._resume.open import open_store
from sse_bridge._resume.store import (
    ATTENDED_FOR,
    BadPositionError,
    EventsGoneError,
    OwnerLostError,
    ResumeError,
    StoreUnavailableError,
    UnknownStreamError,
    new_stream_id,
    parse_position,
)
from sse_bridge._types import Message, Receive, Scope, Send
from tests._sse import httpx_sse_data
from tests.test_middleware import NDJSON, Client, http_scope

pytestmark = pytest.mark.anyio

# docs/resume.md quotes both.
OWNER_LOST = (
    "the bridge instance running this stream stopped before it ended; the answer is incomplete"
)

TOKENS = 12


def chunk(i: int) -> bytes:
    return json.dumps({"model": "m", "response": f"t{i} ", "done": False}).encode() + b"\n"


DONE = json.dumps({"model": "m", "response": "", "done": True, "done_reason": "stop"}).encode()


class Generation:
    """An Ollama-like app: paced chunks, and it stops when told the client has gone."""

    def __init__(self, tokens: int = TOKENS, pace: float = 0.005) -> None:
        self.tokens = tokens
        self.pace = pace
        self.started = 0
        self.finished = 0
        self.cancelled = anyio.Event()
        self.sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        self.started += 1
        finished = self.finished
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        async with anyio.create_task_group() as group:

            async def listen() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                if self.finished == finished:
                    self.cancelled.set()
                group.cancel_scope.cancel()

            group.start_soon(listen)
            for i in range(self.tokens):
                await anyio.sleep(self.pace)
                self.sent += 1
                await send({"type": "http.response.body", "body": chunk(i), "more_body": True})
            self.finished += 1
            await send({"type": "http.response.body", "body": DONE + b"\n", "more_body": False})
            group.cancel_scope.cancel()


class Leaver(Client):
    """A client that leaves after ``after`` events and hears nothing after that."""

    def __init__(self, after: int | None = None, body: bytes = b"{}") -> None:
        super().__init__(body)
        self.after = after
        self.left_at: float | None = None
        self.changed = anyio.Event()

    async def until(self, events: int) -> None:
        """Wait until this client has read at least ``events`` data events."""
        with anyio.fail_after(5):
            while len(self.data) < events:
                await self.changed.wait()

    async def send(self, message: Message) -> None:
        if self.gone.is_set():
            return
        await super().send(message)
        self.changed.set()
        self.changed = anyio.Event()
        if self.after is not None and len(self.data) >= self.after:
            self.left_at = time.monotonic()
            self.gone.set()

    @property
    def data(self) -> list[str]:
        # As EventSource reads them: a block with an id and no data sets the id, no event.
        return [data for data in httpx_sse_data(self.body_bytes) if data]

    @property
    def ids(self) -> list[str]:
        return [
            line[4:] for line in self.body_bytes.decode().split("\n") if line.startswith("id: ")
        ]


def get(path: str, headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Scope:
    extra.setdefault("method", "GET")
    return http_scope([(b"accept", b"text/event-stream"), *(headers or [])], path=path, **extra)


def bridge(app: Any, **options: Any) -> SSEBridgeMiddleware:
    options.setdefault("keepalive", None)
    options.setdefault("resume", "memory")
    options.setdefault("dialect", "ollama")
    return SSEBridgeMiddleware(app, **options)


async def run(mw: SSEBridgeMiddleware, client: Client, scope: Scope | None = None) -> None:
    with anyio.fail_after(5):
        await mw(scope or http_scope(), client.receive, client.send)


async def uninterrupted(tokens: int = TOKENS) -> list[str]:
    client = Leaver()
    await run(bridge(Generation(tokens)), client)
    return client.data


# --- the memory store ----------------------------------------------------------------------


async def test_memory_store_replays_and_follows() -> None:
    store = MemoryStore()
    recording = store.record(lambda: None)
    recording.append([b"a", b"b"])
    follower = await store.follow(recording.stream_id, 1)
    assert await follower.next(1) == [(2, b"b")]
    assert await follower.next(0.01) == []
    async with anyio.create_task_group() as group:
        group.start_soon(follower.next, 1)
        await anyio.sleep(0.01)
        recording.append([b"c"])
    late = await store.follow(recording.stream_id, 0)
    assert await late.next(1) == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert await recording.attended()
    recording.finish()
    recording.append([b"ignored"])
    assert await late.next(1) is None
    await late.aclose()
    await late.aclose()
    await follower.aclose()
    # A reader that has just left still counts, until the owner's next look.
    assert await recording.attended()
    recording.left_at -= ATTENDED_FOR
    assert not await recording.attended()
    assert await store.finished_at(recording.stream_id, 3)
    assert not await store.finished_at(recording.stream_id, 2)


async def test_memory_store_bounds_each_stream_and_the_total() -> None:
    store = MemoryStore(max_stream_bytes=10, max_bytes=25)
    one = store.record(lambda: None)
    one.append([b"12345", b"12345", b"12345"])
    with pytest.raises(EventsGoneError) as gone:
        await store.follow(one.stream_id, 0)
    assert gone.value.status == 410
    follower = await store.follow(one.stream_id, 1)
    assert await follower.next(1) == [(2, b"12345"), (3, b"12345")]
    one.finish()
    two = store.record(lambda: None)
    two.append([b"1234567890"])
    three = store.record(lambda: None)
    # Past the total: the oldest finished stream goes first, the live ones stay whole.
    three.append([b"1234567890"])
    with pytest.raises(UnknownStreamError):
        await store.follow(one.stream_id, 1)
    assert store.total == 20
    # With no finished stream left, the growing stream's oldest events go.
    three.append([b"12345", b"12345"])
    assert store.total <= 25
    with pytest.raises(EventsGoneError):
        await store.follow(three.stream_id, 0)


async def test_a_reader_that_falls_behind_the_bound_is_told() -> None:
    store = MemoryStore(max_stream_bytes=4)
    recording = store.record(lambda: None)
    follower = await store.follow(recording.stream_id, 0)
    recording.append([b"ab", b"cd", b"ef"])
    with pytest.raises(EventsGoneError):
        await follower.next(1)


async def test_memory_store_expires_finished_streams() -> None:
    store = MemoryStore(ttl=0)
    recording = store.record(lambda: None)
    recording.append([b"a"])
    follower = await store.follow(recording.stream_id, 0)
    await follower.aclose()
    recording.finish()
    with pytest.raises(UnknownStreamError) as unknown:
        await store.follow(recording.stream_id, 0)
    assert unknown.value.status == 404
    assert store.total == 0


async def test_memory_store_stop_reaches_the_owner_once() -> None:
    store = MemoryStore()
    stops: list[int] = []
    recording = store.record(lambda: stops.append(1))
    await store.stop(recording.stream_id)
    await store.stop(recording.stream_id)
    assert stops == [1]
    with pytest.raises(UnknownStreamError):
        await store.stop(new_stream_id())


async def test_memory_store_positions_past_the_end() -> None:
    store = MemoryStore()
    recording = store.record(lambda: None)
    recording.append([b"a"])
    # A live stream may not have reached a store yet what its client saw (Redis); wait for it.
    follower = await store.follow(recording.stream_id, 3)
    assert await follower.next(0.01) == []
    recording.finish()
    with pytest.raises(BadPositionError) as bad:
        await store.follow(recording.stream_id, 3)
    assert bad.value.status == 400


async def test_finish_orphan_ends_a_stream_once() -> None:
    store = MemoryStore()
    recording = store.record(lambda: None)
    recording.append([b"a"])
    await store.finish_orphan(recording.stream_id, 1, [b"end"])
    await store.finish_orphan(recording.stream_id, 1, [b"again"])
    follower = await store.follow(recording.stream_id, 0)
    assert await follower.next(1) == [(1, b"a"), (2, b"end")]
    assert await follower.next(1) is None


def test_stream_ids_are_long_random_and_url_safe() -> None:
    ids = {new_stream_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


@pytest.mark.parametrize(
    ("value", "stream", "expected"),
    [
        ("", "S", ("S", 0)),
        ("7", "S", ("S", 7)),
        (" 7 ", None, (None, 7)),
        ("S:12", "S", ("S", 12)),
        ("S:12", None, ("S", 12)),
        ("a:b:3", None, ("a:b", 3)),
    ],
)
def test_positions(value: str, stream: str | None, expected: tuple[str | None, int]) -> None:
    assert parse_position(value, stream) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "with n >= 0"),
        ("x", "with n >= 0"),
        ("S:", "with n >= 0"),
        ("١٢", "with n >= 0"),
        ("9" * 19, "with n >= 0"),
        ("T:3", "names another stream"),
    ],
)
def test_bad_positions(value: str, message: str) -> None:
    with pytest.raises(BadPositionError, match=message):
        parse_position(value, "S")


def test_store_options_are_checked() -> None:
    assert open_store(None) is None
    store = MemoryStore()
    assert open_store(store) is store
    assert isinstance(open_store("memory", ttl=5), MemoryStore)
    for bad in ("memcached://x", 5, object()):
        with pytest.raises(ValueError, match="resume must be 'memory', a redis://"):
            open_store(bad)
    with pytest.raises(ValueError, match="resume ttl must be a finite number"):
        MemoryStore(ttl=-1)
    with pytest.raises(ValueError, match="max_stream_bytes must be an integer >= 1"):
        MemoryStore(max_stream_bytes=0)
    with pytest.raises(ValueError, match="resume_grace must be a finite number"):
        SSEBridgeMiddleware(Generation(), resume="memory", resume_grace=-1)
    with pytest.raises(ValueError, match="resume_path must be a path"):
        SSEBridgeMiddleware(Generation(), resume="memory", resume_path="streams")


# --- the original stream ---------------------------------------------------------------------


async def test_resume_off_has_no_stream_id() -> None:
    client = Leaver()
    await run(SSEBridgeMiddleware(Generation(), dialect="ollama", keepalive=None), client)
    assert b"x-stream-id" not in client.headers


async def test_the_original_stream_is_unchanged_but_for_its_id() -> None:
    plain = Leaver()
    await run(SSEBridgeMiddleware(Generation(), dialect="ollama", keepalive=None), plain)
    client = Leaver()
    await run(bridge(Generation()), client)
    headers = client.headers
    stream_id = headers.pop(b"x-stream-id").decode()
    assert len(stream_id) == 22
    assert headers == plain.headers
    assert client.body_bytes == plain.body_bytes
    assert b"id:" not in client.body_bytes


async def test_event_ids_name_the_stream() -> None:
    client = Leaver()
    await run(bridge(Generation(), event_ids=True), client)
    stream_id = client.headers[b"x-stream-id"].decode()
    # 0 first, before any event: a stream that drops before its first event resumes too.
    assert client.ids == [f"{stream_id}:{n}" for n in range(TOKENS + 2)]
    assert client.body_bytes.startswith(f"id: {stream_id}:0\n\n".encode())


async def test_only_converted_streams_are_kept() -> None:
    store = MemoryStore()
    client = Leaver()
    await run(bridge(Generation(), resume=store), client, http_scope([]))
    assert b"x-stream-id" not in client.headers
    assert store.streams == {}


# --- resuming --------------------------------------------------------------------------------


async def interrupted(mw: SSEBridgeMiddleware, at: int) -> Leaver:
    client = Leaver(after=at)
    await run(mw, client)
    return client


async def test_interrupted_at_event_5_and_resumed_equals_an_uninterrupted_stream() -> None:
    app = Generation()
    mw = bridge(app)
    context = StreamContext()
    async with anyio.create_task_group() as group:
        first = Leaver(after=5)
        group.start_soon(run, mw, first)
        with anyio.fail_after(5):
            await first.gone.wait()
        stream_id = first.headers[b"x-stream-id"].decode()
        resumed = Leaver()
        scope = get(f"/streams/{stream_id}", [(b"last-event-id", b"5")])
        scope[STREAM_KEY] = context
        await run(mw, resumed, scope)
    assert first.data[:5] + resumed.data == await uninterrupted()
    assert len(first.data) == 5
    assert resumed.ids[0] == f"{stream_id}:6"
    assert resumed.headers[b"x-stream-id"] == stream_id.encode()
    assert resumed.headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert app.started == 1
    assert app.finished == 1
    assert not app.cancelled.is_set()
    assert context.status == 200
    assert context.events == TOKENS + 1 - 5
    assert context.outcome is Outcome.COMPLETED
    assert context.stream_id == stream_id


@pytest.mark.parametrize(
    ("headers", "query", "first"),
    [
        ([], b"", 1),
        ([], b"last_event_id=3", 4),
        ([(b"last-event-id", b"{sid}:4")], b"last_event_id=3", 5),
    ],
)
async def test_positions_from_the_header_or_the_query(
    headers: list[tuple[bytes, bytes]], query: bytes, first: int
) -> None:
    mw = bridge(Generation())
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"]
    resumed = Leaver()
    headers = [(k, v.replace(b"{sid}", sid)) for k, v in headers]
    await run(mw, resumed, get(f"/streams/{sid.decode()}", headers, query_string=query))
    assert resumed.ids[0] == f"{sid.decode()}:{first}"
    assert resumed.data == original.data[first - 1 :]


async def test_several_readers_follow_one_stream() -> None:
    app = Generation(pace=0.01)
    mw = bridge(app)
    readers = [Leaver() for _ in range(3)]
    async with anyio.create_task_group() as group:
        original = Leaver()
        group.start_soon(run, mw, original)
        await original.until(1)
        sid = original.headers[b"x-stream-id"].decode()
        for reader in readers:
            group.start_soon(run, mw, reader, get(f"/streams/{sid}"))
    assert all(reader.data == original.data for reader in readers)
    assert app.started == 1


async def test_a_finished_stream_read_to_its_end_answers_204() -> None:
    mw = bridge(Generation())
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    done = Leaver()
    await run(mw, done, get(f"/streams/{sid}", [(b"last-event-id", f"{TOKENS + 1}".encode())]))
    assert done.start["status"] == 204
    assert done.body_bytes == b""


@pytest.mark.parametrize(
    ("path", "headers", "method", "status", "error"),
    [
        ("/streams/unknownunknownunknown1", [], "GET", 404, "no stream"),
        ("/streams/short", [], "GET", 404, "no stream"),
        ("/streams/{sid}", [(b"last-event-id", b"99")], "GET", 400, "none after 99"),
        ("/streams/{sid}", [(b"last-event-id", b"x")], "GET", 400, "<stream id>:<n>"),
        ("/streams/{sid}", [], "POST", 405, "GET resumes, DELETE stops"),
        ("/streams/unknownunknownunknown1", [], "DELETE", 404, "no stream"),
    ],
)
async def test_resume_errors_are_json(
    path: str, headers: list[tuple[bytes, bytes]], method: str, status: int, error: str
) -> None:
    mw = bridge(Generation())
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    client = Leaver()
    await run(mw, client, get(path.replace("{sid}", sid), headers, method=method))
    assert client.start["status"] == status
    assert error in json.loads(client.body_bytes)["error"]
    if status == 405:
        assert client.headers[b"allow"] == b"GET, DELETE"


async def test_events_no_longer_kept_answer_410() -> None:
    store = MemoryStore(max_stream_bytes=200)
    mw = bridge(Generation(), resume=store)
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    client = Leaver()
    await run(mw, client, get(f"/streams/{sid}"))
    assert client.start["status"] == 410
    assert "no longer kept" in json.loads(client.body_bytes)["error"]


async def test_an_unavailable_store_answers_503() -> None:
    class Down(MemoryStore):
        async def finished_at(self, stream_id: str, after: int) -> bool:
            raise StoreUnavailableError("Redis is away")

    client = Leaver()
    await run(bridge(Generation(), resume=Down()), client, get(f"/streams/{new_stream_id()}"))
    assert client.start["status"] == 503
    assert client.headers[b"retry-after"] == b"1"


async def test_a_resumed_reader_gets_keepalives_while_the_stream_is_silent() -> None:
    app = Generation(tokens=2, pace=0.3)
    mw = bridge(app, keepalive=0.05)
    async with anyio.create_task_group() as group:
        original = Leaver(after=1)
        group.start_soon(run, mw, original)
        with anyio.fail_after(5):
            await original.gone.wait()
        sid = original.headers[b"x-stream-id"].decode()
        reader = Leaver()
        await run(mw, reader, get(f"/streams/{sid}", [(b"last-event-id", b"1")]))
    assert b": ping\n\n" in [m.get("body") for m in reader.bodies]
    assert reader.data == (await uninterrupted(2))[1:]


async def test_with_event_ids_a_reconnect_to_the_same_path_resumes() -> None:
    app = Generation()
    mw = bridge(app, event_ids=True)
    async with anyio.create_task_group() as group:
        first = Leaver(after=4)
        group.start_soon(run, mw, first)
        with anyio.fail_after(5):
            await first.gone.wait()
        again = Leaver()
        await run(
            mw, again, http_scope([*get("/")["headers"], (b"last-event-id", first.ids[4].encode())])
        )
    assert first.data[:4] + again.data == await uninterrupted()
    assert app.started == 1


@pytest.mark.parametrize("value", [b"unknownunknownunknown1:3", b"3", b"x:y", b"short:3"])
async def test_other_last_event_ids_start_a_new_generation(value: bytes) -> None:
    app = Generation()
    client = Leaver()
    await run(
        bridge(app, event_ids=True),
        client,
        http_scope([*get("/")["headers"], (b"last-event-id", value)]),
    )
    assert app.started == 1
    assert client.data == await uninterrupted()


# --- grace and stop --------------------------------------------------------------------------


@pytest.mark.timing
async def test_a_generation_nobody_resumes_is_cancelled_after_the_grace_period() -> None:
    app = Generation(tokens=1000, pace=0.005)
    mw = bridge(app, resume_grace=0.2)
    context = StreamContext()
    client = Leaver(after=2)
    await run(mw, client, {**http_scope(), STREAM_KEY: context})
    assert client.left_at is not None
    waited = time.monotonic() - client.left_at
    assert app.cancelled.is_set()
    # The grace, and not a whole second of the store's polling more.
    assert 0.2 <= waited < 0.2 + 0.3
    assert app.sent > 2  # it ran on without its client
    assert context.outcome is Outcome.CLIENT_DISCONNECTED
    sid = client.headers[b"x-stream-id"].decode()
    late = Leaver()
    await run(mw, late, get(f"/streams/{sid}"))
    assert json.loads(late.data[-1]) == {
        "error": "the stream was cancelled: its client left and nobody resumed it within 0.2 s",
        "finished": True,
    }
    assert [json.loads(d) for d in late.data[:2]] == [{"token": "t0 "}, {"token": "t1 "}]


@pytest.mark.timing
async def test_a_reader_keeps_the_generation_going_past_the_grace_period() -> None:
    # The reader attaches within the 50 ms grace, or the generation is cancelled.
    app = Generation(tokens=60, pace=0.01)
    mw = bridge(app, resume_grace=0.05)
    async with anyio.create_task_group() as group:
        first = Leaver(after=1)
        group.start_soon(run, mw, first)
        with anyio.fail_after(5):
            await first.gone.wait()
        sid = first.headers[b"x-stream-id"].decode()
        reader = Leaver()
        await run(mw, reader, get(f"/streams/{sid}", [(b"last-event-id", b"1")]))
    assert not app.cancelled.is_set()
    assert app.finished == 1
    assert first.data[:1] + reader.data == await uninterrupted(60)


async def test_without_resume_a_disconnect_cancels_at_once() -> None:
    app = Generation(tokens=1000)
    client = Leaver(after=2)
    await run(SSEBridgeMiddleware(app, dialect="ollama", keepalive=None), client)
    assert app.cancelled.is_set()
    assert app.sent < 100


@pytest.mark.parametrize(
    ("dialect", "final"),
    [
        ("ollama", [{"finished": True, "done_reason": "stopped"}]),
        ("raw", [{"finished": True, "done_reason": "stopped"}]),
        ("openai", ["finish chunk", "[DONE]"]),
    ],
)
async def test_delete_stops_the_generation_for_every_reader(dialect: str, final: list[Any]) -> None:
    app = Generation(tokens=1000, pace=0.005)
    mw = SSEBridgeMiddleware(app, dialect=dialect, keepalive=None, resume="memory")
    context = StreamContext()
    stop_context = StreamContext()
    original = Leaver()
    reader = Leaver()
    stopper = Leaver()
    async with anyio.create_task_group() as group:
        group.start_soon(run, mw, original, {**http_scope(), STREAM_KEY: context})
        await original.until(3)
        sid = original.headers[b"x-stream-id"].decode()
        group.start_soon(run, mw, reader, get(f"/streams/{sid}"))
        await reader.until(1)
        scope = {**get(f"/streams/{sid}", method="DELETE"), STREAM_KEY: stop_context}
        await run(mw, stopper, scope)
        # Stopped by the time the DELETE is answered: once every task waits, the generation
        # has been cancelled (no clock: a generation still running would be waiting on its pace).
        await anyio.wait_all_tasks_blocked()
        assert app.cancelled.is_set()
    assert stopper.start["status"] == 204
    assert stop_context.outcome is Outcome.STOPPED
    assert context.outcome is Outcome.STOPPED
    assert reader.data == original.data
    tail = original.data[-len(final) :]
    if dialect == "openai":
        assert json.loads(tail[0])["choices"][0]["finish_reason"] == "stop"
        assert tail[1] == "[DONE]"
    else:
        assert [json.loads(d) for d in tail] == final
    assert original.bodies[-1]["more_body"] is False
    # A second stop of a stream that has ended does nothing, and says so with 204.
    again = Leaver()
    await run(mw, again, get(f"/streams/{sid}", method="DELETE"))
    assert again.start["status"] == 204


async def test_a_stream_cancelled_inside_the_server_still_ends_its_recording() -> None:
    app = Generation(tokens=1000)
    store = MemoryStore()
    mw = bridge(app, resume=store)
    client = Leaver()
    with anyio.move_on_after(0.1):
        await mw(http_scope(), client.receive, client.send)
    sid = client.headers[b"x-stream-id"].decode()
    follower = await store.follow(sid, 0)
    events: list[bytes] = []
    while (batch := await follower.next(1)) is not None:
        events += [event for _, event in batch]
    assert b"cancelled inside the server" in events[-1]


async def test_the_store_opens_at_startup_and_a_failure_stops_the_server() -> None:
    class Unreachable(MemoryStore):
        async def open(self) -> None:
            raise StoreUnavailableError("cannot reach Redis at redis://127.0.0.1:1/0")

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    mw = SSEBridgeMiddleware(lifespan_app, resume=Unreachable())
    with pytest.raises(ResumeError):
        await mw({"type": "lifespan"}, receive, send)
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "cannot reach Redis at redis://127.0.0.1:1/0",
        }
    ]
    sent.clear()
    await SSEBridgeMiddleware(lifespan_app, resume="memory")({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}]


async def test_a_failing_attended_check_counts_as_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    async def attended(self: Any) -> bool:
        raise StoreUnavailableError("away")

    monkeypatch.setattr(_MemoryRecording, "attended", attended)
    app = Generation(tokens=1000)
    client = Leaver(after=1)
    await run(bridge(app, resume_grace=0.05), client)
    assert app.cancelled.is_set()


@pytest.mark.parametrize("resumable", [True, False])
async def test_release_reaches_an_app_waiting_on_the_server(resumable: bool) -> None:
    client = Client()
    shared = SharedReceive(client.receive)
    shared.hold = True
    shared.resumable = resumable
    assert (await shared())["type"] == "http.request"
    heard: list[Message] = []
    with anyio.move_on_after(1):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: _append(heard, shared))
            await anyio.sleep(0.01)
            shared.release()
    # Told at once when the stream may be held; otherwise the server's own disconnect decides.
    assert heard == ([{"type": "http.disconnect"}] if resumable else [])


async def _append(into: list[Message], receive: Receive) -> None:
    into.append(await receive())


async def test_a_stop_after_the_final_chunk_adds_no_second_final_event() -> None:
    release = anyio.Event()

    async def done_but_open(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        await send(
            {"type": "http.response.body", "body": chunk(0) + DONE + b"\n", "more_body": True}
        )
        await release.wait()

    mw = bridge(done_but_open)
    client = Leaver()
    context = StreamContext()
    async with anyio.create_task_group() as group:
        group.start_soon(run, mw, client, {**http_scope(), STREAM_KEY: context})
        await client.until(2)
        sid = client.headers[b"x-stream-id"].decode()
        await run(mw, Leaver(), get(f"/streams/{sid}", method="DELETE"))
        with anyio.fail_after(5):
            while not client.bodies or client.bodies[-1].get("more_body", True):
                await client.changed.wait()
        release.set()
    assert [json.loads(d).get("done_reason") for d in client.data] == [None, "stop"]
    assert context.outcome is Outcome.COMPLETED


async def test_a_store_that_cannot_open_leaves_streams_unresumable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Unreachable(MemoryStore):
        attempts = 0
        reachable = False

        async def open(self) -> None:
            self.attempts += 1
            if not self.reachable:
                raise StoreUnavailableError("cannot reach Redis at redis://127.0.0.1:1/0")

    store = Unreachable()
    mw = bridge(Generation(), resume=store)
    clients = [Leaver(), Leaver()]
    with caplog.at_level(logging.WARNING, logger="sse_bridge"):
        for client in clients:
            await run(mw, client)
    for client in clients:
        assert b"x-stream-id" not in client.headers
        assert client.data == await uninterrupted()
    warnings = [r.getMessage() for r in caplog.records if "not resumable" in r.getMessage()]
    assert warnings == [
        "sse_bridge: streams are not resumable for now: cannot reach Redis at redis://127.0.0.1:1/0"
    ]
    # One failed connect, not one per stream; after the pause, the store is asked again.
    assert store.attempts == 1
    assert mw.endpoints is not None
    mw.endpoints.retry_at -= OPEN_RETRY
    store.reachable = True
    again = Leaver()
    await run(mw, again)
    assert store.attempts == 2
    assert b"x-stream-id" in again.headers


async def test_a_server_that_raises_for_a_gone_client_leaves_the_generation_running() -> None:
    app = Generation(tokens=1000)
    client = Leaver()
    original_send = client.send

    async def send(message: Message) -> None:
        if len(client.data) >= 2 and message["type"] == "http.response.body":
            client.gone.set()
            raise OSError("the client has gone")
        await original_send(message)

    client.send = send  # type: ignore[method-assign]
    context = StreamContext()
    await run(bridge(app, resume_grace=0.2), client, {**http_scope(), STREAM_KEY: context})
    assert context.outcome is Outcome.CLIENT_DISCONNECTED
    # It ran on after the error, for the grace period, and then was cancelled.
    assert app.sent > 5
    assert app.cancelled.is_set()


def test_the_public_module_names_the_stores() -> None:
    from sse_bridge import resume
    from sse_bridge._resume.redis.store import RedisStore

    assert resume.MemoryStore is MemoryStore
    assert resume.RedisStore is RedisStore
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        resume.Nope  # noqa: B018


class Scripted(MemoryStore):
    """A memory store whose followers raise ``errors`` (one per call) once caught up."""

    def __init__(self, errors: list[Exception], orphan_fails: bool = False) -> None:
        super().__init__()
        # A copy: the list may be a test's parameter, which pytest keeps for the next run of
        # the test in this process (mutmut runs the tests several times in one).
        self.errors = list(errors)
        self.orphan_fails = orphan_fails
        self.orphaned: list[tuple[int, list[bytes]]] = []

    async def follow(self, stream_id: str, after: int) -> Any:
        inner = await super().follow(stream_id, after)
        store = self

        class Follower:
            async def next(self, wait: float) -> Any:
                batch = await inner.next(0.01)
                if batch == [] and store.errors:
                    raise store.errors.pop(0)
                return batch

            async def aclose(self) -> None:
                await inner.aclose()

        return Follower()

    async def finish_orphan(self, stream_id: str, last_seq: int, events: list[bytes]) -> None:
        self.orphaned.append((last_seq, events))
        if self.orphan_fails:
            raise StoreUnavailableError("away")
        await super().finish_orphan(stream_id, last_seq, events)


def orphan(store: MemoryStore) -> str:
    """A stream whose owner is gone: two events, never finished."""
    recording = store.record(lambda: None)
    recording.append([b'data: {"token":"a"}\n\n', b'data: {"token":"b"}\n\n'])
    return recording.stream_id


async def test_a_reader_of_an_orphan_ends_it_for_every_reader() -> None:
    store = Scripted([OwnerLostError("gone")])
    mw = bridge(Generation(), resume=store)
    sid = orphan(store)
    reader = Leaver()
    await run(mw, reader, get(f"/streams/{sid}"))
    terminal = {"error": OWNER_LOST, "finished": True}
    assert [json.loads(d) for d in reader.data] == [{"token": "a"}, {"token": "b"}, terminal]
    assert reader.ids == [f"{sid}:1", f"{sid}:2", f"{sid}:3"]
    assert store.orphaned[0][0] == 2
    # The next reader reads the same end from the store.
    second = Leaver()
    await run(mw, second, get(f"/streams/{sid}", [(b"last-event-id", b"1")]))
    assert [json.loads(d) for d in second.data] == [{"token": "b"}, terminal]


@pytest.mark.parametrize(
    ("errors", "orphan_fails"),
    [
        ([OwnerLostError("gone")], True),
        ([OwnerLostError("gone"), OwnerLostError("gone again")], False),
    ],
)
async def test_an_orphan_that_cannot_be_ended_in_the_store_still_ends_for_its_reader(
    errors: list[Exception], orphan_fails: bool
) -> None:
    store = Scripted(errors, orphan_fails)
    mw = bridge(Generation(), resume=store)
    sid = orphan(store)
    if not orphan_fails:
        # Another reader ended it first, yet this one does not see the end: it gives up.
        store.finish_orphan = _no_orphan  # type: ignore[method-assign]
    reader = Leaver()
    context = StreamContext()
    await run(mw, reader, {**get(f"/streams/{sid}"), STREAM_KEY: context})
    assert [json.loads(d) for d in reader.data][-1] == {"error": OWNER_LOST, "finished": True}
    assert reader.ids == [f"{sid}:1", f"{sid}:2"]  # the error is not part of the stream
    assert reader.bodies[-1]["more_body"] is False
    assert context.outcome is Outcome.UPSTREAM_ERROR


async def _no_orphan(stream_id: str, last_seq: int, events: list[bytes]) -> None:
    pass


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            EventsGoneError(2, 5),
            "the events after 2 are no longer kept (the oldest kept is 5); start a new request",
        ),
        (StoreUnavailableError("the resume store went away"), "the resume store went away"),
    ],
)
async def test_a_reader_that_cannot_go_on_gets_a_terminal_error(
    error: ResumeError, message: str
) -> None:
    store = Scripted([error])
    mw = bridge(Generation(), resume=store, dialect="openai")
    sid = orphan(store)
    reader = Leaver()
    await run(mw, reader, get(f"/streams/{sid}"))
    assert json.loads(reader.data[-1]) == {"error": {"message": message, "type": "api_error"}}
    assert reader.bodies[-1]["more_body"] is False


async def test_a_resumed_stream_sends_the_retry_first() -> None:
    mw = bridge(Generation(), retry=1500)
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    reader = Leaver()
    await run(mw, reader, get(f"/streams/{sid}"))
    assert reader.bodies[0]["body"] == b"retry: 1500\n\n"


async def test_a_reconnect_to_the_same_path_after_the_end_answers_204() -> None:
    app = Generation()
    mw = bridge(app, event_ids=True)
    original = Leaver()
    await run(mw, original)
    again = Leaver()
    last = original.ids[-1].encode()
    await run(mw, again, http_scope([*get("/")["headers"], (b"last-event-id", last)]))
    assert again.start["status"] == 204
    assert app.started == 1


async def test_the_store_closes_at_shutdown() -> None:
    class Counted(MemoryStore):
        opened = closed = 0

        async def open(self) -> None:
            self.opened += 1

        async def aclose(self) -> None:
            self.closed += 1

    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        assert (await receive())["type"] == "lifespan.shutdown"

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        pass

    store = Counted()
    await SSEBridgeMiddleware(lifespan_app, resume=store)({"type": "lifespan"}, receive, send)
    assert (store.opened, store.closed) == (1, 1)


async def test_an_abandoned_stream_whose_answer_was_whole_gets_no_error() -> None:
    async def done_but_open(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        await send(
            {"type": "http.response.body", "body": chunk(0) + DONE + b"\n", "more_body": True}
        )
        # It stops when told the client has gone, as a proxy does.
        while (await receive())["type"] != "http.disconnect":
            pass

    store = MemoryStore()
    mw = bridge(done_but_open, resume=store, resume_grace=0.05)
    client = Leaver(after=2)
    context = StreamContext()
    await run(mw, client, {**http_scope(), STREAM_KEY: context})
    sid = client.headers[b"x-stream-id"].decode()
    late = Leaver()
    await run(mw, late, get(f"/streams/{sid}"))
    assert [json.loads(d).get("done_reason") for d in late.data] == [None, "stop"]
    assert context.outcome is Outcome.COMPLETED


async def test_a_dialects_own_ids_give_way_to_the_streams() -> None:
    def with_ids(value: Any) -> list[ServerSentEvent]:
        return [ServerSentEvent(data=json.dumps(value), id="dialect-id")]

    mw = bridge(Generation(), dialect=with_ids, event_ids=True)
    original = Leaver()
    await run(mw, original)
    sid = original.headers[b"x-stream-id"].decode()
    assert b"dialect-id" not in original.body_bytes
    assert original.ids == [f"{sid}:{n}" for n in range(TOKENS + 2)]
    reader = Leaver()
    await run(mw, reader, get(f"/streams/{sid}", [(b"last-event-id", b"3")]))
    assert reader.ids == [f"{sid}:{n}" for n in range(4, TOKENS + 2)]
    assert reader.data == original.data[3:]


async def test_a_stopped_client_still_gets_the_end_while_keepalives_tick() -> None:
    app = Generation(tokens=1000, pace=0.005)
    mw = bridge(app, keepalive=0.01)
    original = Leaver()
    async with anyio.create_task_group() as group:
        group.start_soon(run, mw, original)
        await original.until(3)
        sid = original.headers[b"x-stream-id"].decode()
        await run(mw, Leaver(), get(f"/streams/{sid}", method="DELETE"))
    assert json.loads(original.data[-1]) == {"finished": True, "done_reason": "stopped"}
    assert original.bodies[-1]["more_body"] is False
