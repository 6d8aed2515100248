"""Run the sidecar on uvicorn, in one or more worker processes."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ._resume import ResumeError
from ._sidecar import SidecarApp, create_proxy

CONFIG_ENV = "SSE_BRIDGE_SERVE_CONFIG"


def app_from_env() -> SidecarApp:
    """The uvicorn factory each worker calls: the options travel as JSON in the environment."""
    return create_proxy(**json.loads(os.environ[CONFIG_ENV]))


async def _check_store(app: SidecarApp) -> None:
    store = app.store
    if store is not None:
        try:
            await store.open()
        except ResumeError as exc:
            raise ValueError(str(exc)) from None
        finally:
            await store.aclose()


def serve(
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    http: str = "auto",
    proxy_options: dict[str, Any],
) -> None:
    """Run the sidecar until SIGINT or SIGTERM."""
    app = create_proxy(**proxy_options)  # Fail here, once, with a clear ValueError.
    resume = proxy_options.get("resume")
    if resume == "memory" and workers > 1:
        raise ValueError(
            "--resume memory keeps streams inside one process, and a resume may reach another "
            f"of the {workers} workers: use --resume redis://host:port/db with --workers"
        )
    if resume is not None:
        # Redis unreachable at start is an exit with its reason, before any worker starts.
        asyncio.run(_check_store(app))
    os.environ[CONFIG_ENV] = json.dumps(proxy_options)
    log_config = copy.deepcopy(LOGGING_CONFIG)
    # The bridge's own warnings and its one line per stream, next to uvicorn's.
    log_config["loggers"]["sse_bridge"] = {"handlers": ["default"], "level": log_level.upper()}
    uvicorn.run(
        "sse_bridge._server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=http,
        log_level=log_level,
        log_config=log_config,
        # The proxy appends the real peer address to X-Forwarded-For itself; uvicorn's rewrite
        # of the client address from that header would hide the peer and repeat the client.
        proxy_headers=False,
        # A backstop only: the app ends its streams itself when the grace period is over.
        timeout_graceful_shutdown=math.ceil(proxy_options.get("grace", 10.0)) + 5,
    )
