"""Do events stay separate under load? A locust suite for a deployment that streams chat answers.

Each user posts chat requests asking for Server-Sent Events (sse_bridge's ``ollama`` dialect:
``{"token"}`` events, then ``{"finished"}``) and reads the response with ``resp.raw.read1()``,
timestamping every read: locust's FastHttpUser waits for 1024 bytes and ``iter_lines`` lags a
line, so either would coalesce events on the client side and hide the thing measured.

Custom rows (request type ``SSE``) appear in the web UI and in ``--csv`` output:

- ``time to first event`` (ms from sending the request);
- ``gap between events`` (ms, one row per gap);
- ``coalesced fraction x1000`` and ``span ratio x1000`` (one row per stream; the value is the
  figure times 1000, because locust rows hold milliseconds).

A stream that is not a 200 event stream, ends without its final event, carries an error event,
or (against the fake Ollama, ``--fake-tokens-per-second``) loses, repeats or reorders a token is
a locust failure. At the end a quality gate sets the exit status: non-zero when the pooled
coalesced fraction exceeds ``--max-coalesced``, the p95 time to first event exceeds
``--max-ttfe-p95-ms``, or any stream failed.

    locust -f loadtests/locustfile.py --headless -u 100 -r 20 -t 30s --host http://127.0.0.1:8080 \\
        --fake-tokens-per-second 20
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment

from sse_bridge.testing import SSEParser, analyse, answer_tokens

logger = logging.getLogger("loadtests")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--chat-path", default="/api/chat", help="The chat endpoint.")
    parser.add_argument("--model", default="llama3.2", help="Model name in each request.")
    parser.add_argument("--prompt", default="Why stream tokens?", help="The user message.")
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=0.0,
        help="The upstream's pace; 0: from --fake-tokens-per-second, else the mean gap.",
    )
    parser.add_argument(
        "--fake-tokens-per-second",
        type=float,
        default=0.0,
        help="Against sse_bridge's fake Ollama: ask for this pace and check every token.",
    )
    parser.add_argument("--fake-num-tokens", type=int, default=40, help="Tokens per fake answer.")
    parser.add_argument(
        "--max-coalesced", type=float, default=0.05, help="Gate: pooled coalesced fraction."
    )
    parser.add_argument(
        "--max-ttfe-p95-ms", type=float, default=250.0, help="Gate: p95 time to first event."
    )


@dataclass
class Totals:
    """What every stream of this run added up to, for the quality gate."""

    streams: int = 0
    failed: int = 0
    gaps: int = 0
    coalesced_gaps: float = 0.0
    first_events: list[float] = field(default_factory=list)

    def verdict(self, max_coalesced: float, max_ttfe_p95_ms: float) -> tuple[bool, list[str]]:
        coalesced = self.coalesced_gaps / self.gaps if self.gaps else 1.0
        ttfe_p95 = _p95(self.first_events) * 1000 if self.first_events else float("inf")
        lines = [
            f"streams {self.streams}, failed {self.failed}",
            f"pooled coalesced fraction {coalesced:.4f} (gate {max_coalesced})",
            f"p95 time to first event {ttfe_p95:.1f} ms (gate {max_ttfe_p95_ms:g} ms)",
        ]
        passed = (
            self.streams > 0
            and self.failed == 0
            and coalesced <= max_coalesced
            and ttfe_p95 <= max_ttfe_p95_ms
        )
        return passed, lines


TOTALS = Totals()


def _p95(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _row(environment: Environment, name: str, value_ms: float) -> None:
    environment.events.request.fire(
        request_type="SSE",
        name=name,
        response_time=value_ms,
        response_length=0,
        exception=None,
        context={},
    )


class StreamingChatUser(HttpUser):
    """Posts one chat after another, reading each answer as it arrives."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        body: dict[str, Any] = {
            "model": options.model,
            "messages": [{"role": "user", "content": options.prompt}],
        }
        self.expected: list[str] | None = None
        self.interval: float | None = None
        if options.fake_tokens_per_second > 0:
            body["fake"] = {
                "tokens_per_second": options.fake_tokens_per_second,
                "num_tokens": options.fake_num_tokens,
            }
            self.expected = answer_tokens(options.fake_num_tokens)
            self.interval = 1 / options.fake_tokens_per_second
        if options.interval_ms > 0:
            self.interval = options.interval_ms / 1000
        self.body = json.dumps(body)

    @task
    def chat(self) -> None:
        path = self.environment.parsed_options.chat_path
        parser = SSEParser()
        received: list[dict[str, Any]] = []
        times: list[float] = []
        started = time.perf_counter()
        with self.client.post(
            path,
            data=self.body,
            headers={"accept": "text/event-stream", "content-type": "application/json"},
            stream=True,
            catch_response=True,
            name=f"{path} (stream)",
        ) as response:
            problem = None
            if response.status_code != 200:
                problem = f"status {response.status_code}"
            elif not response.headers.get("content-type", "").startswith("text/event-stream"):
                problem = f"not an event stream: {response.headers.get('content-type')}"
            else:
                while chunk := response.raw.read1(65536):
                    now = time.perf_counter() - started
                    for event in parser.feed(chunk):
                        received.append(json.loads(event.data))
                        times.append(now)
                problem = self.check(received)
            TOTALS.streams += 1
            if problem is not None:
                TOTALS.failed += 1
                response.failure(problem)
                return
            response.success()
        self.report(times)

    def check(self, received: list[dict[str, Any]]) -> str | None:
        errors = [event["error"] for event in received if "error" in event]
        if errors:
            return f"error event: {errors[0]}"
        if not received or received[-1].get("finished") is not True:
            return "the stream ended without its final event"
        tokens = [event["token"] for event in received[:-1] if "token" in event]
        if self.expected is not None and tokens != self.expected:
            return f"lost, repeated or reordered tokens: {len(tokens)} of {len(self.expected)}"
        return None

    def report(self, times: list[float]) -> None:
        environment = self.environment
        TOTALS.first_events.append(times[0])
        _row(environment, "time to first event", times[0] * 1000)
        for before, after in itertools.pairwise(times):
            _row(environment, "gap between events", (after - before) * 1000)
        analysis = analyse([times], self.interval)
        TOTALS.gaps += len(times) - 1
        TOTALS.coalesced_gaps += analysis.coalesced * (len(times) - 1)
        _row(environment, "coalesced fraction x1000", analysis.coalesced * 1000)
        _row(environment, "span ratio x1000", analysis.span_ratio * 1000)


@events.quitting.add_listener
def _quality_gate(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None
    passed, lines = TOTALS.verdict(options.max_coalesced, options.max_ttfe_p95_ms)
    for line in lines:
        logger.info("quality gate: %s", line)
    logger.info("quality gate: %s", "passed" if passed else "FAILED")
    if not passed:
        environment.process_exit_code = 1
