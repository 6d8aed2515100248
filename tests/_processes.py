"""Start real processes (sse-bridge, nginx) on free loopback ports, wait for them, stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent / "sse-bridge"
DEADLINE = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[str]) -> None:
    """Poll `url` until it answers below 500, with a bounded deadline (never a fixed sleep)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not become ready")


@contextlib.contextmanager
def running(
    *args: str, ready_path: str = "/healthz", port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run `sse-bridge <args> --port <free port>`; yield its URL and process; stop it."""
    port = port or free_port()
    process = subprocess.Popen(
        [str(BIN), *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + ready_path, process)
        yield url, process
    finally:
        stop(process)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
    process.communicate(timeout=DEADLINE)
