"""Where the workers of one bridge write their metrics (prometheus-client's multiprocess mode).

Read without prometheus-client: ``serve`` sets it before that is first imported.
"""

from __future__ import annotations

import os

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess directory, if the mode is on."""
    return os.environ.get(MULTIPROC_ENV) or None
