"""Prometheus metrics: a known sequence of requests, then /metrics read with prometheus-client's
own parser; every counter and histogram count must match what happened."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Mount, Route

from loadtests.stack import fake_ollama, free_port, running, stop
from sse_bridge import SSEBridgeMiddleware, create_proxy
from sse_bridge._cli.server import JsonLines
from sse_bridge._core.context import BUCKETS, Outcome, StreamContext
from sse_bridge._resume.store import stream_tag
from sse_bridge._sidecar.options import SidecarOptions
from sse_bridge.metrics import BridgeMetrics
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._servers import serve
from tests._wire import fetch

pytestmark = pytest.mark.anyio

SSE = {"accept": "text/event-stream"}
KEY = {"authorization": "Bearer k"}


def chat(**fake: Any) -> bytes:
    body: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    if fake:
        body["fake"] = fake
    return json.dumps(body).encode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def log_fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll a condition the servers' threads make true (a log line is written after the
    response ends), bounded in count and time."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("the condition did not become true in time")


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama(FakeOllamaConfig(tokens_per_second=200, num_tokens=6))


async def test_the_metrics_match_a_known_sequence(
    fake: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(fake) as upstream:
        app = create_proxy(
            upstream=upstream,
            dialect="ollama",
            metrics=True,
            api_key="k",
            max_body=2000,
            keepalive=0.05,
        )
        with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
            completed = [
                await fetch(f"{url}/api/chat", body=chat(), headers={**SSE, **KEY})
                for _ in range(3)
            ]
            # A stall long enough for keepalives, in a stream that completes.
            stalled = await fetch(
                f"{url}/api/chat",
                body=chat(stall_after=2, stall_seconds=0.3),
                headers={**SSE, **KEY},
            )
            left = await fetch(
                f"{url}/api/chat",
                body=chat(tokens_per_second=20, num_tokens=100),
                headers={**SSE, **KEY},
                stop_after_events=2,
            )
            failed = await fetch(f"{url}/api/chat", body=chat(fail_after=2), headers={**SSE, **KEY})
            too_large = await fetch(f"{url}/api/chat", body=b"x" * 2001, headers=KEY)
            anonymous = await fetch(f"{url}/api/chat", body=chat(), headers=SSE)
            unauthorized_scrape = await fetch(f"{url}/metrics", method="GET", body=b"")
            # The disconnected stream is over when the fake has seen it go.
            await fake.records.wait_for(outcome="cancelled", timeout=5)
            await until(lambda: len(caplog.records) >= 7)
            scrape = await fetch(f"{url}/metrics", method="GET", body=b"", headers=KEY)
    assert [r.status for r in completed] == [200] * 3
    assert (stalled.status, left.status, failed.status) == (200, 200, 200)
    assert too_large.status == 413
    assert anonymous.status == 401
    assert unauthorized_scrape.status == 401
    assert scrape.status == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    found = samples(scrape.body.decode())
    streams = "sse_bridge_streams_total"
    assert value(found, streams, dialect="ollama", outcome="completed") == 4
    assert value(found, streams, dialect="ollama", outcome="client_disconnected") == 1
    # The model's own error, and the 413.
    assert value(found, streams, dialect="ollama", outcome="upstream_error") == 2
    assert value(found, streams, dialect="ollama", outcome="stopped") == 0
    assert value(found, "sse_bridge_streams_active") == 0
    refused = "sse_bridge_requests_refused_total"
    assert value(found, refused, reason="unauthorized") == 2
    assert value(found, refused, reason="body_too_large") == 1
    assert value(found, refused, reason="max_streams") == 0
    for kind in ("unreachable", "timeout", "broken", "status"):
        assert value(found, "sse_bridge_upstream_errors_total", kind=kind) == 0
    # What the bridge sent, as its own log lines say, request by request.
    lines = [log_fields(r.getMessage()) for r in caplog.records if r.name == "sse_bridge.access"]
    assert len(lines) == 7
    events = sum(int(line["events"]) for line in lines)
    assert value(found, "sse_bridge_events_total", dialect="ollama") == events
    assert value(found, "sse_bridge_sent_bytes_total", dialect="ollama") == sum(
        int(line["bytes"]) for line in lines
    )
    with_events = [line for line in lines if int(line["events"])]
    ttfe = "sse_bridge_time_to_first_event_seconds"
    assert value(found, ttfe + "_count", dialect="ollama") == len(with_events)
    assert value(found, ttfe + "_sum", dialect="ollama") == pytest.approx(
        sum(float(line["ttfe_ms"]) for line in with_events) / 1000, abs=0.001 * len(with_events)
    )
    # One gap between each two consecutive events of a stream.
    gaps = "sse_bridge_event_gap_seconds"
    assert value(found, gaps + "_count", dialect="ollama") == events - len(with_events)
    assert value(found, gaps + "_bucket", dialect="ollama", le="+Inf") == events - len(with_events)
    # The stall shows as one gap of at least 0.25 s.
    assert value(found, gaps + "_bucket", dialect="ollama", le="0.25") < events - len(with_events)
    duration = "sse_bridge_stream_duration_seconds"
    assert value(found, duration + "_count", dialect="ollama") == 7
    headers = "sse_bridge_upstream_headers_seconds"
    assert value(found, headers + "_count") == 6  # every request but the 413
    pings = stalled.body.count(b": ping")
    assert pings >= 1
    assert value(found, "sse_bridge_keepalives_total", dialect="ollama") >= pings
    # The buckets: cumulative, the documented bounds.
    bounds = [
        float(dict(labels)["le"])
        for name, labels in found
        if name == duration + "_bucket" and dict(labels)["le"] != "+Inf"
    ]
    assert bounds == list(BUCKETS)


async def test_upstream_failures_and_the_stream_limit_are_counted() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=20, num_tokens=100))
    closed = f"http://127.0.0.1:{free_port()}"
    with serve(create_proxy(upstream=closed, metrics=True)) as url:
        unreachable = await fetch(f"{url}/api/chat", body=chat())
        scrape = await fetch(f"{url}/metrics", method="GET", body=b"")
    assert unreachable.status == 502
    found = samples(scrape.body.decode())
    assert value(found, "sse_bridge_upstream_errors_total", kind="unreachable") == 1
    assert value(found, "sse_bridge_streams_total", dialect="raw", outcome="upstream_error") == 1
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", metrics=True, max_streams=1)
        with serve(app) as url:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: fetch(f"{url}/api/chat", body=chat(), headers=SSE, deadline=5)
                )
                await fake.records.wait_for(predicate=lambda r: r.tokens_sent >= 1)
                during = samples(
                    (await fetch(f"{url}/metrics", method="GET", body=b"")).body.decode()
                )
                refused = await fetch(f"{url}/api/chat", body=chat(), headers=SSE)
                group.cancel_scope.cancel()
            after = samples((await fetch(f"{url}/metrics", method="GET", body=b"")).body.decode())
    assert value(during, "sse_bridge_streams_active") == 1
    assert refused.status == 503
    assert value(after, "sse_bridge_requests_refused_total", reason="max_streams") == 1


async def test_metrics_off_serve_no_metrics_and_count_nothing(fake: FakeOllama) -> None:
    with serve(fake) as upstream, serve(create_proxy(upstream=upstream)) as url:
        response = await fetch(f"{url}/metrics", method="GET", body=b"")
    # Passed to the upstream, which has no such path.
    assert response.status == 404
    assert b"sse_bridge_" not in response.body
    assert StreamContext().gaps is None


async def test_middleware_users_register_the_metrics_in_their_registry() -> None:
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)

    async def tokens(request: Request) -> StreamingResponse:
        async def lines() -> Any:
            for token in ["a", "b", "c"]:
                yield json.dumps({"response": token, "done": False}) + "\n"
            yield json.dumps({"response": "", "done": True}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    app = Starlette(
        routes=[Route("/chat", tokens, methods=["POST"]), Mount("/metrics", metrics.asgi_app())]
    )
    bridged = SSEBridgeMiddleware(app, dialect="ollama", metrics=metrics)
    with serve(bridged) as url:
        for _ in range(2):
            await fetch(f"{url}/chat", body=b"{}", headers=SSE)
        scrape = await fetch(f"{url}/metrics/", method="GET", body=b"")
    found = samples(scrape.body.decode())
    assert value(found, "sse_bridge_streams_total", dialect="ollama", outcome="completed") == 2
    assert value(found, "sse_bridge_events_total", dialect="ollama") == 2 * 4
    assert value(found, "sse_bridge_event_gap_seconds_count", dialect="ollama") == 2 * 3
    assert registry.get_sample_value("sse_bridge_streams_active") == 0


async def test_middleware_metrics_count_streams_not_the_apps_other_routes() -> None:
    # The snippet of docs/operations.md, with a route that streams: its own /metrics and
    # FastAPI's /docs are not streams, and no scrape may count itself.
    from fastapi import FastAPI

    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)
    app = FastAPI()
    app.add_middleware(SSEBridgeMiddleware, dialect="ollama", metrics=metrics)
    app.mount("/metrics", metrics.asgi_app())

    @app.post("/api/chat")
    async def chat() -> StreamingResponse:
        async def lines() -> Any:
            yield json.dumps({"response": "a", "done": False}) + "\n"
            yield json.dumps({"response": "", "done": True}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    with serve(app) as url:
        for path in ("/docs", "/metrics/", "/openapi.json"):
            answer = await fetch(f"{url}{path}", method="GET", body=b"")
            assert answer.status == 200, path
        # A mount answers its bare path with a redirect (Prometheus follows it; curl needs -L).
        redirect = await fetch(f"{url}/metrics", method="GET", body=b"")
        assert redirect.status == 307
        assert redirect.headers["location"].endswith("/metrics/")
        await fetch(f"{url}/api/chat", body=b"{}", headers=SSE)
        await fetch(f"{url}/api/chat", body=b"{}")  # NDJSON, not converted: a stream too
        scrape = await fetch(f"{url}/metrics/", method="GET", body=b"")
    found = samples(scrape.body.decode())
    completed = value(found, "sse_bridge_streams_total", dialect="ollama", outcome="completed")
    assert completed == 2
    assert value(found, "sse_bridge_streams_active") == 0


def test_a_metrics_port_turns_the_metrics_on() -> None:
    assert SidecarOptions(upstream="http://127.0.0.1:9", metrics_port=9100).metrics is True
    assert SidecarOptions(upstream="http://127.0.0.1:9").metrics is False
    create_proxy(upstream="http://127.0.0.1:9", metrics_port=9100)


def test_every_outcome_is_documented_as_a_label_value() -> None:
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| `sse_bridge_streams_total`")]
    (key,) = [line for line in text.splitlines() if line.startswith("| `outcome` |")]
    for outcome in Outcome:
        assert f"`{outcome.value}`" in row, outcome
        assert f"`{outcome.value}`" in key, outcome


async def test_two_apps_in_one_process_count_apart() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    first = create_proxy(upstream=closed, metrics=True)
    second = create_proxy(upstream=closed, metrics=True)
    with serve(first) as url, serve(second) as other:
        for _ in range(2):
            assert (await fetch(f"{url}/api/chat", body=chat())).status == 502
        assert (await fetch(f"{other}/api/chat", body=chat())).status == 502
        counted = [
            samples((await fetch(f"{at}/metrics", method="GET", body=b"")).body.decode())
            for at in (url, other)
        ]
    errors = "sse_bridge_upstream_errors_total"
    assert [value(found, errors, kind="unreachable") for found in counted] == [2, 1]


def test_whole_bucket_counts_export_what_observe_would() -> None:
    """The gaps histogram is filled a stream at a time; a scrape must not see the difference."""
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)
    context = StreamContext()
    metrics.start(context)
    assert context.gaps is not None
    # Sends at these instants, with this many events in each body message.
    sends = [(10.0, 2), (10.25, 1), (12.25, 3), (12.5, 1)]
    for now, events in sends:
        context.count_gaps(context.gaps, now, events)
    metrics.finish(context, "raw")
    reference = Histogram("reference", "", buckets=BUCKETS, registry=CollectorRegistry())
    for gap in [0.0, 0.25, 2.0, 0.0, 0.0, 0.25]:
        reference.observe(gap)
    [family] = reference.collect()
    for sample in family.samples:
        if not sample.name.endswith("_created"):
            name = sample.name.replace("reference", "sse_bridge_event_gap_seconds")
            labels = {"dialect": "raw", **sample.labels}
            assert registry.get_sample_value(name, labels) == sample.value, sample
    assert registry.get_sample_value("sse_bridge_event_gap_seconds_sum", {"dialect": "raw"}) == 2.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metrics": True, "metrics_port": 70000}, "metrics_port must be a TCP port"),
        ({"metrics": True, "metrics_port": -1}, "metrics_port must be an integer >= 0"),
        ({"log_format": "xml"}, "log_format must be 'text' or 'json'"),
    ],
)
def test_bad_metrics_and_log_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_proxy(upstream="http://127.0.0.1:9", **options)


async def test_json_log_lines(fake: FakeOllama, caplog: pytest.LogCaptureFixture) -> None:
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", log_format="json", resume="memory")
        with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
            started = time.monotonic()
            response = await fetch(f"{url}/api/chat", body=chat(), headers=SSE)
            await until(lambda: bool(caplog.records))
            elapsed_ms = (time.monotonic() - started) * 1000
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sse_bridge.access"]
    record = json.loads(line)
    assert set(record) == {
        "method",
        "path",
        "status",
        "dialect",
        "events",
        "bytes",
        "ttfe_ms",
        "duration_ms",
        "outcome",
        "stream_id",
        "client",
    }
    assert record["method"] == "POST"
    assert record["path"] == "/api/chat"
    assert record["status"] == 200
    assert record["dialect"] == "ollama"
    assert record["events"] == 7
    assert record["outcome"] == "completed"
    # The id is a key to the stream: the log has its tag.
    assert record["stream_id"] == stream_tag(response.headers["x-stream-id"])
    assert record["client"].startswith("127.0.0.1:")
    assert isinstance(record["ttfe_ms"], float)
    assert record["bytes"] == len(response.body)
    # Six tokens at 200 a second take at least 25 ms, and the stream lies within the request.
    assert 25 <= record["duration_ms"] <= elapsed_ms
    assert record["ttfe_ms"] <= record["duration_ms"]


@pytest.fixture(scope="module")
def fake_process() -> Iterator[str]:
    with fake_ollama() as url:
        yield url


def scrape(port: int) -> dict[Any, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return samples(response.read().decode())


async def test_two_workers_are_summed_on_the_metrics_port(fake_process: str) -> None:
    metrics_port = free_port()
    args = (
        "serve",
        "--upstream",
        fake_process,
        "--dialect",
        "ollama",
        "--workers",
        "2",
        "--metrics",
        "--metrics-port",
        str(metrics_port),
        "--log-level",
        "warning",
    )
    body = chat(tokens_per_second=0, num_tokens=3)
    with running(*args, ready_path="/healthz") as (url, _):
        for _ in range(8):
            # Fresh connections: uvicorn's workers share the socket, and each takes some.
            response = await fetch(f"{url}/api/chat", body=body, headers=SSE)
            assert response.status == 200
        with anyio.fail_after(10):
            while True:
                found = await anyio.to_thread.run_sync(scrape, metrics_port)
                key = (
                    "sse_bridge_streams_total",
                    (("dialect", "ollama"), ("outcome", "completed")),
                )
                if found.get(key) == 8:
                    break
                await anyio.sleep(0.1)
        api = await fetch(f"{url}/metrics", method="GET", body=b"")
    assert value(found, "sse_bridge_events_total", dialect="ollama") == 8 * 4
    assert value(found, "sse_bridge_streams_active") == 0
    # On its own port only: the API's /metrics goes to the upstream like any path.
    assert api.status == 404


def test_the_metrics_port_shows_the_dialect_series_at_zero_before_any_stream(
    fake_process: str,
) -> None:
    # A fresh dashboard reads "No data" for a series that does not exist yet.
    metrics_port = free_port()
    args = ("serve", "--upstream", fake_process, "--dialect", "ollama")
    with running(*args, "--metrics-port", str(metrics_port), "--log-level", "warning"):
        found = scrape(metrics_port)
    completed = (("dialect", "ollama"), ("outcome", "completed"))
    assert found.get(("sse_bridge_streams_total", completed)) == 0
    assert value(found, "sse_bridge_events_total", dialect="ollama") == 0
    assert value(found, "sse_bridge_time_to_first_event_seconds_count", dialect="ollama") == 0


async def test_serve_writes_json_lines_alone_on_their_lines(fake_process: str) -> None:
    args = ("serve", "--upstream", fake_process, "--dialect", "ollama", "--log-format", "json")
    with running(*args) as (url, process):
        response = await fetch(
            f"{url}/api/chat", body=chat(tokens_per_second=0, num_tokens=2), headers=SSE
        )
        assert response.status == 200
        stop(process)
        stdout, stderr = process.communicate(timeout=10)
    # Every line is one JSON object, uvicorn's own (startup, shutdown) too: a log
    # shipper reading JSON lines drops or garbles any other.
    lines = (stdout + stderr).splitlines()
    assert lines
    records = [json.loads(line) for line in lines]
    (stream,) = [r for r in records if "path" in r]
    assert stream["path"] == "/api/chat"
    assert stream["events"] == 3
    others = [r for r in records if "path" not in r]
    assert all(set(r) == {"time", "level", "logger", "message"} for r in others), others
    messages = [r["message"] for r in others]
    assert any("Uvicorn running on" in m for m in messages), messages
    # uvicorn's access line is off: it would carry the raw path, stream ids included; the
    # bridge's own line above stands for it.
    assert [r for r in others if r["logger"] == "uvicorn.access"] == []


def test_a_json_log_line_keeps_its_traceback_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, "f", 1, "failed %s", ("here",), sys.exc_info()
        )
    line = JsonLines().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["level"] == "ERROR"
    assert fields["message"].startswith("failed here\nTraceback")
    assert fields["message"].endswith("RuntimeError: boom")
    assert fields["time"].endswith("+00:00")
