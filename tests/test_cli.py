"""The sse-bridge command, in-process with click's runner and as real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from loadtests.stack import BIN, DEADLINE, running
from sse_bridge._cli import server as _server
from sse_bridge._cli.main import main
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, SSEParser
from tests._servers import serve

# uvicorn shuts down gracefully on SIGTERM, then re-raises it: the status a shell shows is 143.
BY_SIGTERM = -signal.SIGTERM


def test_every_serve_option_has_help_a_default_and_an_env_var() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    options = re.findall(r"^  (--[a-z-]+)", result.output, re.M)
    assert len(options) >= 18
    blocks = re.split(r"\n  (?=--)", result.output)
    for block in blocks[1:]:
        name = block.split()[0].split("/")[0]
        assert f"env var: SSE_BRIDGE_{name[2:].upper().replace('-', '_')}" in block, block
        if name not in (
            "--upstream",
            "--api-key",
            "--cors-origin",
            "--model",
            "--resume-owner-header",
        ):
            assert "default:" in block, block


def test_resume_on_redis_without_redis_py_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # As --metrics and --http2 without their extras: a usage error naming the extra, no traceback.
    monkeypatch.delitem(sys.modules, "sse_bridge._resume.redis.store", raising=False)
    monkeypatch.delitem(sys.modules, "sse_bridge._resume.redis.client", raising=False)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    args = ["serve", "--upstream", "http://h", "--resume", "redis://127.0.0.1:1/0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.exception is not None
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "Error: the Redis resume store needs redis-py: pip install 'sse-bridge[resume]'" in (
        result.output
    )


def test_a_busy_metrics_port_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(_server, "_run", lambda *args, **kwargs: None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["serve", "--upstream", "http://h", "--metrics-port", str(port)]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"Error: --metrics-port {port}: cannot listen on 127.0.0.1:{port}" in result.output
    assert "in use" in result.output


def test_serve_forwards_options_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        _server, "serve", lambda server, options: seen.update(server=server, options=options)
    )
    env = {
        "SSE_BRIDGE_UPSTREAM": "http://127.0.0.1:11434",
        "SSE_BRIDGE_DIALECT": "ollama",
        "SSE_BRIDGE_CORS_ORIGIN": "http://a.example http://b.example",
        "SSE_BRIDGE_EVENT_IDS": "true",
    }
    result = CliRunner().invoke(main, ["serve", "--port", "9000", "--workers", "2"], env=env)
    assert result.exit_code == 0, result.output
    server = seen["server"]
    assert (server.port, server.workers, server.host) == (9000, 2, "127.0.0.1")
    options = seen["options"]
    assert options.upstream == "http://127.0.0.1:11434"
    assert options.dialect == "ollama"
    assert options.cors_origins == ("http://a.example", "http://b.example")
    assert options.event_ids is True
    assert options.read_timeout == 0  # off: wait forever
    assert options.commit_after == 1.0
    assert options.grace == 10.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve"], "Missing option '--upstream'"),
        (["serve", "--upstream", "ftp://x"], "upstream must be an http:// or https:// URL"),
        (["serve", "--upstream", "http://h", "--dialect", "sse"], "'sse' is not one of"),
        (["serve", "--upstream", "http://h", "--keepalive", "-1"], "-1.0 is not in the range x>=0"),
        (["fake-ollama", "--failure", "boom"], "'boom' is not one of"),
        (
            ["serve", "--upstream", "http://h", "--resume", "disk"],
            "--resume must be 'memory', a redis://host:port/db URL, or off (None; 'off' on the "
            "command line), not 'disk'",
        ),
    ],
)
def test_bad_options_get_a_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_fake_ollama_command() -> None:
    with running(
        "fake-ollama", "--tokens-per-second", "0", "--num-tokens", "3", ready_path="/"
    ) as (
        url,
        process,
    ):
        assert httpx.get(f"{url}/api/version").json() == {"version": "0.12.0"}
        lines = httpx.post(f"{url}/api/generate", json={"model": "llama3.2", "prompt": "hi"}).text
        assert [json.loads(line)["done"] for line in lines.splitlines()] == [False] * 3 + [True]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE) == BY_SIGTERM


def test_serve_streams_and_shuts_down_cleanly_on_sigterm() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=10, num_tokens=1000))
    with (
        serve(fake) as upstream,
        running("serve", "--upstream", upstream, "--dialect", "ollama", "--grace", "1") as (
            url,
            process,
        ),
    ):
        parser = SSEParser()
        events: list[dict[str, Any]] = []
        body = {"model": "llama3.2", "prompt": "hi"}
        headers = {"accept": "text/event-stream"}
        with httpx.stream("POST", f"{url}/api/generate", json=body, headers=headers) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            while len(events) < 3:
                events += [json.loads(e.data) for e in parser.feed(next(chunks))]
            process.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            for chunk in chunks:
                events += [json.loads(e.data) for e in parser.feed(chunk)]
        ended_at = time.monotonic()
        assert process.wait(timeout=DEADLINE) == BY_SIGTERM
        stderr = process.communicate()[1]
    assert events[-1] == {
        "error": "the bridge is shutting down; retry the request",
        "finished": True,
        "done_reason": "shutdown",
    }
    assert all("token" in e for e in events[:-1])
    # The one-second grace was given. Only a lower bound here, which a slow machine cannot
    # break (it only lengthens the wait); process.wait() bounds the rest.
    assert ended_at - sent_at >= 0.9
    assert "Traceback" not in stderr
    # Ended by the bridge itself: not an upstream error, which the error ratio would count.
    assert "outcome=shutdown" in stderr
    assert "outcome=upstream_error" not in stderr
    # The upstream request was closed too: the fake stopped generating.
    record = fake.records.wait_for_blocking(path="/api/generate", outcome="cancelled", timeout=5)
    assert record.tokens_sent < 100


def test_serve_with_two_workers() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=2))
    with (
        serve(fake) as upstream,
        running("serve", "--upstream", upstream, "--dialect", "ollama", "--workers", "2") as (
            url,
            process,
        ),
    ):
        for _ in range(4):
            response = httpx.post(
                f"{url}/api/chat",
                json={"model": "llama3.2", "messages": []},
                headers={"accept": "text/event-stream"},
            )
            assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        # uvicorn's supervisor of several workers exits 0 once they have stopped.
        assert process.wait(timeout=DEADLINE) == 0
        assert "Traceback" not in process.communicate()[1]


def test_demo_streams_tokens_to_the_terminal_one_by_one() -> None:
    reads: list[tuple[float, bytes]] = []
    with subprocess.Popen(
        [str(BIN), "demo", "--once", "--port", "0", "--tokens-per-second", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        assert process.stdout is not None
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            reads.append((time.monotonic(), chunk))
        assert process.wait(timeout=DEADLINE) == 0
    output = b"".join(chunk for _, chunk in reads).decode()
    assert "curl -N -H 'Accept: text/event-stream'" in output
    assert "Hello! This answer is streamed token by token" in output
    assert re.search(r"time to first token: \d+ ms; 66 tokens in [\d.]+ s", output)
    answer_reads = [t for t, chunk in reads if b"time to first token" not in chunk]
    # 66 tokens at 40/s: the answer arrives over more than a second, in many pieces.
    assert len(answer_reads) >= 20
    assert answer_reads[-1] - answer_reads[0] >= 1.0


def test_sigterm_while_waiting_for_the_upstream_is_a_503() -> None:
    fake = FakeOllama(FakeOllamaConfig(load_delay=30))
    with (
        serve(fake) as upstream,
        running("serve", "--upstream", upstream, "--commit-after", "0", "--grace", "0.5") as (
            url,
            process,
        ),
    ):

        def terminate_once_the_upstream_has_the_request() -> None:
            fake.records.wait_for_blocking(path="/api/generate", timeout=DEADLINE)
            process.send_signal(signal.SIGTERM)

        thread = threading.Thread(target=terminate_once_the_upstream_has_the_request)
        thread.start()
        body = {"model": "llama3.2", "prompt": "hi"}
        response = httpx.post(f"{url}/api/generate", json=body, timeout=DEADLINE)
        thread.join(timeout=DEADLINE)
        assert process.wait(timeout=DEADLINE) == BY_SIGTERM
        stderr = process.communicate()[1]
        assert "Traceback" not in stderr
        assert "status=503" in stderr
        assert "outcome=shutdown" in stderr
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"error": "the bridge is shutting down; retry the request"}


def test_sigterm_stops_the_demo_while_it_streams() -> None:
    with subprocess.Popen(
        [str(BIN), "demo", "--once", "--port", "0", "--tokens-per-second", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        assert process.stdout is not None
        seen = b""
        deadline = time.monotonic() + DEADLINE
        while b"Streaming one answer" not in seen and time.monotonic() < deadline:
            seen += os.read(process.stdout.fileno(), 65536)
        process.send_signal(signal.SIGTERM)
        try:
            # The demo's servers leave signals alone: SIGTERM must still end it, at once.
            assert process.wait(timeout=5) == BY_SIGTERM
        finally:
            process.kill()
