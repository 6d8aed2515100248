"""What the access log writes of a request: values a client chose, made safe to log.

A client chooses the path (percent-decoded by the server, so ``%0a`` arrives as a line break)
and knows its stream ids. The text format is logfmt: a value with a space, a quote, a
backslash, an ``=``, or any character outside printable ASCII is written as a JSON string, so
no request can end a line or write a ``key=value`` of its own. A stream id is a key to its
stream, and so is a chat id under ``--dialect ai-sdk``: the log carries its tag
(``stream_tag``) instead, in ``stream_id=`` and in the path of a resume endpoint.
"""

from __future__ import annotations

import json
import re
import time

from sse_bridge._core.context import StreamContext
from sse_bridge._resume.store import stream_tag
from sse_bridge._types import Scope

# What a logfmt value may hold unquoted: printable ASCII but space, '"', '=' and '\'.
_BARE = re.compile(r"[!#-<>-\[\]-~]+")


def logfmt(value: object) -> str:
    """``value`` as one logfmt value: bare if it is safe as it is, else a quoted JSON string."""
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text)  # escapes quotes, backslashes, control and non-ASCII characters


def logged_path(path: str, keyed: tuple[str, ...]) -> str:
    """The path as logged: the segment after any of the ``keyed`` paths (the resume endpoints,
    the AI SDK's chat resume), a stream's or a chat's id, replaced by its tag."""
    for base in keyed:
        prefix = base.rstrip("/") + "/"
        if path.startswith(prefix):
            key, slash, rest = path[len(prefix) :].partition("/")
            return prefix + stream_tag(key) + slash + rest
    return path


def log_line(
    scope: Scope, stats: StreamContext, dialect: str, log_format: str, keyed: tuple[str, ...]
) -> str:
    """The access log's line for a finished request: logfmt text, or one JSON object."""
    outcome = stats.final_outcome().value
    ttfe = None if stats.first_event is None else (stats.first_event - stats.started) * 1000
    duration = (time.monotonic() - stats.started) * 1000
    path = logged_path(scope["path"], keyed)
    tag = None if stats.stream_id is None else stream_tag(stats.stream_id)
    if log_format == "json":
        client = scope.get("client")
        record = {
            "method": scope["method"],
            "path": path,
            "status": stats.status,
            "dialect": dialect,
            "events": stats.events,
            "bytes": stats.bytes,
            "ttfe_ms": None if ttfe is None else round(ttfe, 1),
            "duration_ms": round(duration, 1),
            "outcome": outcome,
            "stream_id": tag,
            "client": None if not client else f"{client[0]}:{client[1]}",
        }
        return json.dumps(record)
    return (
        f"stream method={logfmt(scope['method'])} path={logfmt(path)} status={stats.status} "
        f"dialect={dialect} events={stats.events} bytes={stats.bytes} "
        f"ttfe_ms={'-' if ttfe is None else f'{ttfe:.1f}'} duration_ms={duration:.1f} "
        f"outcome={outcome}{'' if tag is None else f' stream_id={tag}'}"
    )
