"""Pure, I/O-free framing: NDJSON lines in, Server-Sent Events out.

Deliberate choices, each guarding a bug seen in the wild:

- Lines are split on the byte ``b"\\n"`` only. ``str.splitlines()`` and httpx's ``aiter_lines()``
  also split on U+2028, U+0085 and other characters that JSON allows raw inside strings
  (httpx-sse issue 34). ``\\n`` never occurs inside a multi-byte UTF-8 sequence, so splitting the
  bytes first and decoding each complete line is safe at any chunk boundary.
- Invalid UTF-8 becomes U+FFFD rather than an exception: one bad byte must not end a stream.
- The encoder follows the WHATWG "event stream interpretation": CR, LF and CRLF all end a line, so
  data is split on each of them into several ``data:`` fields, and names and ids that would break
  the framing are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sse_bridge._core.validate import check_count

DEFAULT_MAX_LINE_BYTES = 1 << 20

# JSON whitespace plus the other ASCII whitespace bytes.strip() removes: a line made only of these
# carries no value and is skipped.
_BLANK = b" \t\r\n\x0b\x0c"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# JSON may escape half a surrogate pair ("\ud83d"), which json.loads keeps and UTF-8 cannot
# encode. Written back as the same escape it stays valid JSON, and no stream fails on it.
_LONE_SURROGATES = "backslashreplace"


class LineTooLongError(Exception):
    """A line grew past the configured limit before its newline arrived.

    ``lines`` holds the complete lines that preceded it in the same input, which the caller
    should still deliver.
    """

    def __init__(self, limit: int, lines: list[str]) -> None:
        super().__init__(
            f"upstream sent a line longer than {limit} bytes; "
            "raise max_line_bytes if such lines are expected"
        )
        self.limit = limit
        self.lines = lines


class LineDecoder:
    """Incremental NDJSON line framing: ``decode(chunk)`` and ``flush()`` return complete lines.

    Lines are decoded as UTF-8 (bad bytes become U+FFFD), a trailing ``\\r`` is dropped, and blank
    lines are skipped. At most ``max_line_bytes`` of an unfinished line are held; a longer line
    raises :class:`LineTooLongError`, after which the decoder must not be used again.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        check_count("max_line_bytes", max_line_bytes, 1, "the longest line, e.g. 1048576")
        self._max = max_line_bytes
        # A bytearray, so that a long line arriving in small chunks is not copied quadratically.
        self._buffer = bytearray()

    def decode(self, chunk: bytes) -> list[str]:
        if not chunk:
            return []
        if not self._buffer and chunk[-1] == 0x0A and len(chunk) <= self._max:
            # The common case, once per upstream read: whole lines only, none of them over the
            # limit. Same result as the general path below; most often a single line.
            if chunk.find(b"\n") == len(chunk) - 1:
                raw = chunk[:-1].rstrip(b"\r")
                return [raw.decode("utf-8", "replace")] if raw.strip(_BLANK) else []
            return [
                raw.rstrip(b"\r").decode("utf-8", errors="replace")
                for raw in chunk.split(b"\n")
                if raw.strip(_BLANK)
            ]
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            self._buffer += chunk
            self._check(self._buffer, [])
            return []
        parts[0] = bytes(self._buffer) + parts[0]
        self._buffer = bytearray(parts.pop())
        lines: list[str] = []
        for raw in parts:
            self._check(raw, lines)
            self._append(lines, raw)
        self._check(self._buffer, lines)
        return lines

    def flush(self) -> list[str]:
        """Return the last line if the stream ended without a final newline."""
        raw, self._buffer = bytes(self._buffer), bytearray()
        lines: list[str] = []
        self._append(lines, raw)
        return lines

    def _check(self, raw: bytes | bytearray, lines: list[str]) -> None:
        # The limit counts a line without its terminator, so that the verdict is the same
        # whether "\r\n" arrives in one chunk or two.
        if len(raw) > self._max and len(raw.rstrip(b"\r")) > self._max:
            raise LineTooLongError(self._max, lines)

    @staticmethod
    def _append(lines: list[str], raw: bytes) -> None:
        if raw.strip(_BLANK):
            lines.append(raw.rstrip(b"\r").decode("utf-8", errors="replace"))


@dataclass(frozen=True)
class ServerSentEvent:
    """One event. By default only ``data`` is written, the form every client parses.

    Args:
        data: the payload; CR, LF and CRLF inside it become separate ``data:`` lines, which a
            conforming client joins back with ``\\n``.
        event: the event type; must not contain CR or LF.
        id: the event id; must not contain CR, LF or NUL.
        retry: the reconnection time in milliseconds, a non-negative integer.
    """

    data: str = ""
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def __post_init__(self) -> None:
        if self.event is not None and ("\r" in self.event or "\n" in self.event):
            raise ValueError(f"an SSE event name cannot contain CR or LF: {self.event!r}")
        if self.id is not None and any(c in self.id for c in "\r\n\0"):
            raise ValueError(f"an SSE id cannot contain CR, LF or NUL: {self.id!r}")
        if self.retry is not None:
            encode_retry(self.retry)

    def encode(self) -> bytes:
        """The event's wire form, ending with the blank line that dispatches it."""
        if self.id is None and self.event is None and self.retry is None:
            return encode_data(self.data)
        out = []
        if self.id is not None:
            out.append(f"id: {self.id}\n")
        if self.event is not None:
            out.append(f"event: {self.event}\n")
        if self.retry is not None:
            out.append(f"retry: {self.retry}\n")
        out.extend(f"data: {line}\n" for line in _LINE_BREAK.split(self.data))
        out.append("\n")
        return "".join(out).encode("utf-8", _LONE_SURROGATES)


def encode_data(data: str) -> bytes:
    """An event with only a data field: ``ServerSentEvent(data=data).encode()``, faster."""
    if "\n" not in data and "\r" not in data:
        # The common case, once per token: skip the general path's split.
        return b"data: " + data.encode("utf-8", _LONE_SURROGATES) + b"\n\n"
    lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return (lines + "\n").encode("utf-8", _LONE_SURROGATES)


def encode_json_data(payload: bytes) -> bytes:
    """An event whose data is ``payload``: UTF-8 JSON, which holds no raw CR or LF."""
    return b"data: " + payload + b"\n\n"


def encode_comment(text: str = "") -> bytes:
    """A comment block (``: text``), which every client ignores; used for keepalives."""
    return ("".join(f": {line}\n" for line in _LINE_BREAK.split(text)) + "\n").encode("utf-8")


def encode_retry(milliseconds: int) -> bytes:
    """A block that only sets an EventSource's reconnection time (``retry: N``)."""
    # The spec ignores a retry field that is not all ASCII digits.
    check_count("retry", milliseconds, 0, "the reconnection time in milliseconds")
    return f"retry: {milliseconds}\n\n".encode("ascii")
