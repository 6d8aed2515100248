"""Reconnect storm: 1,000 clients resume their streams with Last-Event-ID within one second.

Run from the repository root::

    .venv/bin/python benchmarks/bench_storm.py
    .venv/bin/python benchmarks/bench_storm.py --clients 100 --max-streams 150   # the quick form

``sse-bridge serve --resume memory --event-ids`` in front of the fake Ollama. Each client starts
a stream, reads its first events, and leaves (as every browser does when an instance restarts
behind a load balancer); its generation runs on for the resume grace. Then every client
reconnects, all within one second, as ``EventSource`` does: ``GET /streams/<id>`` with
``Last-Event-ID``. A client told ``503`` must have ``Retry-After``, and comes back after it.
Printed: how many were served at once, how many after a 503, how many were lost (an error, a
503 without Retry-After, or a replay that did not start right after their last event), and the
time from each reconnect to its first replayed event (p50, p99, worst), counted from the
reconnect that was served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.stack import fake_ollama, running

TOKENS, PACE = 25, 5  # a five-second answer


@dataclass
class Client:
    stream_id: str = ""
    last_id: str = ""
    status: int = 0
    first_replayed: float | None = None
    refused: int = 0
    error: str = ""


async def request(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    writer.write(head)
    return reader, writer


async def response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


async def next_event_id(reader: asyncio.StreamReader) -> str:
    """The id of the next event with data (chunk framing lines are skipped)."""
    event_id = ""
    while True:
        line = (await reader.readline()).strip()
        if not line and reader.at_eof():
            raise ConnectionError("the stream ended")
        if line.startswith(b"id:"):
            event_id = line[3:].strip().decode()
        elif line.startswith(b"data:") and event_id:
            return event_id


async def start(port: int, client: Client) -> None:
    body = json.dumps(
        {"model": "llama3.2", "prompt": "storm", "fake": {"num_tokens": TOKENS}}
    ).encode()
    head = (
        b"POST /api/generate HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    reader, writer = await request(port, head)
    status, headers = await response_head(reader)
    assert status == 200, status
    client.stream_id = headers["x-stream-id"]
    for _ in range(2):
        client.last_id = await next_event_id(reader)
    writer.close()  # the client leaves


async def reconnect(port: int, client: Client, delay: float) -> None:
    await asyncio.sleep(delay)
    head = (
        b"GET /streams/%b HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n"
        b"last-event-id: %b\r\n\r\n" % (client.stream_id.encode(), client.last_id.encode())
    )
    for _ in range(100):
        began = time.monotonic()
        try:
            reader, writer = await request(port, head)
            client.status, headers = await response_head(reader)
            if client.status == 503:
                client.refused += 1
                retry = headers.get("retry-after")
                writer.close()
                if retry is None or not retry.isdigit():
                    client.error = "503 without Retry-After"
                    return
                await asyncio.sleep(int(retry) + random.random())
                continue
            if client.status != 200:
                client.error = f"status {client.status}"
                return
            first = await next_event_id(reader)
            client.first_replayed = time.monotonic() - began
            stream, _, seq = client.last_id.rpartition(":")
            if first != f"{stream}:{int(seq) + 1}":
                client.error = f"replay began at {first}, after {client.last_id}"
            while await reader.read(65536):  # to the end of the stream
                pass
            writer.close()
            return
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
            client.error = repr(exc)
            return
    client.error = "still refused after 100 attempts"


async def storm(port: int, count: int) -> None:
    clients = [Client() for _ in range(count)]
    batch = 100
    for n in range(0, count, batch):
        await asyncio.gather(*(start(port, c) for c in clients[n : n + batch]))
    await asyncio.gather(*(reconnect(port, c, random.random()) for c in clients))
    served = [c for c in clients if not c.error and c.first_replayed is not None]
    times = sorted(c.first_replayed for c in served if c.first_replayed is not None)

    def at(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

    print(
        f"clients={count} served_at_once={sum(1 for c in served if not c.refused)} "
        f"served_after_503={sum(1 for c in served if c.refused)} "
        f"refusals={sum(c.refused for c in clients)} lost={count - len(served)} "
        f"first_replayed_p50={at(0.5) * 1000:.0f}ms p99={at(0.99) * 1000:.0f}ms "
        f"worst={(times[-1] if times else float('nan')) * 1000:.0f}ms"
    )
    for client in clients:
        if client.error:
            print(f"lost: {client.stream_id}: {client.error}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--max-streams", type=int, default=1500)
    args = parser.parse_args()
    with (
        fake_ollama("--tokens-per-second", str(PACE)) as upstream,
        running(
            *("serve", "--upstream", upstream, "--dialect", "ollama", "--event-ids"),
            *("--resume", "memory", "--max-streams", str(args.max_streams)),
            *("--log-level", "warning"),
        ) as (url, _),
    ):
        import uvloop

        uvloop.run(storm(int(url.rsplit(":", 1)[1]), args.clients))


if __name__ == "__main__":
    main()
