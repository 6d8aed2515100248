"""End to end through real uvicorn servers, reading the socket as bytes arrive."""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from sse_bridge import SSEBridgeMiddleware
from tests._servers import serve
from tests._sse import fixture
from tests._wire import fetch

pytestmark = pytest.mark.anyio

INTERVAL = 0.020
COUNT = 50


class Generation:
    """A paced NDJSON generation that records how it ended."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.outcome = ""
        self.ended_at = 0.0

    async def chunks(self, count: int, interval: float, fail: bool = False) -> AsyncIterator[bytes]:
        self.outcome = "running"
        start = time.monotonic()
        try:
            for i in range(count):
                # Against a schedule, so that pacing does not drift with load.
                await anyio.sleep(max(0.0, start + i * interval - time.monotonic()))
                chunk = {"model": "m", "response": f" t{i}", "done": False}
                yield json.dumps(chunk).encode() + b"\n"
            if fail:
                yield b'{"error":"model crashed"}\n'
                return
            yield b'{"model":"m","response":"","done":true,"done_reason":"stop","eval_count":3}\n'
            self.outcome = "completed"
        finally:
            if self.outcome == "running":
                self.outcome = "cancelled"
            self.ended_at = time.monotonic()
            self.ended.set()


def starlette_app(generation: Generation, **options: object) -> Starlette:
    async def generate(request: Request) -> StreamingResponse:
        body = await request.json()
        chunks = generation.chunks(
            body.get("count", COUNT), body.get("interval", INTERVAL), body.get("fail", False)
        )
        return StreamingResponse(chunks, media_type="application/x-ndjson")

    return Starlette(
        routes=[Route("/api/generate", generate, methods=["POST"])],
        middleware=[Middleware(SSEBridgeMiddleware, **options)],  # type: ignore[arg-type]
    )


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.timing
async def test_events_paced_upstream_arrive_paced() -> None:
    generation = Generation()
    with serve(starlette_app(generation, dialect="ollama")) as url:
        response = await fetch(f"{url}/api/generate", headers={"accept": "text/event-stream"})
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers
    events = [json.loads(e.data) for e in response.events]
    assert [e["token"] for e in events[:-1]] == [f" t{i}" for i in range(COUNT)]
    assert events[-1]["finished"] is True
    arrivals = gaps(response.event_times[:COUNT])
    coalesced = sum(gap < INTERVAL / 4 for gap in arrivals) / len(arrivals)
    span = (response.event_times[COUNT - 1] - response.event_times[0]) / ((COUNT - 1) * INTERVAL)
    assert coalesced <= 0.1, arrivals
    assert 0.9 <= span <= 1.5, span
    assert 0.5 * INTERVAL <= statistics.median(arrivals) <= 2 * INTERVAL


async def test_ndjson_clients_are_unaffected() -> None:
    generation = Generation()
    body = json.dumps({"count": 5, "interval": 0}).encode()
    with serve(starlette_app(generation, dialect="ollama")) as url:
        response = await fetch(f"{url}/api/generate", body=body)
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["vary"] == "Accept"
    lines = response.body.splitlines()
    assert [json.loads(line)["response"] for line in lines[:5]] == [f" t{i}" for i in range(5)]
    assert json.loads(lines[5])["done"] is True


@pytest.mark.timing
async def test_client_disconnect_cancels_the_generation() -> None:
    generation = Generation()
    with serve(starlette_app(generation, dialect="ollama")) as url:
        response = await fetch(
            f"{url}/api/generate",
            body=json.dumps({"count": 500, "interval": 0.05}).encode(),
            headers={"accept": "text/event-stream"},
            stop_after_events=3,
        )
        closed_at = time.monotonic()
        assert await anyio.to_thread.run_sync(generation.ended.wait, 2)
    assert len(response.events) >= 3
    assert generation.outcome == "cancelled"
    assert generation.ended_at - closed_at < 1.0


@pytest.mark.timing
async def test_keepalive_on_a_real_server() -> None:
    generation = Generation()
    body = json.dumps({"count": 2, "interval": 0.35}).encode()
    with serve(starlette_app(generation, dialect="ollama", keepalive=0.1)) as url:
        response = await fetch(
            f"{url}/api/generate", body=body, headers={"accept": "text/event-stream"}
        )
    assert response.parser.comments.count("ping") >= 2
    assert [json.loads(e.data).get("token") for e in response.events] == [" t0", " t1", None]


async def test_midstream_error_reaches_the_client() -> None:
    generation = Generation()
    body = json.dumps({"count": 2, "interval": 0, "fail": True}).encode()
    with serve(starlette_app(generation, dialect="ollama")) as url:
        response = await fetch(
            f"{url}/api/generate", body=body, headers={"accept": "text/event-stream"}
        )
    assert response.complete
    assert json.loads(response.events[-1].data) == {"error": "model crashed", "finished": True}


async def test_fastapi_add_middleware() -> None:
    app = FastAPI()
    app.add_middleware(SSEBridgeMiddleware, dialect="ollama")
    generation = Generation()

    @app.post("/api/generate")
    async def generate() -> StreamingResponse:
        return StreamingResponse(generation.chunks(3, 0.0), media_type="application/x-ndjson")

    with serve(app) as url:
        response = await fetch(f"{url}/api/generate", headers={"accept": "text/event-stream"})
    assert [json.loads(e.data).get("token") for e in response.events] == [" t0", " t1", " t2", None]


def openai_app() -> Starlette:
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        name = (
            "generate_midstream_error.ndjson" if body["model"] == "broken" else "chat_stream.ndjson"
        )
        lines = fixture(name).splitlines(keepends=True)

        async def chunks() -> AsyncIterator[bytes]:
            for line in lines:
                yield line

        return StreamingResponse(chunks(), media_type="application/x-ndjson")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"])],
        # The openai SDK sends Accept: application/json even when it streams.
        middleware=[Middleware(SSEBridgeMiddleware, dialect="openai", convert="always")],
    )


def test_the_openai_sdk_streams_to_the_end_and_raises_on_errors() -> None:
    with serve(openai_app()) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "The sky is blue"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == 308

        broken = client.chat.completions.create(
            model="broken", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(
            openai.APIError, match="an error was encountered while running the model"
        ):
            list(broken)
        client.close()


def test_httpx_reads_the_stream_incrementally() -> None:
    # The upstream sends its second line only once the client has read the first event, so a
    # bridge that held events back until the end could not deliver the first one in time.
    first_read = threading.Event()
    waited: list[bool] = []

    async def lines() -> AsyncIterator[bytes]:
        yield b'{"model":"m","response":" t0","done":false}\n'
        waited.append(await anyio.to_thread.run_sync(first_read.wait, 5.0))
        yield b'{"model":"m","response":" t1","done":false}\n'
        yield b'{"model":"m","response":" t2","done":false}\n'
        yield b'{"model":"m","response":"","done":true,"done_reason":"stop"}\n'

    async def generate(request: Request) -> StreamingResponse:
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    app = Starlette(
        routes=[Route("/api/generate", generate, methods=["POST"])],
        middleware=[Middleware(SSEBridgeMiddleware, dialect="raw")],
    )
    data: list[str] = []
    with (
        serve(app) as url,
        httpx.Client(timeout=10) as client,  # longer than the upstream waits
        client.stream(
            "POST", f"{url}/api/generate", json={}, headers={"accept": "text/event-stream"}
        ) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: "):
                data.append(line)
                first_read.set()
    assert waited == [True], "the first event reached the client only after the upstream went on"
    assert len(data) == 4
    assert data[0] == 'data: {"model":"m","response":" t0","done":false}'


ARTICLE_HOOK = Path(__file__).parent / "js" / "article_hook.mjs"


def run_article_hook(url: str, body: dict[str, object]) -> dict[str, object]:
    node = shutil.which("node")
    assert node is not None, "node is required for the article hook test (.ci/run installs it)"
    result = subprocess.run(
        [node, str(ARTICLE_HOOK), url, json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    state: dict[str, object] = json.loads(result.stdout)
    return state


@pytest.mark.parametrize("keepalive", [None, 0.02])
def test_the_article_browser_hook_works_unchanged(keepalive: float | None) -> None:
    generation = Generation()
    app = starlette_app(generation, dialect="ollama", keepalive=keepalive)
    with serve(app) as url:
        state = run_article_hook(f"{url}/api/generate", {"count": 8, "interval": 0.01})
    assert state == {
        "output": "".join(f" t{i}" for i in range(8)),
        "isGenerating": False,
        "error": None,
        "tokens": 8,
    }


def test_the_article_hook_sees_a_midstream_error() -> None:
    generation = Generation()
    with serve(starlette_app(generation, dialect="ollama")) as url:
        state = run_article_hook(f"{url}/api/generate", {"count": 2, "interval": 0, "fail": True})
    assert state == {
        "output": " t0 t1",
        "isGenerating": False,
        "error": "model crashed",
        "tokens": 2,
    }
