"""Turn streaming NDJSON (Ollama and friends) into unbuffered Server-Sent Events."""

import importlib.metadata

from ._codec import LineDecoder, LineTooLongError, ServerSentEvent
from ._dialects import DialectFunc
from ._middleware import SSEBridgeMiddleware
from ._sidecar import SidecarApp, create_proxy
from ._translator import Translator

__all__ = [
    "DialectFunc",
    "LineDecoder",
    "LineTooLongError",
    "SSEBridgeMiddleware",
    "ServerSentEvent",
    "SidecarApp",
    "Translator",
    "create_proxy",
]
try:
    __version__ = importlib.metadata.version("sse-bridge")
except importlib.metadata.PackageNotFoundError:  # a copy on sys.path, never installed
    __version__ = "0+unknown"
