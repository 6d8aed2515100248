"""Test helpers that ship with sse_bridge: a fake Ollama, an SSE parser and the streaming probe.

``FakeOllama`` is an Ollama-compatible ASGI app with paced tokens and injectable faults (see
:class:`FakeOllamaConfig`); run it with ``sse-bridge fake-ollama`` or mount it in your own server.
``SSEParser`` and ``parse_sse`` read an event stream exactly as a browser's EventSource does.
``probe`` (what ``sse-bridge probe`` runs), ``read_stream`` and ``analyse`` measure whether a
chain of servers delivers events one by one.
"""

from ._fake import (
    FakeOllama,
    FakeOllamaAbort,
    FakeOllamaConfig,
    RequestRecord,
    answer_tokens,
)
from ._probe import Analysis, ProbeResult, Stream, analyse, probe, read_stream
from ._sse_parser import ParsedEvent, SSEParser, parse_sse

__all__ = [
    "Analysis",
    "FakeOllama",
    "FakeOllamaAbort",
    "FakeOllamaConfig",
    "ParsedEvent",
    "ProbeResult",
    "RequestRecord",
    "SSEParser",
    "Stream",
    "analyse",
    "answer_tokens",
    "parse_sse",
    "probe",
    "read_stream",
]
