"""A short pass of every fuzz property (tests/_fuzz.py) in CI; ``scripts/fuzz`` runs long ones."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._fuzz import Sidecar, properties

EXAMPLES = 300
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[dict[str, Callable[[int], None]]]:
    sidecar = Sidecar()
    yield properties(sidecar)
    sidecar.close()


@pytest.mark.parametrize(
    "name",
    [
        "framing",
        "paths",
        "accept",
        "last-event-id",
        "bearer",
        "logfmt",
        "sidecar (auth, CORS, resume, framing, paths)",
    ],
)
def test_no_exception_escapes_and_every_refusal_is_a_clean_4xx(
    fuzzed: dict[str, Callable[[int], None]], name: str
) -> None:
    fuzzed[name](EXAMPLES)


def test_the_fuzz_script_prints_the_count_and_the_time() -> None:
    completed = subprocess.run(
        ["bash", "scripts/fuzz", "--examples", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "140 examples" in completed.stdout
    assert "no failure" in completed.stdout
