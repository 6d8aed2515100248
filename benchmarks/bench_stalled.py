"""What stalled clients cost: RSS of ``sse-bridge serve`` per client that stopped reading.

Run from the repository root::

    .venv/bin/python benchmarks/bench_stalled.py                     # 20 and 200 clients
    .venv/bin/python benchmarks/bench_stalled.py --clients 20 --http h11
    .venv/bin/python benchmarks/bench_stalled.py --send-timeout 2    # with the cut-off on

Each client is a raw socket with a small receive buffer: it sends one streaming request for an
answer the fake Ollama writes as fast as it can, reads the first event, and then reads nothing.
The bridge runs with ``--send-timeout 0`` (never cut off), so what it holds for each client is
all it would ever hold: the figure is the growth of its RSS once it has settled, divided by the
number of clients (docs/reliability.md). With ``--send-timeout N`` it prints instead how long
the bridge took to release the clients' upstream requests.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _proc import connections_to, cpu_seconds, rss_bytes

from loadtests.stack import fake_ollama, running

KiB = 1024
BODY = {
    "model": "llama3.2",
    "prompt": "hi",
    "fake": {"tokens_per_second": 0, "num_tokens": 50_000_000},
}


def request(port: int) -> bytes:
    body = json.dumps(BODY).encode()
    return (
        b"POST /api/generate HTTP/1.1\r\nhost: 127.0.0.1:%d\r\naccept: text/event-stream\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
    ) % (port, len(body), body)


def stalled_client(port: int, rcvbuf: int = 4 * KiB) -> socket.socket:
    """A client that asks for a long answer, reads its first event and then stops reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request(port))
    seen = b""
    while b"data:" not in seen:
        chunk = sock.recv(1024)
        if not chunk:
            raise RuntimeError(f"the bridge closed the stream at once: {seen[:200]!r}")
        seen += chunk
    return sock


def settled_rss(pid: int, *, timeout: float = 600.0) -> int:
    """The process's RSS once it is idle (the buffers are full: every write waits) and four
    samples 0.5 s apart are within 1 %, or after ``timeout``."""
    samples: list[int] = []
    deadline = time.monotonic() + timeout
    cpu = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        busy, cpu = cpu_seconds(pid) - cpu, cpu_seconds(pid)
        samples.append(rss_bytes(pid))
        last = samples[-4:]
        if busy < 0.025 and len(last) == 4 and max(last) - min(last) <= 0.01 * max(last):
            break
    return samples[-1]


@contextmanager
def bridge(http: str, send_timeout: float) -> Iterator[tuple[int, int, int]]:
    with (
        fake_ollama("--tokens-per-second", "0") as upstream,
        running(
            "serve",
            "--upstream",
            upstream,
            "--dialect",
            "ollama",
            "--http",
            http,
            "--send-timeout",
            str(send_timeout),
            "--max-streams",
            "2000",
            "--log-level",
            "warning",
        ) as (url, process),
    ):
        yield port_of(url), process.pid, port_of(upstream)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def warm_up(port: int) -> None:
    """One short stream read to its end, so that what is measured is per client only."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = json.dumps({"model": "llama3.2", "prompt": "hi", "fake": {"num_tokens": 50}})
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n"
            b"connection: close\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (len(body), body.encode())
        )
        while sock.recv(65536):
            pass


def measure(clients: int, http: str) -> dict[str, float]:
    with bridge(http, 0) as (port, pid, _), ExitStack() as stack:
        warm_up(port)
        before = settled_rss(pid)
        for _ in range(clients):
            stack.enter_context(stalled_client(port))
        after = settled_rss(pid)
    per_client = (after - before) / clients
    return {
        "clients": clients,
        "rss_before_mib": before / KiB / KiB,
        "rss_after_mib": after / KiB / KiB,
        "per_client_kib": per_client / KiB,
    }


def release_times(clients: int, http: str, send_timeout: float) -> tuple[float, float]:
    """Seconds from the last client's stall until its first and its last upstream request
    was released (the bridge's connections to the fake, counted from outside)."""
    with bridge(http, send_timeout) as (port, pid, upstream_port), ExitStack() as stack:
        for _ in range(clients):
            stack.enter_context(stalled_client(port))
        stalled_at = time.monotonic()
        first = None
        deadline = stalled_at + send_timeout + 60
        while time.monotonic() < deadline:
            left = connections_to(pid, upstream_port)
            now = time.monotonic() - stalled_at
            if first is None and left < clients:
                first = now
            if left == 0:
                return first or now, now
            time.sleep(0.1)
        raise RuntimeError(f"{left} upstream requests still open after {deadline - stalled_at} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="20,200", help="comma-separated client counts")
    parser.add_argument("--http", default="httptools", choices=("h11", "httptools"))
    parser.add_argument("--send-timeout", type=float, default=0.0)
    args = parser.parse_args()
    counts = [int(item) for item in args.clients.split(",")]
    if args.send_timeout:
        for count in counts:
            first, last = release_times(count, args.http, args.send_timeout)
            print(
                f"http={args.http} send_timeout={args.send_timeout:g} clients={count} "
                f"upstream released after the stall: first {first:.2f} s, last {last:.2f} s"
            )
        return
    for count in counts:
        figures = measure(count, args.http)
        print(
            f"http={args.http} clients={count} rss_before={figures['rss_before_mib']:.1f} MiB "
            f"rss_after={figures['rss_after_mib']:.1f} MiB "
            f"per_client={figures['per_client_kib']:.0f} KiB"
        )


if __name__ == "__main__":
    main()
