"""Worker-reported events are held to event.proto's bounds, and accepted just after their attempt.

event.proto bounds a ReportedEvent: a name of at most 256 characters, at most
64 attributes with keys of 1 to 128 characters and exactly one value each,
string values of at most 16 KiB, finite doubles, a span id of 16 lowercase hex
characters (not all zeros). None of these was enforced: a NaN was recorded,
a long name silently cut. (An event's failure is fitted to common.proto's
bounds rather than refused: test_failure_bounds.py.) Each rule is driven over
real gRPC on both paths:

* ReportEvents answers INVALID_ARGUMENT (reason INVALID_ARGUMENT or
  LIMIT_EXCEEDED) with one field violation naming the exact path
  (``events[1].attributes['f'].double_value``), and records none of the batch;
* the worker stream answers a refused TaskAck for that event, its message
  starting with the path (``report_events.events[0].name``).

Each test then shows that nothing was recorded (the workflow's events) and
that the boundary value (exactly 64 attributes, 16 KiB, 256 characters) is
accepted and recorded as sent.

The contract also promises that events of an attempt that just ended (its
result closing the workflow included) are still accepted; they were refused
with TASK_NOT_HELD.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from are_sdk import Client, FailedPreconditionError, InvalidArgumentError
from are_sdk._proto.are.v1 import errors_pb2
from are_sdk._proto.are.v1 import event_pb2 as ev
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from tests.integration.test_scheduler import (
    StreamWorker,
    completion,
    expect_error,
    get_task,
    submit,
    task,
    unique_capability,
    wait_closed,
)
from tests.integration.test_worker_usage import held, poll_one

SPAN_ID = "00f067aa0ba902b7"
KIB16 = "é" * 8192  # 16,384 bytes of UTF-8 in 8,192 characters: the bound counts bytes


@dataclass(frozen=True)
class Rule:
    """One documented bound: how to break it, the field it names, and the value that just fits."""

    name: str
    bad: Callable[[ev.ReportedEvent], None]
    field: str  # the path below the event
    reason: str
    fit: Callable[[ev.ReportedEvent], None]
    recorded: Callable[[ev.Event], bool]  # the fitting event as recorded


def _attributes(count: int) -> Callable[[ev.ReportedEvent], None]:
    def put(event: ev.ReportedEvent) -> None:
        for i in range(count):
            event.attributes[f"k{i}"].int_value = i

    return put


def _string(value: str) -> Callable[[ev.ReportedEvent], None]:
    def put(event: ev.ReportedEvent) -> None:
        event.attributes["k"].string_value = value

    return put


def _double(value: float) -> Callable[[ev.ReportedEvent], None]:
    def put(event: ev.ReportedEvent) -> None:
        event.attributes["f"].double_value = value

    return put


def _key(key: str) -> Callable[[ev.ReportedEvent], None]:
    def put(event: ev.ReportedEvent) -> None:
        event.attributes[key].bool_value = True

    return put


def _unset(event: ev.ReportedEvent) -> None:
    event.attributes["u"].SetInParent()  # an entry with no value


def _false(event: ev.ReportedEvent) -> None:
    event.attributes["u"].bool_value = False  # set, to the default


def _field(name: str, value: str) -> Callable[[ev.ReportedEvent], None]:
    def put(event: ev.ReportedEvent) -> None:
        setattr(event, name, value)

    return put


RULES = [
    Rule(
        "64 attributes",
        _attributes(65),
        "attributes",
        "LIMIT_EXCEEDED",
        _attributes(64),
        lambda e: len(e.attributes) == 64,
    ),
    Rule(
        "16 KiB strings",
        _string(KIB16 + "x"),
        "attributes['k'].string_value",
        "LIMIT_EXCEEDED",
        _string(KIB16),
        lambda e: e.attributes["k"].string_value == KIB16,
    ),
    Rule(
        "NaN",
        _double(math.nan),
        "attributes['f'].double_value",
        "INVALID_ARGUMENT",
        _double(sys.float_info.max),
        lambda e: e.attributes["f"].double_value == sys.float_info.max,
    ),
    Rule(
        "infinity",
        _double(-math.inf),
        "attributes['f'].double_value",
        "INVALID_ARGUMENT",
        _double(-sys.float_info.max),
        lambda e: e.attributes["f"].double_value == -sys.float_info.max,
    ),
    Rule(
        "128-character keys",
        _key("k" * 129),
        f"attributes[{'k' * 129!r}]",
        "LIMIT_EXCEEDED",
        _key("k" * 128),
        lambda e: e.attributes["k" * 128].bool_value,
    ),
    Rule(
        "empty keys", _key(""), "attributes['']", "INVALID_ARGUMENT", _key("k"), lambda e: "k" in e.attributes
    ),
    Rule(
        "one value set",
        _unset,
        "attributes['u']",
        "INVALID_ARGUMENT",
        _false,
        lambda e: e.attributes["u"].WhichOneof("value") == "bool_value",
    ),
    Rule(
        "256-character names",
        _field("name", "m" * 257),
        "name",
        "LIMIT_EXCEEDED",
        _field("name", "m" * 256),
        lambda e: e.name == "m" * 256,
    ),
    Rule(
        "lowercase span ids",
        _field("span_id", SPAN_ID.upper()),
        "span_id",
        "INVALID_ARGUMENT",
        _field("span_id", SPAN_ID),
        lambda e: e.span_id == SPAN_ID,
    ),
    Rule(
        "16-character span ids",
        _field("span_id", SPAN_ID[:15]),
        "span_id",
        "INVALID_ARGUMENT",
        _field("span_id", SPAN_ID),
        lambda e: e.span_id == SPAN_ID,
    ),
    Rule(
        "non-zero span ids",
        _field("span_id", "0" * 16),
        "span_id",
        "INVALID_ARGUMENT",
        _field("span_id", "0" * 15 + "1"),
        lambda e: e.span_id == "0" * 15 + "1",
    ),
]


def _event(assignment: w.TaskAssignment) -> ev.ReportedEvent:
    """A valid LLM_CALL event of the assignment's attempt."""
    return ev.ReportedEvent(
        workflow_id=assignment.workflow_id,
        task_id=assignment.task_id,
        attempt=assignment.attempt,
        event_type=ev.EVENT_TYPE_LLM_CALL,
        name="model-x",
    )


def _made(rule: Callable[[ev.ReportedEvent], None], assignment: w.TaskAssignment) -> ev.ReportedEvent:
    event = _event(assignment)
    rule(event)
    return event


async def llm_calls(client: Client, workflow_id: str) -> list[ev.Event]:
    """The workflow's recorded LLM_CALL events (read after a durable change)."""
    return [
        event
        async for event in client.trace.iter_events(
            workflow_ids=[workflow_id], event_types=[ev.EVENT_TYPE_LLM_CALL], page_size=1000
        )
    ]


# ---------------------------------------------------------------------- unary


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
async def test_report_events_refuses_an_event_out_of_bounds_naming_it_and_records_none(
    client: Client, rule: Rule
) -> None:
    cap = unique_capability("event-bounds")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)
    error = await expect_error(
        client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[_event(a), _made(rule.bad, a)])),
        InvalidArgumentError,
        rule.reason,
        f"events[1].{rule.field}",
    )
    assert error.message.startswith(f"events[1].{rule.field}: "), error.message
    assert await llm_calls(client, workflow_id) == []  # all or nothing: not even the good one
    recorded = await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[_made(rule.fit, a)]))
    assert len(recorded.sequences) == 1
    (event,) = await llm_calls(client, workflow_id)
    assert event.sequence == recorded.sequences[0]
    assert rule.recorded(event), event
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


# --------------------------------------------------------------------- stream


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
async def test_a_stream_event_out_of_bounds_is_a_refused_ack_naming_it(client: Client, rule: Rule) -> None:
    cap = unique_capability("event-bounds-stream")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap))
        (a,) = await held(worker, workflow_id, "a")
        await worker.send(w.ConnectRequest(report_events=w.EventBatch(events=[_made(rule.bad, a)])))
        (ack,) = await worker.wait_acks(1)
        assert (ack.task_id, ack.subject, ack.accepted) == ("a", w.ACK_SUBJECT_EVENT, False), ack
        assert ack.reason == errors_pb2.ErrorReason.Value(f"ERROR_REASON_{rule.reason}"), ack
        assert ack.message.startswith(f"report_events.events[0].{rule.field}: "), ack.message
        # The fitting event is recorded (events are acknowledged only when refused); the
        # completion after it is acknowledged once durable, so the event is durable too.
        await worker.send(w.ConnectRequest(report_events=w.EventBatch(events=[_made(rule.fit, a)])))
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[completion(a, 1)])))
        second = (await worker.wait_acks(2))[1]
        assert (second.subject, second.accepted) == (w.ACK_SUBJECT_COMPLETION, True), second
    (event,) = await llm_calls(client, workflow_id)  # the refused event recorded nothing
    assert rule.recorded(event), event


# ------------------------------------------------- events just after the result


async def test_events_sent_just_after_the_completion_that_closed_the_workflow_are_recorded(
    client: Client,
) -> None:
    """event.proto: events of an ended attempt are accepted for 5 minutes, from the worker that held it."""
    cap = unique_capability("event-late")
    async with (
        StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker,
        StreamWorker(client, lambda _a: None, capabilities=[unique_capability("other")]) as other,
    ):
        workflow_id = await submit(client, task("a", cap))
        (a,) = await held(worker, workflow_id, "a")
        # Another worker does not hold the attempt: its report is refused, now and after its end.
        stranger = _event(a)
        stranger.name = "stranger"
        await other.send(w.ConnectRequest(report_events=w.EventBatch(events=[stranger])))
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[completion(a, 1)])))
        assert (await worker.wait_acks(1))[0].accepted
        closed = await wait_closed(client, workflow_id)
        assert closed.state == wf.WORKFLOW_STATE_COMPLETED
        late = _event(a)
        late.name = "late-stream"
        await worker.send(w.ConnectRequest(report_events=w.EventBatch(events=[late])))
        # Refusals are answered in order: a heartbeat of an attempt nobody holds marks the end.
        ghost = w.TaskHeartbeat(workflow_id=workflow_id, task_id="a", attempt=99)
        await worker.send(w.ConnectRequest(heartbeat=w.HeartbeatBatch(heartbeats=[ghost])))
        marker = (await worker.wait_acks(2))[1]
        assert marker.subject == w.ACK_SUBJECT_HEARTBEAT, marker  # the event was not refused
        await other.send(w.ConnectRequest(report_events=w.EventBatch(events=[stranger])))
        for refusal in await other.wait_acks(2):
            assert (refusal.subject, refusal.accepted) == (w.ACK_SUBJECT_EVENT, False), refusal
            assert refusal.reason == errors_pb2.ERROR_REASON_TASK_NOT_HELD, refusal
    # A unary report names no worker: accepted too, and recorded as the holder's. Its answer
    # comes once it is durable, and so is the stream's, recorded before it.
    unary = _event(a)
    unary.name = "late-unary"
    await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[unary]))
    # An attempt that never ran has no window.
    never = _event(a)
    never.attempt = a.attempt + 1
    await expect_error(
        client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[never])),
        FailedPreconditionError,
        "TASK_NOT_HELD",
    )
    recorded = {event.name: event.worker_id for event in await llm_calls(client, workflow_id)}
    assert recorded == {"late-stream": worker.worker_id, "late-unary": worker.worker_id}


async def test_a_unary_report_names_the_worker_holding_the_attempt(client: Client) -> None:
    """event.proto: LLM and tool events name their worker; a unary report names none, so the
    sidecar takes the attempt's holder (it recorded an empty worker_id)."""
    cap = unique_capability("events-holder")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)
    await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[_event(a)]))
    holder = (await get_task(client, workflow_id, "a")).worker_id
    assert holder
    (recorded,) = await llm_calls(client, workflow_id)
    assert recorded.worker_id == holder
