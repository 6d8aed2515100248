"""The header rules, pure: no I/O, no ASGI, no httpx; header lists in, header lists out.

Headers are ASGI-style lists of ``(name, value)`` byte pairs, names in any case. Each rule is a
frozenset or a small function with its reason; ``tests/test_headers.py`` holds a table for each.

- request rules: what the proxy sends upstream, and what the middleware asks of its app;
- response rules: what the proxy passes back, what the middleware drops from the NDJSON response
  it converts, and what every event stream carries so that nothing on the way buffers it;
- Accept negotiation for ``text/event-stream``, the bearer-token parse, and the CORS settings.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# What the proxy writes itself instead of passing on the client's: Host comes from the
# configured upstream (a spoofed Host cannot change where a request goes), Content-Length from
# the body actually read (request_framing; the client's may disagree with the body the server
# in front read: request smuggling), the rest are added by upstream_request_headers.
REPLACED_UPSTREAM = frozenset(
    {b"host", b"content-length", b"accept-encoding", b"x-forwarded-for", b"x-forwarded-proto"}
)
# With an API key, Authorization carries the bridge's own key: it never goes upstream.
_REPLACED_AND_AUTHORIZATION = REPLACED_UPSTREAM | {b"authorization"}

# The body is streamed and, for NDJSON, re-framed line by line: it must arrive as is.
IDENTITY_ENCODING = (b"accept-encoding", b"identity")

# Headers that describe the NDJSON body and would be false for the event stream that replaces it.
# Content-Length in particular: h11 raises "Too much data for declared Content-Length".
BODY_HEADERS = frozenset(
    {b"content-length", b"content-type", b"content-encoding", b"transfer-encoding", b"etag"}
    | {b"content-md5", b"accept-ranges", b"x-accel-buffering", b"connection"}
)

EVENT_STREAM_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
# nginx stops buffering this response (and hides the header from its own client).
NO_BUFFERING = (b"x-accel-buffering", b"no")
# HTTP/1.1 only: Connection is a hop-by-hop header that HTTP/2 forbids (RFC 9113 8.2.2).
KEEP_ALIVE = (b"connection", b"keep-alive")
# In negotiate mode one URL has two representations: caches must keep them apart.
VARY_ACCEPT = (b"vary", b"Accept")

# The resumable stream's id, on the response that starts it and on every resume.
STREAM_ID_HEADER = b"x-stream-id"

# After a request whose framing cannot be trusted: nothing more is read on its connection.
CONNECTION_CLOSE = (b"connection", b"close")
# A refusal the client may simply repeat (too many streams, shutting down, store unavailable).
RETRY_AFTER = (b"retry-after", b"1")
# RFC 6750 section 3: a 401 names the scheme it wants.
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="sse-bridge"')

# The CORS settings the sidecar gives Starlette's CORSMiddleware when origins are configured:
# the methods a page calls the bridge with (DELETE stops a resumable stream), any request header
# (Authorization, Last-Event-ID), and every response header readable by the page.
CORS_ALLOW_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS")
CORS_ALLOW_HEADERS = ("*",)
# "*" does not cover requests with credentials; the stream id is named as well.
CORS_EXPOSE_HEADERS = ("*", "X-Stream-Id")


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    """The first value of a header (names compared case-insensitively), or ""."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def media_type(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The Content-Type without its parameters, lower-cased: "application/x-ndjson"."""
    return header(headers, b"content-type").split(";")[0].strip().lower()


def without_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers, including any the Connection header names (RFC 9110 7.6.1)."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def replaced(headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes) -> Headers:
    """Every ``name`` header (lower-case) removed, then one ``name: value`` at the end."""
    kept = [(k, v) for k, v in headers if k.lower() != name]
    kept.append((name, value))
    return kept


def upstream_request_headers(
    headers: Headers,
    client: tuple[str, int] | None,
    scheme: str,
    *,
    strip_authorization: bool,
) -> Headers:
    """What the proxy sends upstream of the client's request headers, and what it adds.

    Args:
        headers: the client's request headers.
        client: the peer (host, port), whose host is appended to X-Forwarded-For; None when the
            server knows none.
        scheme: the client's scheme, sent as X-Forwarded-Proto.
        strip_authorization: drop Authorization too: it carries the bridge's own API key.
    """
    dropped = _REPLACED_AND_AUTHORIZATION if strip_authorization else REPLACED_UPSTREAM
    forwarded = [(k, v) for k, v in without_hop_by_hop(headers) if k.lower() not in dropped]
    # Each proxy appends the address it got the request from (the de facto X-Forwarded-For).
    chain = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
    if client:
        chain.append(client[0].encode())
    if chain:
        forwarded.append((b"x-forwarded-for", b", ".join(chain)))
    forwarded.append((b"x-forwarded-proto", scheme.encode()))
    forwarded.append(IDENTITY_ENCODING)
    return forwarded


# The ASGI server running the proxy (uvicorn, hypercorn) writes its own Date and Server on every
# response: the upstream's copies would make two of each.
WRITTEN_BY_SERVER = frozenset({b"date", b"server"})


def passed_back(
    headers: Iterable[tuple[bytes, bytes]], ndjson_types: Collection[str]
) -> tuple[Headers, bool]:
    """What the proxy passes back of the upstream's response headers, and whether it is NDJSON.

    Hop-by-hop headers go (RFC 9110 7.6.1), and so do Date and Server, which the server in front
    writes. An NDJSON response loses its Content-Length: a failure mid-stream adds an error
    line, which a declared length would not allow.
    """
    kept = [
        (k, v) for k, v in without_hop_by_hop(list(headers)) if k.lower() not in WRITTEN_BY_SERVER
    ]
    ndjson = media_type(kept) in ndjson_types
    if ndjson:
        kept = [(k, v) for k, v in kept if k.lower() != b"content-length"]
    return kept, ndjson


def for_app(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The request headers the middleware's app sees when its NDJSON will be converted.

    A compressed NDJSON body cannot be re-framed line by line: the app is asked for identity.
    """
    kept = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
    kept.append(IDENTITY_ENCODING)
    return kept


def accepts_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an Accept header names text/event-stream with a q-value above 0 (RFC 9110 12.5.1).

    Media types compare case-insensitively and their parameters are ignored; a wildcard such as
    ``*/*`` does not count: the client must ask for events, not merely tolerate them.
    """
    for name, value in headers:
        if name.lower() != b"accept":
            continue
        for item in value.decode("latin-1").split(","):
            media, *params = item.split(";")
            if media.strip().lower() != "text/event-stream":
                continue
            for param in params:
                key, _, q = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        return float(q) > 0
                    except ValueError:
                        return False
            return True
    return False


def converted(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The NDJSON response's headers less those that describe its body (``BODY_HEADERS``)."""
    return [(k, v) for k, v in headers if k.lower() not in BODY_HEADERS]


def event_stream_headers(headers: Headers, http_version: str | None) -> Headers:
    """Add what keeps proxies and browsers from buffering, caching or transforming a stream.

    Args:
        headers: the response's own headers; a Content-Type, X-Accel-Buffering or Connection
            of its own is kept, and its Cache-Control directives are kept (see cache_control).
        http_version: the request's, as in the ASGI scope: Connection goes only on "1.1".
    """
    names = {k.lower() for k, _ in headers}
    kept = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
    added = [(b"cache-control", cache_control(header(headers, b"cache-control")))]
    if b"content-type" not in names:
        added.append(EVENT_STREAM_TYPE)
    if b"x-accel-buffering" not in names:
        added.append(NO_BUFFERING)
    if b"connection" not in names and http_version == "1.1":
        added.append(KEEP_ALIVE)
    return kept + added


def cache_control(value: str) -> bytes:
    """The app's own directives, plus no-cache (unless no-store) and no-transform.

    no-cache: a cache must not answer a later request with this stream (RFC 9111 5.2.2.4);
    no-transform: no proxy or CDN may compress or rewrite it (5.2.2.6), which would buffer it.
    """
    directives = [d.strip() for d in value.split(",") if d.strip()]
    names = {d.split("=")[0].lower() for d in directives}
    if not names & {"no-cache", "no-store"}:
        directives.append("no-cache")
    if "no-transform" not in names:
        directives.append("no-transform")
    return ", ".join(directives).encode("latin-1")


def bearer_token(value: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None (RFC 6750 section 2.1).

    The scheme compares case-insensitively and must be followed by a space (not a tab); further
    whitespace around the token is ignored. A missing or empty token is None.
    """
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def request_framing(netloc: bytes, method: str, length: int | None) -> Headers:
    """What HTTP/1.1 needs in front of a request's own headers: Host, and how its body ends.

    The body's framing is always the proxy's own, from the body it read: the request's own
    headers carry none (``REPLACED_UPSTREAM``, ``HOP_BY_HOP``).

    Args:
        netloc: the upstream's host, with ``:port`` unless it is 80 (RFC 9110 7.2).
        method: the request's method.
        length: the body's size when it is known in full; None for a streamed body, which is
            sent chunked (RFC 9112 7.1). An empty body gets ``Content-Length: 0`` only for a
            method that defines one (RFC 9110 8.6).
    """
    framing = [(b"host", netloc)]
    if length is None:
        framing.append((b"transfer-encoding", b"chunked"))
    elif length or method in ("POST", "PUT", "PATCH"):
        framing.append((b"content-length", b"%d" % length))
    return framing


def body_ends_with_close(headers: Headers, status: int, head_request: bool) -> bool:
    """Whether a response's body is delimited only by the connection closing (RFC 9112 6.3).

    A response to HEAD and a 204 or 304 have no body; one with Content-Length or
    Transfer-Encoding says where its body ends; any other reads until the upstream closes.
    """
    if head_request or status in (204, 304):
        return False
    return not {name.lower() for name, _ in headers} & {b"content-length", b"transfer-encoding"}
