"""The access log's values: logfmt quoting, stream tags, and lines a request cannot forge."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from pathlib import Path

import pytest

from loadtests.stack import BIN, free_port, wait_http
from sse_bridge import create_proxy
from sse_bridge._resume.store import new_stream_id, stream_tag
from sse_bridge._sidecar.logline import logfmt, logged_path
from tests._raw_upstream import raw_upstream
from tests._servers import serve
from tests.test_smuggling import read_response


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("/api/chat", "/api/chat"),
        ("GET", "GET"),
        (200, "200"),
        ("", '""'),
        ("a b", '"a b"'),
        ('a"b', '"a\\"b"'),
        ("a=b", '"a=b"'),
        ("a\\b", '"a\\\\b"'),
        ("a\nINFO stream x=1", '"a\\nINFO stream x=1"'),
        ("a\rb", '"a\\rb"'),
        ("a\tb", '"a\\tb"'),
        ("a\x00b\x1b[31m", '"a\\u0000b\\u001b[31m"'),
        ("caf\u00e9", '"caf\\u00e9"'),
        ("a\u2028b\u0085", '"a\\u2028b\\u0085"'),
    ],
)
def test_logfmt_values(value: object, logged: str) -> None:
    assert logfmt(value) == logged
    assert "\n" not in logfmt(value)
    assert "\r" not in logfmt(value)


def test_a_stream_tag_is_short_stable_and_not_the_id() -> None:
    sid = new_stream_id()
    tag = stream_tag(sid)
    assert tag == stream_tag(sid)
    assert len(tag) == 12
    assert tag not in sid
    assert sid not in tag
    assert stream_tag(new_stream_id()) != tag
    assert stream_tag("\udcff") == stream_tag("\udcff")  # a lone surrogate does not raise


@pytest.mark.parametrize(
    ("path", "keyed", "logged"),
    [
        ("/api/chat", ("/streams",), "/api/chat"),
        ("/streams", ("/streams",), "/streams"),
        ("/streams/abc", ("/streams",), f"/streams/{stream_tag('abc')}"),
        ("/streams/abc/x", ("/streams/",), f"/streams/{stream_tag('abc')}/x"),
        ("/streamsabc", ("/streams",), "/streamsabc"),
        ("/streams/abc", (), "/streams/abc"),
        ("/api/chat", ("/streams", "/api/chat"), "/api/chat"),
        (
            "/api/chat/chat-1/stream",
            ("/streams", "/api/chat"),
            f"/api/chat/{stream_tag('chat-1')}/stream",
        ),
    ],
)
def test_logged_path_tags_the_stream_id(path: str, keyed: tuple[str, ...], logged: str) -> None:
    assert logged_path(path, keyed) == logged


FORGERIES = [
    b"/x%0aINFO%20stream%20method=GET%20path=/%20status=200%20outcome=completed",
    b"/x%0d%0astream%20status=200",
    b"/x%22%20status=200%20outcome=%22completed",
    b"/x%20status=200",
    b"/x%1b[2K",
]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_request_writes_a_log_line_of_its_own(
    caplog: pytest.LogCaptureFixture, log_format: str
) -> None:
    with raw_upstream() as upstream:
        app = create_proxy(upstream=upstream.url, log_format=log_format)  # type: ignore[arg-type]
        with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
            host, port = url.removeprefix("http://").split(":")
            for path in FORGERIES:
                with socket.create_connection((host, int(port)), timeout=5) as sock:
                    sock.sendall(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
                    status, _ = read_response(sock)
                assert status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "sse_bridge.access"]
    assert len(lines) == len(FORGERIES)
    for line in lines:
        assert not {"\n", "\r", "\x1b"} & set(line)
        if log_format == "json":
            assert json.loads(line)["status"] == 200
        else:
            # One status=, one outcome=, each the bridge's own: the path's are inside its quotes.
            fields = line.split(" path=", 1)[1]
            quoted, end = json.JSONDecoder().raw_decode(fields)
            assert quoted.startswith("/x")
            rest = fields[end:]
            assert rest.startswith(" status=200 ")
            assert rest.count("status=") == 1
            assert rest.count("outcome=") == 1


def test_no_log_line_of_sse_bridge_serve_carries_an_id_or_a_forged_line(tmp_path: Path) -> None:
    sid = new_stream_id()
    port = free_port()
    log = tmp_path / "serve.log"
    with raw_upstream() as upstream, log.open("w") as sink:
        args = ["serve", "--upstream", upstream.url, "--resume", "memory", "--port", str(port)]
        process = subprocess.Popen([str(BIN), *args], stdout=sink, stderr=sink, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", process)
            for path in (f"/streams/{sid}".encode(), FORGERIES[0]):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
                    read_response(sock)
        finally:
            process.terminate()
            process.wait(timeout=10)
    logged = log.read_text()
    assert f"path=/streams/{stream_tag(sid)} status=404" in logged
    assert sid not in logged
    assert "\nINFO stream" not in logged
    # uvicorn's own access line is off: the bridge's is the one line per request.
    assert '"GET /' not in logged
