"""The store a ``resume=`` option names: off, ``"memory"``, a Redis URL, or a store object."""

from __future__ import annotations

from typing import TypeGuard

from sse_bridge._resume.memory import MemoryStore
from sse_bridge._resume.store import DEFAULT_TTL, ResumeStore


def check_resume(resume: object) -> None:
    """Refuse a ``resume=`` value other than None, "memory", a Redis URL or a store object."""
    if resume is None or resume == "memory" or _is_redis_url(resume):
        return
    if not isinstance(resume, str) and all(
        hasattr(resume, name) for name in ("record", "follow", "stop", "finished_at")
    ):
        return
    if isinstance(resume, str):
        # A text may come from the command line, which cannot pass a store object.
        raise ValueError(
            "resume must be 'memory', a redis://host:port/db URL, or off "
            f"(None; 'off' on the command line), not {resume!r}"
        )
    raise ValueError(f"resume must be 'memory', a redis:// URL or a store object, not {resume!r}")


def _is_redis_url(resume: object) -> TypeGuard[str]:
    return isinstance(resume, str) and resume.startswith(("redis://", "rediss://", "unix://"))


def open_store(resume: object, *, ttl: float = DEFAULT_TTL) -> ResumeStore | None:
    """The store a ``resume=`` option names: None, "memory", a Redis URL, or a store object."""
    check_resume(resume)
    if resume is None:
        return None
    if resume == "memory":
        return MemoryStore(ttl=ttl)
    if _is_redis_url(resume):
        try:
            from sse_bridge._resume.redis.store import RedisStore
        except ImportError as exc:
            # The message names the extra to install: one line, as for a bad option.
            raise ValueError(str(exc)) from None

        return RedisStore(resume, ttl=ttl)
    return resume  # type: ignore[return-value]
