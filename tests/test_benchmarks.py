"""The benchmark still runs and every configuration delivers every event.

Only that: figures are never judged in a test (the machines are shared and noisy); they are
read side by side in one benchmark run, see docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_quick_benchmark_runs_and_delivers_everything(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "benchmarks/bench_stream.py", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    names = {"direct", "middleware raw", "middleware ollama", "sidecar", "naive"}
    assert names <= set(summary["throughput"])
    for by_target in summary["paced"].values():
        for row in by_target.values():
            assert row["delivered"] == row["expected"]
    assert "Ratios" in completed.stdout
