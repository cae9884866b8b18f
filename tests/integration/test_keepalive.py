"""Keepalive pings both ways: a worker notices a hung sidecar, and the sidecar drops a hung worker.

A hang is a SIGSTOP: the process keeps its sockets open (the kernel still
accepts bytes for it) but answers nothing, like a frozen VM or a process stuck
in a native call. Without pings, both ends would wait on the open stream forever.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from are_sdk import Client, TaskContext, Worker, WorkflowSpec
from are_sdk.testing import SidecarProcess

RESULT_TIMEOUT = 30.0
# How long a hang may take to be noticed: pings at 2 s (client) or 1 s
# (sidecar) with a 1 s answer timeout notice it within about 3 s; the rest
# is slack for a loaded machine. Bounded: the waits below stop by themselves.
NOTICE_WITHIN = 20.0


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.1)


async def test_a_worker_notices_a_hung_sidecar_and_serves_again_once_it_wakes() -> None:
    with SidecarProcess.start() as sidecar:
        async with await Client.connect(sidecar.target, keepalive=2.0, keepalive_timeout=1.0) as client:
            capability = f"ka-{uuid.uuid4().hex[:8]}"
            worker = Worker(client, name="keepalive", reconnect_max_delay=0.5)

            @worker.handler(capability)
            async def handle(ctx: TaskContext) -> str:
                return f"served at attempt {ctx.attempt}"

            async with worker:
                os.kill(sidecar.pid, signal.SIGSTOP)
                try:
                    # The stream is quiet; the pings go unanswered and the
                    # connection is closed: the worker sees its stream end.
                    await _until(lambda: worker.stats["disconnects"] >= 1, NOTICE_WITHIN)
                finally:
                    os.kill(sidecar.pid, signal.SIGCONT)
                # The worker connects again once the sidecar wakes, and serves.
                # (Which attempt serves is not asserted: a task submitted while
                # the sidecar has yet to notice the old stream's end may go to
                # that stream first, be lost with it and be retried.)
                await _until(lambda: worker.stats["connects"] >= 2, NOTICE_WITHIN)
                handle_ = await client.submit_workflow(WorkflowSpec().task("x", capability=capability))
                assert (await handle_.result(timeout=RESULT_TIMEOUT)).startswith("served at attempt ")


async def test_a_worker_shut_down_while_a_hung_sidecar_registers_it_returns_at_once() -> None:
    # Before, its run() waited for the registration until the keepalive gave up (40 s here).
    with SidecarProcess.start() as sidecar:
        async with await Client.connect(sidecar.target) as client:
            worker = Worker(client, name="hung-registration")

            @worker.handler(f"hr-{uuid.uuid4().hex[:8]}")
            async def handle(ctx: TaskContext) -> str:
                return "never"

            os.kill(sidecar.pid, signal.SIGSTOP)
            try:
                running = asyncio.ensure_future(worker.run(handle_signals=False))
                await asyncio.sleep(0.5)  # registering: the sidecar answers nothing
                assert not running.done()
                worker.shutdown()
                await asyncio.wait_for(running, NOTICE_WITHIN / 4)
            finally:
                os.kill(sidecar.pid, signal.SIGCONT)


def test_keepalive_settings_are_checked() -> None:
    for keepalive, timeout in ((-1.0, 10.0), (0.5, 10.0), (30.0, 0.0)):
        with pytest.raises(ValueError, match="keepalive"):
            asyncio.run(Client.connect("127.0.0.1:1", keepalive=keepalive, keepalive_timeout=timeout))


_HUNG_WORKER = """
import asyncio, sys
from are_sdk import Client, Worker

async def main(target, capability):
    # keepalive=0: the worker never pings; only the sidecar's pings can notice it hang.
    async with await Client.connect(target, keepalive=0) as client:
        worker = Worker(client, name="hung-worker")

        @worker.handler(capability)
        async def handle(ctx):
            return "never"

        async with worker:
            print("registered", flush=True)
            await asyncio.sleep(120)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_the_sidecar_drops_the_stream_of_a_hung_worker(tmp_path: Path) -> None:
    args = ["--keepalive-time-s", "1", "--keepalive-timeout-s", "1"]
    with SidecarProcess.start(args=args) as sidecar:
        capability = f"hung-{uuid.uuid4().hex[:8]}"
        script = tmp_path / "worker.py"
        script.write_text(_HUNG_WORKER)
        process = subprocess.Popen(
            [sys.executable, str(script), sidecar.target, capability],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), RESULT_TIMEOUT)
            assert line.strip() == "registered"
            async with await Client.connect(sidecar.target) as client:

                async def card_available() -> bool | None:
                    cards, _ = await client.router.list_agents(capability=capability)
                    return cards[0].available if cards else None

                assert await card_available() is True
                process.send_signal(signal.SIGSTOP)
                async with asyncio.timeout(NOTICE_WITHIN):
                    while await card_available():  # unavailable (or gone) once the stream is dropped
                        await asyncio.sleep(0.1)
        finally:
            process.kill()  # SIGKILL ends a stopped process too
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
