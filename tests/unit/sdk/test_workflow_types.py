"""Typed views of scheduler messages, and the errors built from them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from are_sdk import (
    AreError,
    FailureInfo,
    TaskInfo,
    TaskState,
    WaitTimeoutError,
    WorkflowDescription,
    WorkflowFailedError,
    WorkflowState,
    WorkflowUpdate,
)
from are_sdk._proto.are.v1 import common_pb2, event_pb2, scheduler_service_pb2, task_pb2, workflow_pb2


def failed_workflow() -> workflow_pb2.Workflow:
    workflow = workflow_pb2.Workflow(
        workflow_id="wf_1",
        name="n",
        state=workflow_pb2.WORKFLOW_STATE_FAILED,
        labels={"a": "b"},
        task_counts=workflow_pb2.TaskCounts(completed=2, failed=1, total=3),
        failure=common_pb2.Failure(
            message="budget max_cost_micro_usd exceeded",
            type="BUDGET_EXCEEDED",
            kind=common_pb2.FAILURE_KIND_BUDGET_EXCEEDED,
            details=common_pb2.Payload(data=b'{"budget":"max_cost_micro_usd"}'),
            cause=common_pb2.Failure(message="inner", type="ValueError"),
        ),
    )
    workflow.create_time.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    return workflow


def test_workflow_description_decodes_everything() -> None:
    completed = workflow_pb2.Workflow(
        workflow_id="wf_2",
        state=workflow_pb2.WORKFLOW_STATE_COMPLETED,
        result=common_pb2.Payload(data=b'{"ok":true}'),
        usage=common_pb2.UsageSummary(usage=common_pb2.Usage(input_tokens=5, cost_micro_usd=7), retries=1),
    )
    description = WorkflowDescription.from_proto(completed)
    assert description.state is WorkflowState.COMPLETED
    assert description.closed
    assert description.result == {"ok": True}
    assert description.failure is None
    assert (description.usage.input_tokens, description.usage.cost_micro_usd, description.usage.retries) == (
        5,
        7,
        1,
    )
    assert description.create_time is None


def test_failed_workflow_raises_with_its_failure() -> None:
    description = WorkflowDescription.from_proto(failed_workflow())
    assert description.create_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert description.task_counts.failed == 1
    failure = description.failure
    assert failure is not None
    assert (failure.type, failure.kind) == ("BUDGET_EXCEEDED", "BUDGET_EXCEEDED")
    assert failure.details == {"budget": "max_cost_micro_usd"}
    assert failure.cause is not None
    assert failure.cause.kind == "APPLICATION"  # UNSPECIFIED reads as APPLICATION
    error = WorkflowFailedError(description)
    assert isinstance(error, AreError)
    assert error.state is WorkflowState.FAILED
    assert error.failure is failure
    assert str(error) == "workflow wf_1 FAILED: BUDGET_EXCEEDED: budget max_cost_micro_usd exceeded"


def test_unknown_enum_values_do_not_break_decoding() -> None:
    # 99 is no WorkflowState, on purpose: a number only a newer sidecar would send.
    description = WorkflowDescription.from_proto(workflow_pb2.Workflow(workflow_id="w", state=99))  # type: ignore[arg-type]
    assert description.state is WorkflowState.UNSPECIFIED
    assert not description.closed


def test_task_info_and_watch_update() -> None:
    task = task_pb2.Task(
        workflow_id="wf_1",
        task_id="review",
        state=task_pb2.TASK_STATE_AWAITING_APPROVAL,
        spec=task_pb2.TaskSpec(
            task_id="review",
            capability="review",
            input=common_pb2.Payload(data=b"[1,2]"),
            depends_on=["write"],
            labels={"k": "v"},
        ),
        approval=task_pb2.Approval(),
        attempt=0,
        idempotency_key="wf_1/review",
    )
    info = TaskInfo.from_proto(task)
    assert info.state is TaskState.AWAITING_APPROVAL
    assert not info.state.terminal
    assert info.input == [1, 2]
    assert info.output is None
    assert info.capability == "review"
    assert info.depends_on == ("write",)
    assert info.approval is not None
    assert info.approval.decision == ""
    response = scheduler_service_pb2.WatchWorkflowResponse(
        workflow=failed_workflow(),
        task=task,
        event=event_pb2.Event(event_type=event_pb2.EVENT_TYPE_TASK_COMPLETED),
        sequence=42,
    )
    update = WorkflowUpdate.from_proto(response)
    assert (update.event_type, update.sequence) == ("TASK_COMPLETED", 42)
    assert update.task is not None
    assert update.task.task_id == "review"


def test_failure_str_and_timeouts() -> None:
    failure = FailureInfo.from_proto(
        common_pb2.Failure(
            message="no heartbeat",
            kind=common_pb2.FAILURE_KIND_TIMEOUT,
            timeout_type=common_pb2.TIMEOUT_TYPE_HEARTBEAT,
        )
    )
    assert failure.timeout_type == "HEARTBEAT"
    assert str(failure) == "TIMEOUT: no heartbeat"


def test_wait_timeout_is_both_an_are_error_and_a_timeout() -> None:
    assert issubclass(WaitTimeoutError, AreError)
    assert issubclass(WaitTimeoutError, TimeoutError)


async def test_a_watch_refused_for_want_of_subscribers_resumes_after_the_sidecars_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resumed WatchWorkflow refused with RESOURCE_EXHAUSTED (the recorder's subscribers all
    taken; RetryInfo 1 s) ended wait() and result() with that error."""
    from are_sdk import ResourceExhaustedError
    from are_sdk._workflow import WorkflowHandle

    closed = scheduler_service_pb2.WatchWorkflowResponse(
        workflow=workflow_pb2.Workflow(workflow_id="wf", state=workflow_pb2.WORKFLOW_STATE_COMPLETED),
        sequence=7,
    )
    calls: list[str] = []
    slept: list[float] = []

    class Scheduler:
        def WatchWorkflow(self, request: object, timeout: float | None = None) -> Any:  # noqa: N802
            calls.append("watch")
            return self._stream(len(calls))

        async def _stream(self, call: int) -> Any:
            if call == 1:
                raise ResourceExhaustedError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many subscribers",
                    reason="RESOURCE_LIMIT",
                    retry_after=timedelta(seconds=1),
                )
            yield closed

    class Raw:
        watches = Scheduler()

    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    final = await WorkflowHandle(Raw(), "wf").wait(timeout=10)
    assert final.state.name == "COMPLETED"
    assert calls == ["watch", "watch"]
    assert len(slept) == 1 and 1.0 <= slept[0] <= 1.2  # the hint, and up to a fifth more


def test_enum_values_newer_than_the_sdk_decode() -> None:
    """A failure kind, timeout type or event type this SDK does not know raised ValueError, so
    describe(), wait() and result() of a failed workflow, and every watch(), failed."""
    failure = FailureInfo.from_proto(common_pb2.Failure(message="m", kind=99, timeout_type=98))  # type: ignore[arg-type]
    assert (failure.kind, failure.timeout_type) == ("UNKNOWN_99", "UNKNOWN_98")
    update = WorkflowUpdate.from_proto(
        scheduler_service_pb2.WatchWorkflowResponse(
            workflow=workflow_pb2.Workflow(workflow_id="w", state=workflow_pb2.WORKFLOW_STATE_RUNNING),
            event=event_pb2.Event(event_type=999),  # type: ignore[arg-type]
        )
    )
    assert update.event_type == "UNKNOWN_999"


async def test_a_resumed_watch_on_another_event_log_starts_again_without_its_cursor() -> None:
    """The proto: OUT_OF_RANGE SEQUENCE_BEYOND_LOG means another log; watch again without the cursor."""
    from are_sdk import InvalidArgumentError, UnavailableError
    from are_sdk._workflow import WorkflowHandle

    running = scheduler_service_pb2.WatchWorkflowResponse(
        workflow=workflow_pb2.Workflow(workflow_id="wf", state=workflow_pb2.WORKFLOW_STATE_RUNNING),
        sequence=9,
    )
    closed = scheduler_service_pb2.WatchWorkflowResponse(
        workflow=workflow_pb2.Workflow(workflow_id="wf", state=workflow_pb2.WORKFLOW_STATE_COMPLETED),
        sequence=2,
    )
    cursors: list[int | None] = []

    class Scheduler:
        def WatchWorkflow(self, request: Any, timeout: float | None = None) -> Any:  # noqa: N802
            cursors.append(request.after_sequence if request.HasField("after_sequence") else None)
            return self._stream(len(cursors))

        async def _stream(self, call: int) -> Any:
            if call == 1:
                yield running
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "restarting")
            if call == 2:
                raise InvalidArgumentError(
                    grpc.StatusCode.OUT_OF_RANGE, "beyond the log", reason="SEQUENCE_BEYOND_LOG"
                )
            yield closed

    class Raw:
        watches = Scheduler()

    final = await asyncio.wait_for(WorkflowHandle(Raw(), "wf").wait(), 10)
    assert final.state.name == "COMPLETED"
    assert cursors == [None, 9, None]


async def test_a_cancelled_connect_closes_its_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while it waited (an outer timeout), connect() left its channel open: nobody had it."""
    from are_sdk import Client

    opened: list[Any] = []
    real = grpc.aio.insecure_channel

    def recorded(*args: Any, **kwargs: Any) -> Any:
        channel = real(*args, **kwargs)
        opened.append(channel)
        return channel

    monkeypatch.setattr(grpc.aio, "insecure_channel", recorded)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(Client.connect("127.0.0.1:1", timeout=30), 0.2)  # nothing listens there
    assert len(opened) == 1
    assert opened[0]._channel.closed()  # grpc's own record of a closed channel
