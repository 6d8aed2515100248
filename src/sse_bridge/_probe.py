"""Measure whether a chain of servers streams: read the socket, timestamp every read.

No block-buffering reader sits in between (``requests``' ``iter_lines`` lags a line;
geventhttpclient waits for 1024 bytes), so what is measured is what the last hop wrote and when.
For N events sent every T ms, the verdict rests on three figures: the fraction of arrival gaps
below T/4 (coalesced), the span ratio (last minus first arrival over (N-1)*T), and the longest
burst of events that arrived together.
"""

from __future__ import annotations

import itertools
import ssl
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

from ._sse_parser import ParsedEvent, SSEParser

Verdict = Literal["streaming", "buffered", "inconclusive"]
EXIT_STATUS: dict[Verdict, int] = {"streaming": 0, "buffered": 1, "inconclusive": 2}

# Thresholds of the verdict. Measured through real proxies: streaming gives a coalesced fraction
# of at most 0.03 and a span ratio of at least 1.0; a buffering nginx gives 1.0 and 0.0.
STREAMING_MAX_COALESCED = 0.1
STREAMING_MIN_SPAN = 0.8
BUFFERED_MIN_COALESCED = 0.5
BUFFERED_MAX_SPAN = 0.3
MIN_EVENTS = 3


@dataclass
class Stream:
    """One response as it arrived. Times are seconds since the request was sent."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reads: list[float] = field(default_factory=list)
    events: list[ParsedEvent] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)
    time_to_headers: float | None = None
    complete: bool = False
    error: str | None = None
    parser: SSEParser = field(default_factory=SSEParser)

    @property
    def time_to_first_event(self) -> float | None:
        return self.event_times[0] if self.event_times else None


async def read_stream(
    url: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    deadline: float = 60.0,
    stop_after_events: int | None = None,
) -> Stream:
    """Send one request and record when each part of the response arrived.

    Events are SSE events for ``text/event-stream`` and non-blank lines otherwise (NDJSON).
    Network errors and timeouts are recorded in ``error``, never raised.
    """
    host, port, tls, request = _prepare(url, method, body, headers)
    stream = Stream()
    started = time.monotonic()
    try:
        with anyio.fail_after(deadline):
            connection = await _connect(host, port, tls)
            async with connection:
                await _exchange(connection, request, body, stream, started, stop_after_events)
    except TimeoutError:
        stream.error = f"timed out after {deadline:g} s"
    except (OSError, anyio.BrokenResourceError, h11.ProtocolError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    return stream


def _prepare(
    url: str, method: str, body: bytes, headers: Sequence[tuple[str, str]]
) -> tuple[str, int, bool, h11.Request]:
    """Where to connect and what to send; ValueError for a URL or header that cannot be."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"probe needs an http:// or https:// URL, not {url!r}")
    tls = parts.scheme == "https"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]
    all_headers = [("host", host), ("content-length", str(len(body))), *headers]
    try:
        request = h11.Request(method=method, target=target, headers=all_headers)
    except h11.LocalProtocolError as exc:
        raise ValueError(f"not a valid request: {exc}") from None
    return parts.hostname, parts.port or (443 if tls else 80), tls, request


async def _connect(host: str, port: int, tls: bool) -> anyio.abc.ByteStream:
    if tls:
        return await anyio.connect_tcp(
            host, port, tls=True, ssl_context=ssl.create_default_context(), tls_hostname=host
        )
    return await anyio.connect_tcp(host, port)


async def _exchange(
    connection: anyio.abc.ByteStream,
    request: h11.Request,
    body: bytes,
    stream: Stream,
    started: float,
    stop_after_events: int | None,
) -> None:
    client = h11.Connection(h11.CLIENT)
    data = client.send(request) or b""
    if body:
        data += client.send(h11.Data(data=body)) or b""
    await connection.send(data + (client.send(h11.EndOfMessage()) or b""))
    sse = False
    tail = b""
    while True:
        try:
            data = await connection.receive(65536)
        except anyio.EndOfStream:
            data = b""
        now = time.monotonic() - started
        if data:
            stream.reads.append(now)
        client.receive_data(data)
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                stream.error = f"the connection closed mid-response ({exc})"
                return
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Response):
                stream.status = event.status_code
                stream.headers = {k.decode(): v.decode() for k, v in event.headers}
                stream.time_to_headers = now
                sse = stream.headers.get("content-type", "").startswith("text/event-stream")
            elif isinstance(event, h11.Data):
                chunk = bytes(event.data)
                stream.body += chunk
                if sse:
                    new = stream.parser.feed(chunk)
                else:
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()
                    new = [
                        ParsedEvent(line.decode("utf-8", "replace"))
                        for line in lines
                        if line.strip()
                    ]
                stream.events += new
                stream.event_times += [now] * len(new)
            elif isinstance(event, h11.EndOfMessage):
                if not sse and tail.strip():
                    # A last NDJSON line without its newline is still a line.
                    stream.events.append(ParsedEvent(tail.decode("utf-8", "replace")))
                    stream.event_times.append(now)
                stream.complete = True
                return
        if not data:
            return
        if stop_after_events is not None and len(stream.events) >= stop_after_events:
            return


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
        reason = "some events arrived together; run again, or give the pace with --interval-ms"
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

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.analysis.verdict]

    def summary(self) -> dict[str, Any]:
        """The figures, ready for JSON (times in milliseconds, medians over streams)."""
        a = self.analysis
        return {
            "url": self.url,
            "streams": len(self.streams),
            "status": sorted({s.status for s in self.streams}),
            "time_to_headers_ms": _median_ms([s.time_to_headers for s in self.streams]),
            "time_to_first_event_ms": _median_ms([s.time_to_first_event for s in self.streams]),
            "events": a.events,
            "reads": sum(len(s.reads) for s in self.streams),
            "interval_ms": round(a.interval * 1000, 3),
            "coalesced": round(a.coalesced, 4),
            "span_ratio": round(a.span_ratio, 4),
            "longest_burst": a.longest_burst,
            "verdict": a.verdict,
            "reason": a.reason,
            "errors": [s.error for s in self.streams if s.error],
        }


def _median_ms(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known) * 1000, 1) if known else None


async def probe(
    url: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    streams: int = 1,
    interval: float | None = None,
    deadline: float = 60.0,
) -> ProbeResult:
    """Open ``streams`` concurrent requests, read them as they arrive, and judge them.

    Args:
        url: an http:// or https:// URL.
        method, body, headers: the request; ``Accept: text/event-stream`` is added unless an
            Accept header is given.
        streams: how many requests to run at once.
        interval: the upstream's pace in seconds between events, if known.
        deadline: seconds each stream may take.
    """
    _prepare(url, method, body, headers)  # A bad URL or header fails here, once.
    if streams < 1:
        raise ValueError("streams must be at least 1")
    if interval is not None and interval <= 0:
        raise ValueError("interval must be a positive number of seconds")
    if not any(name.lower() == "accept" for name, _ in headers):
        headers = [*headers, ("accept", "text/event-stream")]
    results: list[Stream] = [Stream() for _ in range(streams)]

    async def one(index: int) -> None:
        results[index] = await read_stream(
            url, method=method, body=body, headers=headers, deadline=deadline
        )

    async with anyio.create_task_group() as tasks:
        for index in range(streams):
            tasks.start_soon(one, index)
    if any(s.error or s.status != 200 for s in results):
        problem = next(
            s.error or f"status {s.status}" for s in results if s.error or s.status != 200
        )
        analysis = Analysis(0, interval or 0.0, 0.0, 0.0, 0, "inconclusive", problem)
    else:
        analysis = analyse([s.event_times for s in results], interval)
    return ProbeResult(url, results, analysis)


def format_report(result: ProbeResult) -> str:
    """The human-readable report ``sse-bridge probe`` prints."""
    s = result.summary()

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    lines = [
        f"probe {s['url']}: {s['streams']} stream(s), status {', '.join(map(str, s['status']))}",
        f"  time to headers      {ms(s['time_to_headers_ms'])}",
        f"  time to first event  {ms(s['time_to_first_event_ms'])}",
        f"  events / reads       {s['events']} / {s['reads']}",
        f"  pace (interval)      {s['interval_ms']:.1f} ms",
        f"  coalesced            {s['coalesced']:.3f}  (gaps below a quarter of the pace)",
        f"  span ratio           {s['span_ratio']:.3f}",
        f"  longest burst        {s['longest_burst']} event(s)",
        *[f"  error                {error}" for error in s["errors"]],
        f"verdict: {s['verdict']} ({s['reason']})",
    ]
    return "\n".join(lines)
