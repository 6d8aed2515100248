"""The benchmark still runs and every configuration delivers every event.

Only that: figures are never judged in a test (the machines are shared and noisy); they are
read side by side in one benchmark run, see docs/benchmarks.md.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests._redis import redis_binary

ROOT = Path(__file__).parent.parent
PROXIES = {"tutorial proxy", "sse-starlette proxy", "sidecar raw", "sidecar ollama"}
IN_PROCESS = {"in-process plain", "middleware raw", "middleware ollama"}


def run(*args: str, json_to: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run a benchmark script; it must succeed. Its output, and the figures it wrote as JSON."""
    completed = subprocess.run(
        [sys.executable, *args, "--json", str(json_to)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed, json.loads(json_to.read_text())


def test_the_quick_benchmark_runs_and_delivers_everything(tmp_path: Path) -> None:
    completed, found = run("benchmarks/bench_stream.py", "--quick", json_to=tmp_path / "b.json")
    summary = found["summary"]
    every = {"direct upstream", *IN_PROCESS, *PROXIES}
    assert set(summary["throughput"]) == every
    assert set(summary["paced"]) == every
    for row in summary["paced"].values():
        assert row["delivered"] == row["expected"]
    assert set(summary["memory"]) == {"direct upstream", "middleware ollama", *PROXIES}
    assert set(summary["ttfe"]) == every - {"in-process plain"}
    for row in summary["burst"].values():
        assert row["failed"] == 0, row["error"]
    for row in summary["latency"].values():
        assert row["failed_streams"] == 0
    # The sweep ran for every proxy; whether a step passed is a timing, not checked here.
    capacity = {"direct upstream", *PROXIES, "sidecar ollama --workers 2"}
    assert set(summary["capacity"]) == capacity
    for row in summary["capacity"].values():
        assert row["steps"]
    for column in summary["figures"].values():
        assert set(column) == {"direct upstream", *PROXIES}
    assert "Summary" in completed.stdout
    assert "Ratios" in completed.stdout


def test_the_quick_resume_probe_runs_and_delivers_everything(tmp_path: Path) -> None:
    # The probe itself stops with an error if a configuration delivered a wrong event count.
    completed, summary = run(
        "benchmarks/probe.py", "resume", "--quick", json_to=tmp_path / "r.json"
    )
    # redis-server is installed wherever the tests run (tests/_redis.py fails without it), so
    # the benchmark's Redis rows must be there: a Redis store that failed is left out with a
    # note by the benchmark, and that is a failure here.
    redis_binary()
    assert "resume redis" in summary["fast"], summary["notes"]
    expected = {"no middleware", "resume off", "resume memory", "metrics on", "resume redis"}
    for table in ("fast", "paced"):
        assert set(summary[table]) == expected
        for row in summary[table].values():
            assert row["us_per_event"] > 0
        assert summary[table]["resume off"]["x_resume_off"] == 1.0
    assert summary["fast"]["resume redis"]["redis_server_us_per_event"] >= 0
    assert summary["retained"]["redis"]["used_memory_bytes_per_stream"] > 0
    assert not any(note.startswith("redis: left out: ") for note in summary["notes"])
    memory = summary["retained"]["memory"]
    assert memory["events_per_stream"] == 201
    # A retained stream holds at least its events' bytes.
    assert memory["python_bytes_per_stream"] >= memory["event_bytes_per_stream"] > 0
    assert "ratios" in completed.stdout


def sse_bridge_imports(script: Path) -> set[str]:
    """The sse_bridge modules a benchmark script imports, through the benchmark modules it uses."""
    found: set[str] = set()
    todo, seen = [script], set()
    while todo:
        path = todo.pop()
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                local = ROOT / "benchmarks" / f"{name}.py"
                if local.exists() and local not in seen:
                    todo.append(local)
                elif name.split(".")[0] == "sse_bridge":
                    found.add(name)
    return found


def test_the_server_roles_run_on_an_earlier_checkout_too() -> None:
    # --before runs _stream_servers.py with an earlier checkout's sse_bridge ahead on the path:
    # it may import only what every layout has, the public modules and the ASGI aliases.
    public = {"sse_bridge", "sse_bridge.testing", "sse_bridge._types"}
    found = sse_bridge_imports(ROOT / "benchmarks" / "_stream_servers.py")
    assert "sse_bridge.testing" in found
    assert found <= public, sorted(found - public)
    # The fleet itself runs with this checkout only, and does reach further.
    assert not sse_bridge_imports(ROOT / "benchmarks" / "_fleet.py") <= public
