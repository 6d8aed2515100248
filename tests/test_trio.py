"""The middleware on trio, anyio's other backend: there its background tasks (the disconnect
watch and the keepalives) run in an anyio task group instead of plain asyncio tasks."""

from __future__ import annotations

import pytest

from tests.test_middleware import (
    test_a_write_waiting_behind_a_blocked_ping_is_dropped_after_a_disconnect,
    test_app_failure_mid_stream_is_told_to_the_client_and_raised,
    test_converted_response_headers,
    test_disconnect_is_seen_while_the_app_is_silent,
    test_disconnect_stops_writing_and_tells_the_app,
    test_keepalive_comments_flow_during_silence_even_before_the_first_event,
)

pytestmark = pytest.mark.anyio

__all__ = [
    "test_a_write_waiting_behind_a_blocked_ping_is_dropped_after_a_disconnect",
    "test_app_failure_mid_stream_is_told_to_the_client_and_raised",
    "test_converted_response_headers",
    "test_disconnect_is_seen_while_the_app_is_silent",
    "test_disconnect_stops_writing_and_tells_the_app",
    "test_keepalive_comments_flow_during_silence_even_before_the_first_event",
]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"
