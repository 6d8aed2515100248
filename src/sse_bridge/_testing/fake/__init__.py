"""An Ollama-compatible fake upstream: a small pure ASGI app that streams a canned answer.

It is sse_bridge's embedded default upstream (a new user sees tokens stream without installing a
model) and the paced, fault-injecting upstream of the tests and load tests. It writes what the real
server writes (see the README next to the Ollama fixtures in tests/fixtures/ollama):

- NDJSON, one compact object per line, escaped like Go's ``encoding/json``: ``<`` ``>`` ``&``
  U+2028 and U+2029 as ``\\uXXXX``, any other non-ASCII character as raw UTF-8. ``created_at`` is
  RFC 3339 in UTC with Go's trimmed nanoseconds.
- Headers go out with the first line, so while a model "loads" the client sees nothing at all.
- An error before the stream is a real status with ``{"error": ...}``; an error during it keeps the
  200, ends with an ``{"error": ...}`` line and sends no done chunk.
- ``/v1/chat/completions`` speaks SSE like Ollama's OpenAI compatibility layer, with ``role`` in
  every delta as Ollama sends it.

Deliberate deviations from the real server:

- The done chunk is paced like one more token: a real model generates an end-of-sequence token.
- ``fail_after``, ``stall_after`` and ``malformed_every`` count every token line, thinking and tool
  call chunks included; ``options.num_predict`` caps only the answer's content tokens.
- A chat with ``tools`` gets one call of the first tool, unless its last message is a tool's
  result: then it gets the answer, as a model that has what it asked for.
- A known path with the wrong method answers 405 (Gin answers 404 for both).
- ``/_fake/requests`` is not Ollama's: it exposes what the fake saw, for tests in another process.

Modules: ``config`` (the options), ``records`` (what was seen, and waiting for it), ``job`` (the
canned answer and what a request asks for), ``wire`` (the bytes of each endpoint), ``exchange``
(one request and response), ``generation`` (the paced answer and its faults), ``app`` (routing).
"""

from sse_bridge._testing.fake.app import FakeOllama
from sse_bridge._testing.fake.config import FakeOllamaConfig
from sse_bridge._testing.fake.generation import FakeOllamaAbort
from sse_bridge._testing.fake.job import answer_tokens
from sse_bridge._testing.fake.records import RecordBook, RequestRecord

__all__ = [
    "FakeOllama",
    "FakeOllamaAbort",
    "FakeOllamaConfig",
    "RecordBook",
    "RequestRecord",
    "answer_tokens",
]
