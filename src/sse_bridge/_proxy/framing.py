"""The request's framing, checked before anything goes upstream; pure: headers in, a refusal out.

The ASGI server in front has already read the body by its own rules, and those rules differ:
h11 reads a request with both ``Content-Length`` and ``Transfer-Encoding: chunked`` as chunked,
httptools refuses it. The proxy never copies the client's framing headers: it frames the
upstream request from the body it actually read (``_core/headers.py``'s ``request_framing``).
It also refuses any request whose framing is ambiguous, so that no two readers of it could ever
disagree about where it ends (RFC 9112 6.1 and 6.3; the classic request-smuggling vectors).
"""

from __future__ import annotations

from collections.abc import Iterable


def framing_error(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request's framing headers are refused (a 400), or None when they are sound.

    Refused: ``Content-Length`` and ``Transfer-Encoding`` together; more than one of either;
    a ``Content-Length`` that is not only ASCII digits (``+5``, ``5, 5``, ``5 5``); a
    ``Transfer-Encoding`` other than exactly ``chunked`` (a list, ``xchunked``, ``Chunked``:
    transfer-coding names are case-insensitive in RFC 9112 7, but no client this bridge serves
    sends another spelling, and refusing it leaves an attacker nothing to play with).
    """
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value)
        elif lowered == b"transfer-encoding":
            codings.append(value)
    if lengths and codings:
        return "a request must not carry both Content-Length and Transfer-Encoding"
    if len(lengths) > 1:
        return "a request must carry one Content-Length at most"
    if lengths and not lengths[0].isdigit():
        return "Content-Length must be a number of bytes (digits only)"
    if len(codings) > 1:
        return "a request must carry one Transfer-Encoding at most"
    if codings and codings[0] != b"chunked":
        return "Transfer-Encoding must be exactly 'chunked'"
    return None
