"""An incremental Server-Sent Events parser that follows the WHATWG rules to the letter.

It is what a browser's EventSource does with the bytes, so tests, the probe and the load tests can
see a stream exactly as a browser would: a leading BOM is skipped, CR, LF and CRLF all end a line,
one space after the colon is dropped, comments are ignored, and a block with no data dispatches
nothing (but its id still sets the last event id).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParsedEvent:
    """An event as a browser dispatches it."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


@dataclass
class SSEParser:
    """Feed bytes with :meth:`feed`; each call returns the events completed by them."""

    last_event_id: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _buffer: str = ""
    _pending_cr: bool = False
    _started: bool = False
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _tail: bytes = b""

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        raw = self._tail + chunk
        # Hold back an incomplete UTF-8 sequence at the end for the next chunk.
        cut = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            byte = raw[-back]
            if byte & 0xC0 == 0x80:
                continue
            if byte >= 0xC0 and back < (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4):
                cut = len(raw) - back
            break
        self._tail = raw[cut:]
        text = raw[:cut].decode("utf-8", errors="replace")
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        events: list[ParsedEvent] = []
        for char in text:
            if self._pending_cr:
                self._pending_cr = False
                if char == "\n":
                    continue
            if char in "\r\n":
                self._pending_cr = char == "\r"
                line, self._buffer = self._buffer, ""
                event = self._line(line)
                if event is not None:
                    events.append(event)
            else:
                self._buffer += char
        return events

    def _line(self, line: str) -> ParsedEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ParsedEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ParsedEvent(
            data="\n".join(data),
            event=event or "message",
            id=self.last_event_id,
            retry=self.retry,
        )


def parse_sse(body: bytes) -> list[ParsedEvent]:
    """Every event a browser would dispatch from a whole body (not an unterminated last one)."""
    return SSEParser().feed(body)
