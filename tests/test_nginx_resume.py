"""Resumable streams behind a real nginx: two `sse-bridge serve` processes share Redis.

The issue's proof, on real servers: nginx sends requests round robin to two bridges that keep
their streams in a real redis-server. A stream started on one bridge is resumed on the other, is
stopped by a DELETE that the other receives, and survives its owner's SIGKILL as far as it
can: its reader on the other bridge gets every stored event and then the terminal error.

nginx runs deploy/nginx.conf with `least_conn` removed (so that consecutive requests alternate)
and a response header naming the bridge it picked; each bridge's access log, read at the end,
says the same from the bridges' side. The fake Ollama runs as its own process and reports what it
generated over HTTP (`GET /_fake/requests`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from loadtests.stack import (
    DEPLOY_CONF,
    UPSTREAM_HEADER,
    expose_upstream,
    free_port,
    nginx,
    round_robin,
    running,
)
from sse_bridge._resume.store import stream_tag
from sse_bridge.probe import analyse
from sse_bridge.testing import ParsedEvent, SSEParser, answer_tokens
from tests._redis import redis_server
from tests._wire import fetch

pytestmark = pytest.mark.anyio

# Generous bounds for a busy 2-core machine: they only keep a broken stack from hanging a test.
DEADLINE = 30.0
# How long a reader may wait for the terminal error after its stream's owner was killed: about
# 5-6 s is expected (three missed heartbeats of 1 s, then two more).
ORPHAN_DEADLINE = 15.0
# The bound, from sending the DELETE to the fake seeing its request cancelled.
STOP_BOUND = 1.0
PACE = 20.0  # tokens per second
SSE = {"accept": "text/event-stream", "content-type": "application/json"}
STOPPED = {"finished": True, "done_reason": "stopped"}


def chat(marker: str, num_tokens: int, tokens_per_second: float = PACE) -> bytes:
    """A chat request whose one-word prompt finds its generation among the fake's records."""
    return json.dumps(
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": marker}],
            "fake": {"tokens_per_second": tokens_per_second, "num_tokens": num_tokens},
        }
    ).encode()


def data(events: list[ParsedEvent]) -> list[Any]:
    return [json.loads(event.data) for event in events]


def without_durations(value: Any) -> Any:
    """An event with the timings of Ollama's metrics left out (they differ between two runs)."""
    if isinstance(value, dict):
        return {k: without_durations(v) for k, v in value.items() if not k.endswith("_duration")}
    return value


async def generations(fake: str, marker: str) -> list[dict[str, Any]]:
    """The fake's records of the chat requests with this prompt."""
    async with httpx.AsyncClient(trust_env=False, timeout=DEADLINE) as client:
        response = await client.get(f"{fake}/_fake/requests")
    response.raise_for_status()
    return [
        record
        for record in response.json()
        if record["path"] == "/api/chat"
        and (record["body"] or {}).get("messages", [{}])[0].get("content") == marker
    ]


async def ended_generation(fake: str, marker: str) -> dict[str, Any]:
    """The one generation with this prompt, once it has an outcome (polled, bounded)."""
    with anyio.fail_after(DEADLINE):
        while True:
            records = await generations(fake, marker)
            assert len(records) <= 1, records
            if records and records[0]["outcome"] is not None:
                return records[0]
            await anyio.sleep(0.01)


@dataclass
class Bridge:
    url: str
    process: subprocess.Popen[str]
    log: str = ""

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def stop(self) -> str:
        """Stop it (if it still runs) and return what it logged."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=DEADLINE)
        self.log += self.process.communicate(timeout=DEADLINE)[1] or ""
        return self.log

    def stream_lines(self, stream_id: str) -> list[str]:
        """Its access log lines (`sse_bridge.access`) of this stream, once it has stopped: the
        stream itself, its resumes and its stop (by the stream's tag: the log has no ids)."""
        tag = stream_tag(stream_id)
        assert stream_id not in self.log
        return [
            line
            for line in self.log.splitlines()
            if " stream method=" in line
            and (f"stream_id={tag}" in line or f"path=/streams/{tag} " in line)
        ]


@dataclass
class Stack:
    """nginx (round robin) in front of two bridges sharing one Redis."""

    url: str
    bridges: list[Bridge]

    def served(self, headers: dict[str, str]) -> Bridge:
        """The bridge nginx sent a request to, by the header it adds to the response."""
        address = headers[UPSTREAM_HEADER.lower()]
        (bridge,) = [bridge for bridge in self.bridges if bridge.address == address]
        return bridge

    def other(self, bridge: Bridge) -> Bridge:
        (other,) = [other for other in self.bridges if other is not bridge]
        return other

    def stop_bridges(self) -> None:
        """Stop both bridges, so that their access logs can be read."""
        for bridge in self.bridges:
            bridge.stop()


@contextlib.contextmanager
def stack(fake: str, workdir: Path, conf: str | None = None) -> Iterator[Stack]:
    """The stack, with deploy/nginx.conf made round robin unless `conf` is given."""
    if conf is None:
        conf = expose_upstream(round_robin(DEPLOY_CONF.read_text()))
    with redis_server() as redis, contextlib.ExitStack() as processes:
        args = ("serve", "--upstream", fake, "--dialect", "ollama", "--resume", redis)
        bridges = [
            Bridge(*processes.enter_context(running(*args, "--log-level", "info", port=port)))
            for port in (free_port(), free_port())
        ]
        ports = [int(bridge.url.rsplit(":", 1)[1]) for bridge in bridges]
        url = processes.enter_context(nginx(conf, bridges=ports, workdir=workdir))
        yield Stack(url, bridges)


@dataclass
class Reader:
    """One event stream read as it arrives, so that a test can act while it flows."""

    url: str
    method: str = "GET"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    events: list[ParsedEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    complete: bool = False
    done: bool = False
    error: str | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Read to the end; started once the response headers are in."""
        assert self.url.startswith("http://127."), "tests talk to loopback only"
        parser = SSEParser()
        try:
            async with (
                httpx.AsyncClient(trust_env=False, timeout=DEADLINE) as client,
                client.stream(
                    self.method, self.url, content=self.body, headers=self.headers
                ) as response,
            ):
                self.status = response.status_code
                self.response_headers = dict(response.headers)
                task_status.started()
                async for chunk in response.aiter_raw():
                    now = time.monotonic()
                    for event in parser.feed(chunk):
                        self.events.append(event)
                        self.times.append(now)
                    self.notify()
            self.complete = True
        except httpx.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done = True
            self.notify()

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait(self, condition: Callable[[Reader], bool], seconds: float = DEADLINE) -> None:
        """Until `condition` holds; fails if the stream ends first or `seconds` pass."""
        with anyio.fail_after(seconds):
            while not condition(self):
                assert not self.done, f"the stream ended first: {self.error} {self.events[-3:]}"
                await self.changed.wait()

    async def finish(self, seconds: float = DEADLINE) -> None:
        """Until the stream has ended; fails if `seconds` pass first."""
        with anyio.fail_after(seconds):
            while not self.done:
                await self.changed.wait()


def numbers(stream_id: str, events: list[ParsedEvent]) -> list[int]:
    """The event numbers of a resumed stream's ids (`<stream id>:<n>`)."""
    prefix = f"{stream_id}:"
    assert all(event.id.startswith(prefix) for event in events), [e.id for e in events]
    return [int(event.id.removeprefix(prefix)) for event in events]


async def test_a_stream_started_on_one_bridge_resumes_on_the_other(
    fake: str, tmp_path: Path
) -> None:
    tokens = 60  # 3 s at 20 tokens/s: the resume follows the live generation for most of it.
    marker = uuid.uuid4().hex
    with stack(fake, tmp_path) as deployment:
        # Read 5 events, then disconnect (a reload, a network change).
        first = await fetch(
            f"{deployment.url}/api/chat",
            body=chat(marker, tokens),
            headers=SSE,
            stop_after_events=5,
            deadline=DEADLINE,
        )
        assert first.status == 200, first.body
        owner = deployment.served(first.headers)
        stream_id = first.headers["x-stream-id"]
        # Resume through nginx, which sends the next request to the other bridge.
        resumed = await fetch(
            f"{deployment.url}/streams/{stream_id}",
            method="GET",
            body=b"",
            headers={"accept": "text/event-stream", "last-event-id": "5"},
            deadline=DEADLINE,
        )
        assert resumed.status == 200, resumed.body
        assert resumed.complete, resumed.error
        assert deployment.served(resumed.headers) is deployment.other(owner)
        # The whole stream, replayed from the start once it has ended.
        replay = await fetch(
            f"{deployment.url}/streams/{stream_id}",
            method="GET",
            body=b"",
            headers={"accept": "text/event-stream"},
            deadline=DEADLINE,
        )
        # The same question asked again and read without interruption.
        again = uuid.uuid4().hex
        uninterrupted = await fetch(
            f"{deployment.url}/api/chat",
            body=chat(again, tokens, tokens_per_second=0),
            headers=SSE,
            deadline=DEADLINE,
        )
        generation = await ended_generation(fake, marker)
        deployment.stop_bridges()

    got = data(first.events[:5]) + data(resumed.events)
    # None lost, none repeated: the events after 5 are numbered 6, 7, ... to the last.
    assert numbers(stream_id, resumed.events) == list(range(6, 6 + len(resumed.events)))
    assert got == data(replay.events)
    assert [event.get("token") for event in got[:-1]] == answer_tokens(tokens)
    assert got[-1]["finished"] is True
    assert [without_durations(e) for e in got] == [
        without_durations(e) for e in data(uninterrupted.events)
    ]
    # The upstream ran once, to its end, on the bridge that started the stream.
    assert generation["outcome"] == "completed"
    assert len(await generations(fake, marker)) == 1
    other = deployment.other(owner)
    (started,) = [line for line in owner.stream_lines(stream_id) if "method=POST" in line]
    assert "path=/api/chat status=200" in started
    assert not any("method=POST" in line for line in other.stream_lines(stream_id))
    assert any(
        f"method=GET path=/streams/{stream_tag(stream_id)} status=200" in line
        and f" events={len(resumed.events)} " in line
        for line in other.stream_lines(stream_id)
    ), other.stream_lines(stream_id)


async def follow(group: anyio.abc.TaskGroup, url: str, stream_id: str, last: str) -> Reader:
    """A reader of ``/streams/<stream_id>`` from event ``last`` on, in ``group``, answered 200."""
    follower = Reader(
        f"{url}/streams/{stream_id}",
        headers={"accept": "text/event-stream", "last-event-id": last},
    )
    await group.start(follower.run)
    assert follower.status == 200
    return follower


async def stop_from_the_other_bridge(fake: str, workdir: Path) -> float:
    """A stream read on its owner and on the other bridge, stopped by a DELETE to the other.

    Returns how long after the DELETE was sent the fake saw its request cancelled.
    """
    marker = uuid.uuid4().hex
    with stack(fake, workdir) as deployment:
        async with anyio.create_task_group() as group:
            original = Reader(
                f"{deployment.url}/api/chat",
                method="POST",
                body=chat(marker, 400),  # 20 s: it only ends early if the stop works.
                headers=SSE,
            )
            await group.start(original.run)
            assert original.status == 200
            owner = deployment.served(original.response_headers)
            other = deployment.other(owner)
            stream_id = original.response_headers["x-stream-id"]
            await original.wait(lambda reader: len(reader.events) >= 3)
            follower = await follow(group, deployment.url, stream_id, "0")
            assert deployment.served(follower.response_headers) is other
            await follower.wait(lambda reader: len(reader.events) >= 5)
            async with httpx.AsyncClient(trust_env=False, timeout=DEADLINE) as client:
                sent = time.monotonic()
                stop = await client.delete(f"{other.url}/streams/{stream_id}")
            assert stop.status_code == 204, stop.text
            generation = await ended_generation(fake, marker)
            await original.finish()
            await follower.finish()
        deployment.stop_bridges()

    assert generation["outcome"] == "cancelled"
    assert generation["cancelled_phase"] == "streaming"
    assert len(await generations(fake, marker)) == 1
    for reader in (original, follower):
        assert reader.complete, reader.error
        assert data(reader.events)[-1] == STOPPED
        tokens = [event.get("token") for event in data(reader.events)[:-1]]
        assert tokens == answer_tokens(len(tokens))
    assert numbers(stream_id, follower.events) == list(range(1, len(follower.events) + 1))
    assert data(follower.events) == data(original.events)
    # The DELETE reached the other bridge only, which passed the stop on to the owner.
    assert any(
        f"method=DELETE path=/streams/{stream_tag(stream_id)} status=204" in line
        for line in other.stream_lines(stream_id)
    ), other.stream_lines(stream_id)
    assert not any("method=DELETE" in line for line in owner.stream_lines(stream_id))
    (started,) = [line for line in owner.stream_lines(stream_id) if "method=POST" in line]
    assert "outcome=stopped" in started
    # Both clocks are CLOCK_MONOTONIC, one for the whole machine: the fake's timestamp and ours
    # compare across processes.
    return float(generation["ended_at"] - sent)


async def test_a_delete_to_the_other_bridge_stops_the_stream(fake: str, tmp_path: Path) -> None:
    await stop_from_the_other_bridge(fake, tmp_path)


@pytest.mark.timing
async def test_a_delete_to_the_other_bridge_stops_the_upstream_within_a_second(
    fake: str, tmp_path: Path
) -> None:
    latency = await stop_from_the_other_bridge(fake, tmp_path)
    assert 0 < latency < STOP_BOUND, latency


async def test_the_reader_on_the_other_bridge_outlives_the_owners_sigkill(
    fake: str, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    with stack(fake, tmp_path) as deployment:
        first = await fetch(
            f"{deployment.url}/api/chat",
            body=chat(marker, 400),
            headers=SSE,
            stop_after_events=3,
            deadline=DEADLINE,
        )
        assert first.status == 200, first.body
        owner = deployment.served(first.headers)
        other = deployment.other(owner)
        stream_id = first.headers["x-stream-id"]
        async with anyio.create_task_group() as group:
            follower = await follow(group, deployment.url, stream_id, "3")
            assert deployment.served(follower.response_headers) is other
            # Mid-stream: the follower is reading live events.
            await follower.wait(lambda reader: len(reader.events) >= 10)
            owner.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            owner.process.wait(timeout=DEADLINE)
            await follower.finish(ORPHAN_DEADLINE)
        # Replayed afterwards through nginx (which finds the dead bridge and tries the other).
        replay = await fetch(
            f"{deployment.url}/streams/{stream_id}",
            method="GET",
            body=b"",
            headers={"accept": "text/event-stream"},
            deadline=DEADLINE,
        )
        generation = await ended_generation(fake, marker)
        deployment.stop_bridges()

    assert follower.complete, follower.error
    # The terminal error came within the bound, rather than the reader hanging.
    assert follower.times[-1] - killed < ORPHAN_DEADLINE
    *events, last = data(follower.events)
    assert last == {
        "error": "the bridge instance running this stream stopped before it ended; "
        "the answer is incomplete",
        "finished": True,
    }
    # Every event stored, none lost or repeated, and then the error, which is stored too.
    assert numbers(stream_id, follower.events) == list(range(4, 4 + len(follower.events)))
    assert len(events) >= 10
    tokens = [event.get("token") for event in data(first.events[:3]) + events]
    assert tokens == answer_tokens(len(tokens))
    assert replay.status == 200, replay.body
    assert data(replay.events) == data(first.events[:3]) + data(follower.events)
    # The owner's death dropped its upstream request: the fake ran one generation, cut short.
    assert generation["outcome"] == "cancelled"
    assert len(await generations(fake, marker)) == 1
    assert any(
        f"method=GET path=/streams/{stream_tag(stream_id)} status=200" in line
        for line in other.stream_lines(stream_id)
    ), other.stream_lines(stream_id)


async def resume_and_stop_through_the_deploy_config(fake: str, workdir: Path) -> Reader:
    """deploy/nginx.conf as it is: a resume and a stop pass through it; returns the resume."""
    marker = uuid.uuid4().hex
    with stack(fake, workdir, conf=DEPLOY_CONF.read_text()) as deployment:
        first = await fetch(
            f"{deployment.url}/api/chat",
            body=chat(marker, 400),
            headers=SSE,
            stop_after_events=2,
            deadline=DEADLINE,
        )
        assert first.status == 200, first.body
        stream_id = first.headers["x-stream-id"]
        async with anyio.create_task_group() as group:
            follower = await follow(group, deployment.url, stream_id, "2")
            assert follower.response_headers["content-type"].startswith("text/event-stream")
            # nginx obeys X-Accel-Buffering and hides it from its own client.
            assert "x-accel-buffering" not in follower.response_headers
            await follower.wait(lambda reader: len(reader.events) >= 40)
            async with httpx.AsyncClient(trust_env=False, timeout=DEADLINE) as client:
                stop = await client.delete(f"{deployment.url}/streams/{stream_id}")
            assert stop.status_code == 204, stop.text
            await follower.finish()
        generation = await ended_generation(fake, marker)
        deployment.stop_bridges()

    assert follower.complete, follower.error
    assert data(follower.events)[-1] == STOPPED
    assert numbers(stream_id, follower.events) == list(range(3, 3 + len(follower.events)))
    tokens = [event.get("token") for event in data(first.events[:2] + follower.events[:-1])]
    assert tokens == answer_tokens(len(tokens))
    assert generation["outcome"] == "cancelled"
    return follower


async def test_a_resume_and_a_stop_pass_through_the_deploy_config(
    fake: str, tmp_path: Path
) -> None:
    await resume_and_stop_through_the_deploy_config(fake, tmp_path)


@pytest.mark.timing
async def test_a_resumed_stream_is_not_buffered_by_the_deploy_config(
    fake: str, tmp_path: Path
) -> None:
    follower = await resume_and_stop_through_the_deploy_config(fake, tmp_path)
    # The live part: past the few events replayed at once, and before the stop.
    live = follower.times[5:-1]
    analysis = analyse([live], interval=1 / PACE)
    assert analysis.verdict == "streaming", analysis
    assert analysis.coalesced <= 0.1, analysis
