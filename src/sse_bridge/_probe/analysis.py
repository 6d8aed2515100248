"""The probe's verdict: judge event arrival times, and report the figures.

For N events sent every T ms, the verdict rests on three figures: the fraction of arrival gaps
below T/4 (coalesced), the span ratio (last minus first arrival over (N-1)*T), and the longest
burst of events that arrived together. Pure: times in, figures out.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sse_bridge._probe.wire import Stream

Verdict = Literal["streaming", "buffered", "inconclusive"]
EXIT_STATUS: dict[Verdict, int] = {"streaming": 0, "buffered": 1, "inconclusive": 2}

# Thresholds of the verdict. Measured through real proxies: streaming gives a coalesced fraction
# of at most 0.03 and a span ratio of at least 1.0; a buffering nginx gives 1.0 and 0.0.
STREAMING_MAX_COALESCED = 0.1
STREAMING_MIN_SPAN = 0.8
BUFFERED_MIN_COALESCED = 0.5
BUFFERED_MAX_SPAN = 0.3
MIN_EVENTS = 3
# The inconclusive reason that a known pace would settle; the command line adds its flag.
PACE_UNKNOWN = "some events arrived together; run again, or give the upstream's pace as interval"


@dataclass(frozen=True)
class Analysis:
    """The verdict on one or more streams of events expected every ``interval`` seconds."""

    events: int
    interval: float
    coalesced: float
    span_ratio: float
    longest_burst: int
    verdict: Verdict
    reason: str


def analyse(streams: Sequence[Sequence[float]], interval: float | None = None) -> Analysis:
    """Judge event arrival times, one list per stream.

    Gaps are pooled over all streams; the span ratio is the median over streams. Without an
    ``interval`` (the upstream's pace), the mean gap of each stream stands in for it: the
    coalesced fraction then measures how evenly events arrived, and a stream that arrived in a
    single read counts as wholly coalesced.
    """
    counts = [len(times) for times in streams]
    if not streams or min(counts) < MIN_EVENTS:
        reason = f"fewer than {MIN_EVENTS} events in a stream"
        return Analysis(sum(counts), interval or 0.0, 0.0, 0.0, 0, "inconclusive", reason)
    if interval is None:
        interval = statistics.median((t[-1] - t[0]) / (len(t) - 1) for t in streams)
    # A gap of exactly 0 means two events came in one read: coalesced whatever the pace.
    gaps = [b - a for times in streams for a, b in itertools.pairwise(times)]
    coalesced = sum(gap == 0 or gap < interval / 4 for gap in gaps) / len(gaps)
    span = (
        statistics.median((t[-1] - t[0]) / ((len(t) - 1) * interval) for t in streams)
        if interval > 0
        else 0.0
    )
    burst = max(_longest_burst(times, interval / 4) for times in streams)
    if coalesced <= STREAMING_MAX_COALESCED and span >= STREAMING_MIN_SPAN:
        verdict: Verdict = "streaming"
        reason = "events arrived one by one, spread over the generation"
    elif coalesced >= BUFFERED_MIN_COALESCED or span <= BUFFERED_MAX_SPAN:
        verdict = "buffered"
        reason = "events arrived together: something on the way holds them back"
    else:
        verdict = "inconclusive"
        reason = PACE_UNKNOWN
    return Analysis(sum(counts), interval, coalesced, span, burst, verdict, reason)


def _longest_burst(times: Sequence[float], within: float) -> int:
    longest = run = 1
    for a, b in itertools.pairwise(times):
        run = run + 1 if b - a == 0 or b - a < within else 1
        longest = max(longest, run)
    return longest


@dataclass
class ProbeResult:
    """Every stream of one probe and the verdict on them."""

    url: str
    streams: list[Stream]
    analysis: Analysis
    http2: bool = False  # whether HTTP/2 was offered

    @property
    def protocol(self) -> str | None:
        """The protocol the responses came in ("HTTP/1.1", "HTTP/2"); None before any response.

        Streams in different protocols (a server that chose per connection) are listed, joined.
        """
        known = sorted({s.protocol for s in self.streams if s.protocol})
        return ", ".join(known) or None

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.analysis.verdict]

    def summary(self) -> dict[str, Any]:
        """The figures, ready for JSON (times in milliseconds, medians over streams)."""
        a = self.analysis
        return {
            "url": self.url,
            "protocol": self.protocol,
            "http2_offered": self.http2,
            "streams": len(self.streams),
            "status": sorted({s.status for s in self.streams}),
            "time_to_headers_ms": _median_ms([s.time_to_headers for s in self.streams]),
            # An error status's body is not events: its lines say nothing about streaming.
            "time_to_first_event_ms": _median_ms(
                [s.time_to_first_event for s in self.streams if s.status == 200]
            ),
            "events": a.events,
            "reads": sum(len(s.reads) for s in self.streams),
            "interval_ms": round(a.interval * 1000, 3),
            "coalesced": round(a.coalesced, 4),
            "span_ratio": round(a.span_ratio, 4),
            "longest_burst": a.longest_burst,
            "verdict": a.verdict,
            "reason": a.reason,
            "errors": [s.error for s in self.streams if s.error],
            "error_body": next(
                (_shown(s.body) for s in self.streams if s.status and s.status != 200), None
            ),
        }


def _shown(body: bytes, limit: int = 300) -> str:
    """The start of an error response's body, as text on one line."""
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[:limit] + "..."


def _median_ms(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known) * 1000, 1) if known else None


def _times(count: int, streams: int) -> str:
    """How many streams had one error, when more than one did."""
    if count == 1:
        return ""
    return f" (all {count} streams)" if count == streams else f" ({count} of {streams} streams)"


def format_report(result: ProbeResult) -> str:
    """The human-readable report ``sse-bridge probe`` prints."""
    s = result.summary()

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    protocol = s["protocol"] or "-"
    if result.http2 and "HTTP/2" not in protocol:
        protocol += " (HTTP/2 was offered; the server did not take it)"
    statuses = [str(status) for status in s["status"] if status]
    if 0 in s["status"]:
        statuses.append("no response")
    errors = [(error, s["errors"].count(error)) for error in dict.fromkeys(s["errors"])]
    lines = [
        f"probe {s['url']}: {s['streams']} stream(s), "
        + ("status " if statuses[0] != "no response" else "")
        + ", ".join(statuses),
        f"  protocol             {protocol}",
        f"  time to headers      {ms(s['time_to_headers_ms'])}",
        f"  time to first event  {ms(s['time_to_first_event_ms'])}",
        f"  events / reads       {s['events']} / {s['reads']}",
        f"  pace (interval)      {s['interval_ms']:.1f} ms",
        f"  coalesced            {s['coalesced']:.3f}  (gaps below a quarter of the pace)",
        f"  span ratio           {s['span_ratio']:.3f}",
        f"  longest burst        {s['longest_burst']} event(s)",
        *[
            f"  error                {error}{_times(count, s['streams'])}"
            for error, count in errors
        ],
        *([f"  body                 {s['error_body']}"] if s["error_body"] else []),
        f"verdict: {s['verdict']} ({s['reason']})",
    ]
    return "\n".join(lines)
