"""The AI SDK's ``Chat`` class in a real headless Chromium, through ``sse-bridge serve
--dialect ai-sdk``: the answer enters the page token by token, over the generation's time.

The page (served from a loopback server of its own, another origin, so the bridge's CORS is
exercised too; Chromium refuses a loopback request from a page it did not load from loopback) runs
``tests/js/browser_entry.mjs`` bundled with esbuild: ``AbstractChat`` over a plain state and
``DefaultChatTransport``, as a framework-free ``useChat``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.stack import free_port, running
from sse_bridge._types import ASGIApp, Receive, Scope, Send
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, answer_tokens
from tests._servers import serve
from tests.test_browser import launched_chromium

JS = Path(__file__).parent / "js"
TOKENS = 16
PACE = 20  # tokens per second: one every 50 ms
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>useChat without React</title>
<div id="answer"></div>
<script type="module">
import { Chat, DefaultChatTransport } from "/chat.js";
window.__updates = [];
window.__statuses = [];
const answer = document.getElementById("answer");
let chat = null;  // onChange runs during the constructor too
chat = new Chat({
  transport: new DefaultChatTransport({ api: API }),
  onChange: (what) => {
    if (chat === null) return;
    if (what === "status") window.__statuses.push(chat.status);
    if (what === "error" && chat.error) window.__error = String(chat.error);
    const last = chat.messages.at(-1);
    if (last?.role !== "assistant") return;
    const text = last.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
    if (text !== answer.textContent) {
      answer.textContent = text;
      window.__updates.push([performance.now(), text]);
    }
  },
});
window.__send = (text) => chat.sendMessage({ text });
window.__ready = true;
</script>
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("bundle") / "chat.js"
    subprocess.run(
        [
            str(JS / "node_modules" / ".bin" / "esbuild"),
            str(JS / "browser_entry.mjs"),
            "--bundle",
            "--format=esm",
            "--platform=browser",
            f"--outfile={out}",
            "--log-level=warning",
        ],
        check=True,
        timeout=60,
    )
    return out.read_bytes()


def site(bundle: bytes, page: bytes) -> ASGIApp:
    """The page at ``/`` and its bundle at ``/chat.js``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, kind = (
            (bundle, b"text/javascript") if scope["path"] == "/chat.js" else (page, b"text/html")
        )
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=PACE, num_tokens=TOKENS))
    with serve(fake) as url:
        yield url


@pytest.mark.timing
def test_the_chat_class_streams_the_answer_token_by_token(bundle: bytes, upstream: str) -> None:
    port = free_port()
    chat_api = f"http://127.0.0.1:{port}/api/chat"
    page_html = PAGE.replace("API", json.dumps(chat_api)).encode()
    with serve(site(bundle, page_html)) as origin:
        args = ("serve", "--upstream", upstream, "--dialect", "ai-sdk", "--model", "llama3.2")
        with (
            running(*args, "--cors-origin", origin, "--log-level", "warning", port=port),
            launched_chromium() as browser,
        ):
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{origin}/")
            page.wait_for_function("window.__ready === true", timeout=10_000)
            assert errors == []
            page.evaluate("window.__send('hi')")
            page.wait_for_function(
                "window.__statuses.at(-1) === 'ready' || window.__statuses.at(-1) === 'error'",
                timeout=20_000,
            )
            updates: list[list[object]] = page.evaluate("window.__updates")
            statuses: list[str] = page.evaluate("window.__statuses")
            error = page.evaluate("window.__error ?? null")
            shown = page.inner_text("#answer")
            page.close()
    answer = "".join(answer_tokens(TOKENS))
    assert error is None
    assert statuses[-1] == "ready", statuses
    assert "streaming" in statuses
    assert shown == answer
    texts = [str(text) for _, text in updates]
    assert texts[-1] == answer
    # Token by token: each update adds to the last, and most tokens got an update of their own
    # (two that arrive in one read share one).
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert len(texts) >= TOKENS * 3 // 4, texts
    # Spread over the generation (about TOKENS / PACE seconds), not delivered at the end.
    times = [float(str(t)) for t, _ in updates]
    assert times[-1] - times[0] >= (TOKENS - 1) / PACE * 1000 / 2
