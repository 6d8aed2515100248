"""Test helpers that ship with sse_bridge: a fake Ollama and an SSE parser.

``FakeOllama`` is an Ollama-compatible ASGI app with paced tokens and injectable faults (see
:class:`FakeOllamaConfig`); run it with ``sse-bridge fake-ollama`` or mount it in your own server.
``SSEParser`` and ``parse_sse`` read an event stream exactly as a browser's EventSource does.
``serve_in_thread`` runs an ASGI app (the fake, the bridge) on uvicorn on a free loopback port.
The probe (``probe``, ``read_stream``, ``analyse``...) lives in :mod:`sse_bridge.probe`; importing
it from here still works for one release, with a DeprecationWarning.
"""

from sse_bridge._core.sse_parser import ParsedEvent, SSEParser, parse_sse
from sse_bridge._moved import moved
from sse_bridge._testing.fake import (
    FakeOllama,
    FakeOllamaAbort,
    FakeOllamaConfig,
    RequestRecord,
    answer_tokens,
)
from sse_bridge._testing.loopback import serve_in_thread

__all__ = [
    "FakeOllama",
    "FakeOllamaAbort",
    "FakeOllamaConfig",
    "ParsedEvent",
    "RequestRecord",
    "SSEParser",
    "answer_tokens",
    "parse_sse",
    "serve_in_thread",
]

__getattr__ = moved(
    __name__,
    "sse_bridge.probe",
    {"Analysis", "ProbeResult", "Stream", "analyse", "probe", "read_stream"},
)
