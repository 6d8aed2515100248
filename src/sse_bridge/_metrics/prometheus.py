"""Prometheus metrics (the ``metrics`` extra, prometheus-client): what operators graph and alert on.

The names and labels below are a public interface (docs/operations.md): keep them stable. Labels
are few and bounded (the dialect, an outcome, an error kind, a refusal reason), never a path or a
model.

Nothing here runs per event. The middleware counts a stream's events and bytes, and its gaps
into a small list of bucket counts, on the request's :class:`StreamContext`; the whole stream is
added to the metrics once, when it ends. That keeps the cost per event to a bucket search and an
increment, and it is what lets prometheus-client's multiprocess mode (``--workers``) sum the
workers without a file write per event.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_asgi_app,
    multiprocess,
)

from sse_bridge._core.context import BUCKETS, Outcome, StreamContext
from sse_bridge._metrics.multiprocess import multiprocess_dir
from sse_bridge._types import ASGIApp

UPSTREAM_ERROR_KINDS = ("unreachable", "timeout", "broken", "status")
REFUSAL_REASONS = ("max_streams", "body_too_large", "unauthorized", "bad_request")


class BridgeMetrics:
    """The bridge's metrics, registered in ``registry`` (prometheus-client's default if None).

    The sidecar (``sse-bridge serve --metrics``) makes one itself. As middleware, make one and
    pass it as ``metrics=`` to :class:`~sse_bridge.SSEBridgeMiddleware`, and mount
    :meth:`asgi_app` where Prometheus should scrape.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        options: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.registry = registry
        self.active = Gauge(
            "sse_bridge_streams_active",
            "Requests being served (health and metrics endpoints aside).",
            multiprocess_mode="livesum",
            **options,
        )
        self.streams = Counter(
            "sse_bridge_streams",
            "Requests served, by dialect and by how they ended.",
            ["dialect", "outcome"],
            **options,
        )
        self.first_event = Histogram(
            "sse_bridge_time_to_first_event_seconds",
            "From the request to its first event sent.",
            ["dialect"],
            buckets=BUCKETS,
            **options,
        )
        self.upstream_headers = Histogram(
            "sse_bridge_upstream_headers_seconds",
            "From the request to the upstream's response headers (a model load shows here).",
            buckets=BUCKETS,
            **options,
        )
        self.duration = Histogram(
            "sse_bridge_stream_duration_seconds",
            "From the request to the end of its response.",
            ["dialect"],
            buckets=BUCKETS,
            **options,
        )
        self.gaps = Histogram(
            "sse_bridge_event_gap_seconds",
            "Between consecutive events of a stream, as sent.",
            ["dialect"],
            buckets=BUCKETS,
            **options,
        )
        self.events = Counter("sse_bridge_events", "Events sent.", ["dialect"], **options)
        self.sent_bytes = Counter(
            "sse_bridge_sent_bytes", "Response body bytes sent.", ["dialect"], **options
        )
        self.keepalives = Counter(
            "sse_bridge_keepalives", "Keepalive comments sent.", ["dialect"], **options
        )
        self.upstream_errors = Counter(
            "sse_bridge_upstream_errors",
            "Upstream failures: unreachable, timeout, broken (lost mid-stream), status (5xx).",
            ["kind"],
            **options,
        )
        self.refused = Counter(
            "sse_bridge_requests_refused",
            "Requests refused by the limits: max_streams (503), body_too_large (413), "
            "unauthorized (401), bad_request (400: ambiguous framing, a path out of the base).",
            ["reason"],
            **options,
        )
        self.resume_dropped = Counter(
            "sse_bridge_resume_dropped",
            "Events of resumable streams dropped while Redis was away, past max_pending_bytes "
            "(those streams are no longer resumable; live clients got them).",
            **options,
        )
        # Every label value exported from the start, at zero: a rate() needs the series before
        # its first increment, and an alert on "no errors yet" needs it at all.
        self.children: dict[str, _Children] = {}
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)

    def watch_store(self, store: object) -> None:
        """Count the events ``store`` drops for its backlog's bound (a Redis store's)."""
        backlog = getattr(store, "backlog", None)
        if backlog is not None:
            backlog.on_dropped = self.resume_dropped.inc

    def start(self, context: StreamContext) -> None:
        """A request begins: it is active, and its gaps are counted."""
        self.active.inc()
        context.gaps = [0] * (len(BUCKETS) + 1)

    def finish(self, context: StreamContext, dialect: str) -> None:
        """A request has ended: add it, whole, to the metrics."""
        self.active.dec()
        if context.refused is not None:
            self.refused.labels(context.refused).inc()
        if context.upstream_error is not None:
            self.upstream_errors.labels(context.upstream_error).inc()
        outcome = context.final_outcome()
        children = self.children.get(dialect) or self.label(dialect)
        children.streams[outcome].inc()
        children.duration.observe(time.monotonic() - context.started)
        if context.first_event is not None:
            children.first_event.observe(context.first_event - context.started)
        if context.upstream_headers is not None:
            self.upstream_headers.observe(context.upstream_headers - context.started)
        if context.events:
            children.events.inc(context.events)
        if context.bytes:
            children.sent_bytes.inc(context.bytes)
        if context.keepalives:
            children.keepalives.inc(context.keepalives)
        gaps = context.gaps
        if gaps is not None and any(gaps):
            _add_counts(children.gaps, gaps, context.gap_sum)

    def label(self, dialect: str) -> _Children:
        """The metrics of one dialect, looked up once (``labels()`` takes a lock each time)."""
        children = self.children[dialect] = _Children(
            streams={outcome: self.streams.labels(dialect, outcome.value) for outcome in Outcome},
            first_event=self.first_event.labels(dialect),
            duration=self.duration.labels(dialect),
            gaps=self.gaps.labels(dialect),
            events=self.events.labels(dialect),
            sent_bytes=self.sent_bytes.labels(dialect),
            keepalives=self.keepalives.labels(dialect),
        )
        return children

    def refuse(self, reason: str) -> None:
        """A request refused before it was served (the front layer's limits)."""
        self.refused.labels(reason).inc()

    def asgi_app(self) -> ASGIApp:
        """An ASGI app that answers with the metrics in Prometheus's text format."""
        return make_asgi_app(collecting_registry(self.registry))


class _Children(NamedTuple):
    streams: dict[Outcome, Counter]
    first_event: Histogram
    duration: Histogram
    gaps: Histogram
    events: Counter
    sent_bytes: Counter
    keepalives: Counter


def _add_counts(histogram: Histogram, counts: list[int], total: float) -> None:
    """Add whole bucket counts at once: ``observe()`` per gap would cost a call (and, with
    several workers, a file write) per event. These are the very values ``observe`` adds to
    (non-cumulative buckets and a sum), so what is exported is the same."""
    buckets = histogram._buckets
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)


def collecting_registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    """The registry to expose: with several workers, one that reads all of their figures."""
    if multiprocess_dir():
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    if registry is None:
        from prometheus_client import REGISTRY

        return REGISTRY
    return registry
