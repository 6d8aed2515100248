"""Measure whether a chain of servers streams: read the socket, timestamp every read.

No block-buffering reader sits in between (``requests``' ``iter_lines`` lags a line;
geventhttpclient waits for 1024 bytes), so what is measured is what the last hop wrote and when.
For N events sent every T ms, the verdict rests on three figures: the fraction of arrival gaps
below T/4 (coalesced), the span ratio (last minus first arrival over (N-1)*T), and the longest
burst of events that arrived together.

HTTP/1.1 is read with h11; with ``http2=True`` the probe offers HTTP/2 (ALPN ``h2`` over TLS,
prior knowledge on plain http://) and reads it with h2's state machine, timestamping reads the
same way. Each stream records the protocol its response actually came in.
"""

from __future__ import annotations

import itertools
import ssl
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11
from anyio.streams.tls import TLSAttribute

from ._sse_parser import ParsedEvent, SSEParser

if TYPE_CHECKING:
    import h2.connection

Verdict = Literal["streaming", "buffered", "inconclusive"]
EXIT_STATUS: dict[Verdict, int] = {"streaming": 0, "buffered": 1, "inconclusive": 2}

# Thresholds of the verdict. Measured through real proxies: streaming gives a coalesced fraction
# of at most 0.03 and a span ratio of at least 1.0; a buffering nginx gives 1.0 and 0.0.
STREAMING_MAX_COALESCED = 0.1
STREAMING_MIN_SPAN = 0.8
BUFFERED_MIN_COALESCED = 0.5
BUFFERED_MAX_SPAN = 0.3
MIN_EVENTS = 3
HTTP2_MISSING = "HTTP/2 needs the h2 package: pip install 'sse-bridge[http2]'"
# Headers HTTP/2 forbids (RFC 9113, 8.2.2); host travels as :authority.
_NOT_IN_HTTP2 = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"transfer-encoding",
        b"te",
    }
)


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
    # The HTTP version the response came in: "HTTP/1.1" (or "HTTP/1.0") or "HTTP/2".
    protocol: str | None = None
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
    http2: bool = False,
    insecure: bool = False,
    cacert: str | None = None,
) -> Stream:
    """Send one request and record when each part of the response arrived.

    Events are SSE events for ``text/event-stream`` and non-blank lines otherwise (NDJSON).
    With ``http2``, HTTP/2 is offered (ALPN over TLS; prior knowledge, h2c, on http://) and
    used if the server takes it; ``Stream.protocol`` says which one was. ``insecure`` skips the
    certificate check; ``cacert`` names a PEM file of certificates to trust.
    Network errors and timeouts are recorded in ``error``, never raised.
    """
    host, port, tls, request = _prepare(url, method, body, headers)
    if http2:
        _require_h2()
    context = tls_context(http2=http2, insecure=insecure, cacert=cacert) if tls else None
    stream = Stream()
    started = time.monotonic()
    try:
        with anyio.fail_after(deadline):
            connection = await _connect(host, port, context, tls_hostname=host)
            async with connection:
                alpn = connection.extra(TLSAttribute.alpn_protocol, None)
                if http2 and (context is None or alpn == "h2"):
                    await _exchange_h2(
                        connection, request, tls, body, stream, started, stop_after_events
                    )
                else:
                    await _exchange(connection, request, body, stream, started, stop_after_events)
    except TimeoutError:
        stream.error = f"timed out after {deadline:g} s"
    except ssl.SSLCertVerificationError as exc:
        stream.error = (
            f"{type(exc).__name__}: {exc} "
            "(trust its issuer with cacert, or skip the check with insecure)"
        )
    except (OSError, anyio.BrokenResourceError, h11.ProtocolError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    return stream


def tls_context(
    *, http2: bool = False, insecure: bool = False, cacert: str | None = None
) -> ssl.SSLContext:
    """The client TLS context of a probe: ALPN offers h2 first with ``http2``, else http/1.1.

    OSError (or ssl.SSLError) when ``cacert`` cannot be read as PEM certificates.
    """
    context = ssl.create_default_context(cafile=cacert)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context


def _require_h2() -> None:
    try:
        import h2.connection  # noqa: F401
    except ImportError:
        raise ImportError(HTTP2_MISSING) from None


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


async def _connect(
    host: str, port: int, context: ssl.SSLContext | None, *, tls_hostname: str
) -> anyio.abc.ByteStream:
    if context is not None:
        return await anyio.connect_tcp(
            host, port, tls=True, ssl_context=context, tls_hostname=tls_hostname
        )
    return await anyio.connect_tcp(host, port)


class _Body:
    """Turns a response's bytes into events as they arrive, timestamped with their read.

    Events are SSE events for ``text/event-stream`` and non-blank lines otherwise (NDJSON).
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.sse = False
        self.tail = b""

    def head(self, status: int, headers: dict[str, str], protocol: str, now: float) -> None:
        stream = self.stream
        stream.status = status
        stream.headers = headers
        stream.protocol = protocol
        stream.time_to_headers = now
        self.sse = headers.get("content-type", "").startswith("text/event-stream")

    def data(self, chunk: bytes, now: float) -> None:
        stream = self.stream
        stream.body += chunk
        if self.sse:
            new = stream.parser.feed(chunk)
        else:
            lines = (self.tail + chunk).split(b"\n")
            self.tail = lines.pop()
            new = [ParsedEvent(line.decode("utf-8", "replace")) for line in lines if line.strip()]
        stream.events += new
        stream.event_times += [now] * len(new)

    def end(self, now: float) -> None:
        if not self.sse and self.tail.strip():
            # A last NDJSON line without its newline is still a line.
            self.stream.events.append(ParsedEvent(self.tail.decode("utf-8", "replace")))
            self.stream.event_times.append(now)
        self.stream.complete = True


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
    receiver = _Body(stream)
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
                headers = {k.decode(): v.decode() for k, v in event.headers}
                protocol = f"HTTP/{event.http_version.decode()}"
                receiver.head(event.status_code, headers, protocol, now)
            elif isinstance(event, h11.Data):
                receiver.data(bytes(event.data), now)
            elif isinstance(event, h11.EndOfMessage):
                receiver.end(now)
                return
        if not data:
            return
        if stop_after_events is not None and len(stream.events) >= stop_after_events:
            return


async def _exchange_h2(
    connection: anyio.abc.ByteStream,
    request: h11.Request,
    tls: bool,
    body: bytes,
    stream: Stream,
    started: float,
    stop_after_events: int | None,
) -> None:
    """The same exchange in HTTP/2: one stream on its own connection, read as it arrives."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    client = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, _h2_headers(request, tls, body), end_stream=not body)
    pending = _send_h2_body(client, stream_id, body)
    await connection.send(client.data_to_send())
    receiver = _Body(stream)
    head = b""  # the first bytes received: an HTTP/1 answer starts with b"HTTP/"
    spoke = False  # whether the server has sent a frame
    no_h2c = "it does not take HTTP/2 without TLS (prior knowledge): use https://, or HTTP/1.1"
    while True:
        try:
            data = await connection.receive(65536)
        except anyio.EndOfStream:
            if not spoke:
                stream.error = (
                    f"the server closed the connection without a word of HTTP/2; {no_h2c}"
                )
            elif stream.time_to_headers is None:
                stream.error = "the connection closed before the response"
            else:
                stream.error = "the connection closed mid-response (the HTTP/2 stream did not end)"
            return
        now = time.monotonic() - started
        head = (head + data)[:5]
        if not spoke and head.startswith(b"HTTP/"):
            # h2 would wait for the rest of a "frame" that long (b"HTT" is 4.7 MB).
            stream.error = f"the server answered in HTTP/1; {no_h2c}"
            return
        try:
            events = client.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            stream.error = f"HTTP/2 protocol error: {exc}"
            return
        spoke = spoke or bool(events)
        ours = False
        for event in events:
            # Frames of other streams are not ours; those of the connection (0) may be.
            if getattr(event, "stream_id", 0) not in (0, stream_id):
                continue
            if isinstance(event, h2.events.ResponseReceived):
                ours = True
                fields = {bytes(k).decode(): bytes(v).decode() for k, v in event.headers or ()}
                status = int(fields.pop(":status", "0"))
                receiver.head(status, fields, "HTTP/2", now)
            elif isinstance(event, h2.events.DataReceived):
                ours = True
                receiver.data(event.data or b"", now)
                # Hand the window back as data is consumed, or a long stream stalls at 64 KiB.
                client.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ours = True
                receiver.end(now)
            elif isinstance(event, h2.events.StreamReset):
                code = _h2_error(event.error_code)
                stream.error = f"the server reset the HTTP/2 stream ({code})"
            elif isinstance(event, h2.events.ConnectionTerminated) and not stream.complete:
                code = _h2_error(event.error_code)
                stream.error = f"the server closed the HTTP/2 connection (GOAWAY, {code})"
            elif isinstance(event, h2.events.WindowUpdated) and pending:
                pending = _send_h2_body(client, stream_id, pending)
        if ours:
            stream.reads.append(now)
        outgoing = client.data_to_send()
        if outgoing:
            await connection.send(outgoing)
        if stream.complete or stream.error:
            return
        if stop_after_events is not None and len(stream.events) >= stop_after_events:
            return


def _h2_headers(request: h11.Request, tls: bool, body: bytes) -> list[tuple[bytes, bytes]]:
    fields = dict(request.headers)
    pseudo = [
        (b":method", request.method),
        (b":scheme", b"https" if tls else b"http"),
        (b":authority", fields[b"host"]),
        (b":path", request.target),
    ]
    rest = [
        (name, value)
        for name, value in request.headers
        if name not in _NOT_IN_HTTP2 and not (name == b"content-length" and not body)
    ]
    return pseudo + rest


def _h2_error(code: int | None) -> str:
    import h2.errors

    try:
        return f"error code {code}, {h2.errors.ErrorCodes(code or 0).name}"
    except ValueError:  # a code HTTP/2 does not define
        return f"error code {code}"


def _send_h2_body(client: h2.connection.H2Connection, stream_id: int, body: bytes) -> bytes:
    """Send what flow control allows of ``body``, ending the stream with its last byte."""
    while body:
        size = min(
            len(body), client.local_flow_control_window(stream_id), client.max_outbound_frame_size
        )
        if size <= 0:
            break
        client.send_data(stream_id, body[:size], end_stream=size == len(body))
        body = body[size:]
    return body


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
        reason = "some events arrived together; run again, or give the upstream's pace as interval"
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
    http2: bool = False,
    insecure: bool = False,
    cacert: str | None = None,
) -> ProbeResult:
    """Open ``streams`` concurrent requests, read them as they arrive, and judge them.

    Args:
        url: an http:// or https:// URL.
        method, body, headers: the request; ``Accept: text/event-stream`` is added unless an
            Accept header is given.
        streams: how many requests to run at once.
        interval: the upstream's pace in seconds between events, if known.
        deadline: seconds each stream may take.
        http2: offer HTTP/2 (each stream on its own connection); ImportError without h2.
        insecure: skip the check of the server's TLS certificate.
        cacert: a PEM file of certificates to trust; ValueError if it cannot be read.
    """
    _prepare(url, method, body, headers)  # A bad URL or header fails here, once.
    if http2:
        _require_h2()
    if cacert is not None:
        try:
            tls_context(cacert=cacert)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot read certificates from {cacert!r}: {exc}") from None
    if streams < 1:
        raise ValueError("streams must be at least 1")
    if interval is not None and interval <= 0:
        raise ValueError("interval must be a positive number of seconds")
    if not any(name.lower() == "accept" for name, _ in headers):
        headers = [*headers, ("accept", "text/event-stream")]
    results: list[Stream] = [Stream() for _ in range(streams)]

    async def one(index: int) -> None:
        results[index] = await read_stream(
            url,
            method=method,
            body=body,
            headers=headers,
            deadline=deadline,
            http2=http2,
            insecure=insecure,
            cacert=cacert,
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
    return ProbeResult(url, results, analysis, http2=http2)


def format_report(result: ProbeResult) -> str:
    """The human-readable report ``sse-bridge probe`` prints."""
    s = result.summary()

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    protocol = s["protocol"] or "-"
    if result.http2 and "HTTP/2" not in protocol:
        protocol += " (HTTP/2 was offered; the server did not take it)"
    lines = [
        f"probe {s['url']}: {s['streams']} stream(s), status {', '.join(map(str, s['status']))}",
        f"  protocol             {protocol}",
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
