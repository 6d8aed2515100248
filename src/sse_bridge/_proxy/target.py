"""Where the proxy sends a request: the one upstream's base URL, checked once, and its paths.

Pure: the sidecar's options check the URL here before anything is built.
"""

from __future__ import annotations

import httpx

# Ollama's endpoints that stream NDJSON and may stay silent for minutes while a model loads.
COMMIT_PATHS = ("/api/chat", "/api/generate")


def parse_upstream(url: str) -> httpx.URL:
    """Validate the upstream base URL; the only host the proxy ever talks to."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"upstream must be a URL such as http://127.0.0.1:11434: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"upstream must be an http:// or https:// URL with a host, not {url!r}")
    if parsed.query or parsed.fragment or parsed.userinfo:
        raise ValueError(f"upstream must not carry a query, fragment or credentials: {url!r}")
    return parsed
