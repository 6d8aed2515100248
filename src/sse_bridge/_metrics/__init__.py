"""Prometheus metrics (the ``metrics`` extra), re-exported by :mod:`sse_bridge.metrics`."""
