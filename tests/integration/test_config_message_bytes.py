"""The smallest ``--max-message-bytes`` still carries everything the worker streams send.

Defect: the option took 1 KiB to 256 MiB, but a worker's stream carries
batches of up to 16 MiB each way (the SDKs' completion batches, the
sidecar's assignment batches) and single payloads of up to 4 MiB inline. At
1 MiB a 2 MiB result ended the whole stream with RESOURCE_EXHAUSTED: the
attempt was recorded as WORKER_LOST and an unrelated task in flight on the
same stream ran twice. The floor is now 32 MiB (test_config_startup.py checks
that less exits 2); here a sidecar at exactly the floor serves the largest
batches, one stream, every handler once.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from are_sdk import Client, TaskContext, Worker, WorkflowSpec
from are_sdk.testing import SidecarProcess

_FLOOR = 32 * 1024 * 1024
_FAN = 8  # eight outputs of almost 4 MiB: two completion batches each way, a 31 MiB fan-in
_SIZE = 4 * 1024 * 1024 - 64 * 1024  # under the 4 MiB inline bound
_BOUND_S = 120.0


async def test_large_outputs_and_an_unrelated_task_share_one_stream_at_the_floor() -> None:
    suffix = uuid.uuid4().hex[:8]
    big, join, small = f"big-{suffix}", f"join-{suffix}", f"small-{suffix}"
    calls = {"big": 0, "join": 0, "small": 0}
    arrived = 0
    together = asyncio.Event()
    joined: list[dict[str, Any]] = []
    with SidecarProcess.start(args=["--max-message-bytes", str(_FLOOR)]) as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name=f"floor-{suffix}", max_concurrency=_FAN + 2)

            @worker.handler(big)
            async def large(ctx: TaskContext) -> str:
                nonlocal arrived
                calls["big"] += 1
                arrived += 1
                if arrived == _FAN:
                    together.set()
                await asyncio.wait_for(together.wait(), _BOUND_S)  # all complete in one flush
                return chr(ord("a") + ctx.input["i"]) * _SIZE

            @worker.handler(join)
            async def gather(ctx: TaskContext) -> int:
                calls["join"] += 1
                joined.append(ctx.dependency_outputs)
                return len(ctx.dependency_outputs)

            @worker.handler(small)
            async def slow(ctx: TaskContext) -> dict[str, int]:
                calls["small"] += 1
                await asyncio.sleep(0.5)  # in flight while the large outputs go by
                return {"ok": 1}

            spec = WorkflowSpec("fan-in")
            for i in range(_FAN):
                spec.task(f"m{i}", capability=big, input={"i": i})
            spec.task("join", capability=join, depends_on=[f"m{i}" for i in range(_FAN)])
            async with worker:
                small_handle = await client.submit_workflow(WorkflowSpec("small").task("a", capability=small))
                handle = await client.submit_workflow(spec)
                assert await handle.result(timeout=_BOUND_S) == _FAN
                assert await small_handle.result(timeout=_BOUND_S) == {"ok": 1}
            assert worker.stats["connects"] == 1  # the stream never broke
            assert worker.stats["disconnects"] == 0
            assert calls == {"big": _FAN, "join": 1, "small": 1}
            [outputs] = joined
            assert outputs == {f"m{i}": chr(ord("a") + i) * _SIZE for i in range(_FAN)}
            assert (await handle.describe()).usage.retries == 0
        assert "RESOURCE_EXHAUSTED" not in process.log_text()
