"""The fake's options: one frozen, checked `FakeOllamaConfig`, and a request's overrides of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from sse_bridge._core.validate import check_count, check_seconds

Failure = Literal["error", "close"]


@dataclass(frozen=True)
class FakeOllamaConfig:
    """Defaults for every request a `FakeOllama` answers.

    A request overrides any field but ``models`` with a top-level ``"fake": {...}`` object.

    Args:
        tokens_per_second: pace of the token lines; 0 sends them as fast as possible.
        load_delay: seconds before any response header, like Ollama loading a model.
        num_tokens: answer length in tokens; None is the whole sample answer, a number cycles it.
        fail_after: inject a failure after this many token lines; None never fails.
        failure: "error" writes Ollama's ``{"error": ...}`` line and ends the body normally (the
            status stays 200); "close" drops the connection without finishing the body.
        malformed_every: insert a non-JSON line after every Nth token line; None never does.
        think: send thinking chunks before the answer even when the request does not ask.
        stall_after: go silent after this many token lines for ``stall_seconds``, then go on.
        stall_seconds: length of that silence.
        models: the model names the server knows; a name without a tag means ``:latest``.

    Raises:
        ValueError: a field is out of range; the message says what is accepted.
    """

    tokens_per_second: float = 20.0
    load_delay: float = 0.0
    num_tokens: int | None = None
    fail_after: int | None = None
    failure: Failure = "error"
    malformed_every: int | None = None
    think: bool = False
    stall_after: int | None = None
    stall_seconds: float = 0.0
    models: tuple[str, ...] = ("llama3.2", "gemma4", "qwen2.5:7b")

    def __post_init__(self) -> None:
        check_seconds("tokens_per_second", self.tokens_per_second, "0 turns pacing off")
        check_seconds("load_delay", self.load_delay, "0 answers at once")
        check_seconds("stall_seconds", self.stall_seconds, "used with stall_after")
        check_count("num_tokens", self.num_tokens, 0, "None sends the whole sample", optional=True)
        check_count("fail_after", self.fail_after, 0, "None never fails", optional=True)
        check_count(
            "malformed_every", self.malformed_every, 1, "None never sends bad lines", optional=True
        )
        check_count("stall_after", self.stall_after, 0, "None never stalls", optional=True)
        if self.failure not in ("error", "close"):
            raise ValueError(f'failure must be "error" or "close", got {self.failure!r}')
        if not isinstance(self.think, bool):
            raise ValueError(f"think must be true or false, got {self.think!r}")
        if not isinstance(self.models, tuple) or not all(
            isinstance(name, str) and name for name in self.models
        ):
            raise ValueError(
                'models must be a tuple of non-empty names such as ("llama3.2",), '
                f"got {self.models!r}"
            )


OVERRIDABLE = tuple(
    sorted(f.name for f in dataclasses.fields(FakeOllamaConfig) if f.name != "models")
)


def apply_overrides(config: FakeOllamaConfig, overrides: object) -> FakeOllamaConfig:
    """`config` with a request's ``"fake"`` object applied.

    Raises:
        ValueError: the overrides are not an object, name an unknown field or hold a bad value;
            the message is the one the client gets in its 400.
    """
    if not isinstance(overrides, dict):
        raise ValueError('"fake" must be a JSON object of FakeOllamaConfig fields')
    for key in overrides:
        if key not in OVERRIDABLE:
            raise ValueError(
                f'unknown "fake" option "{key}"; valid options: {", ".join(OVERRIDABLE)}'
            )
    try:
        return dataclasses.replace(config, **overrides)
    except ValueError as exc:
        raise ValueError(f'invalid "fake" option: {exc}') from None
