"""The demo app: its page, the EventSource twin of /api/chat, and the bridge behind them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from sse_bridge import create_proxy
from sse_bridge._demo import PAGE, DemoApp
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, answer_tokens, parse_sse
from tests._servers import serve


@pytest.fixture
def demo() -> Iterator[str]:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=4))
    with (
        serve(fake) as upstream,
        serve(DemoApp(create_proxy(upstream=upstream, dialect="ollama"))) as url,
    ):
        yield url


def test_the_page(demo: str) -> None:
    page = httpx.get(f"{demo}/")
    head = httpx.head(f"{demo}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.content == PAGE
    assert b"new EventSource" in PAGE
    assert b'fetch("/api/chat"' in PAGE
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(PAGE))


def test_the_eventsource_endpoint_streams_the_same_answer(demo: str) -> None:
    params = {"prompt": "hi", "fake": json.dumps({"num_tokens": 3})}
    response = httpx.get(f"{demo}/api/chat/events", params=params)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [json.loads(event.data) for event in parse_sse(response.content)]
    assert [e.get("token") for e in events[:-1]] == answer_tokens(3)
    assert events[-1]["finished"] is True


@pytest.mark.parametrize("fake", ["[1]", "{nope"])
def test_the_eventsource_endpoint_refuses_bad_fake_options(demo: str, fake: str) -> None:
    response = httpx.get(f"{demo}/api/chat/events", params={"prompt": "hi", "fake": fake})
    assert response.status_code == 400
    assert response.json() == {"error": "fake must be a JSON object"}


def test_everything_else_goes_to_the_bridge(demo: str) -> None:
    assert httpx.get(f"{demo}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{demo}/api/version").json() == {"version": "0.12.0"}


@pytest.mark.anyio
async def test_the_terminal_reader_reports_an_error_status(demo: str) -> None:
    from io import StringIO

    from sse_bridge._demo import stream_answer

    out = StringIO()
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    answer = await stream_answer(f"{demo}/api/chat", body, out)
    assert answer.tokens == 0
    assert answer.error is not None
    assert answer.error.startswith("the bridge answered 404")
    assert "not found" in answer.error
    assert out.getvalue() == ""
