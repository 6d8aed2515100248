"""The load test suite, run as CI runs it: the real stack passes its gate, a buffering one fails."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run_loadtest(results: Path, *args: str) -> tuple[int, dict[str, dict[str, str]], str]:
    completed = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--results", str(results), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    (stats,) = results.glob("*_stats.csv")
    with stats.open() as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    return completed.returncode, rows, completed.stdout + completed.stderr


def test_a_hundred_users_stream_through_nginx_and_pass_the_gate(tmp_path: Path) -> None:
    status, rows, output = run_loadtest(tmp_path, "--users", "100", "--duration", "30")
    assert status == 0, output
    assert "quality gate: passed" in output
    stream = rows["/api/chat (stream)"]
    assert int(stream["Request Count"]) >= 500
    assert int(stream["Failure Count"]) == 0
    # Gaps follow the fake's pace of one token every 50 ms.
    gaps = rows["gap between events"]
    assert 45 <= float(gaps["50%"]) <= 55
    assert int(gaps["Request Count"]) == 40 * int(stream["Request Count"])
    assert (tmp_path / "sse_bridge-100u-30s.html").stat().st_size > 0


def test_the_gate_fails_a_buffering_stack(tmp_path: Path) -> None:
    status, rows, output = run_loadtest(tmp_path, "--users", "20", "--duration", "10", "--naive")
    assert status == 1, output
    assert "quality gate: FAILED" in output
    assert "pooled coalesced fraction 1.0000" in output
    assert float(rows["time to first event"]["Median Response Time"]) >= 1500
