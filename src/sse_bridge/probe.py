"""Measure whether a chain of servers streams: what ``sse-bridge probe`` runs (docs/deploy.md).

:func:`probe` opens concurrent requests, reads each off the socket as it arrives and judges the
arrival times; :func:`read_stream` reads one request into a :class:`Stream`; :func:`analyse`
judges arrival times measured elsewhere; :func:`format_report` is the report the command prints.
"""

from __future__ import annotations

from sse_bridge._probe.analysis import Analysis, ProbeResult, analyse, format_report
from sse_bridge._probe.client import probe, read_stream
from sse_bridge._probe.wire import Stream

__all__ = [
    "Analysis",
    "ProbeResult",
    "Stream",
    "analyse",
    "format_report",
    "probe",
    "read_stream",
]
