"""Redis killed with -9 mid-stream and restarted, or restarted empty, under 20 live resumable
streams (benchmarks/redis_faults.py): live clients get every event; resumes get what was kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_kill_and_empty_restart_cost_resumability_never_delivery() -> None:
    completed = subprocess.run(
        [sys.executable, "benchmarks/redis_faults.py", "--only", "kill,empty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {}
    for line in completed.stdout.strip().splitlines():
        row = {k: json.loads(v) for k, v in (item.split("=", 1) for item in line.split())}
        rows[row["fault"]] = row
    kill, empty = rows["kill"], rows["empty"]
    assert kill["live_whole"] == empty["live_whole"] == "20/20"
    # Restarted with its append-only file: every stream resumes whole.
    assert kill["resumed_whole"] == "20/20"
    assert kill["resume_refused"] == {}
    # Restarted empty: what came before is gone, and a resume from the start is told so (410),
    # never given a stream with a hole.
    assert empty["resumed_whole"] == "0/20"
    assert empty["resumed_partial"] == 0
    assert empty["resume_refused"] == {"410": 20}
