"""Closing a client, or interrupting a blocking call: errors the caller can tell from a cancellation.

Closing a grpc channel cancels the calls in flight, and grpc raises
``CancelledError`` in the tasks awaiting them: a workflow wait, or a
worker's ``run()``, ended as if its task had been cancelled, which a task
group or an ``except Exception`` handles as a cancellation nobody asked
for; a call after ``close()`` raised grpc's ``UsageError``, no SDK error.
Both now raise :class:`ClientClosedError`. And Ctrl-C during a blocking
call of the :class:`SyncClient` left the call running on in the client's
loop thread (a wait holding its stream for good); it is now cancelled.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from types import FrameType

import pytest

from are_sdk import Client, ClientClosedError, SyncClient, Worker, WorkflowSpec
from are_sdk.testing import SidecarProcess

_BOUND_S = 10.0


def suffix() -> str:
    return uuid.uuid4().hex[:8]


async def test_a_wait_in_flight_when_the_client_closes_raises_client_closed(sidecar: SidecarProcess) -> None:
    client = await Client.connect(sidecar.target)
    handle = await client.workflows.submit(WorkflowSpec("closing").task("a", capability=f"nobody-{suffix()}"))
    waiting = asyncio.ensure_future(handle.wait())
    await asyncio.sleep(0.2)  # the wait's stream is open
    await client.close()
    with pytest.raises(ClientClosedError, match="WatchWorkflow"):
        await asyncio.wait_for(waiting, _BOUND_S)
    # So do calls made after it, and the health check; closing again does nothing more.
    with pytest.raises(ClientClosedError, match="GetWorkflow"):
        await handle.describe()
    with pytest.raises(ClientClosedError):
        await client.health()
    await client.close()
    assert client.closed


async def test_a_cancelled_wait_is_still_a_cancellation(client: Client) -> None:
    spec = WorkflowSpec("cancelled").task("a", capability=f"nobody-{suffix()}")
    handle = await client.workflows.submit(spec)
    waiting = asyncio.ensure_future(handle.wait())
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await handle.describe()).workflow_id == handle.workflow_id  # the client serves on


async def test_a_task_group_sees_the_closed_client_as_an_error(sidecar: SidecarProcess) -> None:
    client = await Client.connect(sidecar.target)
    handle = await client.workflows.submit(WorkflowSpec("group").task("a", capability=f"nobody-{suffix()}"))

    async def close_soon() -> None:
        await asyncio.sleep(0.2)
        await client.close()

    with pytest.raises(ExceptionGroup) as raised:  # noqa: PT012 - the group is what is tested
        async with asyncio.timeout(_BOUND_S), asyncio.TaskGroup() as group:
            group.create_task(handle.wait())
            group.create_task(close_soon())
    assert [type(e) for e in raised.value.exceptions] == [ClientClosedError]


async def test_a_worker_whose_client_closes_under_it_ends_with_client_closed(sidecar: SidecarProcess) -> None:
    client = await Client.connect(sidecar.target)
    worker = Worker(client, name=f"closing-{suffix()}")

    @worker.handler(f"echo-{suffix()}")
    async def echo(value: object) -> object:
        return value

    running = asyncio.ensure_future(worker.run(handle_signals=False))
    await asyncio.wait_for(worker._registered.wait(), _BOUND_S)
    await client.close()
    with pytest.raises(ClientClosedError, match="WorkerService"):
        await asyncio.wait_for(running, _BOUND_S)


class _InterruptedError(Exception):
    """Raised by the test's SIGINT handler, standing in for KeyboardInterrupt."""


def test_an_interrupted_blocking_call_is_cancelled_in_the_loop_thread(sidecar: SidecarProcess) -> None:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _InterruptedError

    with SyncClient.connect(sidecar.target) as client:
        handle = client.workflows.submit(WorkflowSpec("ctrl-c").task("a", capability=f"nobody-{suffix()}"))
        loop = client._runner.loop
        previous = signal.signal(signal.SIGINT, interrupt)
        timer = threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        try:
            timer.start()
            with pytest.raises(_InterruptedError):
                handle.wait()  # no worker: it would wait for good
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
        deadline = time.monotonic() + _BOUND_S
        while asyncio.run_coroutine_threadsafe(_pending(), loop).result() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert asyncio.run_coroutine_threadsafe(_pending(), loop).result() == 0
        assert handle.describe().workflow_id  # the client serves on


async def _pending() -> int:
    """The tasks pending on the running loop besides this one."""
    return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])


def test_closing_a_sync_client_ends_the_calls_other_threads_wait_for(sidecar: SidecarProcess) -> None:
    # They stayed blocked for good: the loop stopped with their calls pending.
    client = SyncClient.connect(sidecar.target)
    handle = client.workflows.submit(WorkflowSpec("threads").task("a", capability=f"nobody-{suffix()}"))
    raised: dict[str, BaseException] = {}

    def follow() -> None:
        try:
            for _ in client.trace.stream(workflow_ids=[f"never-{suffix()}"]):
                pass
        except BaseException as error:  # noqa: BLE001 - what it raised is the assertion
            raised["stream"] = error

    def wait() -> None:
        try:
            handle.wait()
        except BaseException as error:  # noqa: BLE001 - what it raised is the assertion
            raised["wait"] = error

    threads = [threading.Thread(target=target, daemon=True) for target in (follow, wait)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # both are waiting on the loop
    client.close()
    for thread in threads:
        thread.join(_BOUND_S)
    assert not any(thread.is_alive() for thread in threads)
    assert {name: type(error) for name, error in raised.items()} == {
        "stream": ClientClosedError,
        "wait": ClientClosedError,
    }
    with pytest.raises(ClientClosedError):
        handle.describe()
