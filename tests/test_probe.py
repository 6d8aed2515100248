"""The probe's verdicts on explicit arrival times, and its reader against real servers."""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sse_bridge._cli.main import main
from sse_bridge.probe import Stream, analyse, format_report, probe, read_stream
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._h2 import misbehaving_h2c, paced_sse, self_signed_cert, serve_hypercorn
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


def test_a_mixed_verdict_names_the_library_option() -> None:
    analysis = analyse([paced(50, T / 2)], T)
    assert analysis.verdict == "inconclusive"
    assert analysis.reason == (
        "some events arrived together; run again, or give the upstream's pace as interval"
    )


async def test_read_stream_reports_errors_instead_of_raising() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        refused = await read_stream(f"http://127.0.0.1:{port}/")
    assert refused.error is not None
    assert refused.error.startswith(f"cannot connect to 127.0.0.1:{port}: OSError")
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


def test_a_closed_port_is_one_line_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = CliRunner().invoke(main, ["probe", f"http://127.0.0.1:{port}/x", "--streams", "5"])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    errors = [line for line in lines if line.strip().startswith("error")]
    assert len(errors) == 1, result.output
    assert f"cannot connect to 127.0.0.1:{port}" in errors[0]
    assert errors[0].endswith("(all 5 streams)")
    assert "status 0" not in result.output
    assert lines[0].endswith("5 stream(s), no response")


def test_an_error_status_shows_its_body_and_no_time_to_first_event() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    body = json.dumps({"model": "nope", "prompt": "x"})
    with serve(fake) as url:
        result = CliRunner().invoke(main, ["probe", f"{url}/api/generate", "-d", body])
    assert result.exit_code == 2, result.output
    assert "status 4" in result.output.splitlines()[0]
    assert "time to first event  -" in result.output
    (shown,) = [line for line in result.output.splitlines() if line.startswith("  body")]
    assert '{"error":' in shown, result.output


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


# HTTP/2: hypercorn serves h2 over TLS (ALPN) and by prior knowledge on plain http://.
H2_EVENTS = 12
H2_PACE = 0.04


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def served_as(stream: Stream) -> list[str]:
    """The HTTP version the paced app saw for each event it sent."""
    return [event.data.split()[1] for event in stream.events]


async def test_http2_over_tls_reads_every_event_and_says_so(cert: tuple[Path, Path]) -> None:
    ca = str(cert[0])
    with serve_hypercorn(paced_sse(H2_EVENTS, H2_PACE), cert) as url:
        h2 = await probe(f"{url}/", http2=True, cacert=ca, interval=H2_PACE, streams=2)
        h1 = await probe(f"{url}/", cacert=ca, interval=H2_PACE)
        insecure = await read_stream(f"{url}/x?y=1", http2=True, insecure=True)
        untrusted = await read_stream(f"{url}/", http2=True)
    assert h2.protocol == "HTTP/2"
    assert h2.summary()["protocol"] == "HTTP/2"
    assert h2.summary()["http2_offered"] is True
    assert "  protocol             HTTP/2\n" in format_report(h2)
    for stream in h2.streams:
        assert stream.protocol == "HTTP/2"
        assert stream.complete
        assert stream.error is None
        assert [event.data.split()[0] for event in stream.events] == [
            str(i) for i in range(H2_EVENTS)
        ]
        assert served_as(stream) == ["HTTP/2"] * H2_EVENTS
        assert len(stream.event_times) == H2_EVENTS
        assert stream.event_times == sorted(stream.event_times)
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.time_to_headers is not None
        assert 0 < len(stream.reads) <= H2_EVENTS + 2
    assert h2.analysis.events == 2 * H2_EVENTS
    assert h1.protocol == "HTTP/1.1"
    assert h1.summary()["http2_offered"] is False
    assert served_as(h1.streams[0]) == ["HTTP/1.1"] * H2_EVENTS
    assert insecure.protocol == "HTTP/2"
    assert insecure.complete
    assert untrusted.protocol is None
    assert untrusted.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.error
    assert "(trust its issuer with cacert, or skip the check with insecure)" in untrusted.error


async def test_http2_sees_a_buffered_stream_and_sends_a_large_body(
    cert: tuple[Path, Path],
) -> None:
    # All events in one DATA frame after the whole generation: what a buffering hop delivers.
    with serve_hypercorn(paced_sse(H2_EVENTS, 0.01, together=True), cert) as url:
        buffered = await probe(f"{url}/", http2=True, insecure=True)
    assert buffered.protocol == "HTTP/2"
    assert buffered.analysis.verdict == "buffered"
    assert buffered.analysis.longest_burst == H2_EVENTS
    assert buffered.exit_status == 1
    # A body beyond the initial flow-control window (64 KiB) waits for WINDOW_UPDATE frames.
    body = b"x" * 200_000
    with serve_hypercorn(paced_sse(3, 0.01), cert) as url:
        large = await read_stream(f"{url}/", method="POST", body=body, http2=True, insecure=True)
    assert large.error is None
    assert [event.data for event in large.events] == [f"{i} HTTP/2 200000" for i in range(3)]


async def test_http2_by_prior_knowledge_on_plain_http() -> None:
    with serve_hypercorn(paced_sse(4, 0.01)) as url:
        # Headers HTTP/2 has no place for are left out, not refused.
        connection = [("Connection", "close"), ("X-Trace", "1")]
        h2c = await probe(f"{url}/", http2=True, headers=connection)
        plain = await probe(f"{url}/")
        first_two = await read_stream(f"{url}/", http2=True, stop_after_events=2)
    assert [event.data for event in first_two.events] == ["0 HTTP/2 0", "1 HTTP/2 0"]
    assert not first_two.complete
    assert first_two.error is None
    assert h2c.protocol == "HTTP/2"
    assert served_as(h2c.streams[0]) == ["HTTP/2"] * 4
    assert plain.protocol == "HTTP/1.1"
    # uvicorn speaks no HTTP/2: the probe says why it got nothing.
    with serve(FakeOllama()) as url:
        refused = await probe(f"{url}/api/tags", http2=True)
    assert refused.protocol is None
    assert refused.analysis.verdict == "inconclusive"
    assert refused.analysis.reason == (
        "the server answered in HTTP/1; it does not take HTTP/2 without TLS (prior knowledge): "
        "use https://, or HTTP/1.1"
    )
    assert "  protocol             - (HTTP/2 was offered; the server did not take it)" in (
        format_report(refused)
    )


async def test_http2_offered_over_tls_to_an_http1_server(cert: tuple[Path, Path]) -> None:
    # uvicorn's TLS offers no ALPN: the probe falls back to HTTP/1.1 and says so.
    app = paced_sse(4, 0.01)
    with serve(app, ssl_certfile=str(cert[0]), ssl_keyfile=str(cert[1])) as url:
        result = await probe(url.replace("http://", "https://") + "/", http2=True, insecure=True)
    assert result.protocol == "HTTP/1.1"
    assert served_as(result.streams[0]) == ["HTTP/1.1"] * 4
    assert "HTTP/1.1 (HTTP/2 was offered; the server did not take it)" in format_report(result)


@pytest.mark.parametrize(
    ("fault", "events", "error"),
    [
        ("mute", {0}, "the server closed the connection without a word of HTTP/2; it does not"),
        ("close", {0}, "the connection closed before the response"),
        ("reset", {1}, "the server reset the HTTP/2 stream (error code 2, INTERNAL_ERROR)"),
        ("goaway", {1}, "the server closed the HTTP/2 connection (GOAWAY, error code 153)"),
        # The bad frame may come in the read with the event: h2 then gives neither.
        ("garbage", {0, 1}, "HTTP/2 protocol error: "),
    ],
)
async def test_http2_failures_are_recorded(fault: str, events: set[int], error: str) -> None:
    with misbehaving_h2c(fault) as url:  # type: ignore[arg-type]
        stream = await read_stream(f"{url}/", http2=True, deadline=10)
    assert len(stream.events) in events
    assert not stream.complete
    assert stream.error is not None
    assert stream.error.startswith(error)


async def test_an_app_that_fails_mid_stream_over_http2(cert: tuple[Path, Path]) -> None:
    with serve_hypercorn(paced_sse(5, 0.01, fail=True), cert) as url:
        stream = await read_stream(f"{url}/", http2=True, insecure=True)
    assert stream.protocol == "HTTP/2"
    assert len(stream.events) == 1
    assert stream.error == "the connection closed mid-response (the HTTP/2 stream did not end)"


@pytest.mark.timing
def test_probe_command_over_http2_says_streaming(cert: tuple[Path, Path]) -> None:
    ca = str(cert[0])
    pace = str(H2_PACE * 1000)
    with serve_hypercorn(paced_sse(H2_EVENTS, H2_PACE), cert) as url:
        h2 = CliRunner().invoke(
            main, ["probe", f"{url}/", "--http2", "--cacert", ca, "--interval-ms", pace]
        )
        h1 = CliRunner().invoke(main, ["probe", f"{url}/", "--cacert", ca, "--interval-ms", pace])
        figures = CliRunner().invoke(main, ["probe", f"{url}/", "--http2", "-k", "--json"])
    assert h2.exit_code == 0, h2.output
    assert "  protocol             HTTP/2\n" in h2.output
    assert "verdict: streaming" in h2.output
    assert h1.exit_code == 0, h1.output
    assert "  protocol             HTTP/1.1\n" in h1.output
    assert "verdict: streaming" in h1.output
    summary = json.loads(figures.stdout)
    assert summary["protocol"] == "HTTP/2"
    assert summary["verdict"] == "streaming"
    assert figures.exit_code == 0


def test_probe_command_tls_and_http2_errors(
    cert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    bad_ca = CliRunner().invoke(main, ["probe", "https://127.0.0.1:9/", "--cacert", str(not_pem)])
    assert bad_ca.exit_code == 2
    assert "cannot read certificates from" in bad_ca.output
    with serve_hypercorn(paced_sse(4, 0.01), cert) as url:
        untrusted = CliRunner().invoke(main, ["probe", f"{url}/", "--http2"])
    assert untrusted.exit_code == 2
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.output
    # Without the h2 package, --http2 says what to install, before any request.
    monkeypatch.setitem(sys.modules, "h2", None)
    monkeypatch.setitem(sys.modules, "h2.connection", None)
    missing = CliRunner().invoke(main, ["probe", "http://127.0.0.1:9/", "--http2"])
    assert missing.exit_code == 2
    assert "pip install 'sse-bridge[http2]'" in missing.output
    assert "HTTP/2 needs the h2 package" in missing.output


@pytest.mark.parametrize(
    "name", ["Analysis", "ProbeResult", "Stream", "analyse", "probe", "read_stream"]
)
def test_the_old_testing_names_still_import_with_a_warning(name: str) -> None:
    import sse_bridge.probe
    import sse_bridge.testing

    message = f"sse_bridge.testing.{name} has moved: use 'from sse_bridge.probe import {name}'"
    with pytest.warns(DeprecationWarning, match=re.escape(message)) as caught:
        found = getattr(sse_bridge.testing, name)
    assert found is getattr(sse_bridge.probe, name)
    assert caught[0].filename == __file__  # the warning points at the import, not at sse_bridge
    assert name not in sse_bridge.testing.__all__


def test_the_old_testing_module_has_only_its_names() -> None:
    import sse_bridge.testing

    message = "module 'sse_bridge.testing' has no attribute 'nope'"
    with pytest.raises(AttributeError, match=re.escape(message)):
        sse_bridge.testing.nope  # noqa: B018


def test_from_import_of_an_old_name_warns() -> None:
    with pytest.warns(DeprecationWarning, match="from sse_bridge.probe import probe"):
        from sse_bridge.testing import probe as old_probe
    assert old_probe is probe


@pytest.mark.parametrize(
    ("error", "verdict", "reason", "hints"),
    [
        (None, "streaming", "events arrived one by one", []),
        (
            "SSLCertVerificationError: self-signed "
            "(trust its issuer with cacert, or skip the check with insecure)",
            "inconclusive",
            "no events",
            ["trust the server's issuer with --cacert FILE, or skip the check with -k"],
        ),
        (
            None,
            "inconclusive",
            "some events arrived together; run again, or give the upstream's pace as interval",
            ["give the upstream's pace between events with --interval-ms"],
        ),
    ],
)
def test_the_command_gives_the_library_advice_in_its_own_flags(
    error: str | None, verdict: str, reason: str, hints: list[str]
) -> None:
    from types import SimpleNamespace

    from sse_bridge._cli.main import _probe_hints

    result = SimpleNamespace(
        streams=[SimpleNamespace(error=error)],
        analysis=SimpleNamespace(verdict=verdict, reason=reason),
    )
    assert _probe_hints(result) == hints
