"""One planned answer written out: paced, with the injected faults, watching for the client."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from sse_bridge._testing.fake.wire import ERROR_MESSAGE, JSON, nanoseconds

if TYPE_CHECKING:
    from sse_bridge._testing.fake.exchange import Exchange
    from sse_bridge._testing.fake.job import Job, Token
    from sse_bridge._testing.fake.records import Phase, RequestRecord
    from sse_bridge._testing.fake.wire import Framing


class FakeOllamaAbort(Exception):
    """Raised by `FakeOllama` to drop a connection on purpose (``failure="close"``).

    A server that sees an exception after the response started closes the connection without
    finishing the body, which is the failure being simulated; uvicorn also logs it.
    """


def _metrics(job: Job, record: RequestRecord, loaded_at: float, load_took: float) -> dict[str, int]:
    now = time.monotonic()
    return {
        "total_duration": nanoseconds(now - record.started_at),
        "load_duration": nanoseconds(load_took),
        "prompt_eval_count": job.prompt_tokens,
        "prompt_eval_duration": nanoseconds(job.prompt_tokens * 0.0002),
        "eval_count": record.tokens_sent,
        "eval_duration": nanoseconds(now - loaded_at),
    }


class Generation:
    """Writes one job's answer while watching for the client to go away."""

    def __init__(self, exchange: Exchange, framing: Framing, job: Job) -> None:
        self.exchange = exchange
        self.book = exchange.book
        self.record = exchange.record
        self.framing = framing
        self.job = job
        self.phase: Phase = "before_headers"

    async def run(self) -> None:
        """Write the answer; record how it ended, however it ended.

        Raises:
            FakeOllamaAbort: ``failure="close"`` fired, so the server drops the connection.
        """
        abort = False
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch, scope)
                    abort = await self._produce_until_gone()
                    scope.cancel()
        finally:
            # Still open here means cancelled: by the watcher, a send() that raised, or a caller.
            if self.record.outcome is None:
                self.book.finish(self.record, "cancelled", self.phase)
        if abort:
            # Raised outside the task group, so the server sees this exception, not a group.
            raise FakeOllamaAbort("failure='close': connection dropped on purpose")

    async def _watch(self, scope: anyio.CancelScope) -> None:
        # uvicorn's send() keeps returning after the client left (ASGI 2.3); only receive()
        # tells, and it is safe to read now because the body was consumed before we started.
        while (await self.exchange.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _produce_until_gone(self) -> bool:
        try:
            return await self._produce()
        except OSError:
            # ASGI 2.4 servers raise an OSError from send() once the client has gone.
            return False

    async def _produce(self) -> bool:
        job, config, record, exchange = self.job, self.job.config, self.record, self.exchange
        load_started = time.monotonic()
        if config.load_delay:
            await anyio.sleep(config.load_delay)
        loaded_at = time.monotonic()
        if job.done_reason == "load":
            await exchange.respond_json(200, self.framing.loaded(job))
            self.book.finish(record, "completed")
            return False
        if job.stream:
            await exchange.start(200, self.framing.stream_type)
            self.phase = "streaming"
        interval = 1 / config.tokens_per_second if config.tokens_per_second else 0.0
        base = time.monotonic()
        collected: list[Token] = []
        # One step per token, then one for the done chunk, so stalls and failures can land
        # between the last token and the end of the answer too.
        for index in range(job.total + 1):
            if index == config.stall_after and config.stall_seconds:
                phase, self.phase = self.phase, "stalled"
                await anyio.sleep(config.stall_seconds)
                self.phase = phase
                base = time.monotonic() - index * interval
            delay = base + index * interval - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            else:
                # Unpaced, still yield once per token: the watcher must get to run.
                await anyio.lowlevel.checkpoint()
            if index == config.fail_after:
                return await self._fail()
            if index < job.total:
                token = job.token(index)
                if job.stream:
                    await exchange.body(self.framing.token(job, token))
                    if config.malformed_every and (index + 1) % config.malformed_every == 0:
                        await exchange.body(self.framing.malformed())
                else:
                    collected.append(token)
                self.book.tokens_sent(record, index + 1)
        metrics = _metrics(job, record, loaded_at, loaded_at - load_started)
        if job.stream:
            *frames, last = self.framing.done(job, metrics)
            for frame in frames:
                await exchange.body(frame)
            await exchange.body(last, more=False)
        else:
            await exchange.respond_json(200, self.framing.whole(job, collected, metrics))
        self.book.finish(record, "completed")
        return False

    async def _fail(self) -> bool:
        if self.job.config.failure == "close":
            if not self.job.stream:
                # Headers first, so the client sees a response cut short rather than a 500.
                await self.exchange.start(200, JSON)
            self.book.finish(self.record, "failed")
            return True
        if self.job.stream:
            await self.exchange.body(self.framing.stream_error(), more=False)
        else:
            await self.exchange.respond_json(500, self.framing.error(ERROR_MESSAGE, 500))
        self.book.finish(self.record, "failed")
        return False
