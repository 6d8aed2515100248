"""The reverse proxy: one request to the one configured upstream, streamed both ways.

It knows no SSE: it answers NDJSON and lets the middleware in front convert it. It may import
the core, and nothing of the middleware, the sidecar or the command line.
"""
