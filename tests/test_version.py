"""The version is pyproject's, read from the installed package's metadata."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import sse_bridge
from loadtests.stack import BIN, DEADLINE
from sse_bridge._cli import main

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def test_version_is_the_one_pyproject_declares() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert sse_bridge.__version__ == declared


def test_cli_prints_the_version() -> None:
    result = CliRunner().invoke(main, ["--version"], prog_name="sse-bridge")
    assert result.exit_code == 0, result.output
    assert result.output == f"sse-bridge, version {sse_bridge.__version__}\n"


def test_the_installed_command_prints_the_version() -> None:
    done = subprocess.run([str(BIN), "--version"], capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sse-bridge, version {sse_bridge.__version__}\n"
