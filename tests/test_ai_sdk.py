"""The AI SDK's own client against ``sse-bridge serve --dialect ai-sdk`` in front of the fake.

``tests/js/ai_sdk_client.mjs`` runs ``DefaultChatTransport``, ``readUIMessageStream`` and the
``Chat`` class of ``ai`` exactly as ``useChat`` does, with the latest release and the latest 5.x
(``ai5``); ``ai50`` is 5.0.0, whose strict schema refuses any key it does not know. What
counts is what the SDK assembles: the exact answer, the reasoning, tool parts, errors, a quiet
stop that cancels the upstream, and a resume that gives the whole answer once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.stack import running
from sse_bridge._testing.fake.job import SAMPLE_THINKING
from sse_bridge._testing.fake.wire import ERROR_MESSAGE
from sse_bridge._testing.loopback import free_port
from sse_bridge._types import ASGIApp, Message, Receive, Scope, Send
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, answer_tokens
from tests._servers import serve
from tests.test_docs import on_port, shell_server, snippets

CLIENT = Path(__file__).parent / "js" / "ai_sdk_client.mjs"
SDKS = ["ai5", "ai"]
TOKENS = 12
ANSWER = "".join(answer_tokens(TOKENS))
FAST = {"num_tokens": TOKENS, "tokens_per_second": 0}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def faults_from_header(app: ASGIApp) -> ASGIApp:
    """The fake, taking a request's overrides from an ``x-fake`` header: the bridge sends
    Ollama only the fields of a chat request, but forwards the client's headers."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        overrides = dict(scope.get("headers", [])).get(b"x-fake")
        if scope["type"] != "http" or overrides is None:
            await app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        value = json.loads(body)
        value["fake"] = json.loads(overrides)
        rewritten = json.dumps(value).encode()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": rewritten, "more_body": False}

        await app(scope, replay, send)

    return wrapped


@pytest.fixture(scope="module")
def ollama() -> Iterator[tuple[str, FakeOllama]]:
    fake = FakeOllama(FakeOllamaConfig())
    with serve(faults_from_header(fake)) as url:
        yield url, fake


def sidecar(upstream: str, *extra: str) -> Any:
    args = ("serve", "--upstream", upstream, "--dialect", "ai-sdk", "--log-level", "warning")
    return running(*args, "--model", "llama3.2", *extra)


@pytest.fixture(scope="module")
def bridge(ollama: tuple[str, FakeOllama]) -> Iterator[str]:
    with sidecar(ollama[0]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def resumable(ollama: tuple[str, FakeOllama]) -> Iterator[str]:
    with sidecar(ollama[0], "--resume", "memory") as (url, _):
        yield url


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None, "node is required for the AI SDK tests (.ci/run installs it)"
    result = subprocess.run(
        [node, str(CLIENT), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=CLIENT.parent,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def chat(url: str, sdk: str, *, fake: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    headers = {"x-fake": json.dumps(fake or FAST)}
    spec = {"sdk": sdk, "api": f"{url}/api/chat", "mode": "chat", "chatId": "chat-1"}
    return run_client({**spec, "body": body, "headers": headers})


@pytest.mark.parametrize("sdk", SDKS)
def test_the_sdk_assembles_the_exact_answer(bridge: str, sdk: str) -> None:
    result = chat(bridge, sdk)
    assert result["errors"] == []
    assert result["text"] == ANSWER
    assert result["partTypes"] == ["step-start", "text"]
    assert result["states"] == ["done"]
    chunks = result["chunks"]
    assert chunks[:3] == ["start", "start-step", "text-start"]
    assert chunks[3:-3] == ["text-delta"] * TOKENS
    assert chunks[-3:] == ["text-end", "finish-step", "finish"]
    metadata = result["metadata"]
    assert metadata["finishReason"] == "stop"
    assert metadata["usage"]["outputTokens"] == TOKENS
    assert metadata["model"] == "llama3.2"


@pytest.mark.parametrize("sdk", SDKS)
def test_reasoning_is_the_thinking_ahead_of_the_text(bridge: str, sdk: str) -> None:
    result = chat(bridge, sdk, think=True)
    assert result["errors"] == []
    assert result["reasoning"] == SAMPLE_THINKING
    assert result["text"] == ANSWER
    assert result["partTypes"] == ["step-start", "reasoning", "text"]
    assert result["states"] == ["done", "done"]


@pytest.mark.parametrize("sdk", SDKS)
def test_a_tool_call_arrives_as_a_tool_part(bridge: str, sdk: str) -> None:
    result = chat(bridge, sdk, tools=[WEATHER])
    assert result["errors"] == []
    [tool] = result["tools"]
    assert tool["type"] == "tool-get_weather"
    assert tool["state"] == "input-available"
    assert tool["input"] == {"city": "example"}
    assert tool["toolCallId"].startswith("call_")
    assert result["metadata"]["finishReason"] == "tool-calls"


@pytest.mark.parametrize("sdk", SDKS)
def test_a_tool_run_in_the_page_goes_back_and_the_answer_continues_the_message(
    bridge: str, ollama: tuple[str, FakeOllama], sdk: str
) -> None:
    fake = ollama[1]
    tokens = 5 + SDKS.index(sdk)  # to tell this test's requests from the other SDK's
    spec = {"sdk": sdk, "api": f"{bridge}/api/chat", "mode": "tools", "chatId": f"tools-{sdk}"}
    headers = {"x-fake": json.dumps({**FAST, "num_tokens": tokens})}
    output = {"temperature": 20}
    result = run_client(
        {**spec, "headers": headers, "body": {"tools": [WEATHER]}, "output": output}
    )
    assert result["errors"] == []
    assert result["status"] == "ready"
    # One assistant message: the tool's step, then the answer's.
    assert result["roles"] == ["user", "assistant"]
    assert result["partTypes"] == ["step-start", "tool-get_weather", "step-start", "text"]
    assert result["tools"][0]["state"] == "output-available"
    assert result["text"] == "".join(answer_tokens(tokens))
    calls = [
        r
        for r in fake.records
        if r.body is not None and r.body.get("fake", {}).get("num_tokens") == tokens
    ]
    assert len(calls) == 2
    assert calls[1].body is not None
    assert calls[1].body["messages"][-2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "example"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": 20}'},
    ]


@pytest.mark.parametrize("sdk", SDKS)
def test_a_model_that_loads_slowly_still_streams_the_exact_answer(bridge: str, sdk: str) -> None:
    # Past --commit-after (1 s) without upstream headers, the bridge commits the event stream
    # and sends keepalives: the SDK skips them and still assembles the answer.
    result = chat(bridge, sdk, fake={**FAST, "load_delay": 1.5})
    assert result["errors"] == []
    assert result["text"] == ANSWER
    assert result["chunks"][-1] == "finish"


@pytest.mark.parametrize("sdk", SDKS)
def test_an_unknown_model_reaches_the_client_as_an_error(bridge: str, sdk: str) -> None:
    result = chat(bridge, sdk, model="no-such-model")
    # Ollama's own 404 passes through; the SDK raises with its body (ai 5 without the status).
    assert "not found" in result["requestError"]
    assert result["status"] == (404 if sdk == "ai" else None)


@pytest.mark.parametrize("sdk", SDKS)
def test_an_upstream_error_reaches_the_client_with_the_text_so_far(bridge: str, sdk: str) -> None:
    result = chat(bridge, sdk, fake={**FAST, "fail_after": 3, "failure": "error"})
    assert result["errors"] == [ERROR_MESSAGE]
    assert result["text"] == "".join(answer_tokens(3))
    # The open part was closed before the error: the message is well formed.
    assert result["states"] == ["done"]
    assert "finish" not in result["chunks"]


@pytest.mark.parametrize("sdk", SDKS)
def test_a_truncated_stream_reaches_the_client_as_an_error(bridge: str, sdk: str) -> None:
    result = chat(bridge, sdk, fake={**FAST, "fail_after": 3, "failure": "close"})
    assert result["errors"] == [
        "upstream connection lost mid-stream: peer closed connection without sending complete"
        " message body"
    ]
    assert result["text"] == "".join(answer_tokens(3))
    assert result["states"] == ["done"]


@pytest.mark.parametrize("sdk", SDKS)
def test_a_line_that_is_not_json_reaches_the_client_and_the_answer_goes_on(
    bridge: str, sdk: str
) -> None:
    result = chat(bridge, sdk, fake={**FAST, "malformed_every": 5})
    assert result["errors"]
    assert all(e.endswith(": this is not json") for e in result["errors"]), result["errors"]
    assert result["text"] == ANSWER
    # Each error closed the part it interrupted: no part is left streaming.
    assert set(result["states"]) == {"done"}
    assert result["chunks"][-1] == "finish"


def test_use_chat_can_post_to_a_path_of_its_own(ollama: tuple[str, FakeOllama]) -> None:
    with sidecar(ollama[0], "--chat-path", "/ui/chat") as (url, _):
        spec = {"sdk": "ai", "api": f"{url}/ui/chat", "mode": "chat", "chatId": "c"}
        result = run_client({**spec, "headers": {"x-fake": json.dumps(FAST)}})
    assert result["errors"] == []
    assert result["text"] == ANSWER


def test_the_documented_command_answers_use_chat(ollama: tuple[str, FakeOllama]) -> None:
    command = next(
        s.key for s in snippets() if s.doc == "docs/ai-sdk.md" and s.key.startswith("sse-bridge")
    )
    port = free_port()
    upstream = ollama[0].rsplit(":", 1)[1]
    with shell_server(f"{on_port(command, 11434, int(upstream))} --port {port}", port):
        spec = {"sdk": "ai", "api": f"http://127.0.0.1:{port}/api/chat", "chatId": "doc"}
        result = run_client({**spec, "mode": "chat", "headers": {"x-fake": json.dumps(FAST)}})
        assert run_client({**spec, "mode": "reconnect"}) == {"none": True}
    assert result["errors"] == []
    assert result["text"] == ANSWER


def test_every_chunk_passes_the_strict_schema_of_ai_5_0(bridge: str) -> None:
    # ai 5.0.0 refused any key its schema does not name: one extra key and the SDK errors.
    for body in ({"think": True}, {"tools": [WEATHER]}):
        result = chat(bridge, "ai50", **body)
        assert result["errors"] == [], body
        assert result["chunks"][-1] == "finish"
        assert result["metadata"]["usage"]["outputTokens"] > 0
    failed = chat(bridge, "ai50", fake={**FAST, "fail_after": 2, "failure": "error"})
    assert failed["errors"] == [ERROR_MESSAGE]


@pytest.mark.timing
@pytest.mark.parametrize("sdk", SDKS)
def test_stop_ends_quietly_and_cancels_the_upstream_within_a_second(
    bridge: str, ollama: tuple[str, FakeOllama], sdk: str
) -> None:
    fake = ollama[1]
    chat_id = f"stop-{sdk}"
    slow = {"num_tokens": 400, "tokens_per_second": 20}
    spec = {"sdk": sdk, "api": f"{bridge}/api/chat", "mode": "stop", "chatId": chat_id}
    result = run_client({**spec, "after": 10, "headers": {"x-fake": json.dumps(slow)}})
    assert result["status"] == "ready"
    assert result["error"] is None
    assert result["errors"] == []
    assert result["text"] == "".join(answer_tokens(400))[: len(result["text"])]
    record = fake.records.wait_for_blocking(
        path="/api/chat",
        outcome="cancelled",
        predicate=lambda r: r.body is not None and r.body.get("fake") == slow,
        timeout=5,
    )
    assert record.ended_at is not None
    # The fake's clock is monotonic, the client's the wall clock.
    ended = record.ended_at + (time.time() - time.monotonic())
    assert ended - result["stoppedAt"] / 1000 < 1.0
    assert record.tokens_sent < 400


@pytest.mark.parametrize("sdk", SDKS)
def test_a_resume_after_a_disconnect_gives_the_whole_text_once(
    resumable: str, ollama: tuple[str, FakeOllama], sdk: str
) -> None:
    fake = ollama[1]
    chat_id = f"resume-{sdk}"
    # A length of its own per SDK, to tell this test's generations from the other's.
    tokens = 30 + SDKS.index(sdk)
    paced = {"num_tokens": tokens, "tokens_per_second": 40}
    headers = {"x-fake": json.dumps(paced)}
    spec = {"sdk": sdk, "api": f"{resumable}/api/chat", "chatId": chat_id, "headers": headers}
    result = run_client({**spec, "mode": "resume", "after": 5})
    assert result["before"][-1] == "text-delta"
    assert result["errors"] == []
    assert result["status"] == "ready"
    assert result["messages"] == 2
    assert result["text"] == "".join(answer_tokens(tokens))
    assert result["states"] == ["done"]
    generations = [r for r in fake.records if r.body is not None and r.body.get("fake") == paced]
    assert len(generations) == 1, "the resume started a second generation"
    # Once the answer has ended, nothing is live for the chat: 204, which the SDK reads as null.
    # The bridge lets go of the chat just after the fake's last line: ask until it has.
    deadline = time.monotonic() + 10
    while (after := run_client({**spec, "mode": "reconnect"})) != {"none": True}:
        assert after["text"] == result["text"], "a live resume replays the same answer"
        assert time.monotonic() < deadline, "the chat still had a live stream 10 s after its end"


@pytest.mark.parametrize("sdk", SDKS)
def test_a_chat_with_nothing_live_resumes_to_nothing(resumable: str, sdk: str) -> None:
    spec = {"sdk": sdk, "api": f"{resumable}/api/chat", "chatId": "never-seen"}
    assert run_client({**spec, "mode": "reconnect"}) == {"none": True}


def ui_body(chat_id: str) -> dict[str, Any]:
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message"}


def data_lines(lines: Iterator[str], until: str) -> list[str]:
    """The data of each event read from ``lines``, up to the first whose data holds ``until``."""
    seen: list[str] = []
    for line in lines:
        if line.startswith("data: "):
            seen.append(line[len("data: ") :])
            if until in seen[-1]:
                return seen
    return seen


def test_a_delete_stops_a_chats_generation_for_every_reader(
    resumable: str, ollama: tuple[str, FakeOllama]
) -> None:
    fake = ollama[1]
    slow = {"num_tokens": 500, "tokens_per_second": 20}
    chat_url = f"{resumable}/api/chat"
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", chat_url, json=ui_body("stop-me"), headers={"x-fake": json.dumps(slow)}
        ) as owner,
    ):
        assert owner.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert owner.headers["content-type"].startswith("text/event-stream")
        owner_lines = owner.iter_lines()
        data_lines(owner_lines, "text-delta")
        with client.stream("GET", f"{chat_url}/stop-me/stream") as follower:
            # A resumed stream carries the protocol's header too, and starts at the start.
            assert follower.status_code == 200
            assert follower.headers["x-vercel-ai-ui-message-stream"] == "v1"
            follower_lines = follower.iter_lines()
            assert json.loads(data_lines(follower_lines, "start")[0])["type"] == "start"
            assert client.delete(f"{chat_url}/stop-me/stream").status_code == 204
            for lines in (owner_lines, follower_lines):
                ending = data_lines(lines, "[DONE]")
                finish = json.loads(ending[-2])
                assert finish["type"] == "finish"
                assert finish["messageMetadata"]["finishReason"] == "interrupted"
    fake.records.wait_for_blocking(
        path="/api/chat",
        outcome="cancelled",
        predicate=lambda r: r.body is not None and r.body.get("fake") == slow,
    )
    # The bridge lets go of the chat as its generation ends: ask until it has.
    deadline = time.monotonic() + 10
    while (status := httpx.get(f"{chat_url}/stop-me/stream").status_code) != 204:
        assert status == 200
        assert time.monotonic() < deadline, "the stopped chat still had a live stream after 10 s"
