"""The demo app: its page, the EventSource twin of /api/chat, and the bridge behind them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sse_bridge._cli.demo import PAGE, demo_app
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, answer_tokens, parse_sse
from tests._servers import serve


@pytest.fixture
def ollama() -> FakeOllama:
    return FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=4))


@pytest.fixture
def demo(ollama: FakeOllama) -> Iterator[str]:
    # The very app `sse-bridge demo` serves, resume on.
    with serve(ollama) as upstream, serve(demo_app(upstream)) as url:
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

    from sse_bridge._cli.demo import stream_answer

    out = StringIO()
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    answer = await stream_answer(f"{demo}/api/chat", body, out)
    assert answer.tokens == 0
    assert answer.error is not None
    assert answer.error.startswith("the bridge answered 404")
    assert "not found" in answer.error
    assert out.getvalue() == ""


CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
EVENTS = {"accept": "text/event-stream"}


def test_the_demo_streams_are_resumable(demo: str) -> None:
    with httpx.Client(base_url=demo) as client:
        chat = client.post("/api/chat", json=CHAT, headers=EVENTS)
        twin = client.get("/api/chat/events", params={"prompt": "hi"})
        for response in (chat, twin):
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert response.headers["x-stream-id"]
        stream_id = chat.headers["x-stream-id"]
        assert twin.headers["x-stream-id"] != stream_id
        # The page resumes with GET /streams/<id> and the number of the last event it rendered.
        resumed = client.get(f"/streams/{stream_id}", headers={"last-event-id": "2"})
        complete = client.get(f"/streams/{stream_id}", headers={"last-event-id": "5"})
        unknown = client.get("/streams/AAAAAAAAAAAAAAAAAAAAAA", headers={"last-event-id": "1"})
    original = parse_sse(chat.content)
    assert [e.get("token") for e in map(json.loads, (e.data for e in original[:4]))] == (
        answer_tokens(4)
    )
    assert len(original) == 5
    replay = parse_sse(resumed.content)
    assert [event.id for event in replay] == [f"{stream_id}:{n}" for n in (3, 4, 5)]
    assert [event.data for event in replay] == [event.data for event in original[2:]]
    assert complete.status_code == 204
    assert unknown.status_code == 404


def test_the_eventsource_twin_stops_the_generation_its_client_leaves(
    demo: str, ollama: FakeOllama
) -> None:
    # The page cannot learn an EventSource stream's id to stop it: the twin stops it when the
    # client leaves, long before the bridge's resume grace (30 s) would.
    params = {"prompt": "hi", "fake": json.dumps({"tokens_per_second": 20, "num_tokens": 1000})}
    with (
        httpx.Client() as client,
        client.stream("GET", f"{demo}/api/chat/events", params=params) as response,
    ):
        assert response.headers["x-stream-id"]
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    record = ollama.records.wait_for_blocking(path="/api/chat", outcome="cancelled", timeout=10)
    assert record.cancelled_phase == "streaming"
    assert record.tokens_sent < 200


def test_a_fetch_stream_outlives_its_client_for_a_resume(demo: str, ollama: FakeOllama) -> None:
    # The negative of the above: a fetch() client that leaves (a reload) does not stop its
    # generation, which a resume then follows to its end.
    body = {**CHAT, "fake": {"tokens_per_second": 50, "num_tokens": 20}}
    with httpx.Client(base_url=demo) as client:
        with client.stream("POST", "/api/chat", json=body, headers=EVENTS) as response:
            stream_id = response.headers["x-stream-id"]
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break
        resumed = client.get(f"/streams/{stream_id}", headers={"last-event-id": "1"})
    events = parse_sse(resumed.content)
    tokens = [json.loads(event.data).get("token") for event in events]
    assert tokens[:-1] == answer_tokens(20)[1:]
    assert json.loads(events[-1].data)["finished"] is True
    ollama.records.wait_for_blocking(path="/api/chat", outcome="completed")
    assert len(ollama.records) == 1


def test_docs_demo_png_was_drawn_from_todays_page() -> None:
    from tests._demo_png import KEY, PICTURE, page_hash, text_of

    drawn_from = text_of(PICTURE.read_bytes()).get(KEY)
    assert drawn_from == page_hash(), (
        "docs/demo.png shows another version of the demo page: redraw it with "
        "`bash scripts/demo-png` and commit it"
    )


def test_the_picture_script_draws_the_page_in_chromium(tmp_path: Path) -> None:
    import struct
    import zlib

    from tests._demo_png import KEY, chunks, draw, page_hash, text_of

    picture = tmp_path / "demo.png"
    draw(picture)
    png = picture.read_bytes()
    assert text_of(png) == {KEY: page_hash()}
    kinds = [kind for kind, _ in chunks(png)]
    assert kinds[:2] == [b"IHDR", b"tEXt"]
    assert kinds[-1] == b"IEND"
    width, height = struct.unpack(">II", chunks(png)[0][1][:8])
    assert width == 1280
    assert height >= 720
    # Every chunk's CRC holds, the one added too: image viewers refuse a broken one.
    at = 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert zlib.crc32(png[at + 4 : at + 8 + length]) == crc
        at += 12 + length
