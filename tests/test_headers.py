"""The header rules of ``_core/headers.py``: one table per rule, headers in, headers out.

The layers that apply them (the proxy, the middleware, the sidecar) are tested end to end in
their own files; these tables pin each rule down on its own.
"""

from __future__ import annotations

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.testclient import TestClient

from sse_bridge._core.context import NDJSON_TYPES
from sse_bridge._core.headers import (
    BODY_HEADERS,
    CORS_ALLOW_HEADERS,
    CORS_ALLOW_METHODS,
    CORS_EXPOSE_HEADERS,
    HOP_BY_HOP,
    Headers,
    accepts_event_stream,
    bearer_token,
    body_ends_with_close,
    cache_control,
    converted,
    event_stream_headers,
    for_app,
    header,
    media_type,
    passed_back,
    replaced,
    request_framing,
    upstream_request_headers,
    without_hop_by_hop,
)
from sse_bridge._types import Receive, Scope, Send

KEPT = (b"x-kept", b"1")
NDJSON = (b"content-type", b"application/x-ndjson")
IDENTITY = (b"accept-encoding", b"identity")
PROTO = (b"x-forwarded-proto", b"http")


@pytest.mark.parametrize(
    ("headers", "name", "value"),
    [
        ([], b"accept", ""),
        ([(b"accept", b"a")], b"accept", "a"),
        ([(b"Accept", b"a")], b"accept", "a"),
        ([(b"accept", b"a"), (b"accept", b"b")], b"accept", "a"),
        ([(b"x-other", b"a")], b"accept", ""),
        ([(b"accept", b"caf\xe9")], b"accept", "caf\u00e9"),  # latin-1, as RFC 9110 5.5 allows
    ],
)
def test_header_is_the_first_value_by_any_case(headers: Headers, name: bytes, value: str) -> None:
    assert header(headers, name) == value


@pytest.mark.parametrize(
    ("content_type", "media"),
    [
        (None, ""),
        (b"application/x-ndjson", "application/x-ndjson"),
        (b"Application/X-NDJSON; charset=utf-8", "application/x-ndjson"),
        (b" text/event-stream ;charset=utf-8", "text/event-stream"),
    ],
)
def test_media_type_drops_parameters_and_case(content_type: bytes | None, media: str) -> None:
    headers = [(b"content-type", content_type)] if content_type is not None else []
    assert media_type(headers) == media


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ],
)
def test_every_hop_by_hop_header_is_dropped_in_any_case(name: bytes) -> None:
    headers = [KEPT, (name, b"v"), (name.upper(), b"v"), (name.title(), b"v")]
    assert without_hop_by_hop(headers) == [KEPT]


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([KEPT, (b"x-private", b"p")], [KEPT, (b"x-private", b"p")]),
        # RFC 9110 7.6.1: a header the Connection header names is hop-by-hop too.
        ([(b"connection", b"close, x-private"), (b"x-private", b"p"), KEPT], [KEPT]),
        ([(b"connection", b"X-Private"), (b"X-PRIVATE", b"p"), KEPT], [KEPT]),
        ([(b"Connection", b"  x-a ,x-b  "), (b"x-a", b"1"), (b"x-b", b"2"), KEPT], [KEPT]),
        # Two Connection headers name two headers.
        ([(b"connection", b"x-a"), (b"connection", b"x-b"), (b"x-a", b"1"), (b"x-b", b"2")], []),
        # Only whole names: x-private does not cover x-private-2.
        ([(b"connection", b"x-private"), (b"x-private-2", b"p")], [(b"x-private-2", b"p")]),
        # The order of what is left stays.
        ([(b"b", b"2"), (b"te", b"trailers"), (b"a", b"1")], [(b"b", b"2"), (b"a", b"1")]),
    ],
)
def test_headers_the_connection_header_names_are_dropped(headers: Headers, kept: Headers) -> None:
    assert without_hop_by_hop(headers) == kept


@pytest.mark.parametrize(
    ("headers", "result"),
    [
        ([], [(b"x-n", b"new")]),
        ([(b"x-n", b"old"), KEPT], [KEPT, (b"x-n", b"new")]),
        ([(b"X-N", b"a"), KEPT, (b"x-n", b"b")], [KEPT, (b"x-n", b"new")]),
    ],
)
def test_replaced_leaves_one_value_at_the_end(headers: Headers, result: Headers) -> None:
    assert replaced(headers, b"x-n", b"new") == result


CLIENT = ("10.0.0.9", 5000)


@pytest.mark.parametrize(
    ("headers", "client", "forwarded"),
    [
        ([], None, None),
        ([], CLIENT, b"10.0.0.9"),
        ([(b"x-forwarded-for", b"10.0.0.1")], CLIENT, b"10.0.0.1, 10.0.0.9"),
        ([(b"X-Forwarded-For", b"10.0.0.1, 10.0.0.2")], CLIENT, b"10.0.0.1, 10.0.0.2, 10.0.0.9"),
        # Two headers are one list (RFC 9110 5.3), in their order.
        (
            [(b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2")],
            CLIENT,
            b"10.0.0.1, 10.0.0.2, 10.0.0.9",
        ),
        # No peer known (a Unix socket): the chain goes on as it came.
        ([(b"x-forwarded-for", b"10.0.0.1")], None, b"10.0.0.1"),
    ],
)
def test_x_forwarded_for_appends_the_peer(
    headers: Headers, client: tuple[str, int] | None, forwarded: bytes | None
) -> None:
    sent = upstream_request_headers(headers, client, "http", strip_authorization=False)
    expected = [(b"x-forwarded-for", forwarded)] if forwarded is not None else []
    assert sent == [*expected, PROTO, IDENTITY]


@pytest.mark.parametrize(
    ("headers", "scheme", "strip", "forwarded"),
    [
        # The client's own headers go first, in their order; the proxy's own follow.
        ([KEPT, (b"x-b", b"2")], "http", False, [KEPT, (b"x-b", b"2")]),
        # Host comes from the configured upstream, not from the client.
        ([(b"host", b"evil.example"), KEPT], "http", False, [KEPT]),
        # The upstream's body must arrive as is, whatever the client accepts.
        ([(b"Accept-Encoding", b"gzip, br")], "http", False, []),
        # The body's framing is the proxy's own, from the body it read: a client's length
        # that disagrees with it would be request smuggling.
        ([(b"Content-Length", b"5"), KEPT], "http", False, [KEPT]),
        ([(b"transfer-encoding", b"chunked"), KEPT], "http", False, [KEPT]),
        # The scheme is the one the bridge saw, not what the client claims.
        ([(b"x-forwarded-proto", b"https")], "http", False, []),
        ([(b"X-Forwarded-Proto", b"http")], "https", False, []),
        # Authorization is the client's own credential for the upstream, unless the bridge
        # has an API key: then it carries that key and never goes upstream.
        ([(b"authorization", b"Bearer u")], "http", False, [(b"authorization", b"Bearer u")]),
        ([(b"authorization", b"Bearer k"), KEPT], "http", True, [KEPT]),
        ([(b"Authorization", b"Bearer k")], "https", True, []),
        # Hop-by-hop headers and those Connection names stay on the client's connection.
        (
            [(b"connection", b"x-drop"), (b"x-drop", b"1"), (b"te", b"trailers"), KEPT],
            "http",
            False,
            [KEPT],
        ),
        ([(b"proxy-authorization", b"Basic x"), KEPT], "http", False, [KEPT]),
    ],
)
def test_what_the_proxy_sends_upstream(
    headers: Headers, scheme: str, strip: bool, forwarded: Headers
) -> None:
    sent = upstream_request_headers(headers, None, scheme, strip_authorization=strip)
    assert sent == [*forwarded, (b"x-forwarded-proto", scheme.encode()), IDENTITY]


@pytest.mark.parametrize(
    ("headers", "back", "ndjson"),
    [
        # An NDJSON body may get an error line after a failure: no declared length.
        ([NDJSON, (b"content-length", b"9"), KEPT], [NDJSON, KEPT], True),
        (
            [(b"content-type", b"Application/JSONL; charset=utf-8"), (b"Content-Length", b"9")],
            [(b"content-type", b"Application/JSONL; charset=utf-8")],
            True,
        ),
        # Any other body keeps its length.
        (
            [(b"content-type", b"application/json"), (b"content-length", b"9")],
            [(b"content-type", b"application/json"), (b"content-length", b"9")],
            False,
        ),
        ([(b"content-length", b"0")], [(b"content-length", b"0")], False),
        # Hop-by-hop headers of the response stay on the upstream's connection.
        (
            [NDJSON, (b"connection", b"close, x-private"), (b"x-private", b"p")],
            [NDJSON],
            True,
        ),
        ([(b"transfer-encoding", b"chunked"), (b"keep-alive", b"timeout=5"), KEPT], [KEPT], False),
        # The server running the proxy writes its own Date and Server: one of each, not two.
        (
            [(b"Date", b"Mon, 07 Dec 2026 08:00:00 GMT"), (b"server", b"uvicorn"), KEPT],
            [KEPT],
            False,
        ),
    ],
)
def test_what_the_proxy_passes_back(headers: Headers, back: Headers, ndjson: bool) -> None:
    assert passed_back(iter(headers), NDJSON_TYPES) == (back, ndjson)


@pytest.mark.parametrize(
    ("headers", "seen"),
    [
        ([], [IDENTITY]),
        ([(b"accept-encoding", b"gzip"), KEPT], [KEPT, IDENTITY]),
        ([(b"Accept-Encoding", b"br"), (b"accept-encoding", b"gzip")], [IDENTITY]),
        ([(b"accept", b"text/event-stream")], [(b"accept", b"text/event-stream"), IDENTITY]),
    ],
)
def test_the_app_is_asked_for_an_identity_body(headers: Headers, seen: Headers) -> None:
    assert for_app(headers) == seen


@pytest.mark.parametrize(
    ("headers", "accepts"),
    [
        ([(b"accept", b"text/event-stream")], True),
        ([(b"accept", b"application/json, text/event-stream")], True),
        ([(b"accept", b"text/html,text/event-stream;charset=utf-8")], True),
        ([(b"ACCEPT", b"Text/Event-Stream")], True),
        ([(b"accept", b"text/event-stream; q=0.5")], True),
        ([(b"accept", b"text/event-stream;charset=utf-8;q=0.001")], True),
        ([(b"accept", b"text/event-stream;Q=1")], True),
        ([(b"accept", b"text/event-stream;Q=0")], False),
        ([(b"accept", b"text/event-stream; q = 0.5")], True),
        # Two Accept headers are one list (RFC 9110 5.3).
        ([(b"accept", b"application/json"), (b"accept", b"text/event-stream")], True),
        ([(b"user-agent", b"curl"), (b"accept", b"text/event-stream")], True),
        # RFC 9110 12.4.2: q=0 means "not acceptable".
        ([(b"accept", b"text/event-stream;q=0")], False),
        ([(b"accept", b"text/event-stream; q=0.0")], False),
        ([(b"accept", b"text/event-stream;charset=utf-8;q=0")], False),
        # An unreadable q-value is not taken for a yes.
        ([(b"accept", b"text/event-stream;q=zero")], False),
        ([(b"accept", b"text/event-stream;q=1=0")], False),
        # Wildcards tolerate events; only a client that names them gets them.
        ([(b"accept", b"*/*")], False),
        ([(b"accept", b"text/*")], False),
        ([(b"accept", b"application/x-ndjson")], False),
        ([(b"accept", b"text/event-streams")], False),
        ([(b"x-accept", b"text/event-stream")], False),
        ([], False),
    ],
)
def test_accept_negotiation_for_event_streams(headers: Headers, accepts: bool) -> None:
    assert accepts_event_stream(headers) is accepts


@pytest.mark.parametrize(
    "name",
    [
        # The event stream has another type, no length, no encoding and no validators.
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"content-md5",
        b"etag",
        b"accept-ranges",
        # Framing and buffering are the event stream's own (see event_stream_headers).
        b"transfer-encoding",
        b"connection",
        b"x-accel-buffering",
    ],
)
def test_every_body_header_is_dropped_on_conversion(name: bytes) -> None:
    assert converted([(name, b"v"), KEPT, (name.upper(), b"v")]) == [KEPT]


@pytest.mark.parametrize(
    "kept",
    [
        (b"set-cookie", b"a=1"),
        (b"cache-control", b"private"),
        (b"vary", b"Cookie"),
        (b"x-stream-id", b"abc"),
        (b"content-language", b"en"),
    ],
)
def test_headers_true_of_the_event_stream_are_kept_on_conversion(
    kept: tuple[bytes, bytes],
) -> None:
    assert converted([NDJSON, kept, (b"content-length", b"9")]) == [kept]


CACHE = (b"cache-control", b"no-cache, no-transform")
TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
NO_BUFFERING = (b"x-accel-buffering", b"no")
KEEP_ALIVE = (b"connection", b"keep-alive")


@pytest.mark.parametrize(
    ("headers", "http_version", "sent"),
    [
        ([], "1.1", [CACHE, TYPE, NO_BUFFERING, KEEP_ALIVE]),
        ([KEPT], "1.1", [KEPT, CACHE, TYPE, NO_BUFFERING, KEEP_ALIVE]),
        # Connection is hop-by-hop, which HTTP/2 forbids (RFC 9113 8.2.2).
        ([], "2", [CACHE, TYPE, NO_BUFFERING]),
        ([], "1.0", [CACHE, TYPE, NO_BUFFERING]),
        ([], None, [CACHE, TYPE, NO_BUFFERING]),
        # What the response says itself stays.
        (
            [(b"Content-Type", b"text/event-stream")],
            "2",
            [(b"Content-Type", b"text/event-stream"), CACHE, NO_BUFFERING],
        ),
        ([(b"x-accel-buffering", b"yes")], "2", [(b"x-accel-buffering", b"yes"), CACHE, TYPE]),
        (
            [(b"connection", b"close")],
            "1.1",
            [(b"connection", b"close"), CACHE, TYPE, NO_BUFFERING],
        ),
        # Its Cache-Control is merged (see cache_control) and moves among the added ones.
        (
            [(b"Cache-Control", b"private"), KEPT],
            "2",
            [KEPT, (b"cache-control", b"private, no-cache, no-transform"), TYPE, NO_BUFFERING],
        ),
    ],
)
def test_event_stream_headers_stop_buffering(
    headers: Headers, http_version: str | None, sent: Headers
) -> None:
    assert event_stream_headers(headers, http_version) == sent


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("", b"no-cache, no-transform"),
        ("private", b"private, no-cache, no-transform"),
        ("max-age=0", b"max-age=0, no-cache, no-transform"),
        # no-store says more than no-cache.
        ("no-store", b"no-store, no-transform"),
        ("no-cache, no-transform", b"no-cache, no-transform"),
        ("No-Cache", b"No-Cache, no-transform"),
        ("NO-TRANSFORM", b"NO-TRANSFORM, no-cache"),
        ('no-cache="set-cookie"', b'no-cache="set-cookie", no-transform'),
        (" private , , max-age=5 ", b"private, max-age=5, no-cache, no-transform"),
    ],
)
def test_cache_control_keeps_the_apps_directives(value: str, sent: bytes) -> None:
    assert cache_control(value) == sent


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer s3cret", "s3cret"),
        ("bearer s3cret", "s3cret"),
        ("BEARER s3cret", "s3cret"),
        ("Bearer    s3cret  ", "s3cret"),
        ("Bearer a b", "a b"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("", None),
        ("Basic czNjcmV0", None),
        ("Bearers s3cret", None),
        ("Bearers3cret", None),
        (" Bearer s3cret", None),
        ("Bearer\ts3cret", None),
    ],
)
def test_bearer_token(value: str, token: str | None) -> None:
    assert bearer_token(value) == token


@pytest.mark.parametrize(
    ("method", "length", "framing"),
    [
        ("POST", 5, [(b"content-length", b"5")]),
        ("POST", 0, [(b"content-length", b"0")]),
        ("PUT", 0, [(b"content-length", b"0")]),
        ("PATCH", 0, [(b"content-length", b"0")]),
        # RFC 9110 8.6: no Content-Length where the method defines no body and none is sent.
        ("GET", 0, []),
        ("DELETE", 0, []),
        ("GET", 3, [(b"content-length", b"3")]),
        # A body of unknown length is chunked.
        ("POST", None, [(b"transfer-encoding", b"chunked")]),
    ],
)
def test_request_framing(method: str, length: int | None, framing: Headers) -> None:
    host = (b"host", b"127.0.0.1:11434")
    assert request_framing(b"127.0.0.1:11434", method, length) == [host, *framing]


@pytest.mark.parametrize(
    ("headers", "status", "head", "ends_with_close"),
    [
        ([], 200, False, True),
        ([(b"Content-Length", b"3")], 200, False, False),
        ([(b"transfer-encoding", b"chunked")], 200, False, False),
        ([KEPT], 404, False, True),
        # No body at all (RFC 9112 6.3): nothing to read until the close.
        ([], 204, False, False),
        ([], 304, False, False),
        ([], 200, True, False),
    ],
)
def test_a_body_without_a_length_ends_with_the_connection(
    headers: Headers, status: int, head: bool, ends_with_close: bool
) -> None:
    assert body_ends_with_close(headers, status, head) is ends_with_close


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


ORIGIN = "http://app.example"


def _cors_client() -> TestClient:
    app = CORSMiddleware(
        _ok,
        allow_origins=[ORIGIN],
        allow_methods=CORS_ALLOW_METHODS,
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
    )
    return TestClient(app)


@pytest.mark.parametrize(
    ("method", "request_headers", "status"),
    [
        ("GET", "last-event-id", 200),  # a resume
        ("POST", "content-type, authorization", 200),
        ("DELETE", "authorization", 200),  # stopping a resumable stream
        ("PUT", "x-anything", 200),
        ("HEAD", "", 200),
        ("OPTIONS", "", 200),
        ("PATCH", "content-type", 400),
        ("TRACE", "", 400),
    ],
)
def test_cors_preflights(method: str, request_headers: str, status: int) -> None:
    preflight = {"origin": ORIGIN, "access-control-request-method": method}
    if request_headers:
        preflight["access-control-request-headers"] = request_headers
    response = _cors_client().options("/api/chat", headers=preflight)
    assert response.status_code == status


def test_cors_exposes_the_stream_id() -> None:
    response = _cors_client().get("/api/chat", headers={"origin": ORIGIN, "cookie": "a=1"})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    # "*" does not cover a request with credentials (Fetch standard): the id is named as well.
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    assert exposed == ["*", "x-stream-id"]


def test_the_tables_name_every_rule_set() -> None:
    # The tables above list the names explicitly, so that dropping one from a set fails there;
    # this fails when a set grows without a row.
    assert len(HOP_BY_HOP) == 9
    assert len(BODY_HEADERS) == 9
