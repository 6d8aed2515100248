"""Turn streaming NDJSON (Ollama and friends) into unbuffered Server-Sent Events."""

from ._codec import LineDecoder, LineTooLongError, ServerSentEvent
from ._dialects import DialectFunc
from ._middleware import SSEBridgeMiddleware

__all__ = [
    "DialectFunc",
    "LineDecoder",
    "LineTooLongError",
    "SSEBridgeMiddleware",
    "ServerSentEvent",
]
__version__ = "0.1.0"
