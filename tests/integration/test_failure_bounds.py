"""A worker's failure report is fitted to common.proto's bounds, never refused for its size.

A failure report is the worker saying "this attempt failed". The sidecar
refused a Failure with a type over 256 characters, details over 1 MiB, by
blob reference or with a content type over 128 characters, causes nested
more than 8 deep, or over 1 MiB with its causes: the report was lost and the
attempt stayed RUNNING until a timeout (forever without one). The SDKs fit
their failures before sending; a hand-written client did not. Now the
sidecar fits them as the SDKs do and notes in the message what it dropped.

Each shape is driven over real gRPC on both paths: unary FailTask (one
attempt: the task FAILED) and the worker stream (two attempts: the failure
is accepted, the task retried with the fitted failure as last_failure).
GetTask shows the fitted failure. A reported event's failure is fitted too;
a malformed field (an unknown kind, at any depth) is still refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from google.protobuf import duration_pb2

from are_sdk import Client, InvalidArgumentError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import event_pb2 as ev
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from tests.integration.test_scheduler import (
    StreamWorker,
    expect_error,
    get_task,
    submit,
    task,
    unique_capability,
    wait_closed,
)
from tests.integration.test_worker_usage import assert_untouched, held, poll_one

MiB = 1024 * 1024
ONCE = c.RetryPolicy(maximum_attempts=1)
TWICE = c.RetryPolicy(initial_interval=duration_pb2.Duration(nanos=10_000_000), maximum_attempts=2)
LONG_TYPE = "ValueError" + "é" * 300  # 310 characters, 610 bytes of UTF-8
CAUSES_DROPPED_FOR_SIZE = "[2 deeper causes dropped: a failure with its causes is at most 1 MiB]"


def _chain(depth: int, details: bytes = b"") -> c.Failure:
    """A Failure with ``depth`` causes below it: outer, cause1, ..., cause<depth>, each with ``details``."""
    levels = [
        c.Failure(message="outer" if level == 0 else f"cause{level}", type=f"Type{level}")
        for level in range(depth + 1)
    ]
    for level in levels:
        if details:
            level.details.data = details
    failure = levels[-1]
    for outer in reversed(levels[:-1]):
        outer.cause.CopyFrom(failure)
        failure = outer
    return failure


def _levels(failure: c.Failure) -> list[c.Failure]:
    """A Failure and its causes, outermost first."""
    out = [failure]
    while out[-1].HasField("cause"):
        out.append(out[-1].cause)
    return out


def _long_type() -> c.Failure:
    return c.Failure(message="boom", type=LONG_TYPE)


def _type_cut(failure: c.Failure) -> None:
    assert failure.type == LONG_TYPE[:256]
    assert failure.message == "boom [type cut to its first 256 of 310 characters]"


def _big_details() -> c.Failure:
    details = c.Payload(data=b"d" * (3 * MiB), content_type="application/octet-stream")
    return c.Failure(message="boom", type="Boom", details=details)


def _big_details_dropped(failure: c.Failure) -> None:
    assert failure.type == "Boom"
    assert not failure.HasField("details")
    assert failure.message == "boom [details dropped: 3,145,728 bytes, over the 1 MiB bound]"


def _blob_details() -> c.Failure:
    failure = _chain(1)
    failure.cause.details.blob.sha256 = "0" * 64
    failure.cause.details.blob.size_bytes = 2048
    return failure


def _blob_details_dropped(failure: c.Failure) -> None:
    assert failure.message == "outer"  # the note is on the level the details were dropped from
    cause = failure.cause
    assert (cause.type, cause.HasField("details")) == ("Type1", False)
    assert (
        cause.message
        == "cause1 [details dropped: a blob reference (2,048 bytes); failure details are inline only]"
    )


def _long_content_type() -> c.Failure:
    details = c.Payload(data=b'{"k": 1}', content_type="application/json; p=" + "p" * 120)  # 140
    return c.Failure(message="é" * 20_000, type="Boom", details=details)  # 40,000 bytes: cut to fit


def _content_type_dropped(failure: c.Failure) -> None:
    note = " [details dropped: a content type of 140 characters, over the 128 bound]"
    assert not failure.HasField("details")
    assert failure.message.endswith(note), failure.message[-200:]
    kept = failure.message.removesuffix(note)
    assert kept == "é" * len(kept)  # whole characters of the explanation, cut to leave room
    assert len(failure.message.encode()) <= 32 * 1024
    assert len(failure.message.encode()) > 32 * 1024 - 2  # cut no more than needed


def _too_deep() -> c.Failure:
    return _chain(11)


def _eight_causes_kept(failure: c.Failure) -> None:
    levels = _levels(failure)
    assert [(one.message, one.type) for one in levels[:-1]] == [("outer", "Type0")] + [
        (f"cause{n}", f"Type{n}") for n in range(1, 8)
    ]
    deepest = levels[-1]
    assert deepest.type == "Type8"
    assert deepest.message == "cause8 [3 deeper causes dropped: causes nest at most 8 deep]"


def _too_big() -> c.Failure:
    return _chain(3, details=b"x" * (400 * 1024))  # 1.6 MiB with its causes


def _deepest_causes_dropped(failure: c.Failure) -> None:
    levels = _levels(failure)
    assert [one.type for one in levels] == ["Type0", "Type1"]
    assert levels[0].message == "outer"
    assert levels[1].message == f"cause1 {CAUSES_DROPPED_FOR_SIZE}"
    assert all(one.details.data == b"x" * (400 * 1024) for one in levels)  # kept levels keep details
    assert failure.ByteSize() <= MiB


@dataclass(frozen=True)
class Shape:
    """A Failure over one of its bounds, and what the recorded, fitted failure must be."""

    name: str
    build: Callable[[], c.Failure]
    fitted: Callable[[c.Failure], None]
    in_causes: bool = False  # only causes are fitted: the outer level is kept as sent


SHAPES = [
    Shape("type over 256 characters", _long_type, _type_cut),
    Shape("details over 1 MiB", _big_details, _big_details_dropped),
    Shape("details by blob reference", _blob_details, _blob_details_dropped, in_causes=True),
    Shape("details content type over 128", _long_content_type, _content_type_dropped),
    Shape("causes over 8 deep", _too_deep, _eight_causes_kept, in_causes=True),
    Shape("over 1 MiB with its causes", _too_big, _deepest_causes_dropped, in_causes=True),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
async def test_fail_task_fits_a_failure_over_its_bounds_and_ends_the_attempt(
    client: Client, shape: Shape
) -> None:
    cap = unique_capability("fit-unary")
    workflow_id = await submit(client, task("a", cap, retry_policy=ONCE))
    a = await poll_one(client, cap)
    response = await client.raw.worker.FailTask(
        w.FailTaskRequest(
            failure=w.TaskFailure(
                workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=shape.build()
            )
        )
    )
    assert (response.will_retry, response.task_state) == (False, t.TASK_STATE_FAILED)
    assert (await wait_closed(client, workflow_id)).state == wf.WORKFLOW_STATE_FAILED
    recorded = await get_task(client, workflow_id, "a")
    assert recorded.state == t.TASK_STATE_FAILED
    shape.fitted(recorded.failure)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
async def test_a_stream_failure_over_its_bounds_is_fitted_and_the_task_retried(
    client: Client, shape: Shape
) -> None:
    cap = unique_capability("fit-stream")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap, retry_policy=TWICE))
        (a,) = await held(worker, workflow_id, "a")
        item = w.TaskFailure(workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=shape.build())
        await worker.send(w.ConnectRequest(fail=w.FailureBatch(failures=[item])))
        (ack,) = await worker.wait_acks(1)
        assert (ack.task_id, ack.subject, ack.accepted, ack.will_retry) == (
            "a",
            w.ACK_SUBJECT_FAILURE,
            True,
            True,
        ), ack
        async with asyncio.timeout(10):
            while worker.held[(workflow_id, "a")].attempt == a.attempt:
                await asyncio.sleep(0.01)
        again = worker.held[(workflow_id, "a")]
        assert again.attempt == a.attempt + 1
        shape.fitted(again.last_failure)
        shape.fitted((await get_task(client, workflow_id, "a")).failure)  # the last failed attempt's
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_stream_batch_of_failures_over_their_bounds_is_all_accepted(client: Client) -> None:
    """One batch with every shape: each item is acknowledged as accepted, none refused."""
    cap = unique_capability("fit-batch")
    ids = [f"t{i}" for i in range(len(SHAPES))]
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, *(task(i, cap, retry_policy=ONCE) for i in ids))
        assignments = await held(worker, workflow_id, *ids)
        items = [
            w.TaskFailure(
                workflow_id=workflow_id, task_id=a.task_id, attempt=a.attempt, failure=shape.build()
            )
            for a, shape in zip(assignments, SHAPES, strict=True)
        ]
        await worker.send(w.ConnectRequest(fail=w.FailureBatch(failures=items)))
        acks = await worker.wait_acks(len(items))
        assert [(ack.task_id, ack.accepted, ack.will_retry) for ack in acks] == [
            (i, True, False) for i in ids
        ]
    assert (await wait_closed(client, workflow_id)).state == wf.WORKFLOW_STATE_FAILED
    for task_id, shape in zip(ids, SHAPES, strict=True):
        recorded = await get_task(client, workflow_id, task_id)
        assert recorded.state == t.TASK_STATE_FAILED
        shape.fitted(recorded.failure)


async def test_a_reported_events_failure_is_fitted_not_refused(client: Client) -> None:
    """A ReportedEvent carries a Failure too: it is fitted as a task's failure is, on both paths.

    An event records its failure's message and type only (no details, no
    causes); the event used to be refused for a cause it never records.
    """
    cap = unique_capability("fit-event")
    async with StreamWorker(client, lambda _a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap, retry_policy=ONCE))
        (a,) = await held(worker, workflow_id, "a")

        def event(path: str, shape: Shape) -> ev.ReportedEvent:
            return ev.ReportedEvent(
                workflow_id=workflow_id,
                task_id="a",
                attempt=a.attempt,
                event_type=ev.EVENT_TYPE_LLM_CALL,
                name=f"{path}: {shape.name}",
                failure=shape.build(),
            )

        await client.raw.worker.ReportEvents(
            w.ReportEventsRequest(events=[event("unary", one) for one in SHAPES])
        )
        await worker.send(
            w.ConnectRequest(report_events=w.EventBatch(events=[event("stream", one) for one in SHAPES]))
        )
        # Events are acknowledged only when refused: the first ack must be the failure's, after them.
        done = w.TaskFailure(workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=_long_type())
        await worker.send(w.ConnectRequest(fail=w.FailureBatch(failures=[done])))
        (ack,) = await worker.wait_acks(1)
        assert (ack.subject, ack.accepted) == (w.ACK_SUBJECT_FAILURE, True), ack
    assert (await wait_closed(client, workflow_id)).state == wf.WORKFLOW_STATE_FAILED
    recorded = {
        event.name: event.failure
        async for event in client.trace.iter_events(
            workflow_ids=[workflow_id], event_types=[ev.EVENT_TYPE_LLM_CALL], page_size=1000
        )
    }
    assert len(recorded) == 2 * len(SHAPES)
    for path in ("unary", "stream"):
        for shape in SHAPES:
            failure = recorded[f"{path}: {shape.name}"]
            if shape.in_causes:
                assert (failure.message, failure.type) == ("outer", "Type0")
            else:
                shape.fitted(failure)


async def test_an_unknown_kind_is_still_refused_at_any_depth(client: Client) -> None:
    """Malformed is not too big: an unknown enum number is refused naming it, even in a dropped cause."""
    cap = unique_capability("fit-malformed")
    workflow_id = await submit(client, task("a", cap, retry_policy=ONCE))
    a = await poll_one(client, cap)
    failure = _chain(10)
    _levels(failure)[10].kind = 99  # type: ignore[assignment]  # no such FailureKind, on purpose
    await expect_error(
        client.raw.worker.FailTask(
            w.FailTaskRequest(
                failure=w.TaskFailure(
                    workflow_id=workflow_id, task_id="a", attempt=a.attempt, failure=failure
                )
            )
        ),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "failure.failure" + ".cause" * 10 + ".kind",
    )
    await assert_untouched(client, workflow_id, "a")
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))
