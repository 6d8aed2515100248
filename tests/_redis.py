"""A real redis-server (the Debian package) on a free loopback port, for the Redis store tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.stack import free_port

DEADLINE = 10.0
# Readiness is a PING answered; between tries the server is given this long.
POLL = 0.02
ATTEMPTS = 5


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server is required for these tests: .ci/run installs it (apt-get)")
    return found


def ping(port: int) -> bool:
    """Whether a Redis answers PING on ``port`` (a short-lived raw connection: no client needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def command(port: int, *words: str) -> bytes:
    """Send one command in Redis's inline form and return the first bytes of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(" ".join(words).encode() + b"\r\n")
        return sock.recv(1024)


class RedisServer:
    """One redis-server process, which can be stopped and started again on the same port.

    It keeps nothing on disk unless stopped with ``save=True`` (SHUTDOWN SAVE): then it starts
    again with the data it had, as a Redis with persistence does after a restart.
    """

    def __init__(self, workdir: Path) -> None:
        self.binary = redis_binary()
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port, or on the port of the last run if there was one."""
        if self.process is not None:
            raise RuntimeError("redis-server is running already")
        keep_port = self.port != 0
        errors = []
        for _ in range(ATTEMPTS):
            port = self.port if keep_port else free_port()
            try:
                self.launch(port)
                return
            except RuntimeError as error:  # the port was taken in the meantime
                errors.append(str(error))
        raise RuntimeError(f"redis-server did not start: {errors}")

    def launch(self, port: int) -> None:
        log = self.workdir / "redis.log"
        process = subprocess.Popen(
            [
                self.binary,
                *("--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--dir", str(self.workdir), "--logfile", str(log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + DEADLINE
        for _ in range(int(DEADLINE / POLL)):
            if ping(port):
                self.port, self.process = port, process
                return
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(POLL)
        self.kill(process)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"redis-server on port {port} did not answer PING: {tail}")

    def stop(self, *, save: bool = False) -> None:
        """Stop it (its clients see their connections closed); ``save`` keeps its data."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            command(self.port, "SHUTDOWN", "SAVE" if save else "NOSAVE")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=DEADLINE)
        self.kill(process)

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=DEADLINE)
        if process.stderr is not None:
            process.stderr.close()


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in a scratch directory; stopped and removed at the end."""
    with tempfile.TemporaryDirectory(prefix="sse-bridge-redis-") as workdir:
        server = RedisServer(Path(workdir))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A fresh redis-server on a free loopback port; yields ``redis://127.0.0.1:PORT/0``."""
    with running_redis() as server:
        yield server.url
