"""Attempt spans end where their attempts end, across timeouts and a restart (real sidecar, real receiver).

- A start-to-close timeout ended the attempt's span at TASK_TIMED_OUT (task
  RUNNING), and its TASK_ATTEMPT_FAILED fell on the workflow span.
- An attempt lost to a sidecar restart went from TASK_LEASE_EXPIRED (task
  RUNNING) to the next TASK_DISPATCHED with no TASK_SCHEDULED, and the
  attempt run after the restart linked to nothing.
- The events of an attempt named no span (Event.span_id).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from opentelemetry.proto.trace.v1 import trace_pb2

from are_sdk import Client, RetryPolicy, TaskContext, Worker, WorkflowSpec
from are_sdk._proto.are.v1 import event_pb2, scheduler_service_pb2, task_pb2
from are_sdk.testing import SidecarProcess
from tests.integration.test_trace_otlp import Receiver, attributes, receiver

__all__ = ["receiver"]  # the fixture, used by name

_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


def _kind(event: event_pb2.Event) -> str:
    return event_pb2.EventType.Name(event.event_type).removeprefix("EVENT_TYPE_TASK_")


async def _task_events(client: Client, workflow_id: str) -> list[event_pb2.Event]:
    return [e async for e in client.trace.iter_events(workflow_ids=[workflow_id]) if e.task_id == "t"]


async def _trace_id(client: Client, workflow_id: str) -> int:
    described = await client.raw.scheduler.GetWorkflow(
        scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
    )
    return int(described.workflow.trace_id, 16)


async def test_a_timed_out_attempts_span_ends_at_its_attempt_failed(receiver: tuple[Receiver, int]) -> None:
    collector, port = receiver
    release = asyncio.Event()
    with SidecarProcess.start(env=_ENV, args=["--otlp-endpoint", f"http://127.0.0.1:{port}"]) as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name="timeouts", max_concurrency=2)

            @worker.handler("hangs")
            async def hangs(ctx: TaskContext) -> dict[str, int]:
                await asyncio.wait_for(release.wait(), 30)  # stopped by the timeout's cancellation
                return {"attempt": ctx.attempt}

            async with worker:
                spec = WorkflowSpec("timeouts").task(
                    "t",
                    capability="hangs",
                    start_to_close_timeout=timedelta(seconds=1),
                    retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=50)),
                )
                handle = await client.submit_workflow(spec)
                done = await handle.wait(timeout=30)
                release.set()
            events = await _task_events(client, handle.workflow_id)
            trace_id = await _trace_id(client, handle.workflow_id)
        assert process.stop() == 0  # flushes the exporter
    assert done.state.name == "FAILED"
    dispatched = {e.attempt: e.span_id for e in events if _kind(e) == "DISPATCHED"}
    for e in events:
        if _kind(e) in {"TIMED_OUT", "ATTEMPT_FAILED"}:
            assert e.span_id == dispatched[e.attempt], _kind(e)  # was "" on TASK_TIMED_OUT
    spans = collector.of_trace(trace_id)
    attempts = sorted((s for s in spans if s.name == "task t"), key=lambda s: s.start_time_unix_nano)
    assert [attributes(s)["are.task.state"] for s in attempts] == ["BACKING_OFF", "FAILED"]  # was RUNNING
    for attempt in attempts:
        assert attempt.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        assert [e.name for e in attempt.events] == ["are.task_timed_out", "are.task_attempt_failed"]
    (root,) = [s for s in spans if s.name == "workflow timeouts"]
    assert "are.task_attempt_failed" not in {e.name for e in root.events}


async def test_an_attempt_lost_to_a_restart_is_scheduled_again_and_its_rerun_links_to_it(
    receiver: tuple[Receiver, int], tmp_path: Path
) -> None:
    collector, port = receiver
    args = ["--otlp-endpoint", f"http://127.0.0.1:{port}"]
    data = tmp_path / "data"
    started = asyncio.Event()
    with SidecarProcess.start(env=_ENV, args=args, data_dir=data) as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name="before", max_concurrency=1, shutdown_grace=0.5)

            @worker.handler("held")
            async def held(ctx: TaskContext) -> dict[str, int]:
                started.set()
                await asyncio.sleep(60)  # still running when the sidecar stops
                return {"attempt": ctx.attempt}

            async with worker:
                handle = await client.submit_workflow(WorkflowSpec("restarted").task("t", capability="held"))
                await asyncio.wait_for(started.wait(), 30)
                process.stop()
    with SidecarProcess.start(env=_ENV, args=args, data_dir=data) as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name="after", max_concurrency=1)

            @worker.handler("held")
            async def quick(ctx: TaskContext) -> dict[str, int]:
                return {"attempt": ctx.attempt}

            async with worker:
                done = await client.get_workflow_handle(handle.workflow_id).wait(timeout=30)
            events = await _task_events(client, handle.workflow_id)
            task = await client.raw.scheduler.GetTask(
                scheduler_service_pb2.GetTaskRequest(workflow_id=handle.workflow_id, task_id="t")
            )
            trace_id = await _trace_id(client, handle.workflow_id)
        assert process.stop() == 0
    assert done.state.name == "COMPLETED"
    assert task.task.attempt == 2
    kinds = [(_kind(e), e.attempt, task_pb2.TaskState.Name(e.task_state)) for e in events]
    lost = kinds.index(("LEASE_EXPIRED", 1, "TASK_STATE_SCHEDULED"))
    assert kinds[lost + 1 : lost + 3] == [
        ("SCHEDULED", 2, "TASK_STATE_SCHEDULED"),
        ("DISPATCHED", 2, "TASK_STATE_RUNNING"),
    ]
    first = next(e for e in events if _kind(e) == "DISPATCHED" and e.attempt == 1)
    assert events[lost].span_id == first.span_id
    second = next(
        s for s in collector.of_trace(trace_id) if s.name == "task t" and attributes(s)["are.attempt"] == 2
    )
    assert [link.span_id.hex() for link in second.links] == [first.span_id]  # linked to nothing


async def test_a_tasks_state_writes_are_events_of_its_attempts_span() -> None:
    """STATE_PATCHED of a write a task made (PatchState as its attempt, or its output written into
    the state) named no span: it now names the attempt's, as its dispatch does."""
    with SidecarProcess.start() as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name="writes", max_concurrency=1)

            @worker.handler("writes")
            async def writes(ctx: TaskContext) -> dict[str, int]:
                await client.state.for_task(ctx).patch({"progress": 1})
                return {"done": 1}

            async with worker:
                spec = WorkflowSpec("writes").task("t", capability="writes", output_state_pointer="/result")
                handle = await client.submit_workflow(spec)
                await handle.result(timeout=30)
            events = await _task_events(client, handle.workflow_id)
    (dispatched,) = [e for e in events if e.event_type == event_pb2.EVENT_TYPE_TASK_DISPATCHED]
    patched = [e for e in events if e.event_type == event_pb2.EVENT_TYPE_STATE_PATCHED]
    assert len(patched) == 2  # the handler's patch, then the output written at /result
    assert dispatched.span_id
    assert [e.span_id for e in patched] == [dispatched.span_id] * 2
