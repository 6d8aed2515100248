"""The middleware on trio, anyio's other backend: there its background tasks (the disconnect
watch, the keepalives and a resumable stream's stop) run in an anyio task group instead of
plain asyncio tasks."""

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
from tests.test_resume import (
    test_a_generation_nobody_resumes_is_cancelled_after_the_grace_period,
    test_a_stream_cancelled_inside_the_server_still_ends_its_recording,
    test_delete_stops_the_generation_for_every_reader,
    test_interrupted_at_event_5_and_resumed_equals_an_uninterrupted_stream,
)

pytestmark = pytest.mark.anyio

# Resume's among them: a stop arrives from another request's task, the grace wait runs in the
# watch.
__all__ = [
    "test_a_generation_nobody_resumes_is_cancelled_after_the_grace_period",
    "test_a_stream_cancelled_inside_the_server_still_ends_its_recording",
    "test_a_write_waiting_behind_a_blocked_ping_is_dropped_after_a_disconnect",
    "test_app_failure_mid_stream_is_told_to_the_client_and_raised",
    "test_converted_response_headers",
    "test_delete_stops_the_generation_for_every_reader",
    "test_disconnect_is_seen_while_the_app_is_silent",
    "test_disconnect_stops_writing_and_tells_the_app",
    "test_interrupted_at_event_5_and_resumed_equals_an_uninterrupted_stream",
    "test_keepalive_comments_flow_during_silence_even_before_the_first_event",
]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"
