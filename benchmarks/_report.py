"""From the raw samples of ``_measure.py`` to medians, tables, the summary table and ratios."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from _fleet import BRIDGE_CPU, CLIENT_CPU
from _measure import (
    BEFORE,
    DIRECT,
    FAST_PACE,
    LATENCY_LIMIT_MS,
    MIN_SETTLED_SHARE,
    MW_OLLAMA,
    MW_RAW,
    PACE,
    PLAIN,
    SIDECAR_OLLAMA,
    SIDECAR_OLLAMA_BEFORE,
    SIDECAR_RAW,
    SIDECAR_RAW_BEFORE,
    SSE_STARLETTE,
    TUTORIAL,
    WORKERS2,
    BurstSample,
    MemorySample,
    PacedSample,
    Results,
    Settings,
    StepSample,
    Target,
    ThroughputSample,
    percentile,
)

SUMMARY_COLUMNS = (DIRECT, TUTORIAL, SSE_STARLETTE, SIDECAR_RAW, SIDECAR_OLLAMA)


def _columns(summary: dict[str, Any]) -> tuple[Target, ...]:
    """The summary's columns: the sidecars of an earlier checkout too, when --before ran them."""
    ran = set(summary["throughput"]) | set(summary["paced"])
    return (*SUMMARY_COLUMNS, *(t for t in BEFORE if t.name in ran))


CLIENT_BOUND = 0.85  # a CPU 0 busier than this may be what limits a step
NAN = float("nan")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(
        "| " + " | ".join(cells) + " |" for cells in [headers, ["---"] * len(headers), *rows]
    )


def _load(cpu_seconds: float, wall_seconds: float) -> float:
    """A share of one CPU, or NaN when the wall time is too short for the CPU clock."""
    return cpu_seconds / wall_seconds if wall_seconds >= 0.5 else NAN


def _percent(fraction: float) -> str:
    # NaN: not measured. Small negative values are clock-tick jitter.
    return "-" if fraction != fraction else f"{max(0.0, fraction):.0%}"


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference and reference == reference else NAN


def machine_facts(pinned: bool) -> dict[str, Any]:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    packages = (
        "sse-bridge",
        "uvicorn",
        "uvloop",
        "httptools",
        "httpx",
        "starlette",
        "anyio",
        "sse-starlette",
    )
    versions = {}
    for name in packages:
        with suppress(PackageNotFoundError):
            versions[name] = version(name)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "pinning": (
            f"bridge processes on CPU {BRIDGE_CPU}; upstream and client on CPU {CLIENT_CPU}; "
            "the --workers 2 sidecar unpinned"
            if pinned
            else "none"
        ),
        "versions": versions,
    }


# ---------------------------------------------------------------------------------------------
# Summaries


def _throughput(samples: list[ThroughputSample]) -> dict[str, float]:
    rates = [s.events_per_second for s in samples]
    return {
        "events_per_second": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "events_per_chunk": statistics.median(s.events_per_chunk for s in samples),
        "events_per_read": statistics.median(s.events_per_read for s in samples),
        # Summed over the rounds: one fast round is too short for 10 ms CPU clock ticks.
        "other_load": _load(sum(s.other_seconds for s in samples), sum(s.seconds for s in samples)),
        "bridge_cpu_us_per_event": statistics.median(s.bridge_cpu_us_per_event for s in samples),
    }


def _paced(rounds: list[PacedSample]) -> dict[str, float]:
    gaps = [gap for s in rounds for gap in s.gaps_ms]
    return {
        "delivered": sum(s.delivered for s in rounds),
        "expected": sum(s.expected for s in rounds),
        "bridge_cpu_us_per_event": statistics.median(s.bridge_cpu_us_per_event for s in rounds),
        "upstream_cpu_us_per_event": statistics.median(s.upstream_cpu_us_per_event for s in rounds),
        "bridge_busy": max(s.bridge_busy for s in rounds),
        "other_load_max": max(s.other_load for s in rounds),
        "gap_p50_ms": percentile(gaps, 0.5),
        "gap_p99_ms": percentile(gaps, 0.99),
        "gap_max_ms": max(gaps, default=NAN),
        "coalesced": sum(s.coalesced_gaps for s in rounds) / max(1, len(gaps)),
        "span_p50": percentile([x for s in rounds for x in s.spans], 0.5),
        "span_max": max(x for s in rounds for x in s.spans),
    }


def _memory(sample: MemorySample) -> dict[str, float]:
    return {
        "streams": sample.streams,
        "rss_before_kib": sample.rss_before_kib,
        "rss_after_kib": sample.rss_after_kib,
        "kib_per_stream": sample.kib_per_stream,
    }


def _burst(sample: BurstSample) -> dict[str, Any]:
    return {
        "streams": sample.streams,
        "failed": sample.failed,
        "p50_ms": percentile(sample.first_event_ms, 0.5),
        "p99_ms": percentile(sample.first_event_ms, 0.99),
        "max_ms": max(sample.first_event_ms, default=NAN),
        "error": sample.error,
    }


def _step(sample: StepSample) -> dict[str, Any]:
    row = {k: v for k, v in asdict(sample).items() if k not in ("lateness_ms", "settled_from")}
    # The client and the upstream share CPU 0 (when pinned): if they fill it, the step may say
    # more about them than about the configuration.
    row["cpu0_bound"] = sample.client_busy + sample.upstream_busy > CLIENT_BOUND
    return row


def _capacity(steps: list[StepSample], settings: Settings) -> dict[str, Any]:
    # A step passes when either of its tries (see Bench.capacity) passed.
    passed = {s.streams for s in steps if s.passed}
    failed = {s.streams for s in steps} - passed
    return {
        "held": max(passed, default=0),
        "first_failed": min(failed, default=None),
        # Passed every step that was run: the true capacity is at least "held".
        "censored": not failed,
        "below_first_step": not passed and bool(failed),
        "first_step": settings.capacity_steps[0],
        "steps": [_step(s) for s in steps],
    }


def summarize(results: Results, settings: Settings) -> dict[str, Any]:
    """Medians, percentiles and ratios from the raw samples."""
    summary: dict[str, Any] = {
        "throughput": {k: _throughput(v) for k, v in results.throughput.items()},
        "paced": {k: _paced(v) for k, v in results.paced.items()},
        "memory": {k: _memory(v) for k, v in results.memory.items()},
        "ttfe": {
            k: {"p50_ms": percentile(v, 0.5), "p90_ms": percentile(v, 0.9)}
            for k, v in results.ttfe_ms.items()
        },
        "burst": {k: _burst(v) for k, v in results.burst.items()},
        "latency": {
            k: {
                "added_p50_ms": percentile(v, 0.5),
                "added_p99_ms": percentile(v, 0.99),
                "events": len(v),
                "failed_streams": results.latency_failed.get(k, 0),
            }
            for k, v in results.latency_added_ms.items()
        },
        "capacity": {k: _capacity(v, settings) for k, v in results.capacity.items()},
        "capacity_notes": results.capacity_notes,
        "other_load_whole_run": _load(results.other_seconds, results.seconds),
        "client_cpu_whole_run": _load(results.client_cpu_seconds, results.seconds),
        "seconds": results.seconds,
        "settings": asdict(settings),
    }
    throughput = summary["throughput"]
    if DIRECT.name in throughput:
        for row in throughput.values():
            row["vs_direct"] = _ratio(row["events_per_second"], _eps(summary, DIRECT.name))
            row["vs_tutorial"] = _ratio(row["events_per_second"], _eps(summary, TUTORIAL.name))
    ttfe = summary["ttfe"]
    for row in ttfe.values():
        row["added_p50_ms"] = row["p50_ms"] - ttfe.get(DIRECT.name, {}).get("p50_ms", NAN)
    summary["figures"] = _figures(summary, settings)
    summary["ratios"] = _ratios(summary)
    return summary


def _eps(summary: dict[str, Any], name: str) -> float:
    return float(summary["throughput"].get(name, {}).get("events_per_second", NAN))


def _get(summary: dict[str, Any], section: str, name: str, key: str) -> float:
    value = summary[section].get(name, {}).get(key, NAN)
    return NAN if value is None else float(value)


# The figures of the summary table, as numbers (for ratios) per configuration.
FIGURES = {
    "events/s": ("throughput", "events_per_second"),
    "CPU us/ev fast": ("throughput", "bridge_cpu_us_per_event"),
    "CPU us/ev paced": ("paced", "bridge_cpu_us_per_event"),
    "streams held": ("capacity", "held"),
    "added p99 ms at 10 ms": ("latency", "added_p99_ms"),
    "KiB/idle stream": ("memory", "kib_per_stream"),
    "first event p50 ms": ("ttfe", "p50_ms"),
    "first event p99 ms, burst": ("burst", "p99_ms"),
}


def _figures(summary: dict[str, Any], settings: Settings) -> dict[str, dict[str, str]]:
    """The summary table: figure -> configuration -> cell text."""

    def cell(text: str, *values: float) -> str:
        return "-" if any(v != v for v in values) else text

    def held(name: str) -> str:
        row = summary["capacity"].get(name)
        if row is None:
            return "-"
        if row["below_first_step"]:
            return f"< {row['first_step']}"
        return f">= {row['held']}" if row["censored"] else str(row["held"])

    rows: dict[str, dict[str, str]] = {}
    label = {
        "eps": "one stream, fast upstream, events/s",
        "cpu": f"CPU per event, fast / at {PACE} events/s per stream "
        f"({settings.paced_streams:,} streams)",
        "held": f"streams one process holds at {PACE} events/s "
        f"(all complete, p99 latency <= {LATENCY_LIMIT_MS:.0f} ms)",
        "latency": f"added latency p50 / p99 at {1000 / FAST_PACE:.0f} ms pacing",
        "memory": f"memory per idle open stream ({settings.idle_streams:,} open)",
        "ttfe": f"time to first event p50, and p99 with {settings.burst_streams:,} opening at once",
    }
    for key in label:
        rows[label[key]] = {}
    for target in _columns(summary):
        n = target.name
        eps = _eps(summary, n)
        fast = _get(summary, "throughput", n, "bridge_cpu_us_per_event")
        paced = _get(summary, "paced", n, "bridge_cpu_us_per_event")
        lat50 = _get(summary, "latency", n, "added_p50_ms")
        lat99 = _get(summary, "latency", n, "added_p99_ms")
        kib = _get(summary, "memory", n, "kib_per_stream")
        p50 = _get(summary, "ttfe", n, "p50_ms")
        p99 = _get(summary, "burst", n, "p99_ms")
        rows[label["eps"]][n] = cell(f"{eps:,.0f}", eps)
        rows[label["cpu"]][n] = cell(f"{fast:.1f} / {paced:.0f} us", fast, paced)
        rows[label["held"]][n] = held(n)
        rows[label["latency"]][n] = (
            "0 (reference)"
            if target is DIRECT and n in summary["latency"]
            else cell(f"{lat50:.2f} / {lat99:.2f} ms", lat50, lat99)
        )
        rows[label["memory"]][n] = cell(f"{kib:.1f} KiB", kib)
        rows[label["ttfe"]][n] = cell(f"{p50:.2f} / {p99:.0f} ms", p50, p99)
    return rows


def _ratios(summary: dict[str, Any]) -> dict[str, Any]:
    def value(name: str, figure: str) -> float:
        section, key = FIGURES[figure]
        return _get(summary, section, name, key)

    against: dict[str, dict[str, float]] = {}
    pairs = [
        (TUTORIAL, DIRECT),
        (SSE_STARLETTE, DIRECT),
        (SSE_STARLETTE, TUTORIAL),
        *(
            (sidecar, ref)
            for sidecar in (SIDECAR_RAW, SIDECAR_OLLAMA)
            for ref in SUMMARY_COLUMNS[:3]
        ),
    ]
    if any(t in _columns(summary) for t in BEFORE):
        pairs += [
            (SIDECAR_RAW, SIDECAR_RAW_BEFORE),
            (SIDECAR_OLLAMA, SIDECAR_OLLAMA_BEFORE),
            *((before, ref) for before in BEFORE for ref in SUMMARY_COLUMNS[:3]),
        ]
    for config, reference in pairs:
        row = {
            figure: _ratio(value(config.name, figure), value(reference.name, figure))
            for figure in FIGURES
        }
        against[f"{config.name} x {reference.name}"] = row

    named: dict[str, float] = {}
    for sidecar in (SIDECAR_RAW, SIDECAR_OLLAMA):
        named[f"streams held {sidecar.name} / sse-starlette proxy"] = _ratio(
            value(sidecar.name, "streams held"), value(SSE_STARLETTE.name, "streams held")
        )
    named["streams held sidecar ollama --workers 2 / one process"] = _ratio(
        value(WORKERS2.name, "streams held"), value(SIDECAR_OLLAMA.name, "streams held")
    )
    for middleware in (MW_RAW, MW_OLLAMA):
        named[f"throughput {middleware.name} / same app without it"] = _ratio(
            _eps(summary, middleware.name), _eps(summary, PLAIN.name)
        )
        named[f"paced CPU per event {middleware.name} / same app without it"] = _ratio(
            value(middleware.name, "CPU us/ev paced"), value(PLAIN.name, "CPU us/ev paced")
        )
    for sidecar in (SIDECAR_RAW, SIDECAR_OLLAMA):
        named[f"paced CPU per event {sidecar.name} / tutorial proxy"] = _ratio(
            value(sidecar.name, "CPU us/ev paced"), value(TUTORIAL.name, "CPU us/ev paced")
        )
    return {"against": against, "named": named}


# ---------------------------------------------------------------------------------------------
# The printed report


def _fmt(value: float, spec: str = ".2f") -> str:
    return "-" if value != value else format(value, spec)


def report(summary: dict[str, Any], facts: dict[str, Any]) -> str:
    settings = summary["settings"]
    out = [
        "Machine: {cpus} CPUs ({cpu_model}), Linux {kernel}, Python {python}, {date}".format(
            **facts
        ),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()),
        f"Pinning: {facts['pinning']}; load average at start {facts['load_average_at_start']}",
        "Other load on the bridge CPU (not ours) over the whole run: "
        + _percent(summary["other_load_whole_run"])
        + "; this client's CPU over the whole run: "
        + _percent(summary["client_cpu_whole_run"]),
        "",
    ]
    out += _report_throughput(summary, settings)
    out += _report_paced(summary, settings)
    out += _report_memory(summary, settings)
    out += _report_first_event(summary, settings)
    out += _report_latency(summary, settings)
    out += _report_capacity(summary, settings)

    figures: dict[str, dict[str, str]] = summary["figures"]
    out.append("Summary")
    columns = _columns(summary)
    headers = ["figure", *(t.name for t in columns)]
    rows = [[figure, *(cells[t.name] for t in columns)] for figure, cells in figures.items()]
    out += [_markdown(headers, rows), ""]

    out.append("Ratios (same run; streams held: from the capacity sweep)")
    against = summary["ratios"]["against"]
    rows = [[name, *(_fmt(v) for v in row.values())] for name, row in against.items()]
    out += [_table(["config x reference", *FIGURES], rows), ""]
    named = summary["ratios"]["named"]
    width = max(map(len, named))
    out += [f"  {name.ljust(width)}  {_fmt(value, '.3f')}" for name, value in named.items()]
    return "\n".join(out)


def _report_throughput(summary: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    if not summary["throughput"]:
        return []
    out = [
        f"a. Throughput, one stream of {settings['events']} events "
        f"(median of {settings['throughput_rounds']} interleaved rounds)"
    ]
    rows = [
        [
            name,
            f"{row['events_per_second']:,.0f}",
            f"{row['min']:,.0f}-{row['max']:,.0f}",
            _fmt(row.get("vs_direct", NAN), ".3f"),
            _fmt(row.get("vs_tutorial", NAN)),
            f"{row['events_per_chunk']:.1f}",
            f"{row['events_per_read']:.1f}",
            f"{row['bridge_cpu_us_per_event']:.1f}",
            _percent(row["other_load"]),
        ]
        for name, row in summary["throughput"].items()
    ]
    headers = [
        "config",
        "events/s",
        "range",
        "x direct",
        "x tutorial",
        "ev/chunk",
        "ev/read",
        "CPU us/ev",
        "other",
    ]
    return [*out, _table(headers, rows), ""]


def _report_paced(summary: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    if not summary["paced"]:
        return []
    out = [
        f"b. Paced load: {settings['paced_streams']} streams at {PACE} events/s for "
        f"{settings['paced_seconds']:g} s ({settings['paced_rounds']} round(s): CPU is the "
        "median, busy the highest, gaps pooled; direct's CPU is the upstream's own)"
    ]
    rows = [
        [
            name,
            f"{row['delivered']}/{row['expected']}",
            f"{row['bridge_cpu_us_per_event']:.0f}",
            f"{row['bridge_busy']:.0%}",
            f"{row['upstream_cpu_us_per_event']:.0f}",
            f"{row['gap_p50_ms']:.1f}",
            f"{row['gap_p99_ms']:.1f}",
            f"{row['gap_max_ms']:.1f}",
            f"{row['coalesced']:.3f}",
            f"{row['span_p50']:.3f}",
            f"{row['span_max']:.3f}",
            _percent(row["other_load_max"]),
        ]
        for name, row in summary["paced"].items()
    ]
    headers = [
        "config",
        "events",
        "CPU us/ev",
        "busy",
        "upstream us/ev",
        "gap p50 ms",
        "p99",
        "max",
        "coalesced",
        "span p50",
        "span max",
        "other max",
    ]
    return [*out, _table(headers, rows), ""]


def _report_memory(summary: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    memory = summary["memory"]
    if not memory:
        return []
    alone = memory.get(DIRECT.name, {}).get("kib_per_stream", NAN)
    rows = [
        [
            name,
            f"{row['rss_before_kib'] / 1024:.1f}",
            f"{row['rss_after_kib'] / 1024:.1f}",
            f"{row['kib_per_stream']:.1f}",
            _fmt(_ratio(row["kib_per_stream"], alone)),
        ]
        for name, row in memory.items()
    ]
    headers = ["process", "RSS before MiB", "after MiB", "KiB/stream", "x uvicorn alone"]
    return [
        f"c. Memory per idle open stream ({settings['idle_streams']} streams, VmRSS)",
        _table(headers, rows),
        "",
    ]


def _report_first_event(summary: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    if not summary["ttfe"]:
        return []
    rows = []
    for name, row in summary["ttfe"].items():
        burst = summary["burst"].get(name, {})
        rows.append(
            [
                name,
                f"{row['p50_ms']:.2f}",
                f"{row['p90_ms']:.2f}",
                f"{row['added_p50_ms']:+.2f}",
                _fmt(burst.get("p50_ms", NAN), ".1f"),
                _fmt(burst.get("p99_ms", NAN), ".1f"),
                _fmt(burst.get("max_ms", NAN), ".1f"),
                str(burst.get("failed", "-")),
            ]
        )
    headers = [
        "config",
        "p50 ms",
        "p90 ms",
        "added p50",
        "burst p50",
        "burst p99",
        "burst max",
        "failed",
    ]
    out = [
        f"d. Time to first event: {settings['ttfe_requests']} sequential fresh connections each, "
        f"then a burst of {settings['burst_streams']} opened at once",
        _table(headers, rows),
    ]
    out += [f"   {name}: {row['error']}" for name, row in summary["burst"].items() if row["error"]]
    return [*out, ""]


def _report_latency(summary: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    if not summary["latency"]:
        return []
    rows = [
        [
            name,
            str(row["events"]),
            str(row["failed_streams"]),
            f"{row['added_p50_ms']:+.2f}",
            f"{row['added_p99_ms']:+.2f}",
        ]
        for name, row in summary["latency"].items()
    ]
    headers = ["config", "events", "failed streams", "added p50 ms", "added p99 ms"]
    return [
        f"e. Added latency at {1000 / FAST_PACE:.0f} ms pacing: {settings['latency_streams']} "
        f"streams of {settings['latency_tokens']} tokens, {settings['latency_rounds']} round(s); "
        "each event's lateness against its stream's schedule minus the median lateness of the "
        "same event through direct",
        _table(headers, rows),
        "",
    ]


def _report_capacity(summary: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    capacity = summary["capacity"]
    if not capacity:
        return []
    out = [
        f"f. Capacity sweep: {PACE} events/s per stream for {settings['capacity_seconds']:g} s, "
        "starts spread over one pacing interval",
        "   added: each event's lateness against its stream's schedule minus the median lateness "
        "of the same event through direct in the same step, p50 and p99 over all events;",
        "   settled: the added p99 over the events after every stream had its first event (share: "
        "their part of all events); 1st ev: connect to first event; busy: CPU / wall, 1.00 = 1 CPU",
        "   other: CPU 1's time on anything but our bridges (someone else's load), over wall time",
        "   A step passes when every stream delivers every event, the settled share is at least "
        f"{MIN_SETTLED_SHARE:.0%} and the settled p99 is <= {LATENCY_LIMIT_MS:.0f} ms "
        "(direct: gap p99 minus the pacing); a configuration that fails a step gets one more "
        "try at it",
    ]
    rows = []
    by_step: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for name, row in capacity.items():
        for step in row["steps"]:
            by_step.setdefault(step["streams"], []).append((name, step))
    for streams, entries in sorted(by_step.items()):
        for name, step in entries:
            client = f"{step['client_busy']:.2f}" + (" !" if step["cpu0_bound"] else "")
            rows.append(
                [
                    f"{streams} x {name}" + (" (2nd try)" if step["retry"] else ""),
                    f"{step['delivered']}/{step['expected']}",
                    str(step["failed"]),
                    _fmt(step["added_p50_ms"], "+.1f"),
                    _fmt(step["added_p99_ms"], "+.1f"),
                    _fmt(step["settled_added_p99_ms"], "+.1f"),
                    f"{step['settled_share']:.2f}",
                    _fmt(step["gap_p99_ms"], ".1f"),
                    _fmt(step["first_event_p99_ms"], ".0f"),
                    f"{step['bridge_busy']:.2f}",
                    f"{step['upstream_busy']:.2f}",
                    client,
                    _percent(step["other_load"]),
                    "pass" if step["passed"] else "FAIL",
                ]
            )
    headers = [
        "streams x config",
        "events",
        "failed",
        "added p50",
        "added p99",
        "settled",
        "share",
        "gap p99",
        "1st ev p99",
        "busy",
        "upstream",
        "client",
        "other",
        "",
    ]
    out += [_table(headers, rows)]
    for name, row in capacity.items():
        held = f">= {row['held']} (passed every step run)" if row["censored"] else row["held"]
        if row["below_first_step"]:
            held = f"< {row['first_step']}"
        out.append(f"   highest passing: {name}: {held}")
    for name, row in capacity.items():
        for step in row["steps"]:
            if step["error"]:
                out.append(f"   {step['streams']} x {name}: first error: {step['error']}")
                break
    if any(step["cpu0_bound"] for row in capacity.values() for step in row["steps"]):
        out.append(
            "   !: in a marked step the client and the upstream may have set the limit, not the "
            "configuration"
        )
    out += [f"   {note}" for note in summary["capacity_notes"]]
    return [*out, ""]


def raw(results: Results) -> dict[str, Any]:
    """The samples as JSON (per-gap and per-event lists left out: they are large)."""
    large = ("gaps_ms", "spans", "lateness_ms", "settled_from", "first_event_ms")

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {k: plain(v) for k, v in asdict(value).items() if k not in large}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    fields = dataclasses.fields(results)
    return {f.name: plain(getattr(results, f.name)) for f in fields if f.name != "latency_added_ms"}
