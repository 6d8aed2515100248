"""The sidecar's forwarding, limits and error mapping, against small upstreams of our own."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sse_bridge import create_proxy
from sse_bridge._proxy.body import REPLAYABLE_BYTES
from sse_bridge._types import Receive, Scope, Send
from sse_bridge.probe import Stream
from tests._servers import serve
from tests._wire import fetch

pytestmark = pytest.mark.anyio


async def echo(request: Request) -> Response:
    """Answer with what arrived, as the upstream saw it."""
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.url.query,
            "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]],
            "body": body.decode(),
        },
        headers={"connection": "close, x-private", "x-private": "hop", "x-kept": "yes"},
    )


async def not_found(request: Request) -> Response:
    return JSONResponse({"error": 'model "nope" not found, try pulling it first'}, status_code=404)


async def slow_headers(request: Request) -> Response:
    await anyio.sleep(2)
    return JSONResponse({})


async def broken(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model":"m","response":"a","done":false}\n{"model":"m","resp'
        raise RuntimeError("upstream died mid-line")

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


async def truncated(request: Request) -> Response:
    """NDJSON that ends cleanly but without Ollama's done chunk."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model":"m","response":"a","done":false}\n'

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


async def ndjson_with_length(request: Request) -> Response:
    return Response(b'{"a":1}\n', media_type="application/x-ndjson")


async def broken_text(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("upstream died")

    return StreamingResponse(chunks(), media_type="text/plain")


LATE = {
    "ollama-404": (404, "application/json", b'{"error":"model \\"x\\" not found"}'),
    "openai-500": (500, "application/json", b'{"error":{"message":"boom","type":"api_error"}}'),
    "structured": (500, "application/json", b'{"error":{"code":7}}'),
    "text-502": (502, "text/plain", b"Bad Gateway"),
    "empty-503": (503, "text/plain", b""),
    "html-200": (200, "text/html", b"<p>hi</p>"),
    "bad-json-200": (200, "application/json", b"{nope"),
}


async def late(request: Request) -> Response:
    """Answer only after the bridge has committed its stream."""
    await anyio.sleep(0.5)
    status, media, body = LATE[request.path_params["kind"]]
    return Response(body, status_code=status, media_type=media)


upstream_app = Starlette(
    routes=[
        Route("/late/{kind}", late, methods=["POST"]),
        Route("/missing", not_found, methods=["POST"]),
        Route("/slow", slow_headers),
        Route("/broken", broken, methods=["POST"]),
        Route("/broken-text", broken_text),
        Route("/truncated", truncated, methods=["POST"]),
        Route("/ndjson-with-length", ndjson_with_length),
        Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
)


@pytest.fixture(scope="module")
def upstream() -> Any:
    with serve(upstream_app) as url:
        yield url


def header_values(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k == name]


async def test_forwards_method_path_query_body_and_headers(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream)) as url:
        response = await fetch(
            f"{url}/api/x%20y?a=1&b=%2F",
            method="PUT",
            body=b"hello",
            headers={
                "x-custom": "1",
                "connection": "keep-alive, x-drop",
                "x-drop": "hop",
                "keep-alive": "timeout=5",
                "accept-encoding": "gzip",
                "x-forwarded-for": "10.0.0.1",
            },
        )
    assert response.status == 200
    seen = json.loads(response.body)
    assert seen["method"] == "PUT"
    assert seen["raw_path"] == "/api/x%20y"
    assert seen["query"] == "a=1&b=%2F"
    assert seen["body"] == "hello"
    assert header_values(seen, "x-custom") == ["1"]
    assert header_values(seen, "x-drop") == []
    assert header_values(seen, "keep-alive") == []
    assert header_values(seen, "accept-encoding") == ["identity"]
    assert header_values(seen, "x-forwarded-for") == ["10.0.0.1, 127.0.0.1"]
    assert header_values(seen, "x-forwarded-proto") == ["http"]
    assert header_values(seen, "host") == [upstream.removeprefix("http://")]
    # Hop-by-hop headers of the response are dropped too, and the rest kept.
    assert "x-private" not in response.headers
    assert response.headers["x-kept"] == "yes"


async def test_an_upstream_path_prefix_is_kept(upstream: str) -> None:
    with serve(create_proxy(upstream=f"{upstream}/base/")) as url:
        response = await fetch(f"{url}/api/tags", method="GET", body=b"")
    assert json.loads(response.body)["raw_path"] == "/base/api/tags"


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\n",
        b"GET //evil.example/steal HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"GET /steal HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\n",
    ],
)
def test_the_request_target_cannot_redirect_the_proxy(upstream: str, request_line: bytes) -> None:
    with serve(create_proxy(upstream=upstream)) as url:
        raw = raw_request(url, request_line + b"Connection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    seen = json.loads(body)
    # It reached our upstream, whatever the target or Host said.
    assert header_values(seen, "host") == [upstream.removeprefix("http://")]
    assert seen["path"].endswith("/steal")


async def test_error_statuses_pass_through_unchanged(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream, dialect="ollama")) as url:
        response = await fetch(f"{url}/missing", headers={"accept": "text/event-stream"})
    assert response.status == 404
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"error": 'model "nope" not found, try pulling it first'}


async def test_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # Bound but not listening: connections are refused.
        with serve(create_proxy(upstream=f"http://127.0.0.1:{port}")) as url:
            response = await fetch(f"{url}/api/chat")
    assert response.status == 502
    assert json.loads(response.body)["error"].startswith("upstream unreachable: ")


async def test_upstream_timeout_is_a_504(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream, read_timeout=0.2)) as url:
        response = await fetch(f"{url}/slow", method="GET", body=b"")
    assert response.status == 504
    assert json.loads(response.body)["error"].startswith("upstream timed out")


async def test_midstream_failure_of_ndjson_becomes_an_error_line(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream, dialect="ollama")) as url:
        plain = await fetch(f"{url}/broken")
        events = await fetch(f"{url}/broken", headers={"accept": "text/event-stream"})
    lines = plain.body.split(b"\n")
    assert lines[1] == b'{"model":"m","resp'
    assert json.loads(lines[2])["error"].startswith("upstream connection lost mid-stream: ")
    assert plain.complete
    data = [json.loads(e.data) for e in events.events]
    assert data[0] == {"token": "a"}
    assert data[1]["line"] == '{"model":"m","resp'
    assert data[2]["error"].startswith("upstream connection lost mid-stream: ")
    assert data[2]["finished"] is True


async def test_midstream_failure_of_other_bodies_breaks_the_transfer(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream)) as url:
        response = await fetch(f"{url}/broken-text", method="GET", body=b"")
    assert response.body == b"partial"
    assert not response.complete


async def test_api_key(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream, api_key="s3cret")) as url:
        missing = await fetch(f"{url}/api/chat")
        wrong = await fetch(f"{url}/api/chat", headers={"authorization": "Bearer nope"})
        right = await fetch(f"{url}/api/chat", headers={"authorization": "Bearer s3cret"})
        health = await fetch(f"{url}/healthz", method="GET", body=b"")
    for response in (missing, wrong):
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "API key" in json.loads(response.body)["error"]
    assert right.status == 200
    assert header_values(json.loads(right.body), "authorization") == []
    assert health.status == 200


async def test_without_an_api_key_authorization_is_forwarded(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream)) as url:
        response = await fetch(f"{url}/api/chat", headers={"authorization": "Bearer user"})
    assert header_values(json.loads(response.body), "authorization") == ["Bearer user"]


async def test_cors_is_off_by_default_and_follows_the_allowlist(upstream: str) -> None:
    origin = {"origin": "http://app.example"}
    preflight = {
        **origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, authorization",
    }
    with serve(create_proxy(upstream=upstream, api_key="k")) as url:
        off = await fetch(f"{url}/api/chat", headers={**origin, "authorization": "Bearer k"})
    assert "access-control-allow-origin" not in off.headers
    app = create_proxy(upstream=upstream, api_key="k", cors_origins=["http://app.example"])
    with serve(app) as url:
        allowed = await fetch(f"{url}/api/chat", method="OPTIONS", body=b"", headers=preflight)
        other = await fetch(
            f"{url}/api/chat",
            headers={"origin": "http://evil.example", "authorization": "Bearer k"},
        )
        unauthorized = await fetch(f"{url}/api/chat", headers=origin)
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"
    assert "access-control-allow-origin" not in other.headers
    # A page can read the 401, so it can tell the user what is wrong.
    assert unauthorized.status == 401
    assert unauthorized.headers["access-control-allow-origin"] == "http://app.example"


async def test_request_bodies_over_max_body_get_413(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream, max_body=100)) as url:
        declared = await fetch(f"{url}/api/chat", body=b"x" * 101)
        fits = await fetch(f"{url}/api/chat", body=b"x" * 100)
        chunked = await fetch_chunked(f"{url}/api/chat", [b"x" * 60, b"x" * 60])
    assert declared.status == 413
    assert json.loads(declared.body)["error"] == "request body larger than 100 bytes (max_body)"
    assert fits.status == 200
    assert chunked.status_code == 413


async def fetch_chunked(url: str, chunks: list[bytes]) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body())


async def test_a_large_streamed_body_arrives_whole(upstream: str) -> None:
    chunks = [bytes([65 + i % 26]) * 50_000 for i in range(10)]
    with serve(create_proxy(upstream=upstream)) as url:
        response = await fetch_chunked(f"{url}/upload", chunks)
    assert response.status_code == 200
    assert response.json()["body"] == b"".join(chunks).decode()


async def test_max_streams(upstream: str, caplog: pytest.LogCaptureFixture) -> None:
    app = create_proxy(upstream=upstream, max_streams=2)
    with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
        results: list[Stream] = []

        async def one() -> None:
            results.append(await fetch(f"{url}/slow", method="GET", body=b""))

        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(one)
    assert sorted(r.status for r in results) == [200, 200, 503]
    # The refused request gets no log line: only the two streams do.
    lines = access_lines(caplog, "path=/slow ")
    assert [line.split()[3] for line in lines] == ["status=200", "status=200"]
    [refused] = [r for r in results if r.status == 503]
    assert refused.headers.get("retry-after") == "1"
    assert json.loads(refused.body) == {"error": "too many concurrent streams (max 2); retry later"}


async def test_requests_the_bridge_answers_itself_get_no_log_line(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As the README says: health checks, a 401 for the API key, /metrics on the main port, CORS
    # preflights and 503s at --max-streams are answered before the layer that logs.
    app = create_proxy(
        upstream=upstream,
        api_key="k",
        max_streams=1,
        metrics=True,
        cors_origins=["http://app.example"],
    )
    key = {"authorization": "Bearer k"}
    preflight = {"origin": "http://app.example", "access-control-request-method": "POST"}
    with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
        answered = [
            await fetch(f"{url}/healthz", method="GET", body=b""),
            await fetch(f"{url}/readyz", method="GET", body=b""),
            await fetch(f"{url}/api/chat"),
            await fetch(f"{url}/metrics", method="GET", body=b"", headers=key),
            await fetch(f"{url}/api/chat", method="OPTIONS", body=b"", headers=preflight),
        ]
        assert [r.status for r in answered] == [200, 200, 401, 200, 200]
        assert access_lines(caplog, "") == []
        await fetch(f"{url}/api/chat", headers=key)
    [line] = access_lines(caplog, "")
    assert line.startswith("stream method=POST path=/api/chat status=200")


async def test_health_and_readiness(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream)) as url:
        health = await fetch(f"{url}/healthz", method="GET", body=b"")
        ready = await fetch(f"{url}/readyz", method="GET", body=b"")
    assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})
    assert (ready.status, json.loads(ready.body)) == (200, {"status": "ready"})
    with serve(create_proxy(upstream="http://127.0.0.1:9")) as url:
        down = await fetch(f"{url}/readyz", method="GET", body=b"")
    assert down.status == 503
    assert json.loads(down.body)["status"] == "unavailable"


async def test_one_log_line_per_stream(upstream: str, caplog: pytest.LogCaptureFixture) -> None:
    app = create_proxy(upstream=upstream, dialect="ollama")
    with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
        await fetch(f"{url}/api/chat", body=b"{}")
        await fetch(f"{url}/missing")
        await fetch(f"{url}/broken", headers={"accept": "text/event-stream"})
        await fetch(f"{url}/truncated", headers={"accept": "text/event-stream"})
        with pytest.raises(TimeoutError):
            await fetch(f"{url}/slow", method="GET", body=b"", deadline=0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == "sse_bridge.access"]
    assert len(lines) == 5
    assert lines[0].startswith("stream method=POST path=/api/chat status=200 dialect=ollama")
    assert lines[0].endswith("outcome=completed")
    assert "status=404" in lines[1]
    assert lines[1].endswith("outcome=upstream_error")
    assert "events=3" in lines[2]
    assert lines[2].endswith("outcome=upstream_error")
    assert "events=2" in lines[3]
    assert lines[3].endswith("outcome=upstream_truncated")
    assert "path=/slow status=0" in lines[4]
    assert lines[4].endswith("outcome=client_disconnected")
    for line in lines:
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        assert set(fields) == {
            "method",
            "path",
            "status",
            "dialect",
            "events",
            "bytes",
            "ttfe_ms",
            "duration_ms",
            "outcome",
        }


def respx_proxy() -> Any:
    # respx replaces httpx's own transport (httpcore), so nothing leaves the process; this
    # sidecar uses that transport instead of the httptools one (tests/test_upstream.py runs the
    # same failures against real sockets).
    app = create_proxy(upstream="http://127.0.0.1:11434")
    app.proxy.transport = None
    return app


async def call(app: Any, body: bytes = b"{}", method: str = "POST") -> httpx.Response:
    # Buffered (ASGITransport), which is fine for status codes and small bodies.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bridge"
    ) as client:
        return await client.request(method, "/api/chat", content=body)


@respx.mock
async def test_a_stale_pooled_connection_is_retried_once_for_small_bodies() -> None:
    route = respx.post("http://127.0.0.1:11434/api/chat").mock(
        side_effect=[httpx.RemoteProtocolError("Server disconnected"), httpx.Response(200, json={})]
    )
    response = await call(respx_proxy())
    assert response.status_code == 200
    assert route.call_count == 2


@respx.mock
async def test_a_second_failure_is_a_502() -> None:
    route = respx.post("http://127.0.0.1:11434/api/chat").mock(
        side_effect=httpx.ReadError("connection reset")
    )
    response = await call(respx_proxy())
    assert response.status_code == 502
    assert response.json() == {"error": "upstream unreachable: connection reset"}
    assert route.call_count == 2


@respx.mock
async def test_timeouts_map_to_504() -> None:
    respx.post("http://127.0.0.1:11434/api/chat").mock(side_effect=httpx.ConnectTimeout(""))
    response = await call(respx_proxy())
    assert response.status_code == 504
    assert response.json() == {"error": "upstream timed out: ConnectTimeout"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"upstream": "ftp://x"}, "http:// or https://"),
        ({"upstream": "http://"}, "http:// or https://"),
        ({"upstream": "http://h/?q=1"}, "must not carry a query"),
        ({"upstream": "http://u:p@h"}, "must not carry a query, fragment or credentials"),
        ({"upstream": "http://h", "max_streams": 0}, "max_streams must be an integer >= 1"),
        ({"upstream": "http://h", "max_body": -1}, "max_body must be an integer >= 1"),
        (
            {"upstream": "http://h", "commit_after": -1},
            "commit_after must be a finite number of seconds >= 0",
        ),
        (
            {"upstream": "http://h", "read_timeout": -1},
            "read_timeout must be a finite number of seconds >= 0",
        ),
        (
            {"upstream": "http://h", "connect_timeout": "5"},
            "connect_timeout must be a finite number of seconds >= 0",
        ),
        ({"upstream": "http://h", "grace": -1}, "grace must be a finite number of seconds >= 0"),
        ({"upstream": "http://h", "cors_origins": "http://a"}, "cors_origins must be a list"),
        ({"upstream": "http://h", "dialect": "nope"}, "unknown dialect"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_proxy(**options)


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("ollama-404", 'model "x" not found'),
        ("openai-500", "boom"),
        ("structured", '{"code": 7}'),
        ("text-502", "upstream answered 502: Bad Gateway"),
        ("empty-503", "upstream answered 503"),
        ("html-200", "upstream answered 200 text/html, which cannot continue an event stream"),
        ("bad-json-200", "upstream answered with a JSON body that does not parse"),
    ],
)
async def test_after_a_commit_a_late_failure_is_an_error_event(
    upstream: str, kind: str, error: str
) -> None:
    app = create_proxy(
        upstream=upstream, dialect="ollama", commit_after=0.1, commit_paths=[f"/late/{kind}"]
    )
    with serve(app) as url:
        response = await fetch(f"{url}/late/{kind}", headers={"accept": "text/event-stream"})
    assert response.status == 200
    assert [json.loads(e.data) for e in response.events] == [{"error": error, "finished": True}]


async def test_after_a_commit_an_unreachable_upstream_is_an_error_event(upstream: str) -> None:
    app = create_proxy(
        upstream=upstream,
        dialect="ollama",
        commit_after=0.1,
        commit_paths=["/slow"],
        read_timeout=0.3,
    )
    with serve(app) as url:
        response = await fetch(
            f"{url}/slow", method="GET", body=b"", headers={"accept": "text/event-stream"}
        )
    (event,) = [json.loads(e.data) for e in response.events]
    assert event["error"].startswith("upstream timed out")
    assert event["finished"] is True


async def test_after_a_commit_an_oversized_body_is_an_error_event(upstream: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 60
        await anyio.sleep(0.4)
        yield b"x" * 60

    app = create_proxy(
        upstream=upstream,
        dialect="ollama",
        commit_after=0.1,
        commit_paths=["/upload"],
        max_body=100,
    )
    with serve(app) as url:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{url}/upload", content=body(), headers={"accept": "text/event-stream"}
            )
    assert response.status_code == 200
    assert response.text == (
        'data: {"error":"request body larger than 100 bytes","finished":true}\n\n'
    )


async def test_a_client_that_leaves_while_uploading_is_not_forwarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    arrived: list[str] = []

    async def recorder(scope: Scope, receive: Receive, send: Send) -> None:
        # Recorded on arrival, before the body is read: a request cut short still counts.
        if scope["type"] == "http":
            arrived.append(scope["path"])
        await upstream_app(scope, receive, send)

    with serve(recorder) as recording_upstream:
        app = create_proxy(upstream=recording_upstream)
        with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
            host, port = url.removeprefix("http://").split(":")
            stream = await anyio.connect_tcp(host, int(port))
            await stream.send(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
            )
            await anyio.sleep(0.2)
            await stream.aclose()
            # The bridge logs the request once it is done with it; a forwarded one arrives first.
            with anyio.fail_after(5):
                while not (lines := access_lines(caplog, "path=/upload ")):
                    assert "/upload" not in arrived, "the cut-short upload was forwarded"
                    await anyio.sleep(0.01)
            # The bridge is still healthy and answers the next request.
            response = await fetch(f"{url}/api/chat")
    assert response.status == 200
    assert arrived == ["/api/chat"]
    assert lines[0].endswith("outcome=client_disconnected")


def access_lines(caplog: pytest.LogCaptureFixture, part: str) -> list[str]:
    records = [r.getMessage() for r in caplog.records if r.name == "sse_bridge.access"]
    return [line for line in records if part in line]


@respx.mock
async def test_a_streamed_body_is_never_replayed() -> None:
    route = respx.post("http://127.0.0.1:11434/api/chat").mock(
        side_effect=httpx.RemoteProtocolError("Server disconnected")
    )

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * (REPLAYABLE_BYTES + 1)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=respx_proxy()), base_url="http://bridge"
    ) as client:
        response = await client.post("/api/chat", content=body())
    assert response.status_code == 502
    assert route.call_count == 1


def test_an_invalid_upstream_url_is_refused() -> None:
    with pytest.raises(ValueError, match="upstream must be a URL"):
        create_proxy(upstream="http://[::1")


async def test_relayed_ndjson_drops_its_content_length(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream)) as url:
        response = await fetch(f"{url}/ndjson-with-length", method="GET", body=b"")
    assert response.body == b'{"a":1}\n'
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize(
    ("path", "body", "accept", "committed"),
    [
        ("/late/html-200", b"{}", "text/event-stream", False),  # not an NDJSON endpoint
        ("/api/chat", b'{"stream": false}', "text/event-stream", False),
        ("/api/chat", b"{}", "application/json", False),  # convert=always, but not asked
        ("/api/chat", b"{}", "text/event-stream", True),
    ],
)
async def test_only_requests_for_events_from_ndjson_endpoints_commit_early(
    path: str, body: bytes, accept: str, committed: bool
) -> None:
    async def slow(request: Request) -> Response:
        await anyio.sleep(0.5)
        return JSONResponse({"late": True})

    app = Starlette(routes=[Route(path, slow, methods=["POST"])])
    with serve(app) as upstream:
        bridge = create_proxy(upstream=upstream, convert="always", commit_after=0.1)
        with serve(bridge) as url:
            response = await fetch(f"{url}{path}", body=body, headers={"accept": accept})
    assert response.time_to_headers is not None
    assert (response.time_to_headers < 0.4) is committed
    if not committed:
        assert response.headers["content-type"] == "application/json"
        assert json.loads(response.body) == {"late": True}


def test_a_target_that_makes_no_upstream_url_is_a_400(upstream: str) -> None:
    with serve(create_proxy(upstream=upstream), http="h11") as url:
        raw = raw_request(url, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"].startswith("no upstream URL for this target")


@respx.mock
async def test_a_slow_failure_is_not_retried() -> None:
    async def fail_late(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.6)
        raise httpx.RemoteProtocolError("Server disconnected")

    route = respx.post("http://127.0.0.1:11434/api/chat").mock(side_effect=fail_late)
    response = await call(respx_proxy())
    assert response.status_code == 502
    assert route.call_count == 1


def test_an_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="api_key must not be empty"):
        create_proxy(upstream="http://h", api_key="")
    with pytest.raises(ValueError, match="commit_paths must be a list"):
        create_proxy(upstream="http://h", commit_paths="/api/chat")
