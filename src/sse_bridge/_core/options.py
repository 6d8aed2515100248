"""How an option is declared, checked and offered: the machinery every options class shares.

An option is a dataclass field with its default and a :class:`Spec` (its kind, which decides
the check, its help and its name on the command line). "Off" is spelled one way per option:
``0`` for a number of seconds or a port, ``None`` for an object or a text. ``None`` is still
accepted for the seconds that used to take it (:func:`off_as_zero`), and becomes ``0``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from sse_bridge._core.validate import check_count, check_seconds

Kind = Literal["seconds", "count", "port", "flag", "choice", "text", "texts", "object"]


@dataclass(frozen=True)
class Spec:
    """How one option is checked and offered on the command line.

    Args:
        help: the one-line help ``--help`` shows.
        kind: ``seconds`` (a finite number >= 0), ``count`` (an integer >= ``minimum``),
            ``port`` (0-65535), ``flag``, ``choice`` (one of ``choices``), ``text``, ``texts``
            (a list of texts, never one string), or ``object`` (checked by its own ``check``).
        meaning: what the value means, for the error message of a bad one.
        minimum: the smallest ``count``.
        choices: the values of a ``choice`` (a command line's ``choice`` may be narrower: see
            ``cli_choices``).
        cli: the option's name on the command line (``--<cli>``), or ``""`` for an option the
            command line does not offer (an object, say); by default the field's name with
            dashes.
        cli_choices: the values the command line offers, where they differ from ``choices``.
        cli_off: the word that means ``None`` (off) on the command line, where ``None`` is the
            default of an option the command line takes as text (``--resume off``).
    """

    help: str
    kind: Kind
    meaning: str = ""
    minimum: int = 0
    choices: tuple[str, ...] = ()
    cli: str | None = None
    cli_choices: tuple[str, ...] = ()
    cli_off: str = ""


def option(default: Any, spec: Spec) -> Any:
    """A dataclass field with its default and its :class:`Spec`."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults are immutable: use a tuple")
    return field(default=default, metadata={"spec": spec})


def required(spec: Spec) -> Any:
    """A dataclass field with no default."""
    return field(metadata={"spec": spec})


def spec_of(item: dataclasses.Field[Any]) -> Spec:
    spec: Spec = item.metadata["spec"]
    return spec


def off_as_zero(value: float | None) -> float:
    """``None``, the older spelling of "off" for a number of seconds, as ``0``."""
    return 0.0 if value is None else value


def check(name: str, value: Any, spec: Spec) -> None:
    """Raise ValueError, naming the option and what it means, for a value its spec refuses."""
    kind = spec.kind
    if kind == "seconds":
        check_seconds(name, value, spec.meaning)
    elif kind == "count":
        check_count(name, value, spec.minimum, spec.meaning)
    elif kind == "port":
        check_count(name, value, 0, spec.meaning)
        if value > 65535:
            raise ValueError(f"{name} must be a TCP port (0-65535; 0: {spec.meaning}), got {value}")
    elif kind == "flag":
        # 0 and 1 as well: they were always taken for False and True.
        if not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    elif kind == "choice":
        if value not in spec.choices:
            either = " or ".join(repr(choice) for choice in spec.choices)
            raise ValueError(f"{name} must be {either}, not {value!r}")
    elif kind == "text":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string or None, got {value!r}")
        if value == "":
            raise ValueError(f"{name} must not be empty: {spec.meaning}")
    elif kind == "texts":
        if isinstance(value, (str, bytes)):
            raise ValueError(f"{name} must be {spec.meaning}, not one string")
        wrong = [item for item in value if not isinstance(item, str)]
        if wrong:
            raise ValueError(f"{name} must be {spec.meaning} (strings), got {wrong[0]!r} in it")


@dataclass(frozen=True, kw_only=True)
class Options:
    """What every options class shares: checks in ``__post_init__``, a copy with changes."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            spec = spec_of(item)
            if spec.kind == "texts" and not isinstance(value, (str, bytes)):
                # Any sequence in (None: none), a tuple kept: immutable and hashable.
                value = () if value is None else tuple(value)
                object.__setattr__(self, item.name, value)
            check(item.name, value, spec)
            if spec.kind == "flag":
                object.__setattr__(self, item.name, bool(value))
        self.validate()

    def validate(self) -> None:
        """Checks that involve more than one option."""

    def values(self) -> dict[str, Any]:
        """The options as keyword arguments (objects such as a store are not copied)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
