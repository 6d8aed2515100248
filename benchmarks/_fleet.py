"""The server processes of one benchmark run: starting, pinning, readiness, accounting, stopping.

Every server binds 127.0.0.1 only. Each role of ``_stream_servers.py`` binds port 0 and prints the
port; the ``sse-bridge serve --workers 2`` command gets a port picked here. Readiness is polled
with an HTTP request, never waited for with a fixed sleep. :meth:`Fleet.stop` ends every process
(and, for the multi-worker server, its whole process group), also after an error or Ctrl+C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from _stream_client import HOST, SIDECAR_MAX_STREAMS

from sse_bridge._testing.loopback import free_port, wait_until

HERE = Path(__file__).resolve().parent
CLIENT_CPU = 0  # the client and the upstream
BRIDGE_CPU = 1  # the process under test
TICKS = os.sysconf("SC_CLK_TCK")
STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
# Roles of _stream_servers.py that proxy to the upstream, and the real multi-worker command.
PROXY_ROLES = ("sidecar-raw", "sidecar-ollama", "tutorial", "sse-starlette")
# Roles served from an earlier checkout (--before): the same server role, another sse_bridge.
BEFORE_ROLES = {"sidecar-raw-before": "sidecar-raw", "sidecar-ollama-before": "sidecar-ollama"}
WORKERS_ROLE = "workers2"
WORKERS = 2


def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        # PR_SET_PDEATHSIG: the server gets SIGTERM if this script dies without cleaning up.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        # 1,000 streams through a proxy are 2,000 sockets in it; uvicorn's workers inherit this.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if cpu is not None:
            # Set before exec, so that every thread the server ever starts inherits it.
            os.sched_setaffinity(0, {cpu})
        else:
            # Unpinned means every CPU: this script itself runs pinned to the client's CPU, and
            # a child would otherwise inherit that (the --workers 2 sidecar on one CPU).
            os.sched_setaffinity(0, range(os.cpu_count() or 1))

    return setup


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (uvicorn's workers are children of its supervisor)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
                queue.extend(int(child) for child in children.split())
    return found


def _proc_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Server:
    role: str
    process: subprocess.Popen[str]
    cpu: int | None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _sum(self, read: Callable[[int], float]) -> float:
        total = 0.0
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(OSError):  # a worker may end between listing and reading
                total += read(pid)
        return total

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process and its workers, all threads."""
        return self._sum(_proc_cpu_seconds)

    def rss_kib(self) -> int:
        return int(self._sum(_proc_rss_kib))

    def open_fds(self) -> int:
        return int(self._sum(lambda pid: len(os.listdir(f"/proc/{pid}/fd"))))


class Fleet:
    """The server processes of one run; :meth:`stop` ends every one of them."""

    def __init__(
        self, *, pin: bool, profile_dir: Path | None, before_src: Path | None = None
    ) -> None:
        self.pin = pin
        self.profile_dir = profile_dir
        self.before_src = before_src
        self.servers: dict[str, Server] = {}

    def __getitem__(self, role: str) -> Server:
        return self.servers[role]

    def _popen(
        self, role: str, command: list[str], cpu: int | None, pythonpath: Path | None = None
    ) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_BRIDGE_")}
        if pythonpath is not None:
            # Ahead of the installed (editable) sse_bridge: the earlier checkout's is imported.
            env["PYTHONPATH"] = str(pythonpath)
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            # Its own session: Ctrl+C reaches only this script, which then stops the servers
            # in order instead of racing them.
            start_new_session=True,
            preexec_fn=_child_setup(cpu if self.pin else None),
        )
        server = Server(role, process, cpu if self.pin else None)
        self.servers[role] = server
        return server

    def spawn(
        self, role: str, cpu: int, upstream: str | None = None, *, before: bool = False
    ) -> Server:
        served = BEFORE_ROLES[role] if before else role
        command = [sys.executable, str(HERE / "_stream_servers.py"), served]
        if upstream is not None:
            command += ["--upstream", upstream]
        if self.profile_dir is not None and role != "upstream":
            command += ["--profile", str(self.profile_dir / f"{role}.prof")]
        return self._popen(role, command, cpu, self.before_src if before else None)

    def spawn_workers(self, upstream: str) -> Server:
        """The real ``sse-bridge serve --workers 2`` command, on both CPUs (it is meant to be)."""
        port = free_port(HOST)
        script = Path(sys.executable).parent / "sse-bridge"
        program = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-c", "from sse_bridge._cli.main import main; main()"]
        )
        command = [
            *program,
            "serve",
            "--upstream",
            upstream,
            "--dialect",
            "ollama",
            "--workers",
            str(WORKERS),
            "--host",
            HOST,
            "--port",
            str(port),
            "--max-streams",
            str(SIDECAR_MAX_STREAMS),
            "--log-level",
            "warning",
        ]
        was_pinned, self.pin = self.pin, False
        try:
            server = self._popen(WORKERS_ROLE, command, None)
        finally:
            self.pin = was_pinned
        server.port = port
        return server

    def start(self, roles: set[str]) -> None:
        """Start the upstream, then the other ``roles`` on the bridge CPU, and wait until ready."""
        upstream = self.spawn("upstream", CLIENT_CPU)
        upstream.port = _read_port(upstream)
        for role in ("inprocess", *PROXY_ROLES):
            if role in roles:
                self.spawn(role, BRIDGE_CPU, None if role == "inprocess" else upstream.url)
        for role in BEFORE_ROLES:
            if role in roles:
                if self.before_src is None:
                    raise RuntimeError(f"the {role} role needs --before DIR")
                self.spawn(role, BRIDGE_CPU, upstream.url, before=True)
        if WORKERS_ROLE in roles:
            self.spawn_workers(upstream.url)
        for server in self.servers.values():
            if not server.port:
                server.port = _read_port(server)
        for server in self.servers.values():
            _wait_ready(server)

    def stop(self) -> None:
        for server in self.servers.values():
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers.values():
            try:
                server.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
            # Anything left in its session (a worker whose supervisor was killed) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.process.pid, signal.SIGKILL)
            if server.process.stdout is not None:
                server.process.stdout.close()


def _read_port(server: Server) -> int:
    """The port the server prints once it has bound its socket, within a deadline."""
    stdout = server.process.stdout
    assert stdout is not None
    deadline = time.monotonic() + STARTUP_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                line = stdout.readline()
                if line.startswith("port "):
                    return int(line.split()[1])
                if not line:
                    break
    code = server.process.poll()
    raise RuntimeError(f"the {server.role} server did not start (exit code {code})")


def _wait_ready(server: Server) -> None:
    """Poll until the server answers an HTTP request: uvicorn listens after its lifespan."""
    never = RuntimeError(f"the {server.role} server on port {server.port} never became ready")

    def answers() -> bool:
        if server.process.poll() is not None:
            raise never
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, server.port), timeout=1) as sock,
        ):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 ")
        return False

    try:
        wait_until(answers, timeout=STARTUP_SECONDS)
    except TimeoutError:
        raise never from None


def cpu_busy_seconds(cpu: int) -> float:
    """Time one CPU has not been idle since boot (user, nice, system, irq, softirq, steal)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / TICKS
    raise RuntimeError(f"cpu{cpu} is not in /proc/stat")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl+C, so that the servers are stopped either way."""

    def handler(signum: int, frame: object) -> None:
        # As SIGINT, it reaches asyncio's runner, which cancels the run cleanly; raising here
        # instead could surface inside a transport callback. A shell starts background jobs
        # with SIGINT ignored: then let it raise KeyboardInterrupt after all.
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
