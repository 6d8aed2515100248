"""Streaming benchmark: the sidecar and the middleware against no bridge and two usual proxies.

Run from the repository root::

    .venv/bin/python benchmarks/bench_stream.py            # about 5 minutes
    .venv/bin/python benchmarks/bench_stream.py --quick    # about a minute
    .venv/bin/python benchmarks/bench_stream.py --only sidecar-ollama,tutorial --skip-capacity
    .venv/bin/python benchmarks/bench_stream.py --json results.json

Every server is a separate process on a free loopback port, started here and stopped here, also
on Ctrl+C. On a machine with two or more CPUs the bridge processes are pinned to CPU 1, the
upstream and this client to CPU 0 (the ``--workers 2`` sidecar is left unpinned). All figures come
from this one run, taken interleaved; compare them only with each other. docs/benchmarks.md
explains the method. The parts: ``_fleet.py`` (processes), ``_measure.py`` (measurements),
``_report.py`` (tables and ratios), ``_stream_servers.py`` and ``_stream_client.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop
from _fleet import CLIENT_CPU, Fleet, terminate_as_interrupt
from _measure import ALL, BEFORE, DIRECT, FULL, PLAIN, QUICK, Bench, Settings, Target
from _report import machine_facts, raw, report, summarize
from _stream_client import raise_fd_limit

KEYS = {target.key: target for target in ALL}


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(item) for item in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 50,200: {text!r}")
    return counts


def _targets(text: str) -> tuple[Target, ...]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [name for name in names if name not in KEYS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown configuration {unknown or text!r}; choose from {', '.join(KEYS)}"
        )
    chosen = {KEYS[name] for name in names} | {DIRECT}  # every figure is relative to direct
    if any(t.prefix for t in chosen):
        chosen.add(PLAIN)  # the middleware is compared with the same app without it
    return tuple(t for t in ALL if t in chosen)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller run, about a minute")
    parser.add_argument(
        "--json", metavar="FILE", help="also write the results as JSON ('-': stdout)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--before",
        metavar="DIR",
        type=Path,
        help="also run both sidecars from the sse_bridge in DIR/src (an earlier checkout, e.g. "
        "from `git worktree add DIR REV`), side by side with this one",
    )
    parser.add_argument(
        "--only",
        metavar="CONFIGS",
        type=_targets,
        help=f"comma-separated configurations ({', '.join(KEYS)}); direct is always included",
    )
    parser.add_argument(
        "--skip-capacity", action="store_true", help="leave out the capacity sweep (the longest)"
    )
    parser.add_argument(
        "--capacity-steps",
        metavar="N,N,...",
        type=_counts,
        help="stream counts of the capacity sweep (default: 100,200,400,...,1600; --quick 50,100)",
    )
    parser.add_argument(
        "--paced-streams",
        metavar="N",
        type=int,
        help="concurrent streams for the paced CPU test (default 100; --quick 50)",
    )
    parser.add_argument(
        "--idle-streams",
        metavar="N",
        type=int,
        help="open idle streams for the memory test (default 1000; --quick 100)",
    )
    parser.add_argument(
        "--burst-streams",
        metavar="N",
        type=int,
        help="streams opened at once for the first-event p99 (default 1000; --quick 100)",
    )
    parser.add_argument(
        "--profile-dir",
        metavar="DIR",
        type=Path,
        help="run each bridge under cProfile and write ROLE.prof here (skews every figure)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else FULL
    changes = {
        "capacity_steps": args.capacity_steps,
        "paced_streams": args.paced_streams,
        "idle_streams": args.idle_streams,
        "burst_streams": args.burst_streams,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v})
    if args.skip_capacity:
        settings = dataclasses.replace(settings, capacity=False)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    targets: tuple[Target, ...] = args.only or ALL
    if args.before is None:
        targets = tuple(t for t in targets if t not in BEFORE)
    elif not (args.before / "src" / "sse_bridge").is_dir():
        raise SystemExit(f"--before: no sse_bridge package under {args.before / 'src'}")
    if not settings.capacity:
        targets = tuple(t for t in targets if t.role != "workers2")
    raise_fd_limit()
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {CLIENT_CPU})
    facts = machine_facts(pin)
    facts["command"] = " ".join(["benchmarks/bench_stream.py", *(argv or sys.argv[1:])])
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - begun:6.1f} s] {message}", file=sys.stderr, flush=True)

    begun = time.monotonic()
    fleet = Fleet(
        pin=pin,
        profile_dir=args.profile_dir,
        before_src=None if args.before is None else (args.before / "src").resolve(),
    )
    try:
        with terminate_as_interrupt():
            progress("starting servers")
            fleet.start({t.role for t in targets})
            results = uvloop.run(Bench(fleet, settings, targets, progress).run())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        fleet.stop()
    progress("done")
    summary = summarize(results, settings)
    print(report(summary, facts))
    if args.json:
        document = {"facts": facts, "summary": summary, "raw": raw(results)}
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
