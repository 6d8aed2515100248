"""The probe's verdicts on explicit arrival times, and its reader against real servers."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from sse_bridge._cli import main
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, analyse, probe, read_stream
from tests._servers import serve

pytestmark = pytest.mark.anyio

T = 0.020


def paced(n: int, interval: float = T, start: float = 0.1) -> list[float]:
    return [start + i * interval for i in range(n)]


@pytest.mark.parametrize(
    ("streams", "interval", "verdict", "coalesced", "span", "burst"),
    [
        pytest.param([paced(50)], T, "streaming", 0.0, 1.0, 1, id="paced"),
        pytest.param([paced(50), paced(50, start=0.3)], T, "streaming", 0.0, 1.0, 1, id="pooled"),
        pytest.param([[1.0] * 50], T, "buffered", 1.0, 0.0, 50, id="one-read"),
        pytest.param(
            [[1.0] * 25 + [2.0] * 25], T, "buffered", 48 / 49, 1 / 49 / T, 25, id="8k-chunks"
        ),
        pytest.param([paced(50, T / 2)], T, "inconclusive", 0.0, 0.5, 1, id="twice-as-fast"),
        pytest.param([paced(50)], None, "streaming", 0.0, 1.0, 1, id="pace-estimated"),
        pytest.param([[1.0] * 50], None, "buffered", 1.0, 0.0, 50, id="estimated-one-read"),
    ],
)
def test_verdicts(
    streams: list[list[float]],
    interval: float | None,
    verdict: str,
    coalesced: float,
    span: float,
    burst: int,
) -> None:
    analysis = analyse(streams, interval)
    assert analysis.verdict == verdict
    assert analysis.coalesced == pytest.approx(coalesced)
    assert analysis.span_ratio == pytest.approx(span)
    assert analysis.longest_burst == burst
    assert analysis.events == sum(len(s) for s in streams)


def test_bursts_and_pairs() -> None:
    # Pairs: half the gaps are coalesced; neither clearly streaming nor clearly buffered.
    pairs = [t for i in range(25) for t in (0.1 + i * 2 * T, 0.1 + i * 2 * T + 0.001)]
    analysis = analyse([pairs], T)
    assert analysis.coalesced == pytest.approx(25 / 49)
    assert analysis.longest_burst == 2
    assert analysis.verdict == "buffered"


def test_too_few_events_is_inconclusive() -> None:
    analysis = analyse([[0.1, 0.2]], T)
    assert analysis.verdict == "inconclusive"
    assert "fewer than 3 events" in analysis.reason
    assert analyse([], T).verdict == "inconclusive"


async def test_read_stream_reports_errors_instead_of_raising() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        refused = await read_stream(f"http://127.0.0.1:{port}/")
    assert refused.error is not None
    assert refused.error.startswith("OSError") or "Connect" in refused.error
    fake = FakeOllama(FakeOllamaConfig(load_delay=5))
    with serve(fake) as url:
        slow = await read_stream(
            f"{url}/api/generate",
            method="POST",
            body=b'{"model":"llama3.2","prompt":"x"}',
            deadline=0.3,
        )
    assert slow.error == "timed out after 0.3 s"
    with pytest.raises(ValueError, match="http:// or https://"):
        await read_stream("ftp://127.0.0.1/")


async def test_read_stream_sees_a_broken_transfer() -> None:
    fake = FakeOllama(
        FakeOllamaConfig(tokens_per_second=0, num_tokens=5, fail_after=2, failure="close")
    )
    with serve(fake) as url:
        stream = await read_stream(
            f"{url}/api/generate", method="POST", body=b'{"model":"llama3.2","prompt":"x"}'
        )
    assert stream.status == 200
    assert len(stream.events) == 2
    assert not stream.complete
    assert stream.error is not None
    assert stream.error.startswith("the connection closed mid-response")


@pytest.mark.timing
async def test_probe_on_ndjson_and_sse() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=50, num_tokens=20))
    body = json.dumps({"model": "llama3.2", "prompt": "x"}).encode()
    with serve(fake) as url:
        ndjson = await probe(f"{url}/api/generate", method="POST", body=body, interval=T)
        sse = await probe(
            f"{url}/v1/chat/completions",
            method="POST",
            body=json.dumps(
                {
                    "model": "llama3.2",
                    "messages": [{"role": "user", "content": "x"}],
                    "stream": True,
                }
            ).encode(),
            streams=2,
        )
    assert ndjson.analysis.verdict == "streaming"
    assert ndjson.analysis.events == 21
    assert ndjson.exit_status == 0
    assert sse.summary()["streams"] == 2
    assert sse.summary()["status"] == [200]
    assert sse.streams[0].events[-1].data == "[DONE]"


async def test_probe_errors_are_inconclusive() -> None:
    with serve(FakeOllama()) as url:
        result = await probe(f"{url}/api/chat", method="POST", body=b"{}")
    assert result.analysis.verdict == "inconclusive"
    assert result.analysis.reason == "status 400"
    assert result.exit_status == 2
    with pytest.raises(ValueError, match="streams must be at least 1"):
        await probe("http://127.0.0.1:1/", streams=0)
    with pytest.raises(ValueError, match="interval must be a positive number"):
        await probe("http://127.0.0.1:1/", interval=0)


@pytest.mark.timing
def test_probe_command_report_and_json() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=50, num_tokens=10))
    data = json.dumps({"model": "llama3.2", "prompt": "x"})
    with serve(fake) as url:
        text = CliRunner().invoke(
            main, ["probe", f"{url}/api/generate", "-d", data, "-H", "X-A: b"]
        )
        as_json = CliRunner().invoke(
            main, ["probe", f"{url}/api/generate", "-d", data, "--json", "--interval-ms", "20"]
        )
        bad_header = CliRunner().invoke(main, ["probe", f"{url}/", "-H", "nonsense"])
        bad_url = CliRunner().invoke(main, ["probe", "ftp://x/"])
        get = CliRunner().invoke(main, ["probe", f"{url}/api/tags"])
    assert text.exit_code == 0, text.output
    assert "verdict: streaming" in text.output
    assert "time to first event" in text.output
    figures = json.loads(as_json.output)
    assert figures["interval_ms"] == 20.0
    assert figures["events"] == 11
    assert figures["verdict"] == "streaming"
    assert bad_header.exit_code == 2
    assert "headers look like 'Name: value'" in bad_header.output
    assert bad_url.exit_code == 2
    assert "http:// or https://" in bad_url.output
    assert get.exit_code == 2  # one JSON line from /api/tags: fewer than three events
    assert "fewer than 3 events" in get.output


def test_a_header_that_cannot_be_sent_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["probe", "http://127.0.0.1:9/", "-H", "bad name: x"])
    assert result.exit_code == 2
    assert "not a valid request" in result.output


async def test_a_last_ndjson_line_without_newline_counts() -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def lines(request: object) -> Response:
        return Response(b'{"a":1}\n{"a":2}\n{"a":3}', media_type="application/x-ndjson")

    with serve(Starlette(routes=[Route("/", lines)])) as url:
        stream = await read_stream(f"{url}/")
    assert [event.data for event in stream.events] == ['{"a":1}', '{"a":2}', '{"a":3}']
    assert stream.complete
