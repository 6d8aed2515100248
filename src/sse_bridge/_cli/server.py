"""Run the sidecar on uvicorn, in one or more worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from sse_bridge._cli.protocols import protocol_class
from sse_bridge._metrics.multiprocess import MULTIPROC_ENV, multiprocess_dir
from sse_bridge._resume.store import ResumeError
from sse_bridge._sidecar.app import SidecarApp, build_sidecar
from sse_bridge._sidecar.options import ServerOptions, SidecarOptions

CONFIG_ENV = "SSE_BRIDGE_SERVE_CONFIG"


def app_from_env() -> SidecarApp:
    """The uvicorn factory each worker calls: the options travel as JSON in the environment."""
    return build_sidecar(SidecarOptions.from_json(os.environ[CONFIG_ENV]))


async def _check_store(app: SidecarApp) -> None:
    store = app.store
    if store is not None:
        try:
            await store.open()
        except ResumeError as exc:
            raise ValueError(str(exc)) from None
        finally:
            await store.aclose()


def serve(server: ServerOptions, options: SidecarOptions) -> None:
    """Run the sidecar until SIGINT or SIGTERM."""
    made_dir = None
    if options.metrics and (server.workers > 1 or options.metrics_port) and not multiprocess_dir():
        # The workers each write their figures to files here, and whoever serves /metrics
        # sums them (prometheus-client's multiprocess mode). It must be set before
        # prometheus-client is first imported, here and in the workers.
        made_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="sse-bridge-metrics-")
    try:
        _serve(server, options)
    finally:
        if made_dir is not None:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(made_dir, ignore_errors=True)


# Open files per stream: the client's socket and the upstream's; and what the process holds
# besides (its listening socket, the store's connections, logs, the event loop).
FILES_PER_STREAM = 2
FILES_BESIDES = 64


def raise_open_files(max_streams: int) -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (each stream holds two sockets); say so
    on stderr when even that is below what ``max_streams`` needs. Return (limit, needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = FILES_PER_STREAM * max_streams + FILES_BESIDES
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(
            f"sse-bridge: the open-file limit is {soft}, below the {needed} that "
            f"--max-streams {max_streams} needs (two sockets per stream): streams past about "
            f"{max(0, (soft - FILES_BESIDES) // FILES_PER_STREAM)} will fail to connect. Raise "
            "the hard limit (ulimit -Hn, systemd's LimitNOFILE=) or lower --max-streams",
            file=sys.stderr,
        )
    return soft, needed


def _serve(server: ServerOptions, options: SidecarOptions) -> None:
    # Per process: each worker has its own limit and serves up to --max-streams.
    raise_open_files(options.max_streams)
    app = build_sidecar(options)
    if options.resume == "memory" and server.workers > 1:
        raise ValueError(
            "--resume memory keeps streams inside one process, and a resume may reach another "
            f"of the {server.workers} workers: use --resume redis://host:port/db with --workers"
        )
    if options.resume is not None:
        # Redis unreachable at start is an exit with its reason, before any worker starts.
        asyncio.run(_check_store(app))
    os.environ[CONFIG_ENV] = options.to_json()
    metrics_server = None
    if options.metrics_port:
        # Served by this process, apart from the API and its key, for all the workers.
        from prometheus_client import start_http_server

        from sse_bridge._metrics.prometheus import collecting_registry

        port = options.metrics_port
        try:
            metrics_server, _ = start_http_server(
                port, addr=server.host, registry=collecting_registry(None)
            )
        except OSError as exc:
            raise ValueError(
                f"--metrics-port {port}: cannot listen on {server.host}:{port} ({exc.strerror})"
            ) from None
    log_level = server.log_level
    log_config = copy.deepcopy(LOGGING_CONFIG)
    # The bridge's own warnings and its one line per stream, next to uvicorn's.
    log_config["loggers"]["sse_bridge"] = {"handlers": ["default"], "level": log_level.upper()}
    if options.log_format == "json":
        # uvicorn's own lines (startup, access, errors) as JSON objects too: a shipper that
        # reads JSON lines would drop or garble any other line.
        for name in ("default", "access"):
            log_config["formatters"][name] = {"()": "sse_bridge._cli.server.JsonLines"}
        # The line per stream alone on its line, as log shippers read JSON lines.
        log_config["formatters"]["sse_bridge_json"] = {"format": "%(message)s"}
        log_config["handlers"]["sse_bridge_json"] = {
            "class": "logging.StreamHandler",
            "formatter": "sse_bridge_json",
            "stream": "ext://sys.stderr",
        }
        log_config["loggers"]["sse_bridge.access"] = {
            "handlers": ["sse_bridge_json"],
            "level": log_level.upper(),
            "propagate": False,
        }
    try:
        _run(server, log_config, grace=options.grace)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


class JsonLines(logging.Formatter):
    """A log record as one JSON object: its time (UTC), level, logger and message."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        return json.dumps(
            {
                "time": when.isoformat(timespec="milliseconds"),
                "level": record.levelname,
                "logger": record.name,
                "message": message,
            }
        )


def _run(server: ServerOptions, log_config: dict[str, Any], *, grace: float) -> None:
    uvicorn.run(
        "sse_bridge._cli.server:app_from_env",
        factory=True,
        host=server.host,
        port=server.port,
        workers=server.workers,
        # uvicorn's own protocol, able to drop a stalled client (protocols.py).
        http=protocol_class(server.http),
        log_level=server.log_level,
        log_config=log_config,
        # The proxy appends the real peer address to X-Forwarded-For itself; uvicorn's rewrite
        # of the client address from that header would hide the peer and repeat the client.
        proxy_headers=False,
        # The bridge writes its own line per request (sse_bridge.access): uvicorn's would carry
        # stream ids in resume paths, and the percent-decoded path unescaped (a %0a in it would
        # start a forged line).
        access_log=False,
        # A backstop only: the app ends its streams itself when the grace period is over.
        timeout_graceful_shutdown=math.ceil(grace) + 5,
    )
