"""What the access log writes of a request: values a client chose, made safe to log.

A client chooses the path (percent-decoded by the server, so ``%0a`` arrives as a line break)
and knows its stream ids. The text format is logfmt: a value with a space, a quote, a
backslash, an ``=``, or any character outside printable ASCII is written as a JSON string, so
no request can end a line or write a ``key=value`` of its own. A stream id is a key to its
stream: the log carries its tag (``stream_tag``) instead, in ``stream_id=`` and in the path of
a resume endpoint.
"""

from __future__ import annotations

import json
import re

from sse_bridge._resume.store import stream_tag

# What a logfmt value may hold unquoted: printable ASCII but space, '"', '=' and '\'.
_BARE = re.compile(r"[!#-<>-\[\]-~]+")


def logfmt(value: object) -> str:
    """``value`` as one logfmt value: bare if it is safe as it is, else a quoted JSON string."""
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text)  # escapes quotes, backslashes, control and non-ASCII characters


def logged_path(path: str, resume_path: str | None) -> str:
    """The path as logged: under the resume endpoints, the stream id replaced by its tag."""
    if resume_path is None or not path.startswith(resume_path.rstrip("/") + "/"):
        return path
    prefix = resume_path.rstrip("/") + "/"
    stream_id, slash, rest = path[len(prefix) :].partition("/")
    return prefix + stream_tag(stream_id) + slash + rest
