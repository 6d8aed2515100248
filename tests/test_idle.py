"""benchmarks/bench_idle.py runs, and its streams all stay open and get their keepalives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_idle_benchmark_holds_every_stream() -> None:
    completed = subprocess.run(
        [
            *(sys.executable, "benchmarks/bench_idle.py"),
            *("--streams", "200", "--keepalive", "1", "--periods", "2"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = dict(item.split("=", 1) for item in completed.stdout.split())
    assert figures["streams"] == "200"
    assert figures["closed"] == "0"
    # Two periods after all were open: at least two gaps per stream.
    assert int(figures["gaps"]) >= 400
