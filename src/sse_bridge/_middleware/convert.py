"""Conversion: one stream's body messages become encoded events, numbered when ids are asked for.

A :class:`Converter` holds the line decoder and the dialect's translator of one stream. It does
no I/O: the responder hands it each body message and writes what comes back.
"""

from __future__ import annotations

import logging

from sse_bridge._core.codec import LineDecoder, LineTooLongError
from sse_bridge._core.context import Outcome, StreamContext
from sse_bridge._dialects.translator import Translator
from sse_bridge._resume.http import with_stream_id

logger = logging.getLogger("sse_bridge")


class Converter:
    """One stream's lines to events: the decoder, the translator and the event ids."""

    __slots__ = ("decoder", "next_id", "stats", "translator")

    def __init__(self, translator: Translator, max_line_bytes: int, stats: StreamContext) -> None:
        self.decoder = LineDecoder(max_line_bytes)
        self.translator = translator
        self.stats = stats
        self.next_id = 0

    def events(self, chunk: bytes, more: bool) -> tuple[list[bytes], bool]:
        """Every event of the lines this body message completes, and whether more may follow."""
        translator = self.translator
        stats = self.stats
        try:
            lines = self.decoder.decode(chunk)
            if not more:
                lines += self.decoder.flush()
        except LineTooLongError as exc:
            events = self.translate(exc.lines)
            if not translator.finished:
                stats.settle(Outcome.UPSTREAM_ERROR)
                events += translator.fail(str(exc))
        else:
            events = self.translate(lines) if lines else []
            if not more and not translator.finished:
                events += translator.end()
                if translator.finished:
                    stats.settle(Outcome.UPSTREAM_TRUNCATED)
        if translator.finished:
            stats.settle(Outcome.UPSTREAM_ERROR)
            more = False
        elif not more and translator.completed:
            stats.settle(Outcome.COMPLETED)
        return events, more

    def rest(self) -> list[bytes]:
        """The events of a last line the app left without its newline."""
        return self.translate(self.decoder.flush())

    def translate(self, lines: list[str]) -> list[bytes]:
        translator = self.translator
        translate_line = translator.translate
        events: list[bytes] = []
        for line in lines:
            try:
                events += translate_line(line)
            except Exception as exc:
                # Valid JSON of an unexpected shape (say "tool_calls": 5) must not end the
                # stream: report that line and go on.
                logger.exception("sse_bridge: %s failed on a line", type(translator).__name__)
                reason = f"the bridge could not translate this line ({type(exc).__name__})"
                events += translator.bad_line(line, reason)
            if translator.finished:
                break
        return events

    def with_stream_ids(self, events: list[bytes], stream_id: str) -> list[bytes]:
        # The same numbers the recording gives these events, so that Last-Event-ID resumes.
        prefix = b"id: %s:" % stream_id.encode()
        numbered = []
        for event in events:
            self.next_id += 1
            numbered.append(with_stream_id(prefix, self.next_id, event))
        return numbered

    def with_ids(self, events: list[bytes]) -> list[bytes]:
        return [self.with_id(event) for event in events]

    def with_id(self, event: bytes) -> bytes:
        # An event the dialect gave an id of its own keeps it; the encoder writes the id first.
        if event.startswith(b"id:"):
            return event
        self.next_id += 1
        return b"id: %d\n%b" % (self.next_id, event)
