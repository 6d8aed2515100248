"""The version is pyproject's, read from the installed package's metadata."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import sse_bridge
from loadtests.stack import BIN, DEADLINE
from sse_bridge._cli.main import main

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def test_version_is_the_one_pyproject_declares() -> None:
    # The [project] table's version line (tomllib would need Python 3.11; 3.10 is supported).
    project = PYPROJECT.read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    declared = re.search(r'^version = "([^"]+)"$', project, re.M)
    assert declared is not None
    assert sse_bridge.__version__ == declared.group(1)


def test_a_copy_that_was_never_installed_still_imports() -> None:
    script = (
        "import importlib.metadata as m\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import sse_bridge\n"
        "print(sse_bridge.__version__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0+unknown\n"


def test_cli_prints_the_version() -> None:
    result = CliRunner().invoke(main, ["--version"], prog_name="sse-bridge")
    assert result.exit_code == 0, result.output
    assert result.output == f"sse-bridge, version {sse_bridge.__version__}\n"


def test_the_installed_command_prints_the_version() -> None:
    done = subprocess.run([str(BIN), "--version"], capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sse-bridge, version {sse_bridge.__version__}\n"
