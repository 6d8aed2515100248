"""Bring up the whole stack on loopback, run the locust suite headless, and tear it all down.

    python -m loadtests.run --users 100 --duration 30          # fake Ollama, bridges, nginx
    python -m loadtests.run --users 20 --duration 15 --naive   # the negative control

The stack: the fake Ollama at ``--tokens-per-second``, ``--bridges`` sse_bridge processes behind
nginx with ``deploy/nginx.conf`` (or, with ``--naive``, a naive nginx config in front of a
hand-written NDJSON-to-SSE app that sends no anti-buffering header). Besides the ``--users``
that go through the stack, ``--direct-users`` read the fake directly: the direct path, in the
same run, that the latency gate compares with. Locust writes its CSV and HTML reports under
``--results``; the exit status is locust's, which the quality gate sets.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from loadtests.stack import DEPLOY_CONF, NAIVE_CONF, fake_ollama, free_port, nginx, running

HERE = Path(__file__).parent
# The locustfile's gate options, with the defaults this command passes on (docs/loadtesting.md).
GATE = {
    "max-coalesced": (0.05, "pooled coalesced fraction of the stack's streams"),
    "min-span": (0.9, "median span ratio of the stack's streams"),
    "max-ttfe-p50-over-direct-ms": (100.0, "time to first event: the stack's over the direct"),
    "max-ttfe-p95-over-direct-ms": (1000.0, "time to first event: the stack's over the direct"),
    "max-gap-p95-over-direct-ms": (50.0, "gap between events: the stack's over the direct"),
    "max-ttfe-p95-ms": (0.0, "time to first event through the stack, absolute"),
    "max-gap-p95-ms": (0.0, "gap between events through the stack, absolute"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the sse_bridge load test against a local stack.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=100, help="concurrent locust users")
    parser.add_argument("--spawn-rate", type=float, default=50.0, help="users started per second")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load")
    parser.add_argument("--bridges", type=int, default=2, help="sse-bridge processes behind nginx")
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="the fake's pace")
    parser.add_argument("--num-tokens", type=int, default=40, help="tokens per answer")
    parser.add_argument("--results", type=Path, default=Path("results"), help="report folder")
    parser.add_argument("--naive", action="store_true", help="run the negative control instead")
    parser.add_argument(
        "--direct-users", type=int, default=10, help="more users reading the fake directly; 0: none"
    )
    gate = parser.add_argument_group("quality gate (latencies are p95s; an absolute 0 is off)")
    for name, (default, text) in GATE.items():
        gate.add_argument(f"--{name}", type=float, default=default, help=text)
    args = parser.parse_args(argv)
    if args.users < 1 or args.duration < 1 or args.bridges < 1 or args.tokens_per_second <= 0:
        parser.error("--users, --duration, --bridges and --tokens-per-second must be positive")
    if args.direct_users < 0:
        parser.error("--direct-users must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = "naive" if args.naive else "sse_bridge"
    args.results.mkdir(parents=True, exist_ok=True)
    prefix = args.results / f"{name}-{args.users}u-{args.duration}s"
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(fake_ollama("--tokens-per-second", str(args.tokens_per_second)))
        ports = [free_port() for _ in range(1 if args.naive else args.bridges)]
        for port in ports:
            if args.naive:
                command = (sys.executable, "-m", "loadtests.naive_app", "--upstream", fake)
                stack.enter_context(running(port=port, command=command))
            else:
                stack.enter_context(
                    running(
                        "serve",
                        "--upstream",
                        fake,
                        "--dialect",
                        "ollama",
                        "--log-level",
                        "warning",
                        "--max-streams",
                        str(max(1000, args.users * 2)),
                        port=port,
                    )
                )
        conf = NAIVE_CONF if args.naive else DEPLOY_CONF.read_text()
        url = stack.enter_context(
            nginx(conf, bridges=ports, workdir=args.results / f"{name}-nginx")
        )
        print(
            f"load test: {name} stack at {url}; {args.users} users for {args.duration} s"
            f" (and {args.direct_users} reading the fake at {fake} directly)",
            flush=True,
        )
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(HERE / "locustfile.py"),
                "--headless",
                "--host",
                url,
                "--users",
                str(args.users + args.direct_users),
                "--spawn-rate",
                str(args.spawn_rate),
                "--run-time",
                f"{args.duration}s",
                "--stop-timeout",
                "10",
                "--csv",
                str(prefix),
                "--html",
                f"{prefix}.html",
                "--only-summary",
                "--fake-tokens-per-second",
                str(args.tokens_per_second),
                "--fake-num-tokens",
                str(args.num_tokens),
                "--direct-host",
                fake if args.direct_users else "",
                "--direct-users",
                str(args.direct_users),
                *(f"--{name}={getattr(args, name.replace('-', '_'))}" for name in GATE),
            ],
            check=False,
            timeout=args.duration + 120,
        )
        took = time.monotonic() - started
        print(f"locust exited {result.returncode} after {took:.0f} s; reports: {prefix}*")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
