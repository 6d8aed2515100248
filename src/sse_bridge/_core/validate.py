"""Option checks shared by every constructor, so that a bad value always reads the same way."""

from __future__ import annotations

import math


def is_seconds(value: object) -> bool:
    """A finite number >= 0 (bool is an int subclass, but ``True`` seconds is a mistake)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an integer too big for a float, e.g. from JSON
        return False


def check_seconds(name: str, value: object, meaning: str) -> None:
    if not is_seconds(value):
        raise ValueError(
            f"{name} must be a finite number of seconds >= 0 ({meaning}), got {value!r}"
        )


def check_count(
    name: str, value: object, minimum: int, meaning: str, *, optional: bool = False
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        either = "None or " if optional else ""
        raise ValueError(
            f"{name} must be {either}an integer >= {minimum} ({meaning}), got {value!r}"
        )
