"""Turn streaming NDJSON (Ollama and friends) into unbuffered Server-Sent Events."""

import importlib.metadata

from sse_bridge._core.codec import LineDecoder, LineTooLongError, ServerSentEvent
from sse_bridge._dialects.builtin import DialectFunc
from sse_bridge._dialects.translator import Translator
from sse_bridge._middleware.app import SSEBridgeMiddleware
from sse_bridge._sidecar.app import SidecarApp, create_proxy

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
