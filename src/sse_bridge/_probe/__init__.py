"""``sse-bridge probe``: the requests, the wire read off the socket, the verdict and the timeline.

It reads with the core's SSE parser and nothing else of the package; :mod:`sse_bridge.probe`
re-exports its public names.
"""
