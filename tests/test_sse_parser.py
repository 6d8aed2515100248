from __future__ import annotations

import pytest

from sse_bridge._core.sse_parser import ParsedEvent, SSEParser, parse_sse


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"data: a\n\n", [ParsedEvent("a")], id="lf"),
        pytest.param(b"data: a\r\n\r\n", [ParsedEvent("a")], id="crlf"),
        pytest.param(b"data: a\r\rdata: b\r\r", [ParsedEvent("a"), ParsedEvent("b")], id="cr"),
        pytest.param(b"\xef\xbb\xbfdata: a\n\n", [ParsedEvent("a")], id="bom"),
        pytest.param(
            b"data:a\ndata:  b\ndata\n\n", [ParsedEvent("a\n b\n")], id="spaces-and-no-colon"
        ),
        pytest.param(b"event: e\nid: 7\ndata: x\n\n", [ParsedEvent("x", "e", "7")], id="fields"),
        pytest.param(b"id: 1\0\ndata: x\n\n", [ParsedEvent("x")], id="id-with-nul-ignored"),
        pytest.param(
            b": ping\n\nid: 3\n\ndata: x\n\n", [ParsedEvent("x", id="3")], id="no-data-no-event"
        ),
        pytest.param(b"retry: x1\ndata: x\n\n", [ParsedEvent("x")], id="bad-retry-ignored"),
        pytest.param(b"retry: 10\ndata: x\n\n", [ParsedEvent("x", retry=10)], id="retry"),
        pytest.param(b"data: x\n", [], id="unterminated-dropped"),
        pytest.param(b"foo: bar\ndata: x\n\n", [ParsedEvent("x")], id="unknown-field"),
        pytest.param(b"data: \x80\x80\x80\x80\n\n", [ParsedEvent("\ufffd" * 4)], id="bad-utf8"),
    ],
)
def test_whole_bodies(body: bytes, expected: list[ParsedEvent]) -> None:
    assert parse_sse(body) == expected


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_any_feed_size_gives_the_same_events(size: int) -> None:
    body = "\ufeffdata: é€😀\r\n\r\n: c\rdata: a\r\rdata: z\n\n".encode()
    parser = SSEParser()
    events = []
    for i in range(0, len(body), size):
        events += parser.feed(body[i : i + size])
    assert events == parse_sse(body) == [ParsedEvent("é€😀"), ParsedEvent("a"), ParsedEvent("z")]
    assert parser.comments == ["c"]
