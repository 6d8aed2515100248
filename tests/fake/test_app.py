"""The fake's routing: request validation, the small endpoints, the control endpoint, lifespan."""

from __future__ import annotations

import pytest

from sse_bridge._testing.fake import FakeOllama, FakeOllamaConfig, RequestRecord
from sse_bridge._types import Message
from tests.fake._asgi import CHAT, call


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", None, 400, "missing request body"),
        ("/api/chat", b"{not json", 400, "invalid JSON body"),
        ("/api/chat", b"\xff\xfe", 400, "invalid JSON body"),
        ("/api/chat", [1, 2], 400, "must be a JSON object"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", {"model": ""}, 400, "model is required"),
        ("/api/chat", {"model": "llama3.2", "stream": "yes"}, 400, "stream must be"),
        ("/api/chat", {"model": "llama3.2", "messages": "hi"}, 400, "messages must be a list"),
        ("/api/chat", CHAT | {"tools": {"a": 1}}, 400, "tools must be a list"),
        ("/api/chat", CHAT | {"options": [1]}, 400, "options must be an object"),
        ("/api/chat", CHAT | {"options": {"num_predict": "5"}}, 400, "num_predict must be"),
        ("/api/chat", CHAT | {"options": {"num_predict": True}}, 400, "num_predict must be"),
        ("/api/generate", {"model": "gemma4", "prompt": 5}, 400, "prompt must be a string"),
        ("/api/chat", CHAT | {"fake": []}, 400, '"fake" must be a JSON object'),
        ("/api/chat", CHAT | {"fake": {"speed": 1}}, 400, 'unknown "fake" option "speed"'),
        ("/api/chat", CHAT | {"fake": {"models": ["x"]}}, 400, 'unknown "fake" option "models"'),
        ("/api/chat", CHAT | {"fake": {"num_tokens": -2}}, 400, "num_tokens must be"),
        ("/api/chat", CHAT | {"fake": {"failure": "boom"}}, 400, "failure must be"),
        ("/api/chat", CHAT | {"model": "llama3"}, 404, 'model "llama3" not found, try pulling'),
        ("/api/chat", CHAT | {"model": "qwen2.5"}, 404, 'model "qwen2.5" not found'),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, 'model "nope" not found'),
    ],
)
async def test_bad_requests_get_ollama_errors_before_streaming(
    path: str, body: object, status: int, error: str
) -> None:
    app = FakeOllama()
    sent = await call(app, "POST", path, body)
    assert sent.status == status
    assert sent.headers["content-type"] == "application/json; charset=utf-8"
    payload = sent.json()
    assert list(payload) == ["error"]
    assert error in payload["error"]
    record = app.records[0]
    assert (record.status, record.outcome, record.tokens_sent) == (status, "completed", 0)


@pytest.mark.anyio
async def test_model_names_default_to_the_latest_tag() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0, models=("llama3.2", "me/qwen:7b")))
    for model in ("llama3.2:latest", "llama3.2", "me/qwen:7b"):
        sent = await call(app, "POST", "/api/chat", CHAT | {"model": model, "stream": False})
        assert (sent.status, sent.json()["model"]) == (200, model)
    sent = await call(app, "POST", "/api/chat", CHAT | {"model": "me/qwen"})
    assert sent.status == 404


@pytest.mark.anyio
async def test_root_version_and_tags() -> None:
    app = FakeOllama(FakeOllamaConfig(models=("llama3.2", "qwen2.5:7b", "x/42")))
    root = await call(app, "GET", "/")
    assert (root.status, root.body) == (200, b"Ollama is running")
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    assert (await call(app, "GET", "/api/version")).json() == {"version": "0.12.0"}
    tags = (await call(app, "GET", "/api/tags")).json()["models"]
    assert [model["name"] for model in tags] == ["llama3.2:latest", "qwen2.5:7b", "x/42:latest"]
    assert [model["details"]["family"] for model in tags] == ["llama", "qwen", "fake"]
    assert all(len(model["digest"]) == 64 and model["size"] > 0 for model in tags)
    assert [r.path for r in app.records] == ["/", "/api/version", "/api/tags"]


@pytest.mark.anyio
async def test_unknown_path_is_404_and_wrong_method_is_405() -> None:
    app = FakeOllama()
    missing = await call(app, "GET", "/api/pull")
    assert (missing.status, missing.json()) == (404, {"error": "not found"})
    wrong = await call(app, "GET", "/api/chat")
    assert (wrong.status, wrong.json()) == (405, {"error": "method not allowed"})
    assert wrong.headers["allow"] == "POST"
    control = await call(app, "POST", "/_fake/requests")
    assert (control.status, control.headers["allow"]) == (405, "GET, DELETE")
    assert [(r.path, r.status) for r in app.records] == [("/api/pull", 404), ("/api/chat", 405)]


@pytest.mark.anyio
async def test_records_keep_lower_case_headers_and_the_control_endpoint() -> None:
    app = FakeOllama()
    headers = ((b"X-Request-ID", b"abc"), (b"Accept", b"a"), (b"accept", b"b"))
    await call(app, "GET", "/api/version", headers=headers)
    assert app.records[0].headers["x-request-id"] == "abc"
    assert app.records[0].headers["accept"] == "a, b"

    listed = await call(app, "GET", "/_fake/requests")
    assert listed.headers["content-type"] == "application/json; charset=utf-8"
    (record,) = listed.json()
    assert record["id"] == 1
    assert record["path"] == "/api/version"
    assert record["outcome"] == "completed"
    assert set(record) == set(RequestRecord.__dataclass_fields__)

    cleared = await call(app, "DELETE", "/_fake/requests")
    assert (cleared.status, cleared.body) == (204, b"")
    assert list(app.records) == []
    await call(app, "GET", "/")
    assert app.records[0].id == 2  # ids keep counting, so old and new never collide


@pytest.mark.anyio
async def test_lifespan_and_websocket_scopes() -> None:
    app = FakeOllama()
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    outgoing: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        outgoing.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in outgoing] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    outgoing.clear()
    await app({"type": "websocket", "path": "/"}, receive, send)
    assert outgoing == []
    assert list(app.records) == []
