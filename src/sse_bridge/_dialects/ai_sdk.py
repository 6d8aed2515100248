"""The ``ai-sdk`` dialect: Ollama chunks as the AI SDK's UI message stream (protocol v1).

What ``useChat``, ``Chat`` and ``readUIMessageStream`` of the ``ai`` package (5 and later) read:
one ``data:`` JSON chunk per event, ``start`` and ``start-step`` first, each run of thinking or
content as one part (``reasoning-start``/``-delta``/``-end``, ``text-start``/``-delta``/``-end``,
one id per part), each tool call as ``tool-input-available``, then ``finish-step``, ``finish`` and
``data: [DONE]``. The response carries ``x-vercel-ai-ui-message-stream: v1``.

Every chunk holds exactly the keys ``ai`` 5.0's strict schema allows (``ai`` 5.0 refused any
other key; later releases accept more). So the finish reason and Ollama's counts travel as the
``finish`` chunk's ``messageMetadata``, which every release accepts, and not as the
``finishReason`` key that only later releases know. Every ending closes the open part first, so
the assembled message never keeps a part in the streaming state.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

from sse_bridge._dialects.openai import DONE
from sse_bridge._dialects.translator import (
    EMPTY,
    TRUNCATED,
    JSONTranslator,
    chunk_parts,
    json_event,
    json_string,
)

HEADER = (b"x-vercel-ai-ui-message-stream", b"v1")
# Ollama's done_reason in the AI SDK's words (its finish reasons); "stopped" is the bridge's own
# stop (docs/resume.md), which the latest ai names "interrupted".
_REASONS = {"stop": "stop", "length": "length", "stopped": "interrupted"}


class AISDKTranslator(JSONTranslator):
    """``ai-sdk``: Ollama chat and generate chunks as UI message chunks, then ``[DONE]``."""

    headers = (HEADER,)

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._saw_chunk = False
        # The part now streaming ("text" or "reasoning") and its id; parts are numbered.
        self._open: str | None = None
        self._part_id = b""
        self._parts = 0
        self._tool_calls = 0
        self._text_delta = b""

    def on_chunk(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        self._saw_chunk = True
        token, thinking, tool_calls = chunk_parts(chunk)
        if token and self._open == "text" and not thinking and not tool_calls:
            # Once per token: the text-delta from a template, as json_event() would write it.
            return [self._text_delta + b"%b}\n\n" % json_string(token)]
        events = self._begin()
        if thinking:
            if self._open != "reasoning":
                self._close(events)
                self._open_part(events, "reasoning")
            events.append(self._delta("reasoning", thinking))
        if token:
            if self._open != "text":
                self._close(events)
                self._open_part(events, "text")
            events.append(self._delta("text", token))
        if tool_calls:
            self._close(events)
            events.extend(self._tool_call(call) for call in tool_calls)
        return events

    def on_final(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        events = self.on_chunk(chunk, line)
        self.completed = True
        done_reason = chunk.get("done_reason")
        if self._tool_calls:
            reason = "tool-calls"
        else:
            reason = _REASONS.get(done_reason, "other") if isinstance(done_reason, str) else "stop"
        return events + self._finish(_metadata(chunk, reason))

    def on_other(self, value: Any, line: str) -> list[bytes]:
        # Not a chat or generate chunk (say /api/pull progress): a data part, as it came.
        events = self._begin()
        self._close(events)
        events.append(json_event({"type": "data-ollama", "data": value}))
        return events

    def end(self) -> list[bytes]:
        if self.completed:
            return []
        if self._saw_chunk or not self.seen_line:
            return self.fail(TRUNCATED if self._saw_chunk else EMPTY)
        # A stream of other objects has no final chunk to wait for: it ended whole.
        self.completed = True
        return self._finish({"finishReason": "other"})

    def fail(self, message: str) -> list[bytes]:
        # The open part is closed so the message stays well formed; the error chunk makes
        # useChat's status "error" (readUIMessageStream calls its onError).
        self.finished = True
        events: list[bytes] = []
        self._close(events)
        events.append(json_event({"type": "error", "errorText": message}))
        events.append(DONE)
        return events

    def bad_line(self, line: str, reason: str) -> list[bytes]:
        # Reported with the line itself: nothing the upstream sent is silently lost. The open
        # part is closed first, as for every error: useChat stops reading at an error chunk, and
        # the message it keeps has no part left streaming; readUIMessageStream reads on, and the
        # next token opens a new part.
        events: list[bytes] = []
        self._close(events)
        events.append(json_event({"type": "error", "errorText": f"{reason}: {line}"}))
        return events

    def stop(self) -> list[bytes]:
        self.finished = True
        return self._finish({"finishReason": _REASONS["stopped"], "doneReason": "stopped"})

    def _begin(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        # No messageId: the client keeps its own. One of ours would make useChat add a second
        # assistant message when it continues its last one (after a client-side tool's output),
        # as streamText's stream, given no original messages, sends none either.
        return [json_event({"type": "start"}), json_event({"type": "start-step"})]

    def _finish(self, metadata: dict[str, Any]) -> list[bytes]:
        events = self._begin()
        self._close(events)
        events.append(json_event({"type": "finish-step"}))
        events.append(json_event({"type": "finish", "messageMetadata": metadata}))
        events.append(DONE)
        return events

    def _open_part(self, events: list[bytes], kind: str) -> None:
        self._parts += 1
        self._open = kind
        self._part_id = b"%s-%d" % (kind[:4].encode(), self._parts)
        events.append(b'data: {"type":"%s-start","id":"%s"}\n\n' % (kind.encode(), self._part_id))
        if kind == "text":
            self._text_delta = b'data: {"type":"text-delta","id":"%s","delta":' % self._part_id

    def _delta(self, kind: str, text: str) -> bytes:
        return b'data: {"type":"%s-delta","id":"%s","delta":%b}\n\n' % (
            kind.encode(),
            self._part_id,
            json_string(text),
        )

    def _close(self, events: list[bytes]) -> None:
        if self._open is not None:
            events.append(
                b'data: {"type":"%s-end","id":"%s"}\n\n' % (self._open.encode(), self._part_id)
            )
            self._open = None

    def _tool_call(self, call: Any) -> bytes:
        """``tool-input-available`` for one Ollama tool call: the part useChat runs a tool from."""
        self._tool_calls += 1
        call = call if isinstance(call, dict) else {}
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call-{secrets.token_hex(8)}"
        name = function.get("name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            # OpenAI-style servers send the arguments as a JSON string; Ollama as an object.
            with contextlib.suppress(ValueError, RecursionError):
                arguments = json.loads(arguments)
        event = {
            "type": "tool-input-available",
            "toolCallId": call_id,
            "toolName": name if isinstance(name, str) else "",
            "input": arguments,
        }
        return json_event(event)


def _metadata(chunk: dict[str, Any], reason: str) -> dict[str, Any]:
    """The ``finish`` chunk's message metadata: the reason, the model and Ollama's counts."""
    metadata: dict[str, Any] = {"finishReason": reason}
    if isinstance(chunk.get("done_reason"), str):
        metadata["doneReason"] = chunk["done_reason"]
    if "model" in chunk:
        metadata["model"] = chunk["model"]
    prompt: Any = chunk.get("prompt_eval_count")
    completion: Any = chunk.get("eval_count")
    usage: dict[str, int] = {}
    if _is_count(prompt):
        usage["inputTokens"] = prompt
    if _is_count(completion):
        usage["outputTokens"] = completion
    if len(usage) == 2:
        usage["totalTokens"] = prompt + completion
    if usage:
        metadata["usage"] = usage
    # Ollama's own figures (counts and nanosecond durations), as the ollama dialect sends them.
    ollama = {k: v for k, v in chunk.items() if k.endswith(("_count", "_duration"))}
    if ollama:
        metadata["ollama"] = ollama
    return metadata


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
