"""A reported event's time and duration are checked at their exact bounds, never clamped.

event.proto: "Every bound below is checked and nothing is cut to fit". An
event_time before 1970 or after 2262 (outside Unix nanoseconds in 64 bits)
was silently clamped to the nearest bound, and a call longer than its
event_time since 1970 was accepted (its span then started before 1970, which
no OTLP encoder takes). The integration tests drive the refusals over gRPC;
these pin the exact edges.
"""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from are_core.scheduler import SpecError
from are_sdk._proto.are.v1 import event_pb2
from sidecar._scheduler_worker import reported_event_draft

INT64_MAX = 2**63 - 1


def event(
    *, seconds: int | None = None, nanos: int = 0, duration_ns: int | None = None
) -> event_pb2.ReportedEvent:
    message = event_pb2.ReportedEvent(
        workflow_id="wf", task_id="a", attempt=1, event_type=event_pb2.EVENT_TYPE_LLM_CALL, name="m"
    )
    if seconds is not None:
        message.event_time.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    if duration_ns is not None:
        message.duration.CopyFrom(
            duration_pb2.Duration(seconds=duration_ns // 10**9, nanos=duration_ns % 10**9)
        )
    return message


@pytest.mark.parametrize(
    ("seconds", "nanos", "unix_ns"),
    [
        (0, 0, 0),
        (INT64_MAX // 10**9, INT64_MAX % 10**9, INT64_MAX),
        (1_700_000_000, 5, 1_700_000_000 * 10**9 + 5),
    ],
    ids=["the epoch", "the last 64-bit nanosecond (2262)", "today"],
)
def test_an_event_time_in_range_is_kept_as_sent(seconds: int, nanos: int, unix_ns: int) -> None:
    assert (
        reported_event_draft(event(seconds=seconds, nanos=nanos), "", "events[0]").event_time_unix_ns
        == unix_ns
    )


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(-1, 999_999_999), (-315_619_200, 0), (INT64_MAX // 10**9, INT64_MAX % 10**9 + 1), (13_569_465_600, 0)],
    ids=["a nanosecond before 1970", "1960", "a nanosecond after 2262", "2400"],
)
def test_an_event_time_out_of_range_is_refused_naming_it(seconds: int, nanos: int) -> None:
    with pytest.raises(SpecError) as raised:
        reported_event_draft(event(seconds=seconds, nanos=nanos), "", "events[3]")
    assert raised.value.field == "events[3].event_time"
    assert raised.value.reason == "INVALID_ARGUMENT"


def test_a_call_may_last_at_most_from_1970_to_its_event_time() -> None:
    at = 1_700_000_000 * 10**9
    assert (
        reported_event_draft(event(seconds=1_700_000_000, duration_ns=at), "", "events[0]").duration_ns == at
    )
    with pytest.raises(SpecError) as raised:
        reported_event_draft(event(seconds=1_700_000_000, duration_ns=at + 1), "", "events[2]")
    assert raised.value.field == "events[2].duration"
    # Without an event_time the call ends when it is received: now.
    with pytest.raises(SpecError) as raised:
        reported_event_draft(event(duration_ns=100 * 365 * 86_400 * 10**9), "", "events[0]")
    assert raised.value.field == "events[0].duration"
