"""The README's examples run and print what it says they print."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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

    blocks = python_blocks()[1:]
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
