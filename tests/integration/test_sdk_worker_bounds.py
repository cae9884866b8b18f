"""A worker serving for days keeps nothing per task it no longer holds (real sidecar).

A review of the SDK for slow leaks found three ways a Worker kept what it no
longer held:

- sync handlers: the thread pool's queue keeps a work item (the task's
  context and input with it) until a thread takes it, even once the attempt
  was cancelled. While every thread was busy (a blocking call without a
  timeout), each sync attempt that came, timed out and came again piled up
  there;
- a handler raising a BaseException that is not an Exception (gevent's
  Timeout, a test framework's outcome) reported nothing: its attempt stayed
  held and heartbeated until its start-to-close timeout (10 minutes by default);
- events a handler reported after its stream had ended (a cancelled sync
  handler running on) piled up in the dead session.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from are_sdk import Client, RetryPolicy, TaskContext, TaskState, Worker, WorkflowSpec
from are_sdk._payload import encode_payload
from are_sdk._proto.are.v1 import worker_service_pb2 as wpb
from are_sdk.testing import SidecarProcess

_BOUND_S = 30.0


def suffix() -> str:
    return uuid.uuid4().hex[:8]


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(_BOUND_S):
        while not condition():
            await asyncio.sleep(0.05)


async def test_sync_attempts_that_time_out_while_every_thread_is_busy_leave_nothing_queued(
    client: Client,
) -> None:
    cap = f"busy-{suffix()}"
    release = threading.Event()
    worker = Worker(client, name=f"busy-{suffix()}", max_concurrency=8, max_threads=1)

    @worker.handler(cap)
    def handle(ctx: TaskContext) -> int:
        if ctx.input.get("hang"):
            release.wait(_BOUND_S)  # a blocking call that takes the only thread
        return 1

    try:
        async with worker:
            await client.submit_workflow(WorkflowSpec().task("hang", capability=cap, input={"hang": True}))
            await _until(lambda: worker.in_flight == 1)
            spec = WorkflowSpec()
            for i in range(6):  # each attempt waits for the thread, times out, comes again
                spec.task(
                    f"t{i}",
                    capability=cap,
                    input={"pad": "x" * 10_000},
                    start_to_close_timeout=1.0,
                    retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.05),
                )
            timing_out = await client.submit_workflow(spec)
            await timing_out.wait(timeout=_BOUND_S)
            assert worker.stats["cancelled"] >= 6
            executor = worker._executor
            assert executor is not None
            assert executor._work_queue.qsize() == 0  # 18 work items before
            release.set()
    finally:
        release.set()


class _FrameworkOutcome(BaseException):
    """A BaseException that is not an Exception, as gevent's Timeout or pytest's outcomes are."""


async def test_a_handler_raising_a_base_exception_fails_its_attempt(client: Client) -> None:
    cap = f"base-{suffix()}"
    worker = Worker(client, name=f"base-{suffix()}")

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> None:
        raise _FrameworkOutcome("the test framework ended it")

    async with worker:
        spec = WorkflowSpec().task("t", capability=cap, retry_policy=RetryPolicy(maximum_attempts=1))
        handle_ = await client.submit_workflow(spec)
        await handle_.wait(timeout=_BOUND_S)
        task = await handle_.task("t")
    assert task.state is TaskState.FAILED
    assert task.failure is not None
    assert task.failure.type == "_FrameworkOutcome"


async def test_events_a_handler_reports_after_its_stream_ended_do_not_pile_up(tmp_path: Path) -> None:
    args = ["--listen", "off", "--uds", str(tmp_path / "are.sock")]
    data = tmp_path / "data"
    sidecar = SidecarProcess.start(data_dir=data, args=args)
    release = threading.Event()
    reported = threading.Event()
    try:
        async with await Client.connect(sidecar.target) as client:
            cap = f"orphan-{suffix()}"
            worker = Worker(client, name=f"orphan-{suffix()}", reconnect_max_delay=0.2)

            @worker.handler(cap)
            def handle(ctx: TaskContext) -> int:
                while not release.is_set():  # a sync handler that runs on after its stream is gone
                    ctx.report_tool_call("poll")
                    reported.set()
                    release.wait(0.01)
                return 1

            async with worker:
                await client.submit_workflow(WorkflowSpec().task("t", capability=cap))
                await _until(reported.is_set)
                old = worker._session
                assert old is not None
                sidecar.kill()  # the stream ends; the handler's thread runs on
                sidecar.cleanup()
                sidecar = SidecarProcess.start(data_dir=data, args=args)
                await _until(lambda: worker.stats["connects"] >= 2)
                await asyncio.sleep(0.3)  # some 30 reports meanwhile
                assert old._events == []
                release.set()
    finally:
        release.set()
        sidecar.cleanup()


async def test_a_heartbeat_refused_for_its_details_keeps_the_attempt(client: Client) -> None:
    """Any refused heartbeat was taken for a lost lease: the attempt was dropped with nothing
    reported, and the task stayed RUNNING until a timeout. Only a lease that is gone does that
    now; details too large are refused in the handler already (ValueError)."""
    cap = f"beat-{suffix()}"
    worker = Worker(client, name=f"beat-{suffix()}")

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        with pytest.raises(ValueError, match="1048576"):
            ctx.heartbeat("x" * (1 << 20))
        # The same heartbeat sent as it is (as an SDK without the check would): refused.
        beat = wpb.TaskHeartbeat(workflow_id=ctx.workflow_id, task_id=ctx.task_id, attempt=ctx.attempt)
        beat.details.CopyFrom(encode_payload("x" * (1 << 20)))
        ctx._session.queue_heartbeat(beat)
        await asyncio.sleep(0.5)  # the refusal comes back meanwhile
        return "done"

    async with worker:
        spec = WorkflowSpec().task("t", capability=cap, retry_policy=RetryPolicy(maximum_attempts=1))
        handle_ = await client.submit_workflow(spec)
        assert await handle_.result(timeout=_BOUND_S) == "done"
