"""The middleware: negotiation, the held response start, conversion, keepalives, disconnects.

:class:`~sse_bridge.SSEBridgeMiddleware` is the app; one responder per request does the work.
It knows the core, the dialects, resume and metrics, and nothing of the proxy or the sidecar.
"""
