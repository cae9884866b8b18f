"""A workflow that lives across a sidecar restart is exported with the events of both sides (real receiver).

The workflow span was exported at the workflow's end after the restart, with
almost no events: those recorded before the restart were never seen by the
new sidecar's span builder, and those after found no open workflow span
(they were dropped). Its first event after the restart now opens the span
and replays, from the event log, the events before it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.proto.trace.v1 import trace_pb2

from are_sdk import Client, TaskContext, Worker, WorkflowSpec
from are_sdk._proto.are.v1 import event_pb2, scheduler_service_pb2
from are_sdk.testing import SidecarProcess
from tests.integration.test_trace_otlp import Receiver, attributes, receiver

__all__ = ["receiver"]  # the fixture, used by name

_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


def _kind(event: event_pb2.Event) -> str:
    return event_pb2.EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


async def test_the_workflow_span_has_the_events_of_both_sides_of_a_restart(
    receiver: tuple[Receiver, int], tmp_path: Path
) -> None:
    collector, port = receiver
    args = ["--otlp-endpoint", f"http://127.0.0.1:{port}"]
    data = tmp_path / "data"
    started = asyncio.Event()
    with SidecarProcess.start(env=_ENV, args=args, data_dir=data) as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name="before", max_concurrency=2, shutdown_grace=0.5)

            @worker.handler("quick")
            async def quick(ctx: TaskContext) -> dict[str, int]:
                return {"attempt": ctx.attempt}

            @worker.handler("held")
            async def held(ctx: TaskContext) -> dict[str, int]:
                started.set()
                await asyncio.sleep(60)  # still running when the sidecar stops
                return {"attempt": ctx.attempt}

            async with worker:
                spec = WorkflowSpec("across").task("a", capability="quick").task("t", capability="held")
                handle = await client.submit_workflow(spec)
                await asyncio.wait_for(started.wait(), 30)
                before = [e async for e in client.trace.iter_events(workflow_ids=[handle.workflow_id])]
                process.stop()
    with SidecarProcess.start(env=_ENV, args=args, data_dir=data) as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name="after", max_concurrency=1)

            @worker.handler("held")
            async def done_now(ctx: TaskContext) -> dict[str, int]:
                return {"attempt": ctx.attempt}

            async with worker:
                done = await client.get_workflow_handle(handle.workflow_id).wait(timeout=60)
            events = [e async for e in client.trace.iter_events(workflow_ids=[handle.workflow_id])]
            described = await client.raw.scheduler.GetWorkflow(
                scheduler_service_pb2.GetWorkflowRequest(workflow_id=handle.workflow_id)
            )
        assert process.stop() == 0  # flushes the exporter
    assert done.state.name == "COMPLETED"
    restart = max(e.sequence for e in before)
    (root,) = [
        s for s in collector.of_trace(int(described.workflow.trace_id, 16)) if s.name == "workflow across"
    ]
    replayed = [_sequence(e) for e in root.events]
    assert replayed == sorted(set(replayed))  # in order, none twice
    assert len(replayed) <= 128
    kinds = {e.sequence: (_kind(e), e.task_id, e.attempt) for e in events}
    on_root = [kinds[sequence] for sequence in replayed]
    # Before the restart: both tasks scheduled (no attempt span yet), seen only by the first sidecar.
    assert ("TASK_SCHEDULED", "a", 1) in on_root
    assert ("TASK_SCHEDULED", "t", 1) in on_root
    assert any(sequence <= restart for sequence in replayed)
    # After it: the lost attempt's lease (its span was not open in the new sidecar) and the re-scheduling.
    assert ("TASK_LEASE_EXPIRED", "t", 1) in on_root
    assert ("TASK_SCHEDULED", "t", 2) in on_root
    assert any(sequence > restart for sequence in replayed)
    assert attributes(root)["are.workflow.state"] == "COMPLETED"


def _sequence(event: trace_pb2.Span.Event) -> int:
    """The ``are.sequence`` of a span event: the event it stands for."""
    (value,) = [a.value.int_value for a in event.attributes if a.key == "are.sequence"]
    return value
