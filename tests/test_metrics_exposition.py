"""What a scrape shows besides the counts: each metric's help text and buckets, where the
figures go without an explicit registry, and the multiprocess directory."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from sse_bridge._core.context import BUCKETS, StreamContext
from sse_bridge._metrics.multiprocess import MULTIPROC_ENV, multiprocess_dir
from sse_bridge.metrics import BridgeMetrics

# What `# HELP` says for each metric: the operator's only documentation inside Prometheus.
HELP = {
    "sse_bridge_streams_active": "Requests being served (health and metrics endpoints aside).",
    "sse_bridge_streams": "Requests served, by dialect and by how they ended.",
    "sse_bridge_time_to_first_event_seconds": "From the request to its first event sent.",
    "sse_bridge_upstream_headers_seconds": (
        "From the request to the upstream's response headers (a model load shows here)."
    ),
    "sse_bridge_stream_duration_seconds": "From the request to the end of its response.",
    "sse_bridge_event_gap_seconds": "Between consecutive events of a stream, as sent.",
    "sse_bridge_events": "Events sent.",
    "sse_bridge_sent_bytes": "Response body bytes sent.",
    "sse_bridge_keepalives": "Keepalive comments sent.",
    "sse_bridge_upstream_errors": (
        "Upstream failures: unreachable, timeout, broken (lost mid-stream), status (5xx)."
    ),
    "sse_bridge_requests_refused": (
        "Requests refused by the limits: max_streams (503), body_too_large (413), "
        "unauthorized (401), bad_request (400: ambiguous framing, a path out of the base)."
    ),
    "sse_bridge_resume_dropped": (
        "Events of resumable streams dropped while Redis was away, past max_pending_bytes "
        "(those streams are no longer resumable; live clients got them)."
    ),
}
HISTOGRAMS = [name for name in HELP if name.endswith("_seconds")]


def test_every_metric_has_its_help_and_every_histogram_the_documented_buckets() -> None:
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)
    context = StreamContext()
    metrics.start(context)
    context.first_event = context.upstream_headers = context.started
    metrics.finish(context, "raw")
    families = {family.name: family for family in registry.collect()}
    assert {name: family.documentation for name, family in families.items()} == HELP
    for name in HISTOGRAMS:
        bounds = sorted(
            {
                float(sample.labels["le"])
                for sample in families[name].samples
                if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf"
            }
        )
        assert bounds == list(BUCKETS), name


def test_durations_are_measured_from_the_request() -> None:
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)
    before = time.monotonic()
    context = StreamContext()
    metrics.start(context)
    context.upstream_headers = context.started + 0.5
    metrics.finish(context, "raw")
    elapsed = time.monotonic() - before
    duration = registry.get_sample_value(
        "sse_bridge_stream_duration_seconds_sum", {"dialect": "raw"}
    )
    assert duration is not None
    assert 0 <= duration <= elapsed
    assert registry.get_sample_value("sse_bridge_upstream_headers_seconds_sum") == 0.5


def test_without_a_registry_the_metrics_go_to_prometheus_clients_default() -> None:
    metrics = BridgeMetrics()
    try:
        assert metrics.registry is None
        assert REGISTRY.get_sample_value("sse_bridge_streams_active") == 0
    finally:
        for collector in vars(metrics).values():
            if isinstance(collector, MetricWrapperBase):
                REGISTRY.unregister(collector)


@pytest.mark.parametrize(("value", "expected"), [("/run/metrics", "/run/metrics"), ("", None)])
def test_the_multiprocess_directory_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, value)
    assert multiprocess_dir() == expected
    monkeypatch.delenv(MULTIPROC_ENV)
    assert multiprocess_dir() is None
