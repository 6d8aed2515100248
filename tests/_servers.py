"""Run real uvicorn servers on free loopback ports for end-to-end tests."""

from __future__ import annotations

from sse_bridge.testing import serve_in_thread as serve

__all__ = ["serve"]
