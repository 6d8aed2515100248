"""The probe's timeline: one tick per event at its arrival, one row per stream, as SVG or HTML.

x is the time since the request was sent, on one scale for every stream. A streaming chain
draws an even comb; a buffering one draws its ticks in one block at the end. Each row marks the
time to first event (dashed) and the time to headers (dotted), and says its stream's verdict;
the probe's verdict heads the picture. The files are self-contained: no script, no stylesheet,
font or image from elsewhere.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

from sse_bridge._probe.analysis import ProbeResult, Verdict, analyse, format_report
from sse_bridge._probe.wire import Stream

TimelineFormat = Literal["svg", "html"]
SVG_NS = "http://www.w3.org/2000/svg"

WIDTH = 880
LEFT = 24
RIGHT = 24
PLOT = WIDTH - LEFT - RIGHT
HEADER = 78  # title, verdict and figures
ROW = 90  # a stream's label, its band of ticks, the first-event label and an error
BAND_TOP = 24  # from the top of a row
BAND = 30
AXIS = 52
COLOURS: dict[Verdict, str] = {
    "streaming": "#15803d",
    "buffered": "#b91c1c",
    "inconclusive": "#a16207",
}
STYLE = """
  .bg { fill: #fff; }
  text { font: 13px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #1f2937; }
  .title { font-size: 15px; font-weight: 600; }
  .verdict, .stream-verdict { font-weight: 600; }
  .figures, .label, .axis-label, .ttfe-label, .caption { fill: #4b5563; }
  .axis-label, .ttfe-label, .caption { font-size: 11px; }
  .band { fill: #f3f4f6; }
  .tick { stroke: #1d4ed8; stroke-width: 1.5; stroke-opacity: 0.8; }
  .burst { fill: #b91c1c; fill-opacity: 0.25; }
  .burst-label { fill: #b91c1c; font-size: 11px; font-weight: 600; }
  .ttfe { stroke: #d97706; stroke-width: 2; stroke-dasharray: 4 3; }
  .headers { stroke: #6b7280; stroke-width: 1.5; stroke-dasharray: 1 2; }
  .axis, .grid { stroke: #9ca3af; stroke-width: 1; }
  .grid { stroke-opacity: 0.35; }
  .error { fill: #b91c1c; }
"""


def timeline_format(path: str | Path) -> TimelineFormat:
    """What ``path``'s extension asks for; ValueError for anything but .svg and .html."""
    suffix = Path(path).suffix.lower()
    if suffix == ".svg":
        return "svg"
    if suffix in (".html", ".htm"):
        return "html"
    named = f"a {suffix} file" if suffix else "a file without an extension"
    raise ValueError(f"the timeline is written as .svg or .html, not {named} ({path})")


def write_timeline(result: ProbeResult, path: str | Path) -> None:
    """Write the timeline of ``result`` to ``path``, as its extension says (.svg or .html)."""
    text = render_timeline(result, timeline_format(path))
    Path(path).write_text(text, encoding="utf-8")


def render_timeline(result: ProbeResult, fmt: TimelineFormat) -> str:
    """The timeline as a standalone SVG document or a self-contained HTML page."""
    if fmt == "svg":
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + _svg(result)
    title = escape(f"sse-bridge probe {result.url}")
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n"
        "<style>\n"
        "  body { margin: 0; padding: 1.5rem; font-family: system-ui, sans-serif;"
        " background: #fff; color: #1f2937; }\n"
        "  main { max-width: 880px; margin: 0 auto; }\n"
        "  svg { display: block; width: 100%; height: auto; }\n"
        "  pre { background: #f3f4f6; padding: 0.75rem; overflow-x: auto; }\n"
        "</style>\n</head>\n<body>\n<main>\n"
        "<h1>Probe timeline</h1>\n"
        f"{_svg(result)}\n"
        f'<pre id="report">{escape(format_report(result))}</pre>\n'
        "</main>\n</body>\n</html>\n"
    )


def stream_verdict(result: ProbeResult, stream: Stream) -> tuple[Verdict, str]:
    """One stream judged alone, at the pace the probe used for all of them."""
    if stream.error or stream.status != 200:
        return "inconclusive", stream.error or f"status {stream.status}"
    analysis = analyse([stream.event_times], result.analysis.interval or None)
    return analysis.verdict, analysis.reason


def _svg(result: ProbeResult) -> str:
    streams = result.streams
    span, step = _scale(
        max(
            [t * 1000 for s in streams for t in s.event_times]
            + [s.time_to_headers * 1000 for s in streams if s.time_to_headers is not None]
            + [1.0]
        )
    )
    height = HEADER + ROW * len(streams) + AXIS
    summary = result.summary()
    analysis = result.analysis
    figures = (
        f"{summary['protocol'] or 'no response'} · {len(streams)} stream(s) · "
        f"{analysis.events} events · pace {analysis.interval * 1000:.1f} ms · "
        f"coalesced {analysis.coalesced:.3f} · span ratio {analysis.span_ratio:.3f} · "
        f"longest burst {analysis.longest_burst}"
    )
    parts = [
        f'<svg xmlns="{SVG_NS}" class="probe-timeline" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" data-span-ms="{span:g}" data-x0="{LEFT}" '
        f'data-plot-width="{PLOT}" role="img" aria-label={quoteattr(figures)}>',
        f"<style>{STYLE}</style>",
        f'<rect class="bg" width="{WIDTH}" height="{height}"/>',
        _text("title", LEFT, 22, f"sse-bridge probe {result.url}"),
        _text(
            "verdict",
            LEFT,
            44,
            f"verdict: {analysis.verdict} ({analysis.reason})",
            fill=COLOURS[analysis.verdict],
            data_verdict=analysis.verdict,
        ),
        _text("figures", LEFT, 64, figures),
    ]
    for index, stream in enumerate(streams):
        parts.append(_row(result, index, stream, HEADER + ROW * index, span))
    parts.append(_axis(HEADER + ROW * len(streams), span, step))
    parts.append("</svg>")
    return "\n".join(parts)


def _row(result: ProbeResult, index: int, stream: Stream, top: float, span: float) -> str:
    verdict, reason = stream_verdict(result, stream)
    band_top, band_bottom = top + BAND_TOP, top + BAND_TOP + BAND
    middle = band_top + BAND / 2
    ttfe = stream.time_to_first_event
    label = [f"stream {index + 1}", stream.protocol or "no response"]
    if stream.status:
        label.append(f"status {stream.status}")
    label.append(f"{_count(len(stream.events), 'event')} in {_count(len(stream.reads), 'read')}")
    if ttfe is not None:
        label.append(f"first event {_ms(ttfe * 1000)}")
    parts = [
        f'<g class="stream" data-stream="{index + 1}" data-events="{len(stream.events)}" '
        f'data-verdict="{verdict}">',
        _text("label", LEFT, top + 16, " · ".join(label)),
        _text(
            "stream-verdict",
            WIDTH - RIGHT,
            top + 16,
            verdict,
            fill=COLOURS[verdict],
            anchor="end",
            title=reason,
        ),
        f'<rect class="band" x="{LEFT}" y="{band_top}" width="{PLOT}" height="{BAND}"/>',
    ]
    if stream.time_to_headers is not None:
        at = stream.time_to_headers * 1000
        x = _x(at, span)
        parts.append(
            # The upper half of the band and above it; the first event's mark has the lower
            # half and below, so the two stay visible when the first event came with the headers.
            f'<line class="headers" x1="{x}" x2="{x}" y1="{band_top - 6}" y2="{middle}" '
            f'data-t-ms="{at:.3f}"><title>headers at {_ms(at)}</title></line>'
        )
    # Events that came in one read share an x: a box and a count show how many.
    labelled = -math.inf
    for arrived, group in itertools.groupby(stream.event_times):
        count = len(list(group))
        if count < 2:
            continue
        x = _x(arrived * 1000, span)
        parts.append(
            f'<rect class="burst" x="{x - 3:.2f}" y="{band_top}" width="6" height="{BAND}" '
            f'data-events="{count}"><title>{count} events in one read</title></rect>'
        )
        if x - labelled > 64:
            parts.append(_beside("burst-label", x, band_top + 12, f"{count} at once", 0.85))
            labelled = x
    for number, arrived in enumerate(stream.event_times, 1):
        at = arrived * 1000
        x = _x(at, span)
        parts.append(
            f'<line class="tick" x1="{x}" x2="{x}" y1="{band_top + 3}" y2="{band_bottom - 3}" '
            f'data-t-ms="{at:.3f}"><title>event {number} at {_ms(at)}</title></line>'
        )
    if ttfe is not None:
        at = ttfe * 1000
        x = _x(at, span)
        parts.append(
            f'<line class="ttfe" x1="{x}" x2="{x}" y1="{middle}" y2="{band_bottom + 6}" '
            f'data-t-ms="{at:.3f}"/>'
        )
        parts.append(_beside("ttfe-label", x, band_bottom + 15, f"first event {_ms(at)}", 0.7))
    if stream.error:
        # Below the first event's label, when there is one, rather than over it.
        y = band_bottom + (29 if ttfe is not None else 15)
        parts.append(_text("error", LEFT, y, f"error: {stream.error}"))
    parts.append("</g>")
    return "\n".join(parts)


def _axis(top: float, span: float, step: float) -> str:
    y = top + 6
    parts = [
        '<g class="time-axis">',
        f'<line class="axis" x1="{LEFT}" x2="{LEFT + PLOT}" y1="{y}" y2="{y}"/>',
    ]
    steps = round(span / step)
    for index in range(steps + 1):
        at = step * index
        x = _x(at, span)
        parts.append(
            f'<line class="grid" x1="{x}" x2="{x}" y1="{HEADER + BAND_TOP - 8}" y2="{y + 4}"/>'
        )
        anchor = "start" if index == 0 else "end" if index == steps else "middle"
        parts.append(_text("axis-label", x, y + 16, _ms(at) if at else "0", anchor=anchor))
    caption = (
        "time since the request was sent · one tick per event as it arrived · "
        "dashed: first event · dotted: headers · N at once: N events in one read"
    )
    parts.append(_text("caption", LEFT + PLOT / 2, y + 34, caption, anchor="middle"))
    parts.append("</g>")
    return "\n".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _x(at_ms: float, span_ms: float) -> float:
    return round(LEFT + at_ms / span_ms * PLOT, 2)


def _beside(cls: str, x: float, y: float, content: str, room: float) -> str:
    """A label next to a mark at ``x``: on its right up to ``room`` of the plot's width, on its
    left past it, so that it stays inside the picture."""
    right = x < LEFT + PLOT * room
    return _text(cls, x + 5 if right else x - 5, y, content, anchor="start" if right else "end")


def _text(
    cls: str,
    x: float,
    y: float,
    content: str,
    *,
    fill: str | None = None,
    anchor: str = "start",
    title: str | None = None,
    data_verdict: str | None = None,
) -> str:
    attributes = [f'class="{cls}"', f'x="{x:g}"', f'y="{y:g}"']
    if anchor != "start":
        attributes.append(f'text-anchor="{anchor}"')
    if fill:
        attributes.append(f'style="fill: {fill}"')
    if data_verdict:
        attributes.append(f'data-verdict="{data_verdict}"')
    inner = escape(content) + (f"<title>{escape(title)}</title>" if title else "")
    return f"<text {' '.join(attributes)}>{inner}</text>"


def _scale(value: float) -> tuple[float, float]:
    """The axis for times up to ``value`` ms: its span and its step, a 1, 2 or 5 times a power
    of ten, with at most 8 steps."""
    power = 10 ** math.floor(math.log10(value / 8))
    step = next(m * power for m in (1, 2, 5, 10) if value / (m * power) <= 8 * (1 + 1e-9))
    return max(1, math.ceil(value / step - 1e-9)) * step, step


def _ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.3g} s"
    if value >= 10 or value == int(value):
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"
