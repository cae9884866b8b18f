"""A Worker stopped and run again, on the same or a new event loop, starts clean (real sidecar).

Stopping a worker hands back the sync handlers still running: a thread
cannot be stopped, so each keeps its thread until it returns. What that
left behind before:

- the worker's "registered" event belonged to the first event loop that
  waited on it: run again under a new loop (a second ``asyncio.run``),
  ``async with worker`` entered before the worker had registered (its wait
  failed in a task nobody read) and ``wait_registered()`` raised
  ``RuntimeError``;
- a handed-back handler still running once its loop had closed got
  ``RuntimeError: Event loop is closed`` from ``ctx.heartbeat()`` and the
  report methods, which drop what they report once the stream is gone;
- the threads were a ``ThreadPoolExecutor``'s, which Python joins when it
  exits: once ``run()`` had returned (on SIGTERM, say), a handler that never
  returned kept the process from exiting;
- ``async with worker`` cancelled while registering (a timeout around it)
  left the worker serving in the background, with nothing to stop it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from are_sdk import Client, RetryPolicy, TaskContext, Worker, WorkflowSpec
from are_sdk.testing import SidecarProcess

_BOUND_S = 20.0
_LOOPS = 2  # each runs the worker twice


def suffix() -> str:
    return uuid.uuid4().hex[:8]


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(_BOUND_S):
        while not condition():
            await asyncio.sleep(0.02)


def _wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + _BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_worker_run_again_on_the_same_and_new_event_loops_registers_and_serves_at_full_capacity(
    sidecar: SidecarProcess,
) -> None:
    cap = f"restart-{suffix()}"
    gate = threading.Event()  # what the stuck handlers wait for: set at the end of the test
    threads: set[threading.Thread] = set()  # every thread a handler ran in
    stuck: list[str] = []  # stuck attempts that started, by task id
    errors: list[BaseException] = []  # what the SDK's report methods raised in a handler
    workers: list[Worker] = []  # the one worker, built with the first round's client

    def handle(ctx: TaskContext) -> str:
        threads.add(threading.current_thread())
        if ctx.input != "stuck" or ctx.attempt > 1:
            return "done"
        stuck.append(ctx.task_id)
        # Handed back when its worker stops, it reports on until the gate opens, after its
        # event loop has closed.
        while not gate.wait(0.01):
            try:
                ctx.heartbeat()
                ctx.report_tool_call("poll")
            except Exception as error:  # noqa: BLE001 - recorded for the assertion
                errors.append(error)
                return "raised"
        return "released"

    async def serve_once(client: Client) -> None:
        worker = workers[0]
        async with worker:
            # Registered before the block runs, on this loop as on the first one.
            assert worker.worker_id
            await worker.wait_registered(_BOUND_S)
            # The one thread of this run is free, whatever the earlier runs' handlers hold.
            quick = await client.submit_workflow(WorkflowSpec().task("quick", capability=cap))
            assert await quick.result(timeout=_BOUND_S) == "done"
            started = len(stuck)
            spec = WorkflowSpec().task(
                "stuck",
                capability=cap,
                input="stuck",
                retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=0.05),
            )
            await client.submit_workflow(spec)
            await _until(lambda: len(stuck) == started + 1)

    async def on_a_new_loop() -> None:
        async with await Client.connect(sidecar.target) as client:
            if not workers:
                worker = Worker(
                    client, name=f"restart-{suffix()}", max_concurrency=4, max_threads=1, shutdown_grace=0.1
                )
                worker.register(cap, handle)
                workers.append(worker)
            workers[0].client = client  # a client belongs to its event loop
            await serve_once(client)
            await serve_once(client)  # stopped and run again on the same loop

    try:
        for _ in range(_LOOPS):
            asyncio.run(on_a_new_loop())  # a new event loop each time, closed after
        time.sleep(0.2)  # the stuck handlers report on after their loops closed
        assert errors == []
        # Each stuck handler keeps its thread, and only that: nothing else is left running.
        assert _wait_until(lambda: sum(t.is_alive() for t in threads) == 2 * _LOOPS)
    finally:
        gate.set()
    # A stopped worker's threads end once their handlers return; they are daemons, so until
    # then they do not keep the process from exiting (see the next test).
    assert _wait_until(lambda: not any(t.is_alive() for t in threads))
    assert all(t.daemon for t in threads)


_STUCK_WORKER = """
import asyncio, sys, threading
from are_sdk import Client, Worker, WorkflowSpec

async def main(target, cap):
    async with await Client.connect(target) as client:
        worker = Worker(client, name="stuck", shutdown_grace=0.1)

        @worker.handler(cap)
        def stuck(ctx):
            threading.Event().wait()  # never returns

        async with worker:
            await client.submit_workflow(WorkflowSpec().task("t", capability=cap))
            async with asyncio.timeout(20):
                while worker.in_flight < 1:
                    await asyncio.sleep(0.01)
    print("stopped", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_process_exits_once_its_worker_stopped_with_a_handler_that_never_returns(
    sidecar: SidecarProcess,
) -> None:
    """Handed back on shutdown, a handler that never returns no longer holds the process open."""
    result = subprocess.run(
        [sys.executable, "-c", _STUCK_WORKER, sidecar.target, f"stuck-{suffix()}"],
        capture_output=True,
        text=True,
        timeout=_BOUND_S * 2,  # it hung here, its stuck thread joined at exit
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped"


async def test_a_worker_whose_async_with_is_cancelled_while_registering_stops(client: Client) -> None:
    worker = Worker(client, name=f"cancelled-{suffix()}", capabilities=[f"cancelled-{suffix()}"])

    async def enter_with_no_time() -> None:
        async with asyncio.timeout(0), worker:  # the timeout cancels the entering
            raise AssertionError("entered before it registered")

    with pytest.raises(TimeoutError):
        await enter_with_no_time()
    background = worker._background
    assert background is not None
    try:
        # It stopped with the cancellation: it did not serve on with nothing to stop it.
        done, _ = await asyncio.wait({background}, timeout=_BOUND_S / 2)
        assert background in done
        assert background.exception() is None
    finally:
        worker.shutdown()
        await background
