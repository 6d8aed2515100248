"""benchmarks/bench_storm.py: a reconnect storm loses nobody; a 503 always says when to retry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_a_storm_of_100_reconnects_past_the_stream_limit_loses_nobody() -> None:
    completed = subprocess.run(
        [sys.executable, "benchmarks/bench_storm.py", "--clients", "100", "--max-streams", "150"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = dict(item.split("=", 1) for item in completed.stdout.split())
    assert figures["lost"] == "0", completed.stderr[-3000:]
    assert int(figures["served_at_once"]) + int(figures["served_after_503"]) == 100
    # 100 generations and 50 streams more: some reconnects were refused, and came back.
    assert int(figures["served_after_503"]) > 0
