"""Where the proxy sends a request: the one upstream's base URL, checked once, and its paths.

Pure: the sidecar's options check the URL here before anything is built.
"""

from __future__ import annotations

import httpx

# Ollama's endpoints that stream NDJSON and may stay silent for minutes while a model loads.
COMMIT_PATHS = ("/api/chat", "/api/generate")


def parse_upstream(url: str) -> httpx.URL:
    """Validate the upstream base URL; the only host the proxy ever talks to."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"upstream must be a URL such as http://127.0.0.1:11434: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"upstream must be an http:// or https:// URL with a host, not {url!r}")
    if parsed.query or parsed.fragment or parsed.userinfo:
        raise ValueError(f"upstream must not carry a query, fragment or credentials: {url!r}")
    return parsed


class PathEscapeError(ValueError):
    """A request path that would leave the upstream's base path, or that is no path at all."""


# What an upstream might take for a dot or a separator once it decodes the path: RFC 3986 2.3
# lets it decode %2E; Windows servers and some frameworks split on "\"; a server that decodes
# %2F before routing splits there too.
_LOOSE = ((b"%2e", b"."), (b"%2f", b"/"), (b"%5c", b"/"), (b"\\", b"/"))


def confine(path: bytes) -> bytes:
    """The request's path with its dot segments removed (RFC 3986 5.2.4), to join to the base.

    ``.`` and ``..`` segments go, whether written raw or percent-encoded (``%2e``, ``%2E``, any
    mix); everything else is kept as sent, ``%2F`` still encoded. Raises PathEscapeError for a
    path that does not start with ``/``, or that climbs above its root by any reading an
    upstream might take: RFC 3986's, or one that merges empty segments (``//a/../../x``, as Go's
    ``path.Clean`` and nginx's ``merge_slashes`` do), decodes ``%2F`` or ``%5C``, or splits on
    a backslash, or reads ``..;x`` as ``..``.
    """
    if not path.startswith(b"/"):
        raise PathEscapeError("no upstream URL for this target: a path starts with /")
    if b"." not in path and b"%" not in path and b"\\" not in path:
        return path  # nothing to remove or to misread: the common case, at no cost
    if _climbs(path):
        raise PathEscapeError("the request path leaves the upstream's base path")
    kept: list[bytes] = []
    segments = path[1:].split(b"/")
    for index, segment in enumerate(segments):
        dots = segment.lower().replace(b"%2e", b".")
        if dots == b"..":
            if not kept:
                raise PathEscapeError("the request path leaves the upstream's base path")
            kept.pop()
        elif dots != b".":
            kept.append(segment)
            continue
        if index == len(segments) - 1:
            kept.append(b"")  # "/a/." and "/a/b/.." end with a slash (RFC 3986 5.2.4)
    confined = b"/" + b"/".join(kept)
    # Removing segments can bring others together into a new reading: "/a\\b/../..;" is
    # "/..;" once "a\\b/.." has gone (found by tests/_fuzz.py).
    if _climbs(confined):
        raise PathEscapeError("the request path leaves the upstream's base path")
    return confined


def _climbs(path: bytes) -> bool:
    """Whether ``path`` climbs above its root by any of the loose readings ``confine`` names."""
    loose = path.lower()
    for encoded, meaning in _LOOSE:
        loose = loose.replace(encoded, meaning)
    depth = 0
    for piece in loose.split(b"/"):
        segment = piece.partition(b";")[0]  # "..;x": Tomcat's reading of a dot segment
        if segment == b"..":
            if depth == 0:
                return True
            depth -= 1
        elif segment not in (b"", b"."):
            depth += 1
    return False
