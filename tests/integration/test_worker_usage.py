"""Usage a worker reports is refused, not clamped, when a counter is negative.

common.proto: every Usage counter is at least 0, and (DESIGN.md) every bad
input gets a status naming the field and changes nothing. A negative counter
used to be clamped to 0 and recorded: the attempt completed (or failed) with
numbers its worker never sent. Each entry point is driven over real gRPC:

* the unary RPCs (CompleteTask with and without a state patch, FailTask,
  ReportEvents) answer INVALID_ARGUMENT, reason INVALID_ARGUMENT, with one
  field violation naming the exact path;
* the worker stream answers a refused TaskAck (reason INVALID_ARGUMENT, the
  path in its message) for that item only; the stream and the worker's other
  attempts carry on.

Each test then shows that nothing changed (the attempt still RUNNING and held,
no usage, no completion or failure event) by sending the corrected report,
which is accepted and is the only one recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf import duration_pb2

from are_sdk import Client, InvalidArgumentError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import errors_pb2, state_pb2
from are_sdk._proto.are.v1 import event_pb2 as ev
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from tests.integration.test_scheduler import (
    StreamWorker,
    completion,
    expect_error,
    fail_with,
    get_task,
    submit,
    task,
    unique_capability,
    wait_closed,
)

GOOD = c.Usage(input_tokens=11, output_tokens=7, cost_micro_usd=5, llm_calls=2, tool_calls=3)
FIELDS = ("input_tokens", "output_tokens", "cost_micro_usd", "llm_calls", "tool_calls")


def negative(name: str, value: int = -5) -> c.Usage:
    """GOOD with one counter negative."""
    usage = c.Usage()
    usage.CopyFrom(GOOD)
    setattr(usage, name, value)
    return usage


def counters(usage: c.Usage) -> tuple[int, ...]:
    return tuple(getattr(usage, name) for name in FIELDS)


async def poll_one(client: Client, cap: str) -> w.TaskAssignment:
    polled: w.PollTaskResponse = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="usage-poller", capabilities=[cap]), timeout=10
    )
    (assignment,) = polled.assignments
    return assignment


async def event_types(client: Client, workflow_id: str) -> list[str]:
    """The names of the workflow's retained events, in order (read after a durable change)."""
    return [
        ev.EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        async for event in client.trace.iter_events(workflow_ids=[workflow_id], page_size=1000)
    ]


async def assert_untouched(
    client: Client, workflow_id: str, task_id: str, worker_id: str = "", workflow_usage: c.Usage | None = None
) -> None:
    """The attempt is still RUNNING (held, by ``worker_id`` when given) with no usage recorded.

    ``workflow_usage`` is what the workflow's other tasks reported (none by default).
    """
    now = await get_task(client, workflow_id, task_id)
    assert now.state == t.TASK_STATE_RUNNING, now.state_reason
    assert now.attempt == 1
    assert not now.HasField("output")
    assert counters(now.usage.usage) == (0, 0, 0, 0, 0)
    if worker_id:
        assert now.worker_id == worker_id
    beat = await client.raw.worker.RecordHeartbeat(
        w.RecordHeartbeatRequest(
            heartbeat=w.TaskHeartbeat(workflow_id=workflow_id, task_id=task_id, attempt=1)
        )
    )
    assert not beat.cancel_requested  # still held: the lease is the worker's
    status = (await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert counters(status.usage.usage) == counters(workflow_usage or c.Usage())


# ---------------------------------------------------------------------- unary


async def test_complete_task_refuses_each_negative_counter_naming_it(client: Client) -> None:
    cap = unique_capability("usage-complete")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)
    for name in FIELDS:
        bad = completion(a, {"n": name}, usage=negative(name))
        error = await expect_error(
            client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=bad)),
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            f"completion.usage.{name}",
        )
        assert "must be at least 0, got -5" in error.message, error.message
    await assert_untouched(client, workflow_id, "a")
    assert "TASK_COMPLETED" not in await event_types(client, workflow_id)
    # The corrected completion is accepted: the refused ones recorded nothing.
    await client.raw.worker.CompleteTask(
        w.CompleteTaskRequest(completion=completion(a, {"ok": 1}, usage=GOOD))
    )
    closed = await wait_closed(client, workflow_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert counters(closed.usage.usage) == counters(GOOD)
    done = await get_task(client, workflow_id, "a")
    assert done.output.data == b'{"ok": 1}'
    assert (await event_types(client, workflow_id)).count("TASK_COMPLETED") == 1


async def test_complete_task_with_a_state_patch_refuses_a_negative_counter(client: Client) -> None:
    cap = unique_capability("usage-patch")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)
    patch = state_pb2.StatePatch(merge_patch_json=b'{"done": true}')
    before = (await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    bad = completion(a, {"ok": 0}, usage=negative("output_tokens", -(2**63)), state_patch=patch)
    await expect_error(
        client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=bad)),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "completion.usage.output_tokens",
    )
    await assert_untouched(client, workflow_id, "a")
    after = (await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert after.state_version == before.state_version  # the patch was not applied
    good = completion(a, {"ok": 1}, usage=GOOD, state_patch=patch)
    done = await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=good))
    assert done.state_version == before.state_version + 1
    closed = await wait_closed(client, workflow_id)
    assert counters(closed.usage.usage) == counters(GOOD)


async def test_fail_task_refuses_a_negative_counter_and_a_negative_retry_after(client: Client) -> None:
    cap = unique_capability("usage-fail")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)

    def failure(**fields: Any) -> w.FailTaskRequest:
        return w.FailTaskRequest(
            failure=w.TaskFailure(
                workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=fail_with("boom"), **fields
            )
        )

    await expect_error(
        client.raw.worker.FailTask(failure(usage=negative("llm_calls", -1))),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "failure.usage.llm_calls",
    )
    await expect_error(
        client.raw.worker.FailTask(failure(usage=GOOD, retry_after=duration_pb2.Duration(seconds=-3))),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "failure.retry_after",
    )
    await assert_untouched(client, workflow_id, "a")
    assert "TASK_ATTEMPT_FAILED" not in await event_types(client, workflow_id)
    failed = await client.raw.worker.FailTask(failure(usage=GOOD))
    assert failed.will_retry
    assert failed.task_state == t.TASK_STATE_BACKING_OFF
    now = await get_task(client, workflow_id, "a")
    assert counters(now.usage.usage) == counters(GOOD)
    assert (await event_types(client, workflow_id)).count("TASK_ATTEMPT_FAILED") == 1
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_report_events_refuses_a_negative_counter_and_records_none_of_the_batch(
    client: Client,
) -> None:
    cap = unique_capability("usage-events")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)

    def llm_call(usage: c.Usage) -> ev.ReportedEvent:
        return ev.ReportedEvent(
            workflow_id=workflow_id,
            task_id="a",
            attempt=a.attempt,
            event_type=ev.EVENT_TYPE_LLM_CALL,
            name="model-x",
            usage=usage,
        )

    await expect_error(
        client.raw.worker.ReportEvents(
            w.ReportEventsRequest(events=[llm_call(GOOD), llm_call(negative("tool_calls"))])
        ),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "events[1].usage.tool_calls",
    )
    await assert_untouched(client, workflow_id, "a")
    assert "LLM_CALL" not in await event_types(client, workflow_id)
    recorded = await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[llm_call(GOOD)]))
    assert len(recorded.sequences) == 1
    assert (await event_types(client, workflow_id)).count("LLM_CALL") == 1
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


# --------------------------------------------------------------------- stream


async def held(worker: StreamWorker, workflow_id: str, *task_ids: str) -> list[w.TaskAssignment]:
    """The worker's assignments of these tasks, once it holds them all (bounded wait)."""
    async with asyncio.timeout(10):
        while not all((workflow_id, task_id) in worker.held for task_id in task_ids):
            await asyncio.sleep(0.01)
    return [worker.held[(workflow_id, task_id)] for task_id in task_ids]


def refused(ack: w.TaskAck, subject: int, task_id: str, field: str) -> None:
    """``ack`` refuses the item of ``task_id`` as invalid, naming ``field`` in its message."""
    assert (ack.task_id, ack.subject, ack.accepted) == (task_id, subject, False), ack
    assert ack.reason == errors_pb2.ERROR_REASON_INVALID_ARGUMENT, ack
    assert ack.message.startswith(f"{field}: must be at least 0"), ack.message


async def test_a_stream_completion_with_a_negative_counter_is_a_refused_ack(client: Client) -> None:
    cap = unique_capability("usage-stream-complete")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap), task("b", cap))
        a, b = await held(worker, workflow_id, "a", "b")
        batch = [
            completion(a, {"a": 0}, usage=negative("cost_micro_usd")),
            completion(b, {"b": 1}, usage=GOOD),
        ]
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=batch)))
        first, second = (await worker.wait_acks(2))[:2]
        refused(first, w.ACK_SUBJECT_COMPLETION, "a", "complete.completions[0].usage.cost_micro_usd")
        assert (second.task_id, second.accepted) == ("b", True)  # the rest of the batch is recorded
        await assert_untouched(client, workflow_id, "a", worker.worker_id, workflow_usage=GOOD)
        # The stream carries on, and the attempt is still the worker's to complete.
        fixed = completion(a, {"a": 1}, usage=GOOD)
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[fixed])))
        third = (await worker.wait_acks(3))[2]
        assert (third.task_id, third.accepted) == ("a", True)
        closed = await wait_closed(client, workflow_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert counters(closed.usage.usage) == tuple(2 * n for n in counters(GOOD))
    assert (await get_task(client, workflow_id, "a")).output.data == b'{"a": 1}'
    assert (await event_types(client, workflow_id)).count("TASK_COMPLETED") == 2


async def test_a_stream_completion_with_a_state_patch_and_a_negative_counter_is_a_refused_ack(
    client: Client,
) -> None:
    cap = unique_capability("usage-stream-patch")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap))
        (a,) = await held(worker, workflow_id, "a")
        before = (
            await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))
        ).workflow
        patch = state_pb2.StatePatch(merge_patch_json=b'{"done": true}')
        bad = completion(a, {"a": 0}, usage=negative("input_tokens"), state_patch=patch)
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[bad])))
        (ack,) = await worker.wait_acks(1)
        refused(ack, w.ACK_SUBJECT_COMPLETION, "a", "complete.completions[0].usage.input_tokens")
        await assert_untouched(client, workflow_id, "a", worker.worker_id)
        after = (
            await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))
        ).workflow
        assert after.state_version == before.state_version
        good = completion(a, {"a": 1}, usage=GOOD, state_patch=patch)
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[good])))
        assert (await worker.wait_acks(2))[1].accepted
        closed = await wait_closed(client, workflow_id)
    assert counters(closed.usage.usage) == counters(GOOD)
    status = (await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert status.state_version == before.state_version + 1


async def test_a_stream_failure_with_a_negative_counter_is_a_refused_ack(client: Client) -> None:
    cap = unique_capability("usage-stream-fail")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap))
        (a,) = await held(worker, workflow_id, "a")

        def failure(**fields: Any) -> w.TaskFailure:
            return w.TaskFailure(
                workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=fail_with("boom"), **fields
            )

        bad = [
            failure(usage=negative("output_tokens")),
            failure(usage=GOOD, retry_after=duration_pb2.Duration(seconds=0, nanos=-1)),
        ]
        await worker.send(w.ConnectRequest(fail=w.FailureBatch(failures=bad)))
        first, second = (await worker.wait_acks(2))[:2]
        refused(first, w.ACK_SUBJECT_FAILURE, "a", "fail.failures[0].usage.output_tokens")
        assert (second.accepted, second.reason) == (False, errors_pb2.ERROR_REASON_INVALID_ARGUMENT), second
        assert second.message.startswith("fail.failures[1].retry_after: "), second.message
        await assert_untouched(client, workflow_id, "a", worker.worker_id)
        assert "TASK_ATTEMPT_FAILED" not in await event_types(client, workflow_id)
        await worker.send(w.ConnectRequest(fail=w.FailureBatch(failures=[failure(usage=GOOD)])))
        third = (await worker.wait_acks(3))[2]
        assert (third.accepted, third.will_retry) == (True, True)
    now = await get_task(client, workflow_id, "a")
    assert counters(now.usage.usage) == counters(GOOD)
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_stream_event_with_a_negative_counter_is_a_refused_ack(client: Client) -> None:
    cap = unique_capability("usage-stream-event")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap))
        (a,) = await held(worker, workflow_id, "a")
        bad = ev.ReportedEvent(
            workflow_id=workflow_id,
            task_id="a",
            attempt=a.attempt,
            event_type=ev.EVENT_TYPE_LLM_CALL,
            name="model-x",
            usage=negative("llm_calls", -1),
        )
        await worker.send(w.ConnectRequest(report_events=w.EventBatch(events=[bad])))
        # Refusals are answered in order: a heartbeat of an attempt nobody holds marks the end.
        ghost = w.TaskHeartbeat(workflow_id=workflow_id, task_id="a", attempt=99)
        await worker.send(w.ConnectRequest(heartbeat=w.HeartbeatBatch(heartbeats=[ghost])))
        first = (await worker.wait_acks(1))[0]
        refused(first, w.ACK_SUBJECT_EVENT, "a", "report_events.events[0].usage.llm_calls")
        second = (await worker.wait_acks(2))[1]
        assert (second.subject, second.reason) == (
            w.ACK_SUBJECT_HEARTBEAT,
            errors_pb2.ERROR_REASON_TASK_NOT_HELD,
        )
        # A completion is acknowledged once durable, after any event recorded before it.
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[completion(a, {"a": 1})])))
        assert (await worker.wait_acks(3))[2].accepted
    assert "LLM_CALL" not in await event_types(client, workflow_id)


# ------------------------------------------------- the stream's size bounds


async def test_the_stream_refuses_an_inline_output_and_heartbeat_details_over_their_bounds(
    client: Client,
) -> None:
    """The stream bounds inline output to 4 MiB and heartbeat details to 1 MiB, as unary calls do.

    It used to take anything up to the message size (64 MiB): an output the
    unary CompleteTask refuses was recorded when it came by the stream.
    """
    cap = unique_capability("bounds-stream")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap))
        (a,) = await held(worker, workflow_id, "a")
        too_long = completion(a, b"x" * (4 * 1024 * 1024 + 1))
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[too_long])))
        (ack,) = await worker.wait_acks(1)
        assert (ack.task_id, ack.subject, ack.accepted) == ("a", w.ACK_SUBJECT_COMPLETION, False), ack
        assert ack.reason == errors_pb2.ERROR_REASON_LIMIT_EXCEEDED, ack
        assert ack.message.startswith("complete.completions[0].output.data: at most 4 MiB"), ack.message
        beat = w.TaskHeartbeat(
            workflow_id=workflow_id,
            task_id="a",
            attempt=a.attempt,
            details=c.Payload(data=b"y" * (1024 * 1024 + 1), content_type="text/plain"),
        )
        await worker.send(w.ConnectRequest(heartbeat=w.HeartbeatBatch(heartbeats=[beat])))
        second = (await worker.wait_acks(2))[1]
        assert (second.task_id, second.subject, second.accepted) == ("a", w.ACK_SUBJECT_HEARTBEAT, False)
        assert second.reason == errors_pb2.ERROR_REASON_LIMIT_EXCEEDED, second
        field = "heartbeat.heartbeats[0].details.data"
        assert second.message.startswith(f"{field}: at most 1 MiB"), second.message
        await assert_untouched(client, workflow_id, "a", worker.worker_id)
        fitting = completion(a, b"x" * (4 * 1024 * 1024))
        fitting.output.content_type = "application/octet-stream"
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[fitting])))
        assert (await worker.wait_acks(3))[2].accepted
        closed = await wait_closed(client, workflow_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert len((await get_task(client, workflow_id, "a")).output.data) == 4 * 1024 * 1024


async def test_unary_reports_refuse_an_attempt_below_one_naming_it(client: Client) -> None:
    """Attempts count from 1: 0 or less is a bad field (it was answered TASK_NOT_HELD, naming nothing)."""
    cap = unique_capability("attempt-zero")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)
    for attempt in (0, -1):
        done = completion(a, {"a": 0}, usage=GOOD)
        done.attempt = attempt
        await expect_error(
            client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=done)),
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            "completion.attempt",
        )
        failure = w.TaskFailure(workflow_id=workflow_id, task_id="a", attempt=attempt, failure=fail_with("x"))
        await expect_error(
            client.raw.worker.FailTask(w.FailTaskRequest(failure=failure)),
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            "failure.attempt",
        )
        beat = w.TaskHeartbeat(workflow_id=workflow_id, task_id="a", attempt=attempt)
        await expect_error(
            client.raw.worker.RecordHeartbeat(w.RecordHeartbeatRequest(heartbeat=beat)),
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            "heartbeat.attempt",
        )
    await assert_untouched(client, workflow_id, "a")


# ------------------------------------------- content types of a worker's payloads

# common.proto: a Payload's content_type is at most 128 characters. Inline
# outputs, heartbeat details and failure details took any length, on both paths.
FITS = ("application/json; profile=" + "p" * 128)[:128]
LONG = FITS + "p"
RETRY_AT_ONCE = c.RetryPolicy(initial_interval=duration_pb2.Duration(nanos=10_000_000), maximum_attempts=2)


DROPPED = "boom [details dropped: a content type of 129 characters, over the 128 bound]"


def typed_failure(content_type: str) -> c.Failure:
    return c.Failure(message="boom", type="Boom", details=c.Payload(data=b"{}", content_type=content_type))


def refused_as_too_long(ack: w.TaskAck, subject: int, field: str) -> None:
    """``ack`` refuses task a's item with LIMIT_EXCEEDED, its message starting with ``field``."""
    assert (ack.task_id, ack.subject, ack.accepted) == ("a", subject, False), ack
    assert ack.reason == errors_pb2.ERROR_REASON_LIMIT_EXCEEDED, ack
    assert ack.message.startswith(f"{field}: at most 128 characters"), ack.message


@pytest.mark.parametrize("with_patch", [False, True], ids=["inline", "with a state patch"])
async def test_complete_task_refuses_an_output_content_type_over_128_characters(
    client: Client, with_patch: bool
) -> None:
    cap = unique_capability("type-complete")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)
    fields: dict[str, Any] = {}
    if with_patch:
        fields["state_patch"] = state_pb2.StatePatch(merge_patch_json=b'{"done": true}')
    bad = completion(a, {"a": 0}, **fields)
    bad.output.content_type = LONG
    await expect_error(
        client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=bad)),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "completion.output.content_type",
    )
    await assert_untouched(client, workflow_id, "a")
    assert "TASK_COMPLETED" not in await event_types(client, workflow_id)
    good = completion(a, {"a": 1}, **fields)
    good.output.content_type = FITS
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=good))
    done = await get_task(client, workflow_id, "a")
    assert (done.output.data, done.output.content_type) == (b'{"a": 1}', FITS)


async def test_record_heartbeat_refuses_a_details_content_type_over_128_characters(client: Client) -> None:
    cap = unique_capability("type-heartbeat")
    workflow_id = await submit(client, task("a", cap, retry_policy=RETRY_AT_ONCE))
    a = await poll_one(client, cap)

    def beat(data: bytes, content_type: str) -> w.RecordHeartbeatRequest:
        details = c.Payload(data=data, content_type=content_type)
        return w.RecordHeartbeatRequest(
            heartbeat=w.TaskHeartbeat(
                workflow_id=workflow_id, task_id="a", attempt=a.attempt, details=details
            )
        )

    await client.raw.worker.RecordHeartbeat(beat(b'{"step": 1}', FITS))
    await expect_error(
        client.raw.worker.RecordHeartbeat(beat(b'{"step": 2}', LONG)),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "heartbeat.details.content_type",
    )
    # The next attempt resumes from the last details recorded: the fitting ones.
    failure = w.TaskFailure(workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=fail_with("x"))
    assert (await client.raw.worker.FailTask(w.FailTaskRequest(failure=failure))).will_retry
    again = await poll_one(client, cap)
    assert again.attempt == a.attempt + 1
    assert (again.last_heartbeat_details.data, again.last_heartbeat_details.content_type) == (
        b'{"step": 1}',
        FITS,
    )
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_fail_task_drops_failure_details_with_a_content_type_over_128_characters(
    client: Client,
) -> None:
    """A failure is never refused for its shape (it was): its details are dropped, the message says so."""
    cap = unique_capability("type-fail")
    workflow_id = await submit(client, task("a", cap, retry_policy=RETRY_AT_ONCE))
    a = await poll_one(client, cap)

    def failure(attempt: int, content_type: str) -> w.FailTaskRequest:
        return w.FailTaskRequest(
            failure=w.TaskFailure(
                workflow_id=workflow_id, task_id="a", attempt=attempt, failure=typed_failure(content_type)
            )
        )

    assert (await client.raw.worker.FailTask(failure(a.attempt, FITS))).will_retry
    now = await get_task(client, workflow_id, "a")
    assert (now.failure.message, now.failure.details.content_type) == ("boom", FITS)
    again = await poll_one(client, cap)
    assert not (await client.raw.worker.FailTask(failure(again.attempt, LONG))).will_retry
    now = await get_task(client, workflow_id, "a")
    assert now.state == t.TASK_STATE_FAILED
    assert not now.failure.HasField("details")
    assert now.failure.message == DROPPED


async def test_a_stream_completion_with_an_output_content_type_over_128_characters_is_refused(
    client: Client,
) -> None:
    cap = unique_capability("type-stream-complete")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap))
        (a,) = await held(worker, workflow_id, "a")
        bad = completion(a, {"a": 0})
        bad.output.content_type = LONG
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[bad])))
        (ack,) = await worker.wait_acks(1)
        refused_as_too_long(ack, w.ACK_SUBJECT_COMPLETION, "complete.completions[0].output.content_type")
        await assert_untouched(client, workflow_id, "a", worker.worker_id)
        good = completion(a, {"a": 1})
        good.output.content_type = FITS
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[good])))
        assert (await worker.wait_acks(2))[1].accepted
    done = await get_task(client, workflow_id, "a")
    assert (done.output.data, done.output.content_type) == (b'{"a": 1}', FITS)


async def test_a_stream_heartbeat_with_a_details_content_type_over_128_characters_is_refused(
    client: Client,
) -> None:
    cap = unique_capability("type-stream-heartbeat")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap, retry_policy=RETRY_AT_ONCE))
        (a,) = await held(worker, workflow_id, "a")

        def beat(data: bytes, content_type: str) -> w.ConnectRequest:
            details = c.Payload(data=data, content_type=content_type)
            heartbeat = w.TaskHeartbeat(
                workflow_id=workflow_id, task_id="a", attempt=a.attempt, details=details
            )
            return w.ConnectRequest(heartbeat=w.HeartbeatBatch(heartbeats=[heartbeat]))

        await worker.send(beat(b'{"step": 1}', FITS))
        await worker.send(beat(b'{"step": 2}', LONG))
        (ack,) = await worker.wait_acks(1)  # heartbeats are acknowledged only when refused
        refused_as_too_long(ack, w.ACK_SUBJECT_HEARTBEAT, "heartbeat.heartbeats[0].details.content_type")
        failure = w.TaskFailure(
            workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=fail_with("x")
        )
        await worker.send(w.ConnectRequest(fail=w.FailureBatch(failures=[failure])))
        assert (await worker.wait_acks(2))[1].will_retry
        async with asyncio.timeout(10):
            while worker.held[(workflow_id, "a")].attempt == a.attempt:
                await asyncio.sleep(0.01)
        again = worker.held[(workflow_id, "a")]
    assert (again.last_heartbeat_details.data, again.last_heartbeat_details.content_type) == (
        b'{"step": 1}',
        FITS,
    )
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_stream_failure_with_a_details_content_type_over_128_characters_drops_its_details(
    client: Client,
) -> None:
    """As FailTask: the failure is accepted, its details dropped with a note (it was refused)."""
    cap = unique_capability("type-stream-fail")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap, retry_policy=RETRY_AT_ONCE))
        (a,) = await held(worker, workflow_id, "a")

        def failure(attempt: int, content_type: str) -> w.ConnectRequest:
            item = w.TaskFailure(
                workflow_id=workflow_id, task_id="a", attempt=attempt, failure=typed_failure(content_type)
            )
            return w.ConnectRequest(fail=w.FailureBatch(failures=[item]))

        await worker.send(failure(a.attempt, FITS))
        (ack,) = await worker.wait_acks(1)
        assert (ack.accepted, ack.will_retry) == (True, True), ack
        async with asyncio.timeout(10):
            while worker.held[(workflow_id, "a")].attempt == a.attempt:
                await asyncio.sleep(0.01)
        again = worker.held[(workflow_id, "a")]
        assert (again.last_failure.message, again.last_failure.details.content_type) == ("boom", FITS)
        await worker.send(failure(again.attempt, LONG))
        second = (await worker.wait_acks(2))[1]
        assert (second.accepted, second.will_retry) == (True, False), second
    now = await get_task(client, workflow_id, "a")
    assert now.state == t.TASK_STATE_FAILED
    assert not now.failure.HasField("details")
    assert now.failure.message == DROPPED


# ------------------------------------------------------------- failure causes


def _chain(depth: int) -> c.Failure:
    """A Failure with ``depth`` causes below it: outer, cause1, ..., cause<depth>."""
    failure = c.Failure(message=f"cause{depth}", type=f"Type{depth}")
    for level in range(depth - 1, -1, -1):
        outer = c.Failure(message="outer" if level == 0 else f"cause{level}", type=f"Type{level}")
        outer.cause.CopyFrom(failure)
        failure = outer
    return failure


async def test_a_failures_causes_are_kept_up_to_eight_deep(client: Client) -> None:
    """common.proto: a Failure's cause is kept with it; causes nest at most 8 deep.

    The sidecar dropped every cause (and took any depth); it also cut a long
    stack trace at its start, where the frames nearest the error are at its
    end. Eight causes are kept as sent, with no note; a ninth and details by
    blob reference are dropped with a note (test_failure_bounds.py).
    """
    cap = unique_capability("causes")
    once = c.RetryPolicy(maximum_attempts=1)
    workflow_id = await submit(client, task("a", cap, retry_policy=once))
    a = await poll_one(client, cap)
    deepest = _chain(8)
    deepest.stack_trace = "first frame\n" + "x" * (70 * 1024) + "\nnearest the error"
    await client.raw.worker.FailTask(
        w.FailTaskRequest(
            failure=w.TaskFailure(workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=deepest)
        )
    )
    closed = await wait_closed(client, workflow_id)
    assert closed.state == wf.WORKFLOW_STATE_FAILED
    recorded = (await get_task(client, workflow_id, "a")).failure
    assert recorded.stack_trace.endswith("\nnearest the error")
    assert len(recorded.stack_trace.encode()) == 64 * 1024
    messages = []
    level: c.Failure | None = recorded
    while level is not None:
        messages.append((level.message, level.type))
        level = level.cause if level.HasField("cause") else None
    assert messages == [("outer", "Type0")] + [(f"cause{n}", f"Type{n}") for n in range(1, 9)]


async def test_a_failure_message_over_32_kib_is_cut_not_refused(client: Client) -> None:
    """A failure must always end its attempt: a message over 32 KiB of UTF-8 is kept cut.

    It was refused: an SDK cutting messages to 32 Ki characters sent up to
    128 KiB of non-ASCII text, the failure was refused, and the attempt
    stayed held until it timed out.
    """
    cap = unique_capability("long-message")
    once = c.RetryPolicy(maximum_attempts=1)
    workflow_id = await submit(client, task("a", cap, retry_policy=once))
    a = await poll_one(client, cap)
    failure = c.Failure(message="é" * 20_000, type="Boom")  # 40,000 bytes in 20,000 characters
    await client.raw.worker.FailTask(
        w.FailTaskRequest(
            failure=w.TaskFailure(workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=failure)
        )
    )
    assert (await wait_closed(client, workflow_id)).state == wf.WORKFLOW_STATE_FAILED
    recorded = (await get_task(client, workflow_id, "a")).failure
    assert recorded.message == "é" * 16_384  # its first 32 KiB, whole characters


async def test_a_task_input_content_type_over_128_characters_is_refused_naming_it(client: Client) -> None:
    """common.proto bounds every Payload's content_type; a task's inline input was not checked."""
    long_type = "application/" + "x" * 117  # 129 characters
    bad = task("a", "cap-x", input=c.Payload(data=b"{}", content_type=long_type))
    await expect_error(
        client.raw.scheduler.SubmitWorkflow(s.SubmitWorkflowRequest(spec=wf.WorkflowSpec(tasks=[bad]))),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "spec.tasks[0].input.content_type",
    )
    fits = task("a", "cap-x", input=c.Payload(data=b"{}", content_type=long_type[:128]))
    workflow_id = await submit(client, fits)
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))
