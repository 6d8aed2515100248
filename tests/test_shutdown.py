"""SIGTERM under load: streams that end within the grace are whole, the others end with the
dialect's shutdown event and stay resumable in Redis, and the process exits in time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sse_bridge._dialects.builtin import OllamaTranslator, RawTranslator
from sse_bridge._dialects.openai import OpenAITranslator

ROOT = Path(__file__).parent.parent
MESSAGE = "the bridge is shutting down; retry the request"


def test_ollama_says_shutdown_where_its_final_chunk_says_why() -> None:
    translator = OllamaTranslator()
    (event,) = translator.shutdown(MESSAGE)
    assert translator.finished
    assert json.loads(event.removeprefix(b"data: ")) == {
        "error": MESSAGE,
        "finished": True,
        "done_reason": "shutdown",
    }


@pytest.mark.parametrize("translator", [RawTranslator(), OpenAITranslator()])
def test_other_dialects_end_with_their_error_event(translator: RawTranslator) -> None:
    assert translator.shutdown(MESSAGE) == type(translator)().fail(MESSAGE)
    assert translator.finished


def figures(*args: str) -> dict[str, str]:
    completed = subprocess.run(
        [sys.executable, "benchmarks/bench_sigterm.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    last = completed.stdout.strip().splitlines()[-1]
    return dict(item.split("=", 1) for item in last.split())


@pytest.mark.timing
def test_sigterm_under_load_with_redis_resume() -> None:
    found = figures("--streams", "40", "--grace", "2", "--resume", "redis")
    assert found["short_whole"] == "20/20"
    assert found["long_ended_with_shutdown_event"] == "20/20"
    assert found["long_resumed_elsewhere"] == "20/20"
    assert found["client_errors"] == "0"
    assert found["tracebacks"] == "0"
    assert float(found["exit_after_sigterm_s"]) <= 2 + 2
