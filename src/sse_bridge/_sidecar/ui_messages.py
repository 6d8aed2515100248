"""The AI SDK's chat request as an Ollama ``/api/chat`` body (pure: bytes in, bytes out).

``useChat``'s ``DefaultChatTransport`` POSTs ``{id, messages, trigger, messageId, ...body}``,
each message ``{id, role, parts: [...]}``. Ollama reads ``{model, messages: [{role, content,
images?, thinking?, tool_calls?}], stream}``. Every byte is the client's, so anything that is
not that shape is refused with a :class:`BadChatRequest` saying what was expected.

What maps: text parts (joined into ``content``), image file parts given as ``data:`` URLs
(``images``, base64), an assistant's reasoning (``thinking``) and tool parts (``tool_calls``, and
a ``tool`` message for each output). What the model never sees: UI-only parts (``step-start``,
``data-*``, sources), as the SDK's own ``convertToModelMessages`` drops them. Files by URL are
refused: the bridge fetches nothing on a client's behalf.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

# Bounds on what one request may hold, beyond the sidecar's max_body on its bytes.
MAX_DEPTH = 64
MAX_MESSAGES = 10_000
MAX_PARTS = 10_000
MAX_ID = 256
THINK_LEVELS = ("low", "medium", "high")
EXPECTED = (
    "expected the AI SDK's UI messages, as useChat sends them: "
    '{"id": "<chat id>", "messages": [{"role": "user", '
    '"parts": [{"type": "text", "text": "..."}]}]}'
)
_ROLES = ("system", "user", "assistant")
# Tool part states that carry a complete input (the others are still streaming).
_CALLED = ("input-available", "output-available", "output-error")


class BadChatRequest(ValueError):
    """A chat request that cannot be sent upstream; the message is the client's 400."""


def chat_request(body: bytes, default_model: str | None) -> tuple[str | None, bytes]:
    """The chat id (``None`` if the body has none) and the Ollama body for a UI chat request.

    Raises:
        BadChatRequest: the body is not UTF-8 JSON holding UI messages, is nested too deeply,
            names no model (and there is no default), or has a field of the wrong type.
    """
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadChatRequest("the body is not UTF-8; " + EXPECTED) from None
    except RecursionError:
        raise BadChatRequest(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise BadChatRequest(f"the body is not JSON ({exc}); {EXPECTED}") from None
    if not isinstance(value, dict):
        raise BadChatRequest("the body is not a JSON object; " + EXPECTED)
    _check_depth(value)
    chat_id = value.get("id")
    if chat_id is not None and not _is_id(chat_id):
        raise BadChatRequest(f"id must be a string of 1 to {MAX_ID} characters (the chat id)")
    ollama: dict[str, Any] = {
        "model": _model(value.get("model"), default_model),
        "messages": _messages(value.get("messages")),
        "stream": True,
    }
    think = value.get("think")
    if think is not None:
        if not isinstance(think, bool) and think not in THINK_LEVELS:
            raise BadChatRequest('think must be true, false, "low", "medium" or "high"')
        ollama["think"] = think
    for name, kind, noun in (("options", dict, "an object"), ("tools", list, "an array")):
        if name in value and value[name] is not None:
            if not isinstance(value[name], kind):
                raise BadChatRequest(f"{name} must be {noun}, as Ollama's /api/chat takes it")
            ollama[name] = value[name]
    return chat_id, json.dumps(ollama, ensure_ascii=False).encode("utf-8", "backslashreplace")


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID and value.isprintable()


def _model(model: Any, default: str | None) -> str:
    if model is None:
        if default is None:
            raise BadChatRequest(
                "no model: send one in the body (useChat's body: {model: 'llama3.2'}) or start "
                "the bridge with --model (SSE_BRIDGE_MODEL)"
            )
        return default
    if not _is_id(model):
        raise BadChatRequest(f"model must be a name of 1 to {MAX_ID} characters")
    return str(model)


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadChatRequest("messages must be a non-empty array; " + EXPECTED)
    if len(messages) > MAX_MESSAGES:
        raise BadChatRequest(f"more than {MAX_MESSAGES} messages")
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
            raise BadChatRequest(f"messages[{index}] has no parts array; " + EXPECTED)
        role = message.get("role")
        if role not in _ROLES:
            raise BadChatRequest(f"messages[{index}].role must be system, user or assistant")
        parts = message["parts"]
        if len(parts) > MAX_PARTS:
            raise BadChatRequest(f"messages[{index}] has more than {MAX_PARTS} parts")
        converted.extend(_message(index, role, parts))
    return converted


def _message(index: int, role: str, parts: list[Any]) -> list[dict[str, Any]]:
    """One UI message as Ollama messages. An assistant's message is one per step (its parts
    between ``step-start`` parts), each followed by a ``tool`` message per tool output, as the
    SDK's ``convertToModelMessages`` splits it: a step's calls, their results, the next step."""
    steps: list[list[tuple[str, dict[str, Any]]]] = [[]]
    for number, part in enumerate(parts):
        where = f"messages[{index}].parts[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise BadChatRequest(f"{where} is not a part: an object with a string type")
        if kind == "step-start" and role == "assistant" and steps[-1]:
            steps.append([])
        steps[-1].append((where, part))
    converted: list[dict[str, Any]] = []
    for step in steps:
        converted.extend(_step(role, step))
    # A message of UI parts alone is still the turn it was.
    return converted or [{"role": role, "content": ""}]


def _step(role: str, parts: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    texts: list[str] = []
    thoughts: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for where, part in parts:
        kind = part["type"]
        if kind == "text":
            texts.append(_text(part, where))
        elif kind == "reasoning":
            thoughts.append(_text(part, where))
        elif kind == "file":
            images.append(_image(part, where))
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            _tool(part, kind, where, calls, outputs)
        # Anything else is the UI's own (step-start, data-*, sources): the model never sees it.
    if role == "assistant" and not (texts or thoughts or calls or images):
        return []  # a step of UI parts only: nothing the model said
    message: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
    if images:
        message["images"] = images
    if thoughts and role == "assistant":
        message["thinking"] = "\n".join(thoughts)
    if calls and role == "assistant":
        message["tool_calls"] = calls
        return [message, *outputs]
    return [message]


def _text(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise BadChatRequest(f"{where}.text must be a string")
    return text


def _image(part: dict[str, Any], where: str) -> str:
    """The base64 of an image file part; any other file, or a file by URL, is refused."""
    media = part.get("mediaType")
    url = part.get("url")
    if not isinstance(media, str) or not isinstance(url, str):
        raise BadChatRequest(f"{where}: a file part needs a string mediaType and url")
    if not media.lower().startswith("image/"):
        raise BadChatRequest(f"{where}: Ollama takes image files only, not {media[:100]!r}")
    header, comma, data = url.partition(",")
    if not (comma and header.lower().startswith("data:") and header.lower().endswith(";base64")):
        raise BadChatRequest(
            f"{where}: an image must come as a base64 data: URL (as useChat sends a file);"
            " the bridge fetches no URL"
        )
    try:
        base64.b64decode(data.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise BadChatRequest(f"{where}: the image's data: URL is not valid base64") from None
    return data


def _tool(
    part: dict[str, Any],
    kind: str,
    where: str,
    calls: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
) -> None:
    """A tool part: a call with its input, and its output (or error) as a ``tool`` message."""
    if part.get("state") not in _CALLED:
        return  # still streaming its input: no call was made
    name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
    if not isinstance(name, str) or not name:
        raise BadChatRequest(f"{where}: a tool part needs a tool name")
    calls.append({"function": {"name": name, "arguments": part.get("input") or {}}})
    if part["state"] == "output-available":
        output = part.get("output")
        content = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        outputs.append({"role": "tool", "tool_name": name, "content": content})
    elif part["state"] == "output-error":
        error = part.get("errorText")
        outputs.append({"role": "tool", "tool_name": name, "content": str(error)})


def _check_depth(value: Any) -> None:
    """Refuse a body nested deeper than ``MAX_DEPTH``, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadChatRequest(f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
