"""Prometheus metrics for the bridge (the ``metrics`` extra): :class:`BridgeMetrics`.

Make one, pass it as ``metrics=`` to :class:`~sse_bridge.SSEBridgeMiddleware`, and mount
:meth:`BridgeMetrics.asgi_app` where Prometheus scrapes. docs/operations.md lists the metrics.
"""

from __future__ import annotations

try:
    from sse_bridge._metrics.prometheus import BridgeMetrics
except ImportError as exc:  # pragma: no cover - the tests run with the extra installed
    raise ImportError(
        "sse_bridge.metrics needs prometheus-client: pip install 'sse-bridge[metrics]'"
    ) from exc
from sse_bridge._core.context import BUCKETS

__all__ = ["BUCKETS", "BridgeMetrics"]
