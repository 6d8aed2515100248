"""redis-py as the Redis resume store uses it: the import that names the extra, the errors that
mean Redis is away, the client's options, and URLs shown without their password."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

try:
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.client import Pipeline, PubSub
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, WatchError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - the tests run with the extra installed
    raise ImportError(
        "the Redis resume store needs redis-py: pip install 'sse-bridge[resume]'"
    ) from exc

__all__ = [
    "CONNECT_TIMEOUT",
    "ERRORS",
    "SCHEMES",
    "UNREACHABLE",
    "Pipeline",
    "PubSub",
    "Redis",
    "RedisTimeoutError",
    "WatchError",
    "close",
    "connect",
    "reason",
    "redact",
    "start_transaction",
]

SCHEMES = ("redis", "rediss", "unix")
PASSWORD_PARAMETER = re.compile(r"(?<=[?&])password=[^&#]*")
# Errors that mean Redis cannot be reached (BusyLoadingError, a Redis restarting, is one of the
# ConnectionErrors); any other RedisError is Redis refusing a command.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
ERRORS = (RedisError, OSError)
CONNECT_TIMEOUT = 3.0


def connect(url: str, heartbeat: float, max_connections: int) -> Redis:
    """A client for ``url`` (it connects on its first command), with at most
    ``max_connections`` connections: a command finds one free within ``CONNECT_TIMEOUT``
    seconds, or fails as if Redis were away (redis-py's own pool has no bound)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=CONNECT_TIMEOUT,
        # A blocking XREAD waits at most one heartbeat: the socket waits longer than that.
        socket_timeout=heartbeat + 5.0,
        socket_connect_timeout=CONNECT_TIMEOUT,
        # One immediate retry, for a pooled connection that Redis closed while it restarted;
        # a Redis that is away is the probe's business, not a reason to wait here.
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


async def close(pubsub: PubSub) -> None:
    # redis-py leaves PubSub.aclose and Pipeline.multi without annotations.
    aclose: Callable[[], Awaitable[None]] = pubsub.aclose
    await aclose()


def start_transaction(pipe: Pipeline) -> None:
    multi: Callable[[], None] = pipe.multi
    multi()


def reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def redact(url: str) -> str:
    """``url`` without its password (in the authority or, for unix://, the query)."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            port = f":{parts.port}" if parts.port is not None else ""
            netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
            url = url.replace(parts.netloc, netloc, 1)
    except ValueError:
        return "<an unparsable URL>"
    return PASSWORD_PARAMETER.sub("password=***", url)
