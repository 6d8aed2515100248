from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_bridge import LineDecoder, LineTooLongError, ServerSentEvent
from sse_bridge._core.codec import encode_comment, encode_retry
from sse_bridge._core.sse_parser import parse_sse


def decode_all(chunks: list[bytes], max_line_bytes: int = 1 << 20) -> list[str]:
    decoder = LineDecoder(max_line_bytes)
    lines: list[str] = []
    for chunk in chunks:
        lines += decoder.decode(chunk)
    return lines + decoder.flush()


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b'{"a":1}\n{"b":2}\n'], ['{"a":1}', '{"b":2}'], id="two-lines-one-chunk"),
        pytest.param([b'{"a"', b":1}\n"], ['{"a":1}'], id="split-mid-line"),
        pytest.param([b'{"a":1}\r', b'\n{"b":2}\r\n'], ['{"a":1}', '{"b":2}'], id="split-mid-crlf"),
        pytest.param([b'{"a":1}'], ['{"a":1}'], id="no-final-newline"),
        pytest.param([b'{"a":1}\n', b"", b'{"b":2}'], ['{"a":1}', '{"b":2}'], id="empty-chunk"),
        pytest.param([b"\n\n  \n\t\r\n", b'{"a":1}\n\n'], ['{"a":1}'], id="blank-lines-skipped"),
        pytest.param(
            ['{"t":"é€😀"}\n'.encode()[:7], '{"t":"é€😀"}\n'.encode()[7:]],
            ['{"t":"é€😀"}'],
            id="split-mid-utf8",
        ),
        pytest.param(
            [b'{"t":"a', "\u2028".encode()[:2], "\u2028".encode()[2:] + b'b\xc2\x85c"}\n'],
            ['{"t":"a\u2028b\u0085c"}'],
            id="u2028-and-nel-inside-string",
        ),
        pytest.param(
            [rb'{"t":"\u003cthink\u003e"}' + b"\n"],
            [r'{"t":"\u003cthink\u003e"}'],
            id="go-escapes-untouched",
        ),
        pytest.param([b'{"t":"\xff\xfe"}\n'], ['{"t":"\ufffd\ufffd"}'], id="invalid-utf8-replaced"),
        pytest.param([b"a\rb\n"], ["a\rb"], id="lone-cr-kept-inside-line"),
        pytest.param([b"x", b"y", b"z"], ["xyz"], id="byte-by-byte-without-newline"),
    ],
)
def test_line_framing(chunks: list[bytes], expected: list[str]) -> None:
    assert decode_all(chunks) == expected


def test_flush_resets_the_decoder() -> None:
    decoder = LineDecoder()
    assert decoder.decode(b"partial") == []
    assert decoder.flush() == ["partial"]
    assert decoder.flush() == []


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b"x" * 11], id="unfinished-line-in-one-chunk"),
        pytest.param([b"x" * 6, b"x" * 5], id="unfinished-line-across-chunks"),
        pytest.param([b"x" * 11 + b"\n"], id="complete-line"),
        pytest.param([b"x" * 5, b"x" * 6 + b"\nok\n"], id="completed-across-chunks"),
    ],
)
def test_line_longer_than_limit_raises(chunks: list[bytes]) -> None:
    decoder = LineDecoder(max_line_bytes=10)
    for chunk in chunks[:-1]:
        decoder.decode(chunk)
    with pytest.raises(LineTooLongError, match="longer than 10 bytes") as info:
        decoder.decode(chunks[-1])
    assert info.value.limit == 10


def test_lines_before_an_overlong_line_are_kept() -> None:
    decoder = LineDecoder(max_line_bytes=10)
    with pytest.raises(LineTooLongError) as info:
        decoder.decode(b"one\ntwo\n" + b"x" * 20)
    assert info.value.lines == ["one", "two"]


def test_limit_counts_the_line_without_its_terminator() -> None:
    # Exactly the limit, with its CR waiting for the LF in the next chunk, is fine.
    assert decode_all([b"x" * 10 + b"\r", b"\n"], max_line_bytes=10) == ["x" * 10]
    assert decode_all([b"x" * 10 + b"\r\n"], max_line_bytes=10) == ["x" * 10]


def test_held_bytes_stay_bounded() -> None:
    decoder = LineDecoder(max_line_bytes=100)
    for _ in range(1000):
        decoder.decode(b"y" * 50 + b"\n" + b"z" * 30)
        assert len(decoder._buffer) <= 100


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_limit_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_line_bytes must be an integer >= 1"):
        LineDecoder(bad)


ndjson_bytes = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=30).map(
            str.encode
        ),
        st.sampled_from([b"\r", b"\r\n", b"\n", b"  ", "\u2028".encode(), b"\xff", b"\xe2\x82"]),
    ),
    max_size=30,
).map(b"".join)


# These properties test correctness, not speed: hypothesis's default deadline (200 ms per example)
# fails them on a busy machine or under coverage tracing.
@settings(deadline=None)
@given(data=ndjson_bytes, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_any_chunking_gives_the_same_lines(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(data)) for cut in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert decode_all(chunks) == decode_all([data])


@settings(deadline=None)
@given(data=ndjson_bytes, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_any_chunking_gives_the_same_verdict_on_long_lines(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(data)) for cut in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

    def outcome(parts: list[bytes]) -> tuple[bool, list[str]]:
        decoder = LineDecoder(max_line_bytes=12)
        lines: list[str] = []
        try:
            for part in parts:
                lines += decoder.decode(part)
            lines += decoder.flush()
        except LineTooLongError as exc:
            return True, lines + exc.lines
        return False, lines

    assert outcome(chunks) == outcome([data])


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        pytest.param(ServerSentEvent('{"a":1}'), b'data: {"a":1}\n\n', id="data-only"),
        pytest.param(ServerSentEvent("a\nb"), b"data: a\ndata: b\n\n", id="lf"),
        pytest.param(ServerSentEvent("a\r\nb"), b"data: a\ndata: b\n\n", id="crlf"),
        pytest.param(ServerSentEvent("a\rb"), b"data: a\ndata: b\n\n", id="lone-cr"),
        pytest.param(ServerSentEvent("a\n"), b"data: a\ndata: \n\n", id="trailing-newline"),
        pytest.param(ServerSentEvent(" lead"), b"data:  lead\n\n", id="leading-space-kept"),
        pytest.param(ServerSentEvent(""), b"data: \n\n", id="empty"),
        pytest.param(
            ServerSentEvent("x\u2028y"), "data: x\u2028y\n\n".encode(), id="u2028-not-a-break"
        ),
        pytest.param(
            ServerSentEvent("x", event="token", id="7", retry=1500),
            b"id: 7\nevent: token\nretry: 1500\ndata: x\n\n",
            id="all-fields",
        ),
    ],
)
def test_encoder(event: ServerSentEvent, wire: bytes) -> None:
    assert event.encode() == wire


@pytest.mark.parametrize(
    "data", ["plain", "a\nb", "a\r\nb\rc", "\n", "x\u2028\u0085y", " two  spaces ", "é€😀"]
)
def test_encoded_data_round_trips_through_a_conforming_parser(data: str) -> None:
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    (parsed,) = parse_sse(ServerSentEvent(data).encode())
    assert parsed.data == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event": "a\nb"}, "event name cannot contain CR or LF"),
        ({"event": "a\rb"}, "event name cannot contain CR or LF"),
        ({"id": "1\n"}, "id cannot contain CR, LF or NUL"),
        ({"id": "1\r"}, "id cannot contain CR, LF or NUL"),
        ({"id": "1\0"}, "id cannot contain CR, LF or NUL"),
        ({"retry": -1}, "retry must be an integer >= 0"),
        ({"retry": 1.5}, "retry must be an integer >= 0"),
        ({"retry": True}, "retry must be an integer >= 0"),
    ],
)
def test_encoder_refuses_fields_that_break_framing(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerSentEvent("x", **kwargs)  # type: ignore[arg-type]


def test_comment_and_retry_blocks() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert encode_retry(3000) == b"retry: 3000\n\n"
    assert parse_sse(encode_comment("ping") + encode_retry(5)) == []
