"""Measure whether a chain of servers streams: read the socket, timestamp every read.

:func:`probe` opens concurrent requests, reads each as it arrives (``wire.py``) and
judges the arrival times (``analysis.py``). HTTP/1.1 is read with h11; with ``http2=True`` the
probe offers HTTP/2 (ALPN ``h2`` over TLS, prior knowledge on plain http://) and reads it with
h2's state machine, timestamping reads the same way.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11
from anyio.streams.tls import TLSAttribute

from sse_bridge._probe.analysis import Analysis, ProbeResult, analyse
from sse_bridge._probe.wire import Stream, exchange_h1, exchange_h2

HTTP2_MISSING = "HTTP/2 needs the h2 package: pip install 'sse-bridge[http2]'"
# After a certificate the probe could not verify; the command line adds its flags.
UNTRUSTED = "(trust its issuer with cacert, or skip the check with insecure)"


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
    # A failure to connect names where: the same message from every stream says nothing else.
    where = f"cannot connect to {host}:{port}: "
    try:
        with anyio.fail_after(deadline):
            connection = await _connect(host, port, context, tls_hostname=host)
            where = ""
            try:
                alpn = connection.extra(TLSAttribute.alpn_protocol, None)
                if http2 and (context is None or alpn == "h2"):
                    await exchange_h2(
                        connection, request, tls, body, stream, started, stop_after_events
                    )
                else:
                    await exchange_h1(connection, request, body, stream, started, stop_after_events)
            finally:
                await _close(connection)
    except TimeoutError:
        stream.error = f"timed out after {deadline:g} s"
    except ssl.SSLCertVerificationError as exc:
        stream.error = f"{type(exc).__name__}: {exc} {UNTRUSTED}"
    except (OSError, anyio.BrokenResourceError, h11.ProtocolError) as exc:
        stream.error = f"{where}{type(exc).__name__}: {exc}"
    return stream


async def _close(connection: anyio.abc.ByteStream) -> None:
    """Close the connection; what the exchange found is recorded by now, and stands.

    A TLS server may close its socket without answering the probe's close_notify (nginx does):
    anyio's unwrap then raises BrokenResourceError, which says nothing about the response.
    """
    with contextlib.suppress(OSError, anyio.BrokenResourceError):
        await connection.aclose()


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
