"""The proxy's request rules as tables: framing (framing.py) and path confinement (target.py),
then the paths end to end, through raw sockets, under both upstream transports."""

from __future__ import annotations

import json

import pytest

from sse_bridge import create_proxy
from sse_bridge._proxy.framing import framing_error
from sse_bridge._proxy.target import PathEscapeError, confine
from tests._raw_upstream import raw_upstream
from tests._servers import serve
from tests.test_smuggling import exchange

CL = b"content-length"
TE = b"transfer-encoding"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ([], None),
        ([(CL, b"0")], None),
        ([(b"Content-Length", b"12")], None),
        ([(TE, b"chunked")], None),
        ([(b"Transfer-Encoding", b"chunked"), (b"x-other", b"1")], None),
        ([(CL, b"5"), (TE, b"chunked")], "both Content-Length and Transfer-Encoding"),
        ([(TE, b"chunked"), (b"Content-Length", b"5")], "both"),
        ([(CL, b"5"), (CL, b"5")], "one Content-Length at most"),
        ([(CL, b"5"), (CL, b"6")], "one Content-Length at most"),
        ([(CL, b"+5")], "digits only"),
        ([(CL, b"-1")], "digits only"),
        ([(CL, b" 5")], "digits only"),
        ([(CL, b"5 ")], "digits only"),
        ([(CL, b"5, 5")], "digits only"),
        ([(CL, b"0x5")], "digits only"),
        ([(CL, b"")], "digits only"),
        ([(CL, "\u0665".encode())], "digits only"),  # an Arabic-Indic five
        ([(TE, b"chunked"), (TE, b"chunked")], "one Transfer-Encoding at most"),
        ([(TE, b"chunked, identity")], "exactly 'chunked'"),
        ([(TE, b"identity")], "exactly 'chunked'"),
        ([(TE, b"xchunked")], "exactly 'chunked'"),
        ([(TE, b"Chunked")], "exactly 'chunked'"),
        ([(TE, b"chunked ")], "exactly 'chunked'"),
        ([(TE, b"")], "exactly 'chunked'"),
    ],
)
def test_framing_rules(headers: list[tuple[bytes, bytes]], error: str | None) -> None:
    found = framing_error(headers)
    if error is None:
        assert found is None
    else:
        assert found is not None
        assert error in found


@pytest.mark.parametrize(
    ("path", "confined"),
    [
        (b"/", b"/"),
        (b"/api/chat", b"/api/chat"),
        (b"/v1.0/models", b"/v1.0/models"),
        (b"/x/../y", b"/y"),
        (b"/x/./y", b"/x/y"),
        (b"/x/%2e%2e/y", b"/y"),
        (b"/x/%2E%2e/y", b"/y"),
        (b"/x/.%2E/y", b"/y"),
        (b"/x/%2e/y", b"/x/y"),
        (b"/a/b/..", b"/a/"),
        (b"/a/.", b"/a/"),
        (b"/.", b"/"),
        (b"/a%2Fb", b"/a%2Fb"),  # kept encoded: one segment
        (b"/a%2f..%2fb", b"/a%2f..%2fb"),  # within the base by every reading
        (b"//a/../x", b"//x"),  # RFC 3986: the empty segment is one
        (b"/...", b"/..."),
        (b"/..a/b", b"/..a/b"),
        (b"/a/b%2e%2e", b"/a/b%2e%2e"),
    ],
)
def test_dot_segments_are_removed(path: bytes, confined: bytes) -> None:
    assert confine(path) == confined


ESCAPES = [
    b"/..",
    b"/../admin",
    b"/x/../../admin",
    b"/%2e%2e/admin",
    b"/%2E%2E/admin",
    b"/.%2e/admin",
    b"/%2e./admin",
    b"//admin/../../x",
    b"/..%2fadmin",
    b"/x%2F..%2F..%2Fadmin",
    b"/..\\admin",
    b"/x\\..\\..\\admin",
    b"/x/..%5c..%5cadmin",
    b"/..;/admin",
    b"/a/b/../../../c",
    b"/0\\0/../..;",  # "/..;" once "0\\0/.." has gone (found by the fuzzer)
    b"/a%2fb/../..",  # within the root by the loose reading, above it by RFC 3986's
]


@pytest.mark.parametrize("path", ESCAPES)
def test_a_path_that_leaves_the_base_is_refused(path: bytes) -> None:
    with pytest.raises(PathEscapeError, match="leaves the upstream's base path"):
        confine(path)


@pytest.mark.parametrize("path", [b"*", b"x/../../admin", b""])
def test_a_target_that_is_no_path_is_refused(path: bytes) -> None:
    with pytest.raises(PathEscapeError, match="a path starts with /"):
        confine(path)


@pytest.mark.parametrize("server", ["h11", "httptools"])
@pytest.mark.parametrize("transport", ["httptools", "httpx"])
def test_no_path_escapes_the_upstream_base_end_to_end(transport: str, server: str) -> None:
    kept = {
        "/x/../y": "/base/y",
        "/x/%2e%2E/y": "/base/y",
        "/a%2Fb": "/base/a%2Fb",
        "/a/./b?q=../..": "/base/a/b?q=../..",
    }
    with raw_upstream() as upstream:
        app = create_proxy(upstream=upstream.url + "/base/")
        if transport == "httpx":
            app.proxy.transport = None
        with serve(app, http=server) as url:
            answers = {
                path.decode("latin-1"): exchange(
                    url, b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path
                )
                for path in [*ESCAPES, *(path.encode() for path in kept)]
            }
        seen = [request.path for request in upstream.requests]
    for path in ESCAPES:
        status, body = answers[path.decode("latin-1")]
        assert status == 400, path
        assert json.loads(body)["error"] == "the request path leaves the upstream's base path"
    for text, upstream_path in kept.items():
        status, body = answers[text]
        assert status == 200
        assert json.loads(body)["path"] == upstream_path
    assert sorted(seen) == sorted(kept.values())
