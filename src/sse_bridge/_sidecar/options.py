"""The sidecar's options (``create_proxy``, ``sse-bridge serve``): the middleware's and the proxy's.

As for :mod:`sse_bridge._middleware.options`, each option's default, check and help live in one
field here; the command line, ``create_proxy`` and the worker hand-off all read them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sse_bridge._core.options import Options, Spec, option, required
from sse_bridge._middleware.options import BridgeOptions
from sse_bridge._proxy.target import COMMIT_PATHS, parse_upstream

MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class SidecarOptions(BridgeOptions):
    """The options of :func:`sse_bridge.create_proxy`: the middleware's, and these."""

    upstream: str = required(Spec("Base URL of the NDJSON server.", "object"))
    commit_after: float = option(
        1.0,
        Spec(
            "Seconds without upstream headers before an SSE client gets a 200 stream; 0: never.",
            "seconds",
            meaning="0 or None never commits early",
        ),
    )
    commit_paths: Sequence[str] = option(
        COMMIT_PATHS,
        Spec(
            "A path that streams NDJSON and may be committed early; repeat for more.",
            "texts",
            meaning="a list of paths",
            cli="commit-path",
        ),
    )
    connect_timeout: float = option(
        5.0,
        Spec("Seconds to connect upstream.", "seconds", meaning="to connect to the upstream"),
    )
    read_timeout: float = option(
        0.0,
        Spec(
            "Seconds upstream may be silent; 0: any.",
            "seconds",
            meaning="0 or None waits forever",
        ),
    )
    max_streams: int = option(
        1000, Spec("Concurrent requests.", "count", minimum=1, meaning="concurrent requests")
    )
    max_body: int = option(
        10 * MiB, Spec("Body bytes.", "count", minimum=1, meaning="request body bytes")
    )
    api_key: str | None = option(
        None,
        Spec(
            "Require Authorization: Bearer <key> (never forwarded).",
            "text",
            meaning="give a key, or None for no authentication",
        ),
    )
    cors_origins: Sequence[str] = option(
        (),
        Spec(
            "An origin browsers may call from; repeat for more (space-separated in the env var).",
            "texts",
            meaning="a list of origins",
            cli="cors-origin",
        ),
    )
    grace: float = option(
        10.0,
        Spec("Seconds streams get to finish on SIGTERM.", "seconds", meaning="after SIGTERM"),
    )
    model: str | None = option(
        None,
        Spec(
            "With --dialect ai-sdk: the Ollama model for a chat request that names none.",
            "text",
            meaning="give a model name, or None: each request's body names its model",
        ),
    )
    chat_path: str = option(
        "/api/chat",
        Spec(
            "With --dialect ai-sdk: the path useChat posts to (its api option); sent on to "
            "Ollama's /api/chat.",
            "text",
            meaning="a path such as '/api/chat'",
        ),
    )
    resume_owner_header: str | None = option(
        None,
        Spec(
            "With --resume: the header an auth proxy sets to the user; binds streams to it.",
            "text",
            meaning="a header name, or None to leave streams unbound",
        ),
    )
    metrics: bool = option(
        False,
        Spec("Prometheus metrics at /metrics, behind the API key (docs/operations.md).", "flag"),
    )
    metrics_port: int = option(
        0,
        Spec(
            "Serve the metrics on this port, apart from the API (implies --metrics); 0: /metrics.",
            "port",
            meaning="/metrics on the main port",
        ),
    )
    log_format: Literal["text", "json"] = option(
        "text",
        Spec(
            "The line per stream: key=value text, or one JSON object.",
            "choice",
            choices=("text", "json"),
        ),
    )

    def validate(self) -> None:
        super().validate()
        parse_upstream(self.upstream)
        endpoints = self.resume_path.rstrip("/")
        for path in self.commit_paths:
            if path == endpoints or path.startswith(endpoints + "/"):
                raise ValueError(
                    f"resume_path {self.resume_path!r} overlaps the commit path {path!r}: "
                    "the resume endpoints would answer its requests; choose another path"
                )
        if self.resume_owner_header is not None and self.resume_owner is not None:
            raise ValueError(
                "resume_owner_header and resume_owner both say who owns a stream: give one"
            )
        path = self.chat_path
        if not path.startswith("/") or "?" in path or path.endswith("/") or path == "/":
            raise ValueError(f"chat_path must be a path such as '/api/chat', not {path!r}")
        if self.model is not None and self.dialect != "ai-sdk":
            raise ValueError(
                f"model {self.model!r} is the default of AI SDK chat requests: use it with "
                "dialect 'ai-sdk'"
            )
        if self.metrics_port and not self.metrics:
            # A port for the metrics asks for them: SSE_BRIDGE_METRICS_PORT alone was a bridge
            # that refused to start, with a message naming neither --metrics nor its variable.
            object.__setattr__(self, "metrics", True)

    def to_json(self) -> str:
        """These options as JSON, for worker processes: ``from_json`` gives them back."""
        values = self.values()
        for name in ("dialect", "resume", "resume_owner"):
            if values[name] is not None and not isinstance(values[name], str):
                raise ValueError(
                    f"{name} must be a name, not an object, for worker processes: "
                    "build the app yourself and give it to your server"
                )
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> SidecarOptions:
        # JSON's lists become tuples again in __post_init__, as any sequence does.
        return cls(**json.loads(text))


@dataclass(frozen=True, kw_only=True)
class ServerOptions(Options):
    """How ``sse-bridge serve`` runs the sidecar on uvicorn."""

    host: str = option("127.0.0.1", Spec("Interface to listen on.", "object"))
    port: int = option(8000, Spec("Port to listen on.", "port", meaning="any free port"))
    workers: int = option(
        1, Spec("Worker processes.", "count", minimum=1, meaning="worker processes")
    )
    http: Literal["auto", "h11", "httptools"] = option(
        "auto",
        Spec(
            "uvicorn's HTTP implementation (auto: httptools when installed).",
            "choice",
            choices=("auto", "h11", "httptools"),
        ),
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = option(
        "info",
        Spec(
            "Log level; info logs one line per stream.",
            "choice",
            choices=("critical", "error", "warning", "info", "debug"),
        ),
    )
