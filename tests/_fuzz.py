"""Fuzzing the edges that take a client's input, with hypothesis: no exception escapes, and every
refusal is a clean 4xx.

Each property runs over a strategy built from the forms attackers use (dot segments raw and
percent-encoded, backslashes, framing obfuscations, q-values, ids with colons) mixed with
arbitrary text. ``tests/test_fuzz.py`` runs a short pass of each in CI; ``scripts/fuzz
--examples N`` runs N examples of each and prints the count and the time:

    bash scripts/fuzz --examples 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sse_bridge import create_proxy
from sse_bridge._core.headers import accepts_event_stream, bearer_token
from sse_bridge._proxy.framing import framing_error
from sse_bridge._proxy.target import PathEscapeError, confine
from sse_bridge._resume.store import BadPositionError, parse_position
from sse_bridge._sidecar.logline import logfmt
from sse_bridge._testing.loopback import free_port
from sse_bridge._types import Message

Headers = list[tuple[bytes, bytes]]

# Printable ASCII but space, '?' and '#': what a server passes on as a request path.
PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "?#")
SEGMENTS = st.sampled_from(
    (
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2e.",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "..;",
        ";",
        "",
        "api",
        "chat",
        "streams",
        "x",
        "a%2Fb",
        "v1.0",
        "%00",
        "%252e",
    )
)
PATHS = st.one_of(
    st.lists(st.one_of(SEGMENTS, st.text(PATH_CHARS, max_size=6)), max_size=8).map(
        lambda parts: "/" + "/".join(parts)
    ),
    st.text(PATH_CHARS, max_size=30),
).map(lambda path: path.encode("ascii"))

# Header values as a server passes them on: latin-1, no CR, LF or NUL, no outer whitespace.
VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF)
VALUES = st.one_of(
    st.sampled_from(
        (
            "chunked",
            "Chunked",
            "chunked, identity",
            "xchunked",
            "identity",
            "",
            "0",
            "5",
            "+5",
            "5, 5",
            "-1",
            "99999999999999999999",
            "text/event-stream",
            "text/event-stream;q=0",
            "*/*",
            "TEXT/EVENT-STREAM; q=nan",
            "text/event-stream;q=1e999",
            "Bearer k",
            "bearer k",
            "Bearer",
            "Bearer  k ",
            "Basic k",
            "http://app.example",
            "null",
            "GET",
            "DELETE",
            "x:1",
            "AAAAAAAAAAAAAAAAAAAAAA:3",
            ":",
            "::",
            "7",
            "x:-1",
        )
    ),
    st.text(VALUE_CHARS, max_size=40).map(str.strip),
).map(lambda value: value.encode("latin-1"))
NAMES = st.sampled_from(
    (
        b"content-length",
        b"transfer-encoding",
        b"accept",
        b"last-event-id",
        b"authorization",
        b"origin",
        b"access-control-request-method",
        b"x-user",
        b"content-type",
        b"connection",
        b"Content-Length",
        b"Transfer-Encoding",
        b"x-forwarded-for",
        b"host",
    )
)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=8)
KEY = (b"authorization", b"Bearer k")
TEXT = st.one_of(VALUES.map(lambda value: value.decode("latin-1")), st.text(max_size=40))


def framing(headers: Headers) -> None:
    error = framing_error(headers)
    assert error is None or error


def paths(path: bytes) -> None:
    try:
        confined = confine(path)
    except PathEscapeError:
        return
    assert confined.startswith(b"/")
    # Nothing left to remove, by any reading: the path is its own confinement.
    assert confine(confined) == confined
    dots = {b".", b".."}
    assert not any(
        segment.lower().replace(b"%2e", b".") in dots for segment in confined.split(b"/")
    )


def accept(headers: Headers) -> None:
    assert accepts_event_stream(headers) in (True, False)


def positions(value: str, stream_id: str | None) -> None:
    try:
        named, after = parse_position(value, stream_id)
    except BadPositionError:
        return  # a 400 (BadPositionError.status)
    assert after >= 0
    assert named is None or isinstance(named, str)


def bearer(value: str) -> None:
    token = bearer_token(value)
    assert token is None or (token and token == token.strip())


def logged(value: str) -> None:
    line = logfmt(value)
    assert "\n" not in line
    assert "\r" not in line


class Sidecar:
    """The whole sidecar, in process, in front of an upstream that refuses connections: API
    key, CORS, resume endpoints bound to an owner header, framing and path rules, the proxy."""

    def __init__(self) -> None:
        self.app = create_proxy(
            upstream=f"http://127.0.0.1:{free_port()}/base",
            dialect="ollama",
            api_key="k",
            cors_origins=["http://app.example"],
            resume="memory",
            event_ids=True,
            resume_owner_header="x-user",
            connect_timeout=1.0,
        )
        self.loop = asyncio.new_event_loop()
        self.statuses: dict[int, int] = {}

    def close(self) -> None:
        self.loop.run_until_complete(self.app.proxy.aclose())
        self.loop.close()

    def __call__(
        self, method: str, path: bytes, query: bytes, headers: Headers, body: bytes
    ) -> None:
        messages = self.loop.run_until_complete(self.call(method, path, query, headers, body))
        starts = [m for m in messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, messages
        status = starts[0]["status"]
        self.statuses[status] = self.statuses.get(status, 0) + 1
        assert 200 <= status < 600, status
        # From the bridge itself only refusals; a 5xx says the upstream (refusing here) or the
        # store: never an exception.
        assert status < 500 or status in (502, 503, 504), messages
        body_bytes = b"".join(
            m.get("body", b"") for m in messages if m["type"] == "http.response.body"
        )
        if 400 <= status < 500 and not body_bytes.startswith(b"Disallowed CORS"):
            # Starlette's CORS preflight refusal is text; every refusal of the bridge is JSON.
            assert isinstance(json.loads(body_bytes)["error"], str), body_bytes

    async def call(
        self, method: str, path: bytes, query: bytes, headers: Headers, body: bytes
    ) -> list[Message]:
        messages: list[Message] = []
        done = anyio.Event()
        sent_body = False

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done.set()

        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": _decoded(path),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        with anyio.fail_after(10):
            await self.app(scope, receive, send)
        return messages


def _decoded(path: bytes) -> str:
    from urllib.parse import unquote

    return unquote(path.decode("ascii"), encoding="latin-1")


def properties(sidecar: Sidecar) -> dict[str, Callable[[int], None]]:
    """Each property as a function of the number of examples to run."""

    def run(
        strategy: st.SearchStrategy[tuple[Any, ...]], check: Callable[..., None]
    ) -> Callable[[int], None]:
        def examples(count: int) -> None:
            quiet = settings(
                max_examples=count,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )

            def example(args: tuple[Any, ...]) -> None:
                check(*args)

            property_: Callable[[], None] = quiet(given(strategy)(example))
            property_()

        return examples

    requests = st.tuples(
        st.sampled_from(["GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "FOO"]),
        st.one_of(PATHS, st.sampled_from([b"/streams/" + b"A" * 22, b"/healthz", b"/metrics"])),
        st.sampled_from([b"", b"last_event_id=3", b"a=%00", b"q=../.."]),
        st.tuples(HEADERS, st.sampled_from([[], [KEY], [KEY], [KEY, (b"x-user", b"alice")]])).map(
            lambda pair: pair[1] + pair[0]
        ),
        st.binary(max_size=64),
    )
    return {
        "framing": run(st.tuples(HEADERS), framing),
        "paths": run(st.tuples(PATHS), paths),
        "accept": run(st.tuples(HEADERS), accept),
        "last-event-id": run(st.tuples(TEXT, st.one_of(st.none(), TEXT)), positions),
        "bearer": run(st.tuples(TEXT), bearer),
        "logfmt": run(st.tuples(TEXT), logged),
        "sidecar (auth, CORS, resume, framing, paths)": run(requests, sidecar),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Fuzz the request rules with hypothesis.")
    parser.add_argument("--examples", type=int, default=1000, help="examples per property")
    args = parser.parse_args()
    # The proxy logs each request it cannot forward (the upstream here refuses them all).
    logging.getLogger("sse_bridge").setLevel(logging.ERROR)
    sidecar = Sidecar()
    total = 0
    started = time.monotonic()
    for name, examples in properties(sidecar).items():
        began = time.monotonic()
        examples(args.examples)
        total += args.examples
        print(
            f"{name:<46} {args.examples:>9,} examples {time.monotonic() - began:>8.1f} s",
            flush=True,
        )
    sidecar.close()
    print(f"{'all':<46} {total:>9,} examples {time.monotonic() - started:>8.1f} s, no failure")
    tally = ", ".join(f"{status}: {count}" for status, count in sorted(sidecar.statuses.items()))
    print(f"the sidecar's answers by status: {tally}")


if __name__ == "__main__":
    main()
