"""What a memory-store follower costs per appended event, as the stream grows.

``--followers`` readers follow one live stream of ``--events`` events (in the in-process store,
``sse_bridge.resume.MemoryStore``); then ``--rounds`` times one event is appended and every
follower reads it. Printed: the CPU of this process (``time.process_time``) per appended event
for all followers together, for each stream length. A follower that finds its events from the
end of the stream costs the same at every length; one that walks from the oldest event costs in
proportion to the length.

    .venv/bin/python benchmarks/bench_follow.py --followers 100 --events 1000,10000,150000
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sse_bridge.resume import MemoryStore


async def measure(events: int, followers: int, rounds: int) -> float:
    """CPU seconds per appended event, all followers reading it."""
    store = MemoryStore(max_stream_bytes=1 << 40, max_bytes=1 << 40)
    recording = store.record(lambda: None)
    event = b'data: {"response":"tok"}\n\n'
    recording.append([event] * events)
    readers = [await store.follow(recording.stream_id, events) for _ in range(followers)]
    started = time.process_time()
    for _ in range(rounds):
        recording.append([event])
        for reader in readers:
            batch = await reader.next(0)
            if batch is None or len(batch) != 1:
                raise RuntimeError(f"a follower read {batch!r}, not the one new event")
    spent = time.process_time() - started
    for reader in readers:
        await reader.aclose()
    return spent / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--events", default="1000,10000,150000", help="stream lengths, commas")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.followers} followers, {args.rounds} appended events per length")
    print(f"{'stream length':>14}  {'CPU per appended event':>24}")
    for events in (int(item) for item in args.events.split(",")):
        cost = asyncio.run(measure(events, args.followers, args.rounds))
        print(f"{events:>14,}  {cost * 1e3:>21.3f} ms")


if __name__ == "__main__":
    main()
