"""The middleware's options: one frozen, checked object; each option's default, check and help.

Every surface reads its options from here: :class:`SSEBridgeMiddleware` and ``create_proxy``
take their defaults from these fields, the command line builds its ``--help`` from each
field's :class:`~sse_bridge._core.options.Spec`, and ``sse-bridge serve`` hands the options to
its worker processes as this object's JSON. To add an option, add a field (default, spec,
check) here; the tests in ``tests/test_options.py`` then say which signature and which table
still lack it. How a field is declared and checked is ``_core/options.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sse_bridge._core.codec import DEFAULT_MAX_LINE_BYTES
from sse_bridge._core.context import NDJSON_TYPES
from sse_bridge._core.options import Options, Spec, option
from sse_bridge._core.validate import check_count
from sse_bridge._dialects.builtin import DIALECTS, Dialect, resolve_dialect
from sse_bridge._resume.binding import Owner
from sse_bridge._resume.open import check_resume
from sse_bridge._resume.store import DEFAULT_TTL, ResumeStore


@dataclass(frozen=True, kw_only=True)
class BridgeOptions(Options):
    """The options of :class:`sse_bridge.SSEBridgeMiddleware`; see its docstring for each."""

    dialect: Dialect = option(
        "raw",
        Spec(
            "How NDJSON lines become events.",
            "object",
            cli_choices=tuple(sorted(DIALECTS)),
        ),
    )
    convert: Literal["negotiate", "always"] = option(
        "negotiate",
        Spec(
            "negotiate: only when the request accepts text/event-stream; always: every response.",
            "choice",
            choices=("negotiate", "always"),
        ),
    )
    keepalive: float = option(
        15.0,
        Spec(
            "Silent seconds before a ': ping'; 0: off.",
            "seconds",
            meaning="0 or None sends no keepalives",
        ),
    )
    send_timeout: float = option(
        30.0,
        Spec(
            "Seconds a client may accept no bytes (data or keepalive) before it is cut off; "
            "0: off.",
            "seconds",
            meaning="0 waits for a stalled client forever",
        ),
    )
    max_line_bytes: int = option(
        DEFAULT_MAX_LINE_BYTES,
        Spec(
            "Longest NDJSON line accepted; a longer one ends the stream with an error event.",
            "count",
            minimum=1,
            meaning="the longest NDJSON line",
        ),
    )
    event_ids: bool = option(False, Spec("Add id: fields for EventSource clients.", "flag"))
    retry: int | None = option(
        None, Spec("EventSource's reconnection time in milliseconds, sent first.", "object", cli="")
    )
    retry_jitter: float = option(
        0.0,
        Spec(
            "With retry: each stream's retry: value spread by up to this fraction, either way.",
            "object",
            cli="",
        ),
    )
    ndjson_types: Sequence[str] = option(
        NDJSON_TYPES,
        Spec(
            "The media types treated as NDJSON.",
            "texts",
            meaning="a sequence of media types",
            cli="",
        ),
    )
    resume: str | ResumeStore | None = option(
        None,
        Spec(
            "Resumable streams: off, memory (one process) or redis://host:port/db "
            "(docs/resume.md).",
            "object",
            cli_off="off",
        ),
    )
    resume_path: str = option(
        "/streams", Spec("Where streams are resumed and stopped.", "object", cli="")
    )
    resume_grace: float = option(
        30.0,
        Spec(
            "With --resume: seconds a generation runs on with no client attached.",
            "seconds",
            meaning="for a resume after the client left",
        ),
    )
    resume_owner: Owner | None = option(
        None,
        Spec(
            "Who a request is, from its scope; each stream is bound to its owner.",
            "object",
            cli="",
        ),
    )
    resume_max_readers: int = option(
        32,
        Spec(
            "With --resume: readers one stream may have at once (here); more get 429.",
            "count",
            minimum=1,
            meaning="readers of one stream at once",
        ),
    )
    resume_ttl: float = option(
        DEFAULT_TTL,
        Spec(
            "With --resume: seconds a finished stream stays resumable.",
            "seconds",
            meaning="how long a finished stream stays resumable",
        ),
    )

    def validate(self) -> None:
        resolve_dialect(self.dialect)  # a name it does not know is refused here
        if self.retry is not None:
            check_count("retry", self.retry, 0, "the reconnection time in milliseconds")
        jitter = self.retry_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ValueError(
                f"retry_jitter must be a fraction from 0 to 1 (0.2: retry +-20 %), got {jitter!r}"
            )
        check_resume(self.resume)
        if self.resume_owner is not None and not callable(self.resume_owner):
            raise ValueError(
                "resume_owner must be a function of the scope that returns the owner's id "
                f"(a string) or None, not {self.resume_owner!r}"
            )
        store = self.resume
        own_store = store is not None and not isinstance(store, str)
        if self.resume_owner is not None and own_store and not hasattr(store, "bound_to"):
            raise ValueError(
                "resume_owner binds streams to owners, which this store cannot keep: "
                "a store of your own needs the bound_to method (docs/resume.md)"
            )
        path = self.resume_path
        if not isinstance(path, str) or not path.startswith("/") or "?" in path:
            raise ValueError(
                f"resume_path must be a path such as '/streams', not {self.resume_path!r}"
            )
        if not path.strip("/"):
            # "<path>/<id>" is a resume endpoint: under "/", every request would be one.
            raise ValueError(
                f"resume_path must be a path such as '/streams', not the root {path!r}: "
                "every request would be taken for a resume"
            )
        object.__setattr__(
            self, "ndjson_types", tuple(media.lower() for media in self.ndjson_types)
        )
