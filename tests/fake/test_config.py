"""The fake's options: each bad value refused with a message naming the field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sse_bridge._testing.fake import FakeOllama, FakeOllamaConfig


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"tokens_per_second": -1}, "tokens_per_second"),
        ({"tokens_per_second": math.nan}, "tokens_per_second"),
        ({"tokens_per_second": True}, "tokens_per_second"),
        ({"tokens_per_second": "fast"}, "tokens_per_second"),
        ({"load_delay": -0.5}, "load_delay"),
        ({"load_delay": 10**400}, "load_delay"),
        ({"stall_seconds": math.inf}, "stall_seconds"),
        ({"num_tokens": -1}, "num_tokens"),
        ({"num_tokens": 2.5}, "num_tokens"),
        ({"num_tokens": True}, "num_tokens"),
        ({"fail_after": -1}, "fail_after"),
        ({"malformed_every": 0}, "malformed_every"),
        ({"stall_after": -3}, "stall_after"),
        ({"failure": "explode"}, "failure"),
        ({"think": "yes"}, "think"),
        ({"models": ["llama3.2"]}, "models"),
        ({"models": ("",)}, "models"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=f"^{named} must be"):
        FakeOllamaConfig(**options)


def test_config_accepts_edge_values() -> None:
    config = FakeOllamaConfig(
        tokens_per_second=0,
        load_delay=0,
        num_tokens=0,
        fail_after=0,
        failure="close",
        malformed_every=1,
        think=True,
        stall_after=0,
        stall_seconds=1.5,
        models=(),
    )
    assert config.num_tokens == 0
    assert FakeOllama().config == FakeOllamaConfig()
