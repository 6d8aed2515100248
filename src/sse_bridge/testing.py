"""Test helpers that ship with sse_bridge: a fake Ollama upstream and a browser-exact SSE parser.

``FakeOllama`` is an Ollama-compatible ASGI app with paced tokens and injectable faults (see
:class:`FakeOllamaConfig`); run it with ``sse-bridge fake-ollama`` or mount it in your own server.
``SSEParser`` and ``parse_sse`` read an event stream exactly as a browser's EventSource does.
"""

from ._fake_ollama import FakeOllama, FakeOllamaAbort, FakeOllamaConfig, RequestRecord
from ._sse_parser import ParsedEvent, SSEParser, parse_sse

__all__ = [
    "FakeOllama",
    "FakeOllamaAbort",
    "FakeOllamaConfig",
    "ParsedEvent",
    "RequestRecord",
    "SSEParser",
    "parse_sse",
]
