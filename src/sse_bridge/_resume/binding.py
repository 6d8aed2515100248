"""Streams bound to an owner: who may resume or stop a stream, besides whoever knows its id.

Without an owner function a stream id is a bearer capability: whoever has it may read the
stream from its start and stop it. With one (the middleware's ``resume_owner``, the sidecar's
``--resume-owner-header``), each stream is recorded with its owner's hash, and a ``GET``, a
``DELETE`` or a ``Last-Event-ID`` resume by anyone else is answered exactly as an unknown id
is. The stores keep only the hash: Redis holds no user names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sse_bridge._core.headers import header
from sse_bridge._resume.store import ResumeStore, UnknownStreamError
from sse_bridge._types import Scope

Owner = Callable[[Scope], "str | None"]
"""The owner of a request, from its scope (a user id an auth layer put there), or None."""


def header_owner(name: str) -> Owner:
    """The owner function of a request header ``name`` (its value; None if absent or empty),
    for an authenticating proxy in front that sets it, replacing whatever the client sent."""
    key = name.lower().encode("latin-1")

    def owner(scope: Scope) -> str | None:
        return header(scope["headers"], key) or None

    return owner


def owner_hash(owner: str) -> str:
    """What a store keeps of an owner: a SHA-256, under a prefix of this use's own."""
    digest = hashlib.sha256(b"sse-bridge resume owner\0" + owner.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


class Binding:
    """The owner function, and the check that a request may touch a stream."""

    __slots__ = ("owner",)

    def __init__(self, owner: Owner | None) -> None:
        self.owner = owner

    def of(self, scope: Scope) -> str | None:
        """The hash a new stream of this request is bound to (None: no owner)."""
        if self.owner is None:
            return None
        owner = self.owner(scope)
        if owner is not None and not isinstance(owner, str):
            raise TypeError(f"resume_owner must return a string or None, not {owner!r}")
        return None if owner is None else owner_hash(owner)

    async def check(self, store: ResumeStore, scope: Scope, stream_id: str) -> None:
        """Raise UnknownStreamError, as for an id never seen, unless this request's owner is the
        stream's (no owner on both sides matches too: such a stream is a bearer capability)."""
        if self.owner is None:
            return
        if await store.bound_to(stream_id) != self.of(scope):
            raise UnknownStreamError(stream_id)
