"""Do events stay separate under load? A locust suite for a deployment that streams chat answers.

Each user posts chat requests asking for Server-Sent Events (sse_bridge's ``ollama`` dialect:
``{"token"}`` events, then ``{"finished"}``) and reads the response with ``resp.raw.read1()``,
timestamping every read: locust's FastHttpUser waits for 1024 bytes and ``iter_lines`` lags a
line, so either would coalesce events on the client side and hide the thing measured.

With ``--direct-host`` (the upstream itself, say Ollama or the fake), ``--direct-users`` more
users post the same request straight to it and read its NDJSON lines the same way: the direct
path, measured in the same run by the same client on the same machine. The gate then judges the
deployment's latency against it, so that a slow or busy machine, which slows both paths alike,
does not fail the run; what the deployment adds does.

Custom rows (request type ``SSE``) appear in the web UI and in ``--csv`` output:

- ``time to first event`` (ms from sending the request);
- ``gap between events`` (ms, one row per gap);
- ``coalesced fraction x1000`` and ``span ratio x1000`` (one row per stream; the value is the
  figure times 1000, because locust rows hold milliseconds);
- ``time to first event (direct)`` and ``gap between events (direct)``: the same on the direct
  path.

The latency rows skip streams that started before every user was spawned: the ramp-up is not
the steady state. A stream that is not a 200 event stream, ends without its final event, carries
an error event, or (against the fake Ollama, ``--fake-tokens-per-second``) loses, repeats or
reorders a token is a locust failure, whenever it ran. At the end a quality gate sets the exit
status (see ``Gate``).

    locust -f loadtests/locustfile.py --headless -u 110 -r 50 -t 30s --host http://127.0.0.1:8080 \\
        --fake-tokens-per-second 20 --direct-host http://127.0.0.1:11434 --direct-users 10
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment

from sse_bridge import LineDecoder
from sse_bridge.probe import analyse
from sse_bridge.testing import SSEParser, answer_tokens

logger = logging.getLogger("loadtests")

# From a chunk of a response body to the events it completes, each as a JSON object.
Decode = Callable[[bytes], list[dict[str, Any]]]


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
        "--direct-host",
        default="",
        help="The upstream's own URL (NDJSON), measured directly as the reference; '': none.",
    )
    parser.add_argument(
        "--direct-users",
        type=int,
        default=10,
        help="Of the -u users, how many read the direct host (with --direct-host).",
    )
    for name, default, text in [
        ("--max-coalesced", 0.05, "Gate: pooled coalesced fraction."),
        ("--min-span", 0.9, "Gate: median span ratio of the streams."),
        ("--max-ttfe-p50-over-direct-ms", 100.0, "Gate: p50 time to first event over direct."),
        ("--max-ttfe-p95-over-direct-ms", 1000.0, "Gate: p95 time to first event over direct."),
        ("--max-gap-p95-over-direct-ms", 50.0, "Gate: p95 gap between events over direct."),
        ("--max-ttfe-p95-ms", 0.0, "Gate: p95 time to first event, absolute; 0: none."),
        ("--max-gap-p95-ms", 0.0, "Gate: p95 gap between events, absolute; 0: none."),
    ]:
        parser.add_argument(name, type=float, default=default, help=text)


@dataclass
class Figures:
    """What the streams of one path added up to."""

    streams: int = 0
    failed: int = 0
    gaps: int = 0
    coalesced_gaps: float = 0.0
    spans: list[float] = field(default_factory=list)
    # Seconds, from the streams that started after the ramp-up only:
    first_events: list[float] = field(default_factory=list)
    gap_times: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Gate:
    """The thresholds of the quality gate; a latency threshold of 0 is not checked.

    Always: no stream failed (on either path), the pooled coalesced fraction and the median
    span ratio of the deployment's streams. With a direct path, its percentiles plus a margin
    bound the deployment's. The absolute bounds are for manual runs on a machine whose speed is
    known, or a deployment with no direct path.
    """

    max_coalesced: float
    min_span: float
    max_ttfe_p50_over_direct_ms: float
    max_ttfe_p95_over_direct_ms: float
    max_gap_p95_over_direct_ms: float
    max_ttfe_p95_ms: float
    max_gap_p95_ms: float

    def verdict(self, stack: Figures, direct: Figures | None) -> tuple[bool, list[str]]:
        coalesced = _coalesced(stack)
        span = statistics.median(stack.spans) if stack.spans else 0.0
        failed = stack.failed + (direct.failed if direct else 0)
        lines = [
            f"streams {stack.streams}, failed {stack.failed}"
            + (f"; direct: streams {direct.streams}, failed {direct.failed}" if direct else ""),
            f"pooled coalesced fraction {coalesced:.4f} (gate {self.max_coalesced:g})"
            + (f"; direct {_coalesced(direct):.4f}" if direct else ""),
            f"median span ratio {span:.3f} (gate {self.min_span:g})",
        ]
        passed = stack.streams > 0 and failed == 0
        passed &= coalesced <= self.max_coalesced and span >= self.min_span
        if not stack.first_events or (direct is not None and not direct.first_events):
            lines.append("no stream started after the ramp-up on each path: run for longer")
            passed = False
        ttfe, gap = "time to first event", "gap between events"
        latencies = [
            (ttfe, 50, "first_events", self.max_ttfe_p50_over_direct_ms, 0.0),
            (ttfe, 95, "first_events", self.max_ttfe_p95_over_direct_ms, self.max_ttfe_p95_ms),
            (gap, 95, "gap_times", self.max_gap_p95_over_direct_ms, self.max_gap_p95_ms),
        ]
        for name, percent, figure, margin, bound in latencies:
            value = _percentile_ms(getattr(stack, figure), percent)
            line = f"p{percent} {name} {value:.1f} ms"
            if direct is not None and margin:
                reference = _percentile_ms(getattr(direct, figure), percent)
                line += f", direct {reference:.1f} ms (gate: direct + {margin:g} ms)"
                passed &= value <= reference + margin
            if bound:
                line += f" (gate {bound:g} ms)"
                passed &= value <= bound
            lines.append(line)
        return passed, lines


STACK = Figures()
DIRECT = Figures()
# When the last user was spawned (time.perf_counter()); streams that start later are steady state.
RAMPED_UP: list[float] = []


@events.spawning_complete.add_listener
def _ramped_up(**_: Any) -> None:
    if not RAMPED_UP:
        RAMPED_UP.append(time.perf_counter())


def _coalesced(figures: Figures) -> float:
    return figures.coalesced_gaps / figures.gaps if figures.gaps else 1.0


def _percentile_ms(seconds: list[float], percent: int) -> float:
    if not seconds:
        return float("nan")
    if len(seconds) == 1:
        return seconds[0] * 1000
    return statistics.quantiles(seconds, n=100, method="inclusive")[percent - 1] * 1000


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
    """Posts one chat after another to the deployment, reading each answer as it arrives."""

    wait_time = between(0.05, 0.2)
    figures = STACK
    suffix = ""
    accept = "text/event-stream"

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
        received: list[dict[str, Any]] = []
        times: list[float] = []
        started = time.perf_counter()
        with self.client.post(
            path,
            data=self.body,
            headers={"accept": self.accept, "content-type": "application/json"},
            stream=True,
            catch_response=True,
            name=f"{path} ({self.suffix or 'stream'})",
        ) as response:
            problem = self.check_response(response.status_code, response.headers)
            if problem is None:
                decode = self.decoder()
                while chunk := response.raw.read1(65536):
                    now = time.perf_counter() - started
                    for item in decode(chunk):
                        received.append(item)
                        times.append(now)
                problem = self.check(received)
            # locust timed the request when its headers arrived; the row is the whole stream.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            self.figures.streams += 1
            if problem is not None:
                self.figures.failed += 1
                response.failure(problem)
                return
            response.success()
        self.report(times, steady=bool(RAMPED_UP) and started >= RAMPED_UP[0])

    def check_response(self, status: int, headers: Any) -> str | None:
        if status != 200:
            return f"status {status}"
        if not headers.get("content-type", "").startswith("text/event-stream"):
            return f"not an event stream: {headers.get('content-type')}"
        return None

    def decoder(self) -> Decode:
        parser = SSEParser()
        return lambda chunk: [json.loads(event.data) for event in parser.feed(chunk)]

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

    def report(self, times: list[float], *, steady: bool) -> None:
        environment, figures = self.environment, self.figures
        suffix = f" ({self.suffix})" if self.suffix else ""
        analysis = analyse([times], self.interval)
        figures.gaps += len(times) - 1
        figures.coalesced_gaps += analysis.coalesced * (len(times) - 1)
        figures.spans.append(analysis.span_ratio)
        if not self.suffix:
            _row(environment, "coalesced fraction x1000", analysis.coalesced * 1000)
            _row(environment, "span ratio x1000", analysis.span_ratio * 1000)
        if not steady:
            return
        figures.first_events.append(times[0])
        _row(environment, f"time to first event{suffix}", times[0] * 1000)
        for before, after in itertools.pairwise(times):
            figures.gap_times.append(after - before)
            _row(environment, f"gap between events{suffix}", (after - before) * 1000)


class DirectChatUser(StreamingChatUser):
    """The same chats, straight to the upstream (``--direct-host``): the reference path.

    The upstream speaks NDJSON; each line is an event, as the bridge turns each into one.
    """

    fixed_count = 1  # Set from --direct-users at init, or the class is dropped.
    figures = DIRECT
    suffix = "direct"
    accept = "application/x-ndjson"

    def on_start(self) -> None:
        super().on_start()
        self.client.base_url = self.environment.parsed_options.direct_host

    def check_response(self, status: int, headers: Any) -> str | None:
        return None if status == 200 else f"status {status}"

    def decoder(self) -> Decode:
        lines = LineDecoder()

        def decode(chunk: bytes) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for line in lines.decode(chunk):
                chunk_object = json.loads(line)
                item: dict[str, Any] = {}
                if "error" in chunk_object:
                    item["error"] = chunk_object["error"]
                elif chunk_object.get("done"):
                    item["finished"] = True
                else:
                    item["token"] = chunk_object.get("message", {}).get("content")
                items.append(item)
            return items

        return decode


@events.init.add_listener
def _direct_users(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    if options.direct_host and options.direct_users > 0:
        DirectChatUser.fixed_count = options.direct_users
    elif DirectChatUser in environment.user_classes:
        environment.user_classes.remove(DirectChatUser)


@events.quitting.add_listener
def _quality_gate(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None
    gate = Gate(
        max_coalesced=options.max_coalesced,
        min_span=options.min_span,
        max_ttfe_p50_over_direct_ms=options.max_ttfe_p50_over_direct_ms,
        max_ttfe_p95_over_direct_ms=options.max_ttfe_p95_over_direct_ms,
        max_gap_p95_over_direct_ms=options.max_gap_p95_over_direct_ms,
        max_ttfe_p95_ms=options.max_ttfe_p95_ms,
        max_gap_p95_ms=options.max_gap_p95_ms,
    )
    direct = DIRECT if options.direct_host and options.direct_users > 0 else None
    passed, lines = gate.verdict(STACK, direct)
    for line in lines:
        logger.info("quality gate: %s", line)
    logger.info("quality gate: %s", "passed" if passed else "FAILED")
    if not passed:
        environment.process_exit_code = 1
