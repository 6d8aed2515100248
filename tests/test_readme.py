"""The README's examples run and print what it says they print."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

README = (Path(__file__).parent.parent / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_starlette_example_gives_the_events_shown() -> None:
    namespace: dict[str, Any] = {}
    exec(python_blocks()[0], namespace)
    with TestClient(namespace["app"]) as client:
        response = client.post("/api/chat", headers={"accept": "text/event-stream"}, content=b"{}")
    shown = README.split("curl -N -H 'Accept: text/event-stream'", 1)[1].split("```", 1)[0]
    shown = shown.split("\n", 1)[1]
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.text.strip() == shown.strip()


def test_every_other_example_runs() -> None:
    from sse_bridge import SidecarApp, SSEBridgeMiddleware

    blocks = [b for b in python_blocks()[1:] if not b.startswith("app.build_middleware_stack()")]
    assert len(blocks) == 5
    for block in blocks:
        namespace: dict[str, Any] = {}
        exec(block, namespace)
        app = namespace.get("app")
        if isinstance(app, SidecarApp):
            assert app.proxy.upstream == "http://127.0.0.1:11434"
        elif app is not None:
            assert [m.cls for m in app.user_middleware] == [SSEBridgeMiddleware]
        else:
            assert namespace["events"][0].data == '{"token":"hi"}'


def test_the_startup_check_raises_for_a_bad_option() -> None:
    from fastapi import FastAPI

    from sse_bridge import SSEBridgeMiddleware

    (check,) = [b for b in python_blocks() if b.startswith("app.build_middleware_stack()")]
    good = FastAPI()
    good.add_middleware(SSEBridgeMiddleware, dialect="ollama")
    exec(check, {"app": good})
    bad = FastAPI()
    bad.add_middleware(SSEBridgeMiddleware, dialect="ollama", keepalive=-1)
    with pytest.raises(ValueError, match="keepalive must be"):
        exec(check, {"app": bad})


ROOT = Path(__file__).parent.parent
# Each error message that the README and docs quote, the test that asserts the bridge sends it
# (word for word, up to the parts the quote leaves open), and that test's file.
QUOTED = [
    (
        "README.md",
        "upstream sent a line after its final chunk (done: true)",
        "test_dialects.py",
        "test_ollama_reports_lines_after_the_done_chunk",
    ),
    (
        "README.md",
        "upstream closed the stream before its final chunk (done: true); the answer is incomplete",
        "test_dialects.py",
        "test_ollama_stream_without_done_ends_with_an_error",
    ),
    (
        "README.md",
        "upstream closed the stream without sending anything",
        "test_dialects.py",
        "test_ollama_empty_stream_is_an_error",
    ),
    (
        "README.md",
        "upstream sent a line that is not JSON (...)",
        "test_middleware.py",
        "test_app_that_returns_without_ending_its_body_gets_its_stream_ended",
    ),
    (
        "README.md",
        "the stream failed inside the server; the answer is incomplete",
        "test_middleware.py",
        "test_app_failure_mid_stream_is_told_to_the_client_and_raised",
    ),
    (
        "README.md",
        "upstream unreachable: <reason>",
        "test_proxy.py",
        "test_a_second_failure_is_a_502",
    ),
    ("README.md", "upstream timed out: ...", "test_proxy.py", "test_timeouts_map_to_504"),
    (
        "README.md",
        "upstream connection lost mid-stream: ...",
        "test_proxy.py",
        "test_midstream_failure_of_ndjson_becomes_an_error_line",
    ),
    (
        "README.md",
        "the bridge is shutting down; retry the request",
        "test_cli.py",
        "test_sigterm_while_waiting_for_the_upstream_is_a_503",
    ),
    (
        "docs/resume.md",
        "the stream was cancelled: its client left and nobody resumed it within 30 s",
        "test_resume.py",
        "test_a_generation_nobody_resumes_is_cancelled_after_the_grace_period",
    ),
    (
        "docs/resume.md",
        "the bridge instance running this stream stopped before it ended; the answer is incomplete",
        "test_resume.py",
        "test_a_reader_of_an_orphan_ends_it_for_every_reader",
    ),
    (
        "docs/resume.md",
        "cannot reach Redis at ...",
        "test_resume_redis.py",
        "test_open_tells_which_redis_it_cannot_reach",
    ),
]
# Quoted messages that are Ollama's own, passed through unchanged.
OLLAMA_S = {"model ... not found"}


def flat(text: str) -> str:
    return " ".join(text.split())


def pattern(quote: str) -> re.Pattern[str]:
    """The quote as a pattern: `...` and `<name>` stand for any text, a number for any number
    (a test may assert only the start of a message, so `...` may stand for nothing)."""
    parts = re.split(r"(\.\.\.|<\w+>|\d+(?:\.\d+)?)", quote)
    regex = ""
    for i, part in enumerate(parts):
        if i % 2 == 0:
            regex += re.escape(part)
        else:
            regex += r"\d+(?:\.\d+)?" if part[0].isdigit() else ".*"
    return re.compile(regex)


def literals(node: ast.AST) -> list[str]:
    """The strings written in `node`; an f-string's fields become `X`."""
    found = []
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            found.append(child.value)
        elif isinstance(child, ast.JoinedStr):
            found.append(
                "".join(
                    v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "X"
                    for v in child.values
                )
            )
    return found


def test_every_error_message_the_docs_quote_is_asserted_word_for_word() -> None:
    for doc, quote, module, test in QUOTED:
        assert quote in flat((ROOT / doc).read_text()), (doc, quote)
        tree = ast.parse((ROOT / "tests" / module).read_text())
        [function] = [
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == test
        ]
        # The test's own strings, and the constants of its module it may compare with.
        written = literals(function) + [
            text for node in tree.body if isinstance(node, ast.Assign) for text in literals(node)
        ]
        assert any(pattern(quote).search(text) for text in written), (module, test, quote)


def test_every_quoted_error_is_known() -> None:
    known = {quote for _, quote, _, _ in QUOTED} | OLLAMA_S | {"..."}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for quote in re.findall(r'"(?:error|message)": "([^"]*)"', flat(doc.read_text())):
            assert quote in known, (doc.name, quote)
