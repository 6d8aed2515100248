"""Where a resumable stream lives in Redis, and how Redis's replies about it read.

The keys of one stream, under the store's ``key_prefix``:

- ``<sid>:events``, a Redis Stream: event n is the entry ``n-0`` with the field ``e``; the end of
  the generation is the entry ``<last n>-1`` with the field ``end``, so that XRANGE and XREAD read
  it right after the last event (``0-1`` for a stream without events).
- ``<sid>:meta``, a hash: ``owner``, the id of the instance that runs the generation, and, once it
  has ended, ``ended``, the number of its last event.
- ``<sid>:attended``, set for a few seconds by each poll of a reader on another instance.

And of one instance: ``instance:<iid>``, which lives three heartbeats and is set again every
heartbeat (it disappearing is how the others learn that the instance died without finishing its
streams), and the channel ``stop:<iid>``, which carries the ids of the streams to stop.
"""

from __future__ import annotations

from typing import Any


class Keys:
    """The names of the keys and channels above, under ``prefix``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def events(self, stream_id: str) -> str:
        return f"{self.prefix}{stream_id}:events"

    def meta(self, stream_id: str) -> str:
        return f"{self.prefix}{stream_id}:meta"

    def attended(self, stream_id: str) -> str:
        return f"{self.prefix}{stream_id}:attended"

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}instance:{instance_id}"

    def stop_channel(self, instance_id: str) -> str:
        return f"{self.prefix}stop:{instance_id}"


def parse_id(entry_id: object) -> tuple[int, bool]:
    """An entry id as (sequence number, whether it is an event rather than the end)."""
    seq, _, part = text(entry_id).partition("-")
    return int(seq), part == "0"


def text(value: object) -> str:
    """A reply as text (the client returns bytes: events must stay bytes)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected reply from Redis: {value!r}")


def entries(response: object) -> list[Any]:
    """The entries of the one stream an XREAD asked for (RESP2: [[key, entries]])."""
    if isinstance(response, list):
        return list(response[0][1])
    if isinstance(response, dict):  # RESP3: {key: [entries]}
        return list(next(iter(response.values()))[0])
    raise TypeError(f"unexpected reply from Redis to XREAD: {response!r}")
