"""deploy/nginx.conf against a real nginx: events stay separate, and the detector can fail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from loadtests.stack import DEPLOY_CONF, NAIVE_CONF, free_port, nginx, nginx_edge, running
from sse_bridge._cli.main import main
from sse_bridge.probe import probe
from sse_bridge.testing import answer_tokens
from tests._servers import serve

pytestmark = pytest.mark.anyio

TOKENS = 50
INTERVAL = 0.020
CHAT = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "hi"}],
    "fake": {"tokens_per_second": 1 / INTERVAL, "num_tokens": TOKENS},
}
BODY = json.dumps(CHAT).encode()
JSON = [("content-type", "application/json")]


def test_the_config_is_valid(tmp_path: Path) -> None:
    with nginx(DEPLOY_CONF.read_text(), bridges=[free_port(), free_port()], workdir=tmp_path):
        pass


def test_a_relative_workdir_is_taken_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The load test's default `--results results` is relative; nginx takes `-c` relative to its
    # `-p`, so a relative path handed to both named results/x/results/x/nginx.conf.
    monkeypatch.chdir(tmp_path)
    with nginx(DEPLOY_CONF.read_text(), bridges=[free_port()], workdir=Path("results/x")) as url:
        assert url.startswith("http://127.0.0.1:")
    assert (tmp_path / "results" / "x" / "nginx.conf").is_file()


@pytest.mark.parametrize("http2", [False, True])
async def test_the_probe_keeps_its_result_over_nginx_tls(
    bridges: list[int], tmp_path: Path, http2: bool
) -> None:
    # nginx ends a TLS connection without waiting for the probe's close_notify; closing the
    # connection then raised BrokenResourceError, and the probe threw away a complete exchange.
    with nginx_edge(DEPLOY_CONF.read_text(), bridges=bridges, workdir=tmp_path) as edge:
        assert edge.https is not None
        result = await probe(
            f"{edge.https}/api/chat",
            method="POST",
            body=BODY,
            headers=JSON,
            streams=2,
            http2=http2,
            cacert=str(edge.certificate),
        )
    assert result.analysis.verdict != "inconclusive", result.analysis.reason
    for stream in result.streams:
        assert stream.error is None
        assert stream.status == 200
        assert stream.protocol == ("HTTP/2" if http2 else "HTTP/1.1")
        assert stream.complete
        assert len(stream.events) == TOKENS + 1


@pytest.mark.timing
async def test_twenty_streams_through_nginx_stay_separate(
    fake: str, bridges: list[int], tmp_path: Path
) -> None:
    results = {}

    async def measure(name: str, url: str) -> None:
        results[name] = await probe(
            url, method="POST", body=BODY, headers=JSON, streams=20, interval=INTERVAL
        )

    with nginx(DEPLOY_CONF.read_text(), bridges=bridges, workdir=tmp_path) as url:
        # The same streams read from the fake directly at the same time: on a busy machine some
        # gaps close up on the direct path too, and only what nginx and the bridges add counts.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(measure, "stack", f"{url}/api/chat")
            tasks.start_soon(measure, "direct", f"{fake}/api/chat")
    result, direct = results["stack"], results["direct"]
    analysis = result.analysis
    assert analysis.coalesced <= direct.analysis.coalesced + 0.05, (
        result.summary(),
        direct.summary(),
    )
    assert analysis.span_ratio >= 0.9, result.summary()
    assert analysis.verdict == "streaming"
    for stream in result.streams:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        # nginx obeys X-Accel-Buffering and hides it from its own client.
        assert "x-accel-buffering" not in stream.headers
        events = [json.loads(event.data) for event in stream.events]
        assert [e.get("token") for e in events[:-1]] == answer_tokens(TOKENS)
        assert events[-1]["finished"] is True


async def naive_sse(request: Request) -> StreamingResponse:
    """A hand-written NDJSON-to-SSE endpoint that sends no anti-buffering header."""

    async def events() -> AsyncIterator[bytes]:
        start = anyio.current_time()
        for i in range(TOKENS):
            await anyio.sleep(max(0.0, start + i * INTERVAL - anyio.current_time()))
            yield f'data: {{"token":" t{i}"}}\n\n'.encode()

    return StreamingResponse(events(), media_type="text/event-stream")


naive_app = Starlette(routes=[Route("/api/chat", naive_sse, methods=["POST"])])


# uvicorn's httptools answers even an HTTP/1.0 request with a chunked body, which nginx passes
# on chunk by chunk; h11, like most servers, answers it with a close-delimited body, which a
# buffering nginx holds back. The naive upstreams here run on h11 so that the control is real.


@pytest.mark.timing
async def test_the_detector_fails_a_buffering_chain(tmp_path: Path) -> None:
    with serve(naive_app, http="h11") as app_url:
        port = int(app_url.rsplit(":", 1)[1])
        with nginx(NAIVE_CONF, bridges=[port], workdir=tmp_path) as url:
            result = await probe(f"{url}/api/chat", method="POST", body=BODY, interval=INTERVAL)
    assert result.analysis.verdict == "buffered", result.summary()
    assert result.analysis.coalesced >= 0.9
    assert len(result.streams[0].events) == TOKENS


@pytest.mark.timing
async def test_the_naive_config_streams_in_front_of_sse_bridge(fake: str, tmp_path: Path) -> None:
    # Same naive nginx, same h11, but the bridge's X-Accel-Buffering: no switches buffering off.
    args = ("serve", "--upstream", fake, "--dialect", "ollama", "--http", "h11")
    port = free_port()
    with running(*args, port=port), nginx(NAIVE_CONF, bridges=[port], workdir=tmp_path) as url:
        result = await probe(
            f"{url}/api/chat", method="POST", body=BODY, headers=JSON, interval=INTERVAL
        )
    assert result.analysis.verdict == "streaming", result.summary()
    assert result.analysis.coalesced <= 0.05


@pytest.mark.timing
def test_the_probe_command_exit_status(bridges: list[int], tmp_path: Path) -> None:
    data = BODY.decode()
    (tmp_path / "naive").mkdir()
    with serve(naive_app, http="h11") as app_url:
        port = int(app_url.rsplit(":", 1)[1])
        with nginx(NAIVE_CONF, bridges=[port], workdir=tmp_path / "naive") as url:
            buffered = CliRunner().invoke(main, ["probe", f"{url}/api/chat", "-d", data, "--json"])
    (tmp_path / "deploy").mkdir()
    with nginx(DEPLOY_CONF.read_text(), bridges=bridges, workdir=tmp_path / "deploy") as url:
        streaming = CliRunner().invoke(main, ["probe", f"{url}/api/chat", "-d", data])
    assert buffered.exit_code == 1, buffered.output
    assert json.loads(buffered.output)["verdict"] == "buffered"
    assert streaming.exit_code == 0, streaming.output
    assert "verdict: streaming" in streaming.output


async def test_two_bridges_share_the_load_and_one_can_stop(fake: str, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    args = ("serve", "--upstream", fake, "--dialect", "ollama", "--log-level", "info")
    quick = json.dumps({**CHAT, "fake": {"tokens_per_second": 0, "num_tokens": 3}}).encode()
    with running(*args, port=ports[0]) as (_, first), running(*args, port=ports[1]) as (_, second):
        with nginx(DEPLOY_CONF.read_text(), bridges=ports, workdir=tmp_path) as url:
            # Concurrent, long enough to overlap: least_conn spreads them over both bridges.
            before = await probe(
                f"{url}/api/chat", method="POST", body=BODY, headers=JSON, streams=6
            )
            first.terminate()
            first.wait(timeout=15)
            after = await probe(
                f"{url}/api/chat", method="POST", body=quick, headers=JSON, streams=6
            )
            second.terminate()
            second.wait(timeout=15)
        logs = [process.communicate()[1] for process in (first, second)]
    assert all(stream.status == 200 for stream in before.streams + after.streams)
    assert all(len(stream.events) == 4 for stream in after.streams)
    served = [log.count("stream method=POST") for log in logs]
    assert min(served) >= 1, served
    assert sum(served) == 12
    assert served[1] >= 6  # every stream after the stop went to the bridge still running
