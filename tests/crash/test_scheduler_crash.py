"""SIGKILL the sidecar ten times mid-run: every workflow finishes, nothing completed runs again."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import grpc

from are_sdk import Client, RpcError
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from are_sdk.testing import SidecarProcess

from ..integration.test_scheduler import StreamWorker, completion, task

WORKFLOWS = 4
CHAINS = 30
STEPS = 10  # 4 x 30 x 10 = 1,200 open tasks; 120 running at any time
KILLS = 10
ACKS_PER_ROUND = 90


class _LoggingWorker(StreamWorker):
    """Logs every assignment and accepted completion, in the order the worker saw them."""

    def __init__(self, client: Client, log: list[tuple[str, str, int]]) -> None:
        super().__init__(client, lambda a: None, capabilities=["crash"], concurrency=256)
        self.log = log
        self.accepted = 0

    async def _run(self) -> None:
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError, RpcError):
            call = self._call
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                kind = message.WhichOneof("message")
                if kind == "assignments":
                    batch = list(message.assignments.assignments)
                    for a in batch:
                        self.log.append(("assigned", a.idempotency_key, a.attempt))
                    await call.write(
                        w.ConnectRequest(
                            complete=w.CompletionBatch(completions=[completion(a, a.attempt) for a in batch])
                        )
                    )
                elif kind == "acks":
                    for ack in message.acks.acks:
                        if ack.accepted:
                            self.accepted += 1
                            self.log.append(("acked", f"{ack.workflow_id}/{ack.task_id}", ack.attempt))


def _spec(n: int) -> wf.WorkflowSpec:
    tasks = []
    for chain in range(CHAINS):
        for step in range(STEPS):
            deps = [f"c{chain}s{step - 1}"] if step else []
            tasks.append(task(f"c{chain}s{step}", "crash", *deps))
    return wf.WorkflowSpec(workflow_id=f"crash-{n}", tasks=tasks)


async def _round(
    process: SidecarProcess, log: list[tuple[str, str, int]], *, submit: bool, until_acks: int | None
) -> Any:
    async with await Client.connect(process.target) as client:
        if submit:
            for n in range(WORKFLOWS):
                await client.raw.scheduler.SubmitWorkflow(
                    s.SubmitWorkflowRequest(spec=_spec(n), request_id=f"crash-{n}")
                )
        worker = _LoggingWorker(client, log)
        await worker.__aenter__()
        try:
            async with asyncio.timeout(60):
                if until_acks is not None:
                    idle_since, seen = asyncio.get_running_loop().time(), 0
                    while worker.accepted < until_acks:
                        await asyncio.sleep(0.002)
                        if worker.accepted != seen:
                            idle_since, seen = asyncio.get_running_loop().time(), worker.accepted
                        elif asyncio.get_running_loop().time() - idle_since > 3:
                            break  # nothing left to run: kill anyway
                    process.kill()  # mid-flight: assignments and completions are on the wire
                    return None
                statuses = []
                for n in range(WORKFLOWS):
                    while True:
                        got = await client.raw.scheduler.GetWorkflow(
                            s.GetWorkflowRequest(workflow_id=f"crash-{n}")
                        )
                        if got.workflow.state != wf.WORKFLOW_STATE_RUNNING:
                            statuses.append(got.workflow)
                            break
                        await asyncio.sleep(0.05)
                return statuses
        finally:
            with contextlib.suppress(Exception):
                await worker.close()


async def test_ten_sigkills_lose_nothing_and_rerun_nothing_completed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log: list[tuple[str, str, int]] = []
    for round_number in range(KILLS):
        process = SidecarProcess.start(data_dir=data)
        try:
            await _round(process, log, submit=round_number == 0, until_acks=ACKS_PER_ROUND)
        finally:
            process.kill()
            process.cleanup()
    process = SidecarProcess.start(data_dir=data)
    try:
        statuses = await _round(process, log, submit=False, until_acks=None)
    finally:
        process.stop()
        process.cleanup()

    assert [x.state for x in statuses] == [wf.WORKFLOW_STATE_COMPLETED] * WORKFLOWS
    assert all(x.task_counts.completed == CHAINS * STEPS for x in statuses)
    executions: Counter[str] = Counter()
    acked: set[str] = set()
    attempts: dict[str, list[int]] = defaultdict(list)
    for kind, key, attempt in log:
        if kind == "assigned":
            assert key not in acked, f"{key} ran again after its completion was acknowledged"
            executions[key] += 1
            attempts[key].append(attempt)
        else:
            acked.add(key)
    total = WORKFLOWS * CHAINS * STEPS
    assert len(executions) == total  # every task ran
    rerun = {key: a for key, a in attempts.items() if len(a) > 1}
    assert rerun, "the kills should have caught attempts in flight"
    for key, numbers in rerun.items():
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), (
            key,
            numbers,
        )  # attempt+1, same key
    assert sum(executions.values()) < total * 2  # at-least-once, not a storm
