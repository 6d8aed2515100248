"""`sse-bridge probe --plot`: the timeline files, parsed as what they are."""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from sse_bridge._cli.main import main
from sse_bridge._core.sse_parser import ParsedEvent
from sse_bridge._probe.analysis import EXIT_STATUS
from sse_bridge._probe.timeline import (
    HEADER,
    ROW,
    render_timeline,
    timeline_format,
    write_timeline,
)
from sse_bridge.probe import ProbeResult, Stream, analyse
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._servers import serve

SVG = "{http://www.w3.org/2000/svg}"
PACE = 0.05


def stream_of(times: list[float], *, status: int = 200, error: str | None = None) -> Stream:
    stream = Stream(status=status, error=error, protocol="HTTP/1.1" if status else None)
    stream.time_to_headers = 0.004 if status else None
    stream.events = [ParsedEvent(str(i)) for i in range(len(times))]
    stream.event_times = list(times)
    stream.reads = sorted(set(times))
    return stream


def result_of(*streams: Stream, interval: float | None = PACE) -> ProbeResult:
    analysis = analyse([s.event_times for s in streams], interval)
    return ProbeResult("http://127.0.0.1:8080/api/chat", list(streams), analysis)


PACED = [0.1 + i * PACE for i in range(20)]
BUFFERED = [1.1] * 20


def classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def rows(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if "stream" in classes(g)]


def lines(row: ET.Element, cls: str) -> list[ET.Element]:
    return [line for line in row.iter(f"{SVG}line") if cls in classes(line)]


def texts(element: ET.Element, cls: str) -> list[str]:
    found = [t for t in element.iter(f"{SVG}text") if cls in classes(t)]
    return ["".join(t.itertext()) for t in found]


def x_of(svg: ET.Element, at_ms: float) -> float:
    """Where the picture says `at_ms` lies on its time axis."""
    x0, width, span = (float(svg.attrib[k]) for k in ("data-x0", "data-plot-width", "data-span-ms"))
    return x0 + at_ms / span * width


def check_row(svg: ET.Element, row: ET.Element, stream: Stream) -> list[float]:
    """One tick per event at its arrival time, the first event marked; the ticks' x."""
    ticks = lines(row, "tick")
    assert len(ticks) == len(stream.events)
    xs = [float(tick.attrib["x1"]) for tick in ticks]
    for tick, arrived in zip(ticks, stream.event_times, strict=True):
        assert float(tick.attrib["data-t-ms"]) == pytest.approx(arrived * 1000, abs=0.001)
        assert float(tick.attrib["x1"]) == pytest.approx(x_of(svg, arrived * 1000), abs=0.01)
        assert tick.attrib["x1"] == tick.attrib["x2"]
    assert xs == sorted(xs)
    assert all(float(svg.attrib["data-x0"]) <= x for x in xs)
    assert all(x <= float(svg.attrib["width"]) for x in xs)
    (marker,) = lines(row, "ttfe")
    ttfe = stream.time_to_first_event
    assert ttfe is not None
    assert float(marker.attrib["data-t-ms"]) == pytest.approx(ttfe * 1000, abs=0.001)
    assert float(marker.attrib["x1"]) == pytest.approx(xs[0])
    (label,) = texts(row, "ttfe-label")
    assert label.startswith("first event ")
    return xs


def test_svg_draws_a_comb_for_streaming_and_a_block_for_buffered() -> None:
    paced, buffered = stream_of(PACED), stream_of(BUFFERED)
    result = result_of(paced, buffered)
    svg = ET.fromstring(render_timeline(result, "svg"))
    assert svg.tag == f"{SVG}svg"
    # The probe's verdict heads the picture; each row says its own stream's.
    assert result.analysis.verdict == "buffered"  # half the gaps, pooled, are coalesced
    (headline,) = [t for t in svg.iter(f"{SVG}text") if "verdict" in classes(t)]
    assert headline.attrib["data-verdict"] == "buffered"
    assert "".join(headline.itertext()) == f"verdict: buffered ({result.analysis.reason})"
    first, second = rows(svg)
    assert (first.attrib["data-verdict"], second.attrib["data-verdict"]) == (
        "streaming",
        "buffered",
    )
    assert texts(first, "stream-verdict")[0].startswith("streaming")
    assert texts(second, "stream-verdict")[0].startswith("buffered")
    comb = check_row(svg, first, paced)
    assert texts(first, "ttfe-label") == ["first event 100 ms"]
    assert texts(second, "ttfe-label") == ["first event 1.1 s"]
    block = check_row(svg, second, buffered)
    # A comb: every tick on its own, evenly apart; a block: every tick in one place.
    gaps = [b - a for a, b in itertools.pairwise(comb)]
    assert min(gaps) == pytest.approx(max(gaps), abs=0.02)
    assert min(gaps) > 5
    assert len(set(block)) == 1
    assert block[0] > comb[-1]
    assert [r for r in first.iter(f"{SVG}rect") if "burst" in classes(r)] == []
    (burst,) = [r for r in second.iter(f"{SVG}rect") if "burst" in classes(r)]
    assert burst.attrib["data-events"] == "20"
    assert texts(second, "burst-label") == ["20 at once"]
    # One scale for both rows; the axis reaches past the last event.
    assert float(svg.attrib["data-span-ms"]) >= 1100
    assert texts(svg, "label")[0].startswith("stream 1 · HTTP/1.1 · status 200 · 20 events")


def test_each_row_is_judged_at_the_probes_pace() -> None:
    # Evenly spaced, but ten to a pace of 50 ms: alone, at its own mean gap, this stream would
    # look like streaming; at the pace the upstream was asked for, its events came together.
    hurried = stream_of([1.0 + i * PACE / 10 for i in range(20)])
    svg = ET.fromstring(render_timeline(result_of(stream_of(PACED), hurried), "svg"))
    first, second = rows(svg)
    assert (first.attrib["data-verdict"], second.attrib["data-verdict"]) == (
        "streaming",
        "buffered",
    )


def test_reads_of_several_events_are_boxed_and_counted() -> None:
    # 8 KiB chunks through a buffering proxy: events in a few reads. Two boxes too close for
    # two labels keep the first label; one tick alone has no box.
    times = [0.2] * 3 + [0.205] * 4 + [0.5] + [0.9] * 6
    result = result_of(stream_of(times))
    svg = ET.fromstring(render_timeline(result, "svg"))
    (row,) = rows(svg)
    boxes = [r for r in row.iter(f"{SVG}rect") if "burst" in classes(r)]
    assert [box.attrib["data-events"] for box in boxes] == ["3", "4", "6"]
    assert texts(row, "burst-label") == ["3 at once", "6 at once"]
    check_row(svg, row, result.streams[0])


def test_a_stream_without_events_has_no_marker_and_shows_its_error() -> None:
    failed = stream_of([], status=0, error="OSError: [Errno 111] Connect call failed")
    result = result_of(failed)
    svg = ET.fromstring(render_timeline(result, "svg"))
    (row,) = rows(svg)
    assert lines(row, "tick") == []
    assert lines(row, "ttfe") == []
    assert lines(row, "headers") == []
    assert texts(row, "error") == ["error: OSError: [Errno 111] Connect call failed"]
    assert row.attrib["data-verdict"] == "inconclusive"
    assert texts(row, "label") == ["stream 1 · no response · 0 events in 0 reads"]


def test_html_is_self_contained_and_holds_the_same_svg(tmp_path: Path) -> None:
    result = result_of(stream_of(PACED), stream_of(PACED))
    path = tmp_path / "timeline.html"
    write_timeline(result, path)
    page = path.read_text()
    assert page.startswith("<!doctype html>")

    class Refs(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.external: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append(tag)
            self.external += [f"{k}={v}" for k, v in attrs if k in ("src", "href")]

    refs = Refs()
    refs.feed(page)
    assert refs.tags.count("svg") == 1
    assert "script" not in refs.tags
    assert "link" not in refs.tags
    assert refs.external == []
    assert "url(" not in page
    assert "@import" not in page
    svg = ET.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])
    for row, stream in zip(rows(svg), result.streams, strict=True):
        check_row(svg, row, stream)
    assert "verdict: streaming (events arrived one by one" in page
    assert '<pre id="report">probe http://127.0.0.1:8080/api/chat: 2 stream(s)' in page


def test_the_file_format_comes_from_the_extension(tmp_path: Path) -> None:
    assert timeline_format("a.svg") == "svg"
    assert timeline_format("a/B.HTML") == "html"
    assert timeline_format("b.htm") == "html"
    with pytest.raises(ValueError, match=r"as \.svg or \.html, not a \.png file"):
        timeline_format("plot.png")
    with pytest.raises(ValueError, match="not a file without an extension"):
        timeline_format("plot")
    result = result_of(stream_of(PACED))
    write_timeline(result, tmp_path / "t.svg")
    text = (tmp_path / "t.svg").read_text()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg ')
    ET.fromstring(text.encode())


def test_probe_plot_writes_what_it_measured(tmp_path: Path) -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=1 / PACE, num_tokens=8))
    data = json.dumps({"model": "llama3.2", "prompt": "x"})
    plot = tmp_path / "probe.svg"
    with serve(fake) as url:
        args = ["probe", f"{url}/api/generate", "-d", data, "--streams", "2", "--json"]
        result = CliRunner().invoke(main, [*args, "--plot", str(plot)])
    summary = json.loads(result.stdout)
    # The verdict depends on how this machine ran the streams; its exit status does not.
    assert result.exit_code == EXIT_STATUS[summary["verdict"]], result.output
    assert f"timeline: {plot}" in result.stderr
    svg = ET.fromstring(plot.read_text().encode())
    found = rows(svg)
    assert len(found) == summary["streams"] == 2
    assert sum(len(lines(row, "tick")) for row in found) == summary["events"] == 18
    for row in found:
        ticks = [float(t.attrib["data-t-ms"]) for t in lines(row, "tick")]
        assert ticks == sorted(ticks)
        (marker,) = lines(row, "ttfe")
        assert float(marker.attrib["data-t-ms"]) == ticks[0]
        assert float(marker.attrib["x1"]) == pytest.approx(x_of(svg, ticks[0]), abs=0.01)
        assert "HTTP/1.1" in texts(row, "label")[0]
    # The first events arrived together: the median time to first event is theirs.
    firsts = sorted(float(lines(row, "ttfe")[0].attrib["data-t-ms"]) for row in found)
    assert summary["time_to_first_event_ms"] == pytest.approx(sum(firsts) / 2, abs=0.1)
    headline = texts(svg, "verdict")[0]
    assert headline == f"verdict: {summary['verdict']} ({summary['reason']})"


def test_probe_plot_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused before any request: a wrong extension, a directory that is not there.
    png = CliRunner().invoke(main, ["probe", "http://127.0.0.1:9/", "--plot", "t.png"])
    assert png.exit_code == 2
    assert "Invalid value for '--plot'" in png.output
    assert "as .svg or .html, not a .png file" in png.output
    nowhere = tmp_path / "missing" / "t.svg"
    missing = CliRunner().invoke(main, ["probe", "http://127.0.0.1:9/", "--plot", str(nowhere)])
    assert missing.exit_code == 2
    assert "no directory to write" in missing.output
    # A stream that failed still gets its row; a file that cannot be written is an error.
    written = tmp_path / "t.html"
    failed = CliRunner().invoke(
        main, ["probe", "http://127.0.0.1:9/", "--plot", str(written), "--timeout", "5"]
    )
    assert failed.exit_code == 2
    page = written.read_text()
    assert re.search(r'class="stream" data-stream="1" data-events="0"', page)
    assert 'class="error"' in page

    def cannot(*args: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr("sse_bridge._probe.timeline.write_timeline", cannot)
    unwritable = CliRunner().invoke(
        main, ["probe", "http://127.0.0.1:9/", "--plot", str(written), "--timeout", "5"]
    )
    assert unwritable.exit_code == 2
    assert "cannot write the timeline: read-only file system" in unwritable.stderr


def y_range(element: ET.Element) -> tuple[float, float]:
    return float(element.attrib["y1"]), float(element.attrib["y2"])


def test_the_headers_and_first_event_marks_stay_apart_when_they_coincide() -> None:
    # The first event came with the headers: both marks at one x, each still visible.
    stream = stream_of([0.004, *PACED])
    svg = ET.fromstring(render_timeline(result_of(stream), "svg"))
    (row,) = rows(svg)
    (headers,) = lines(row, "headers")
    (ttfe,) = lines(row, "ttfe")
    assert headers.attrib["x1"] == ttfe.attrib["x1"]
    top, bottom = sorted([y_range(headers), y_range(ttfe)])
    assert top[1] <= bottom[0], (top, bottom)


def test_counts_are_singular_for_one() -> None:
    stream = stream_of([0.1])
    svg = ET.fromstring(render_timeline(result_of(stream, interval=None), "svg"))
    (row,) = rows(svg)
    (label,) = texts(row, "label")
    assert "1 event in 1 read" in label


def test_an_error_after_events_is_written_below_the_first_event_label() -> None:
    stream = stream_of(PACED, error="the connection closed mid-response (x)")
    svg = ET.fromstring(render_timeline(result_of(stream), "svg"))
    (row,) = rows(svg)
    (first,) = [t for t in row.iter(f"{SVG}text") if "ttfe-label" in classes(t)]
    (error,) = [t for t in row.iter(f"{SVG}text") if "error" in classes(t)]
    assert float(error.attrib["y"]) >= float(first.attrib["y"]) + 12
    # Inside its row, above the axis.
    assert float(error.attrib["y"]) < HEADER + ROW
