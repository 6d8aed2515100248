"""scripts/soak --minutes 1 passes, with each store: every stream is right, nothing leaks.

What it checks is the script's (loadtests/soak.py): the tokens of every stream read whole,
resumed, stopped or cut by an upstream fault against the fake's own answer, fds and tasks back at
their baseline once traffic stops, and RSS after warm-up within its rate. No timing is judged.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from loadtests.soak import back, rss_slope_mib_per_minute, verdict

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_one_minute_soak_passes(store: str, tmp_path: Path) -> None:
    completed = subprocess.run(
        ["bash", "scripts/soak", "--minutes", "1", "--store", store, "--out", str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    result = json.loads((tmp_path / f"s-{store}.json").read_text())
    assert result["problems"] == []
    kinds = result["streams"]
    # Every kind of traffic ran.
    for kind in ("whole", "resumed", "stopped"):
        assert kinds.get(kind, 0) > 0, kinds
    assert any(kind.startswith("fault: ") for kind in kinds), kinds
    assert "failed" not in kinds
    assert {row["phase"] for row in result["samples"]} == {
        "warm-up",
        "baseline",
        "traffic",
        "after",
    }
    assert (tmp_path / f"s-{store}.svg").read_text().startswith("<svg")


def test_the_verdict_names_each_problem() -> None:
    baseline = {"fds": 10, "tasks": 3, "streams": 0}
    result = {
        "failures": ["a whole stream of 12 tokens got ['a']..."],
        "baseline": baseline,
        "final": {"fds": 12, "tasks": 3, "streams": 1},
        "rss_slope_mib_per_minute": 9.5,
        "streams": {"whole": 3},
    }
    problems = verdict(result, 8.0)
    assert len(problems) == 4, problems
    assert "a stream failed" in problems[0]
    assert "fds 12 (was 10; the bridge's own 12, was 10)" in problems[1]
    assert "still open" in problems[2]
    assert "9.5 MiB/min" in problems[3]
    assert back({"fds": 10, "tasks": 3}, baseline)
    assert not back({"fds": 10, "tasks": 4}, baseline)
    # The Redis client's pooled connections are the pool's, not the bridge's.
    assert back({"fds": 12, "tasks": 3, "store_connections": 2}, baseline)
    assert not back({"fds": 12, "tasks": 3, "store_connections": 1}, baseline)


def test_the_rss_slope_is_a_least_squares_rate() -> None:
    rows = [{"t": 60.0 * n, "rss_kib": 1024 * (100 + 2 * n), "phase": "traffic"} for n in range(5)]
    rows.append({"t": 999.0, "rss_kib": 10**9, "phase": "after"})
    assert rss_slope_mib_per_minute(rows) == pytest.approx(2.0)
    assert rss_slope_mib_per_minute(rows[:2]) == 0.0
