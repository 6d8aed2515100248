"""The negative control: a hand-written NDJSON-to-SSE proxy as tutorials write it.

It reads the upstream with httpx and yields the same events as sse_bridge's ``ollama`` dialect
(``{"token"}`` per chunk, ``{"finished"}`` at the end), but sends none of the headers that stop
proxies from buffering. Behind a naive nginx it arrives in bursts, which is
what the load test's quality gate must catch. Run it on h11 (``--http h11``): uvicorn's httptools
answers even HTTP/1.0 requests with a chunked body, which nginx happens to pass on as it comes.

    python -m loadtests.naive_app --upstream http://127.0.0.1:11434 --port 8001
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

UPSTREAM_ENV = "NAIVE_APP_UPSTREAM"


async def chat(request: Request) -> Response:
    upstream = os.environ[UPSTREAM_ENV]
    body = await request.body()

    async def events() -> AsyncIterator[str]:
        async with (
            httpx.AsyncClient(timeout=None) as client,
            client.stream("POST", f"{upstream}/api/chat", content=body) as response,
        ):
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if chunk.get("message", {}).get("content"):
                    yield f"data: {json.dumps({'token': chunk['message']['content']})}\n\n"
                if chunk.get("done"):
                    yield 'data: {"finished": true}\n\n'

    return StreamingResponse(events(), media_type="text/event-stream")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/api/chat", chat, methods=["POST"]), Route("/healthz", health)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ[UPSTREAM_ENV] = args.upstream
    uvicorn.run(app, host="127.0.0.1", port=args.port, http="h11", log_level="warning")


if __name__ == "__main__":
    main()
