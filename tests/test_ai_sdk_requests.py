"""``useChat``'s request in the sidecar: UI messages to an Ollama body, what a bad one is told,
and the chat-id resume, at the ASGI level with a recording app behind."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from sse_bridge import create_proxy
from sse_bridge._cli.main import main
from sse_bridge._resume.store import stream_tag
from sse_bridge._sidecar.chat import ChatStreams, UIChat
from sse_bridge._sidecar.options import SidecarOptions
from sse_bridge._sidecar.ui_messages import (
    MAX_DEPTH,
    MAX_MESSAGES,
    MAX_PARTS,
    BadChatRequest,
    chat_request,
)
from sse_bridge._types import Message, Receive, Scope, Send

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def user(*parts: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return {"id": "m1", "role": role, "parts": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def rewrite(body: Any, model: str | None = "llama3.2") -> tuple[str | None, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    chat_id, upstream = chat_request(raw, model)
    return chat_id, json.loads(upstream)


def test_a_use_chat_request_becomes_an_ollama_chat_body() -> None:
    body = {
        "id": "chat-1",
        "messages": [user(text("Hello"), text("there"))],
        "trigger": "submit-message",
        "messageId": None,
    }
    chat_id, upstream = rewrite(body)
    assert chat_id == "chat-1"
    assert upstream == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Hello\nthere"}],
        "stream": True,
    }


def test_the_bodys_model_and_ollama_fields_win_and_pass_through() -> None:
    body = {
        "messages": [user(text("hi"))],
        "model": "qwen2.5:7b",
        "think": "high",
        "options": {"temperature": 0},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "keep_alive": "1h",
        "trigger": "regenerate-message",
    }
    chat_id, upstream = rewrite(body, model=None)
    assert chat_id is None
    assert upstream["model"] == "qwen2.5:7b"
    assert upstream["think"] == "high"
    assert upstream["options"] == {"temperature": 0}
    assert upstream["tools"] == body["tools"]
    # Only what Ollama's chat takes from a UI request goes on.
    assert set(upstream) == {"model", "messages", "stream", "think", "options", "tools"}


def test_a_whole_conversation_maps_roles_reasoning_tools_and_images() -> None:
    image = {"type": "file", "mediaType": "image/png", "url": f"data:image/png;base64,{PNG}"}
    assistant = user(
        {"type": "step-start"},
        {"type": "reasoning", "text": "thinking"},
        text("Let me check."),
        {
            "type": "tool-get_weather",
            "toolCallId": "c1",
            "state": "output-available",
            "input": {"city": "Paris"},
            "output": {"temperature": 20},
        },
        {
            "type": "dynamic-tool",
            "toolName": "lookup",
            "toolCallId": "c2",
            "state": "output-error",
            "input": {},
            "errorText": "no such thing",
        },
        {"type": "tool-pending", "toolCallId": "c3", "state": "input-streaming"},
        {"type": "tool-echo", "toolCallId": "c4", "state": "output-available", "output": "same"},
        {"type": "data-weather", "data": {"x": 1}},
        {"type": "source-url", "sourceId": "s", "url": "https://example.com"},
        role="assistant",
    )
    body = {
        "messages": [
            user(text("Be brief."), role="system"),
            user(text("What is this?"), image),
            assistant,
            user(text("Thanks")),
        ]
    }
    _, upstream = rewrite(body)
    assert upstream["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?", "images": [PNG]},
        {
            "role": "assistant",
            "content": "Let me check.",
            "thinking": "thinking",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "lookup", "arguments": {}}},
                {"function": {"name": "echo", "arguments": {}}},
            ],
        },
        {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": 20}'},
        {"role": "tool", "tool_name": "lookup", "content": "no such thing"},
        {"role": "tool", "tool_name": "echo", "content": "same"},
        {"role": "user", "content": "Thanks"},
    ]


def test_an_assistants_steps_become_one_ollama_message_each_after_its_tool_results() -> None:
    call = {"type": "tool-get_weather", "toolCallId": "c1", "state": "output-available"}
    assistant = user(
        {"type": "step-start"},
        call | {"input": {"city": "Paris"}, "output": "20 degrees"},
        {"type": "step-start"},
        {"type": "reasoning", "text": "warm"},
        text("It is 20 degrees."),
        {"type": "step-start"},
        {"type": "data-note", "data": 1},
        role="assistant",
    )
    _, upstream = rewrite({"messages": [user(text("Weather?")), assistant]})
    assert upstream["messages"] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": "20 degrees"},
        {"role": "assistant", "content": "It is 20 degrees.", "thinking": "warm"},
    ]
    # An assistant message with nothing the model said is still its turn.
    _, upstream = rewrite({"messages": [user({"type": "step-start"}, role="assistant")]})
    assert upstream["messages"] == [{"role": "assistant", "content": ""}]


def test_text_that_json_allows_survives_the_rewrite() -> None:
    tricky = "line\u2028sep \ud800 \U0001f600 \x00"
    _, upstream = rewrite(json.dumps({"messages": [user(text(tricky))]}).encode())
    # A lone surrogate has no UTF-8 form: it goes on as the same JSON escape.
    assert upstream["messages"][0]["content"] == tricky


def image(media: str = "image/png", url: str = f"data:image/png;base64,{PNG}") -> dict[str, Any]:
    return {"messages": [user({"type": "file", "mediaType": media, "url": url})]}


def nested(depth: int) -> bytes:
    return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"messages"', "not a JSON object"),
        ({"id": "c"}, "messages must be a non-empty array"),
        ({"messages": []}, "messages must be a non-empty array"),
        ({"messages": {"role": "user"}}, "messages must be a non-empty array"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages[0] has no parts array"),
        ({"messages": ["hi"]}, "messages[0] has no parts array"),
        ({"messages": [user(text("a"), role="tool")]}, "role must be system, user or assistant"),
        ({"messages": [user(text("a"), role=None)]}, "role must be"),  # type: ignore[arg-type]
        ({"messages": [user("text")]}, "parts[0] is not a part"),  # type: ignore[arg-type]
        ({"messages": [user({"type": 3})]}, "parts[0] is not a part"),
        ({"messages": [user({"type": "text", "text": 3})]}, "parts[0].text must be a string"),
        ({"messages": [user({"type": "reasoning"})]}, "text must be a string"),
        (image(media="application/pdf"), "image files only"),
        (image(url="https://example.com/cat.png"), "base64 data: URL"),
        (image(url="data:image/png,raw"), "base64 data: URL"),
        (image(url="data:image/png;base64,!!!"), "not valid base64"),
        (image(url="data:image/png;base64,\u00e9"), "not valid base64"),
        ({"messages": [user({"type": "file", "url": "x"})]}, "string mediaType and url"),
        (
            {"messages": [user({"type": "dynamic-tool", "state": "input-available"})]},
            "needs a tool name",
        ),
        ({"messages": [user(text("a"))], "model": 3}, "model must be a name"),
        ({"messages": [user(text("a"))], "model": ""}, "model must be a name"),
        ({"messages": [user(text("a"))], "model": "m" * 257}, "model must be a name"),
        ({"messages": [user(text("a"))], "id": 7}, "id must be a string"),
        ({"messages": [user(text("a"))], "id": "a\nb"}, "id must be a string"),
        ({"messages": [user(text("a"))], "id": "x" * 257}, "id must be a string"),
        ({"messages": [user(text("a"))], "think": "max"}, "think must be"),
        ({"messages": [user(text("a"))], "think": 1}, "think must be"),
        ({"messages": [user(text("a"))], "options": [1]}, "options must be an object"),
        ({"messages": [user(text("a"))], "tools": {"a": 1}}, "tools must be an array"),
        (nested(MAX_DEPTH), f"nested more than {MAX_DEPTH} levels"),
        (nested(200_000), f"nested more than {MAX_DEPTH} levels"),
        ({"messages": [user(text("a"))] * (MAX_MESSAGES + 1)}, "more than 10000 messages"),
        ({"messages": [user(*[text("a")] * (MAX_PARTS + 1))]}, "more than 10000 parts"),
    ],
)
def test_a_bad_body_is_refused_saying_what_was_expected(body: Any, message: str) -> None:
    with pytest.raises(BadChatRequest, match=None) as caught:
        rewrite(body)
    assert message in str(caught.value)


def test_without_a_model_anywhere_the_client_is_told_where_to_put_one() -> None:
    with pytest.raises(BadChatRequest, match="--model"):
        rewrite({"messages": [user(text("a"))]}, model=None)


def test_the_model_option_needs_the_ai_sdk_dialect() -> None:
    with pytest.raises(ValueError, match="dialect 'ai-sdk'"):
        SidecarOptions(upstream="http://127.0.0.1:1", dialect="ollama", model="llama3.2")
    assert create_proxy(upstream="http://127.0.0.1:1", dialect="ai-sdk", model="m") is not None


def test_serve_takes_the_model_from_its_flag_and_environment() -> None:
    runner = CliRunner()
    args = ["serve", "--upstream", "http://127.0.0.1:1", "--model", "llama3.2"]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    assert "dialect 'ai-sdk'" in result.output
    result = runner.invoke(main, args[:3], env={"SSE_BRIDGE_MODEL": "llama3.2"})
    assert "dialect 'ai-sdk'" in result.output


# The ASGI layer, with a recording app where the middleware and the proxy would be.


class Behind:
    """The app behind UIChat: records what it got; answers with a stream id if told to."""

    def __init__(self, stream_id: str | None = None) -> None:
        self.stream_id = stream_id
        self.scopes: list[Scope] = []
        self.bodies: list[bytes] = []
        self.release = anyio.Event()
        self.started = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] != "http":
            return
        message = await receive()
        self.bodies.append(message.get("body", b""))
        headers = [] if self.stream_id is None else [(b"x-stream-id", self.stream_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self.started.set()
        if scope["path"] == "/api/chat":
            await self.release.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def http(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"last_event_id=3",
        "headers": headers or [],
    }


async def call(app: Any, scope: Scope, body: list[bytes] | None = None) -> list[Message]:
    sent: list[Message] = []
    chunks = list(body or [b""])
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def layer(behind: Behind, *, resume: bool = False, max_body: int = 1000) -> UIChat:
    return UIChat(
        behind, model="llama3.2", max_body=max_body, resume_path="/streams/" if resume else None
    )


CHAT = json.dumps({"id": "chat-1", "messages": [user(text("hi"))]}).encode()


@pytest.mark.anyio
async def test_the_post_goes_on_as_ollamas_body_asking_for_an_event_stream() -> None:
    behind = Behind()
    behind.release.set()
    client_headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(CHAT)).encode()),
        (b"accept", b"*/*"),
        (b"x-request-id", b"7"),
    ]
    sent = await call(
        layer(behind), http("POST", "/api/chat", client_headers), [CHAT[:9], CHAT[9:]]
    )
    assert sent[0]["status"] == 200
    [scope] = behind.scopes
    body = behind.bodies[0]
    assert json.loads(body)["messages"] == [{"role": "user", "content": "hi"}]
    assert dict(scope["headers"]) == {
        b"x-request-id": b"7",
        b"content-type": b"application/json",
        b"content-length": str(len(body)).encode(),
        b"accept": b"text/event-stream",
    }


@pytest.mark.anyio
async def test_a_bad_or_oversized_body_is_refused_before_anything_goes_on() -> None:
    behind = Behind()
    sent = await call(layer(behind), http("POST", "/api/chat"), [b'{"messages": 1}'])
    assert sent[0]["status"] == 400
    assert "messages must be a non-empty array" in json.loads(sent[1]["body"])["error"]
    sent = await call(layer(behind, max_body=10), http("POST", "/api/chat"), [b"x" * 6] * 2)
    assert sent[0]["status"] == 413
    assert behind.scopes == []


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_body_gets_nothing_and_nothing_goes_on() -> None:
    behind = Behind()
    sent: list[Message] = []
    messages: list[Message] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await layer(behind)(http("POST", "/api/chat"), receive, send)
    assert sent == []
    assert behind.scopes == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/chat/chat-1/stream", 204),
        ("DELETE", "/api/chat/chat-1/stream", 204),
        ("POST", "/api/chat/chat-1/stream", 405),
        ("GET", "/api/chat//stream", 400),
        ("GET", "/api/chat/" + "x" * 257 + "/stream", 400),
        ("GET", "/api/chat/a\x01b/stream", 400),
    ],
)
async def test_resume_requests_without_a_live_stream(method: str, path: str, status: int) -> None:
    behind = Behind()
    sent = await call(layer(behind, resume=True), http(method, path))
    assert sent[0]["status"] == status
    assert behind.scopes == []


@pytest.mark.anyio
async def test_a_chats_live_stream_is_followed_from_the_start_then_let_go() -> None:
    behind = Behind(stream_id="S" * 22)
    app = layer(behind, resume=True)
    resume = http("GET", "/api/chat/chat-1/stream", [(b"last-event-id", b"S:4"), (b"x-a", b"1")])
    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http("POST", "/api/chat"), [CHAT])
        await behind.started.wait()
        sent = await call(app, resume)
        behind.release.set()
    assert sent[0]["status"] == 200
    followed = behind.scopes[1]
    assert followed["path"] == "/streams/" + "S" * 22
    assert followed["raw_path"] == b"/streams/" + b"S" * 22
    assert followed["query_string"] == b""
    assert followed["headers"] == [(b"x-a", b"1")]
    # The generation has ended: nothing is live for the chat any more.
    sent = await call(app, resume)
    assert sent[0]["status"] == 204
    assert len(behind.scopes) == 2


@pytest.mark.anyio
async def test_without_resume_a_chat_is_never_bound() -> None:
    behind = Behind(stream_id="S" * 22)
    app = layer(behind)
    async with anyio.create_task_group() as group:
        group.start_soon(call, app, http("POST", "/api/chat"), [CHAT])
        await behind.started.wait()
        sent = await call(app, http("GET", "/api/chat/chat-1/stream"))
        behind.release.set()
    assert sent[0]["status"] == 204


@pytest.mark.anyio
async def test_other_requests_pass_through_untouched() -> None:
    behind = Behind()
    behind.release.set()
    for scope in (http("GET", "/api/tags"), http("GET", "/api/chat"), {"type": "lifespan"}):
        await call(layer(behind), scope)
        assert behind.scopes[-1] is scope


def test_a_newer_stream_of_a_chat_replaces_the_older_one() -> None:
    chats = ChatStreams()
    scope: Scope = {}
    chats.bind("c", "old", scope)
    chats.bind("c", "new", scope)
    chats.release("c", "old")
    assert chats.find("c", scope) == "new"
    chats.release("c", "new")
    assert chats.find("c", scope) is None


@pytest.mark.anyio
async def test_a_chat_path_of_its_own_goes_on_to_ollamas_chat() -> None:
    behind = Behind(stream_id="S" * 22)
    behind.release.set()
    app = UIChat(behind, model="m", max_body=1000, resume_path="/streams", path="/ui/chat")
    sent = await call(app, http("POST", "/ui/chat"), [CHAT])
    assert sent[0]["status"] == 200
    assert behind.scopes[0]["path"] == "/api/chat"
    assert behind.scopes[0]["raw_path"] == b"/api/chat"
    # The resume path follows the chat path; the default path is Ollama's own again.
    sent = await call(app, http("GET", "/ui/chat/chat-1/stream"))
    assert sent[0]["status"] == 204
    ollama = http("POST", "/api/chat")
    await call(app, ollama, [b"{}"])
    assert behind.scopes[-1] is ollama


@pytest.mark.parametrize("path", ["api/chat", "/api/chat/", "/", "/chat?x=1", ""])
def test_a_chat_path_must_be_a_path(path: str) -> None:
    with pytest.raises(ValueError, match="chat_path"):
        SidecarOptions(upstream="http://127.0.0.1:1", dialect="ai-sdk", chat_path=path)


@pytest.mark.anyio
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_chat_id_is_a_key_and_the_log_carries_its_tag(
    log_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The chat's resume URL reaches its live stream as its stream id does: never logged whole.
    app = create_proxy(
        upstream="http://127.0.0.1:1",
        dialect="ai-sdk",
        model="m",
        resume="memory",
        log_format=log_format,  # type: ignore[arg-type]
    )
    chat_id = "secret-chat-7f3a"
    with caplog.at_level("INFO", logger="sse_bridge.access"):
        sent = await call(app, {**http("GET", f"/api/chat/{chat_id}/stream"), "client": None})
    assert sent[0]["status"] == 204
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sse_bridge.access"]
    assert chat_id not in line
    assert f"/api/chat/{stream_tag(chat_id)}/stream" in line


def test_a_chat_bound_to_its_owner_is_found_by_its_owner_only() -> None:
    def owner(scope: Scope) -> str | None:
        return dict(scope["headers"]).get(b"x-user", b"").decode() or None

    def as_user(name: str | None) -> Scope:
        return http(
            "GET", "/api/chat/c/stream", [] if name is None else [(b"x-user", name.encode())]
        )

    chats = ChatStreams(owner)
    chats.bind("c", "s1", as_user("alice"))
    assert chats.find("c", as_user("alice")) == "s1"
    # Anyone else finds what a chat with no live stream gives: nothing, so a 204.
    assert chats.find("c", as_user("bob")) is None
    assert chats.find("c", as_user(None)) is None
    assert ChatStreams().find("c", as_user("alice")) is None
