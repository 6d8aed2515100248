"""Resumable streams and the clients people use, on real servers.

With ``resume`` on, in memory or in a real Redis, the official ollama and openai clients,
httpx-sse and the article's browser hook get exactly what they get with it off: the same events,
the same last event, no ``id:`` line, nothing extra. A stream cut after its 5th event and resumed
with ``Last-Event-ID: 5`` delivers every event once, from one generation upstream.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama
import openai
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from openai.types.chat import ChatCompletionMessageParam

from sse_bridge import SSEBridgeMiddleware, create_proxy
from sse_bridge._resume.store import STREAM_ID
from sse_bridge._types import ASGIApp, Message, Receive, Scope, Send
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, answer_tokens
from tests._redis import redis_server
from tests._servers import serve
from tests.test_e2e import run_article_hook

TOKENS = 12
GENERATE: dict[str, object] = {"model": "llama3.2", "prompt": "hi"}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@dataclass
class Exchange:
    """One HTTP response as the server sent it."""

    path: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Spy:
    """Wraps an app and keeps every response it sends, bytes as on the wire."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(scope["path"])
        self.exchanges.append(exchange)

        async def spy(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in message.get("headers", [])
                }
            elif message["type"] == "http.response.body":
                exchange.body += message.get("body", b"")
            await send(message)

        await self.app(scope, receive, spy)


def openai_front(fake: FakeOllama) -> ASGIApp:
    """The fake's Ollama ``/api/chat`` at ``/v1/chat/completions``, for the openai dialect."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions":
            scope = {**scope, "path": "/api/chat", "raw_path": b"/api/chat"}
        await fake(scope, receive, send)

    return app


@contextlib.contextmanager
def bridge(
    fake: FakeOllama, deployment: str, resume: str | None, **options: Any
) -> Iterator[tuple[str, Spy]]:
    """The fake behind the sidecar (its own server) or the middleware (in its process)."""
    with contextlib.ExitStack() as stack:
        if deployment == "sidecar":
            upstream = stack.enter_context(serve(fake))
            app: ASGIApp = create_proxy(upstream=upstream, resume=resume, **options)
        elif deployment == "middleware":
            app = SSEBridgeMiddleware(fake, resume=resume, **options)
        else:  # openai: the middleware's openai dialect, which the openai SDK reads
            app = SSEBridgeMiddleware(
                openai_front(fake), dialect="openai", convert="always", resume=resume, **options
            )
        spy = Spy(app)
        yield stack.enter_context(serve(spy)), spy


def fake_ollama(
    tokens_per_second: float = 0, num_tokens: int = TOKENS, **config: Any
) -> FakeOllama:
    return FakeOllama(
        FakeOllamaConfig(tokens_per_second=tokens_per_second, num_tokens=num_tokens, **config)
    )


def normal(value: Any) -> Any:
    """``value`` without what differs between two identical generations: times and random ids."""
    if isinstance(value, dict):
        return {
            k: normal(v)
            for k, v in value.items()
            if k not in ("created_at", "created", "id") and not k.endswith("_duration")
        }
    if isinstance(value, list):
        return [normal(v) for v in value]
    return value


def check_wire(exchange: Exchange, resume: str | None) -> None:
    """The response the client read: an event stream of ``data:`` fields and comments (no
    ``id:``, no ``retry:``), with an ``X-Stream-Id`` exactly when resume is on."""
    assert exchange.status == 200
    assert exchange.headers["content-type"] == "text/event-stream; charset=utf-8"
    stream_id = exchange.headers.get("x-stream-id")
    if resume is None:
        assert stream_id is None
    else:
        assert stream_id is not None
        assert STREAM_ID.fullmatch(stream_id)
    lines = exchange.body.split(b"\n")
    assert exchange.body.endswith(b"\n\n")
    fields = [line for line in lines if line and not line.startswith(b":")]
    assert all(line.startswith(b"data: ") for line in fields), exchange.body[:300]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def settings(redis_url: str) -> tuple[str | None, ...]:
    """Resume off, then on in each store: every client test runs them all and compares."""
    return (None, "memory", redis_url)


def same_for_each(settings: tuple[str | None, ...], run: Callable[[str | None], Any]) -> Any:
    """What ``run`` saw with resume off, checked to be exactly what it saw with each store."""
    seen = {resume: run(resume) for resume in settings}
    off = seen.pop(None)
    for resume, got in seen.items():
        assert got == off, f"resume={resume!r} differs from resume off"
    return off


def test_the_ollama_client_is_unaffected(settings: tuple[str | None, ...]) -> None:
    """It asks for NDJSON, so nothing is converted or kept: resume never touches it."""

    def run(resume: str | None) -> list[Any]:
        with (
            bridge(fake_ollama(), "sidecar", resume, dialect="ollama") as (url, spy),
            ollama.Client(host=url) as client,
        ):
            parts = list(client.chat(model="llama3.2", messages=MESSAGES, stream=True))
        (exchange,) = spy.exchanges
        assert exchange.headers["content-type"] == "application/x-ndjson"
        assert "x-stream-id" not in exchange.headers
        return [normal(part.model_dump()) for part in parts]

    parts = same_for_each(settings, run)
    assert [part["done"] for part in parts] == [False] * TOKENS + [True]
    assert "".join(part["message"]["content"] for part in parts) == "".join(answer_tokens(TOKENS))
    assert parts[-1]["done_reason"] == "stop"
    assert parts[-1]["eval_count"] == TOKENS


def test_the_openai_client_gets_the_same_chunks(settings: tuple[str | None, ...]) -> None:
    def run(resume: str | None) -> list[Any]:
        with bridge(fake_ollama(), "openai", resume) as (url, spy):
            sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            stream = sdk.chat.completions.create(model="llama3.2", messages=MESSAGES, stream=True)
            chunks = list(stream)
            sdk.close()
        (exchange,) = spy.exchanges
        check_wire(exchange, resume)
        # The SDK ends at [DONE]: the wire's last event, and not a chunk.
        assert exchange.body.endswith(b"data: [DONE]\n\n")
        assert len({chunk.id for chunk in chunks}) == 1
        return [normal(chunk.model_dump()) for chunk in chunks]

    chunks = same_for_each(settings, run)
    assert len(chunks) == TOKENS + 1
    text = "".join(chunk["choices"][0]["delta"]["content"] or "" for chunk in chunks[:-1])
    assert text == "".join(answer_tokens(TOKENS))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS


def test_httpx_sse_gets_the_same_events_and_the_stream_was_kept(
    settings: tuple[str | None, ...],
) -> None:
    def run(resume: str | None) -> list[Any]:
        with (
            bridge(fake_ollama(), "sidecar", resume, dialect="ollama") as (url, spy),
            httpx.Client(timeout=10) as client,
        ):
            with connect_sse(client, "POST", f"{url}/api/generate", json=GENERATE) as source:
                events = list(source.iter_sse())
            stream_id = source.response.headers.get("x-stream-id")
            if resume is not None:
                # What the client got is what was kept: a replay from the start has it all.
                assert stream_id is not None
                replay = read_sse(client, "GET", f"{url}/streams/{stream_id}")
                assert [e.data for e in replay] == [e.data for e in events]
                assert [e.id for e in replay] == [f"{stream_id}:{n}" for n in numbers(events)]
        check_wire(spy.exchanges[0], resume)
        assert all(e.id == "" and e.event == "message" and e.retry is None for e in events)
        return [normal(json.loads(e.data)) for e in events]

    events = same_for_each(settings, run)
    assert [event["token"] for event in events[:-1]] == answer_tokens(TOKENS)
    assert events[-1]["finished"] is True
    assert events[-1]["done_reason"] == "stop"


@pytest.mark.parametrize("keepalive", [None, 0.02])
def test_the_article_browser_hook_gets_the_same_answer(
    settings: tuple[str | None, ...], keepalive: float | None
) -> None:
    def run(resume: str | None) -> dict[str, object]:
        # A silence after the 3rd token: with keepalives on, pings go out in it.
        fake = fake_ollama(tokens_per_second=100, stall_after=3, stall_seconds=0.1)
        with bridge(fake, "sidecar", resume, dialect="ollama", keepalive=keepalive) as (url, spy):
            state = run_article_hook(f"{url}/api/generate", GENERATE)
        (exchange,) = spy.exchanges
        check_wire(exchange, resume)
        assert (b": ping\n" in exchange.body) is (keepalive is not None)
        return state

    assert same_for_each(settings, run) == {
        "output": "".join(answer_tokens(TOKENS)),
        "isGenerating": False,
        "error": None,
        "tokens": TOKENS,
    }


def read_sse(client: httpx.Client, method: str, url: str, **kwargs: Any) -> list[ServerSentEvent]:
    with connect_sse(client, method, url, **kwargs) as source:
        assert source.response.status_code == 200, source.response.read()
        return list(source.iter_sse())


def numbers(events: list[Any], after: int = 0) -> range:
    return range(after + 1, after + len(events) + 1)


@pytest.fixture(params=["memory", "redis"])
def resume_store(request: pytest.FixtureRequest) -> str:
    """The store under test, as ``resume=`` names it: "memory" or a real Redis's URL."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.param)


CUT = 5
LONG = 40


@pytest.mark.parametrize("deployment", ["sidecar", "middleware"])
@pytest.mark.parametrize(
    "pace",
    [
        pytest.param(0, id="replay"),
        # 40 tokens at 50/s: the resume arrives while the generation still runs.
        pytest.param(50, id="live", marks=pytest.mark.timing),
    ],
)
def test_a_stream_cut_after_5_events_resumes_without_loss_or_repeat(
    resume_store: str, deployment: str, pace: float
) -> None:
    fake = fake_ollama(tokens_per_second=pace, num_tokens=LONG)
    with (
        bridge(fake, deployment, resume_store, dialect="ollama") as (url, _),
        httpx.Client(timeout=10) as client,
    ):
        whole = read_sse(client, "POST", f"{url}/api/generate", json=GENERATE)
        before = len(fake.records)
        with connect_sse(client, "POST", f"{url}/api/generate", json=GENERATE) as source:
            stream_id = source.response.headers["x-stream-id"]
            first = list(itertools.islice(source.iter_sse(), CUT))
        # Leaving the block closed the connection in the middle of the stream.
        resumed_at = time.monotonic()
        rest = read_sse(
            client, "GET", f"{url}/streams/{stream_id}", headers={"last-event-id": str(CUT)}
        )
        (generation,) = fake.records[before:]
        record = fake.records.wait_for_blocking(
            finished=True, predicate=lambda r: r.id == generation.id
        )
    assert len(whole) == LONG + 1
    assert len(first) == CUT
    assert [e.id for e in rest] == [f"{stream_id}:{n}" for n in numbers(rest, CUT)]
    got = [normal(json.loads(e.data)) for e in first + rest]
    assert got == [normal(json.loads(e.data)) for e in whole]
    # One generation, run to its end once: the resume read what was kept, it started nothing.
    assert len(fake.records) == before + 1
    assert record.path == "/api/generate"
    assert record.outcome == "completed"
    assert record.tokens_sent == LONG
    if pace:
        assert record.ended_at is not None
        assert record.ended_at > resumed_at
