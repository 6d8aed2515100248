"""Resumable streams: the store protocol and its errors, the in-process store, the HTTP endpoints.

A store records a converted stream's events as they are sent and lets readers follow it from any
position. The public names are re-exported by :mod:`sse_bridge.resume`.
"""
