"""Large outputs meeting in one task, or finishing together, stay within a message (real sidecar).

Defects: a task whose twenty dependencies each returned ~4 MiB was one
80 MiB assignment, over the 64 MiB message limit: the sidecar's send failed,
ended the worker's stream, and did so again at every redelivery until the
task's retries were spent (the workflow failed "worker ... disconnected").
The same twenty outputs finishing at once went from the Python SDK in one
80 MiB completion batch, with the same end. A poll asking for twenty tasks
with ~4 MiB inputs got an answer the sidecar could not send.

Now the sidecar moves the largest inline dependency outputs of an assignment
over 16 MiB to blobs owned by the workflow, cuts assignment batches at 16 MiB
and a poll's answer at the message limit (the rest is handed back, for the
next poll); the SDK cuts its batches at 16 MiB.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc

from are_sdk import Client, TaskContext, Worker, WorkflowSpec
from are_sdk._proto.are.v1 import common_pb2
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import worker_service_pb2_grpc as wg
from are_sdk.testing import SidecarProcess

FAN = 20
SIZE = 4 * 1024 * 1024 - 64 * 1024  # under the 4 MiB inline bound
_BOUND_S = 120.0


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _fan_in(cap: str, join: str, fan: int = FAN) -> WorkflowSpec:
    spec = WorkflowSpec("fan-in")
    for i in range(fan):
        spec.task(f"m{i}", capability=cap, input={"i": i})
    return spec.task("join", capability=join, depends_on=[f"m{i}" for i in range(fan)])


async def test_twenty_large_outputs_finishing_together_meet_in_one_task_on_one_stream(client: Client) -> None:
    cap, join = f"big-{_suffix()}", f"join-{_suffix()}"
    arrived = 0
    together = asyncio.Event()
    joined: list[dict[str, Any]] = []
    worker = Worker(client, name=f"fan-{_suffix()}", max_concurrency=FAN + 1)

    @worker.handler(cap)
    async def big(ctx: TaskContext) -> str:
        nonlocal arrived
        arrived += 1
        if arrived == FAN:
            together.set()
        await asyncio.wait_for(together.wait(), _BOUND_S)  # all twenty complete in one flush
        return chr(ord("a") + ctx.input["i"]) * SIZE

    @worker.handler(join)
    async def gather(ctx: TaskContext) -> int:
        joined.append(ctx.dependency_outputs)
        return len(ctx.dependency_outputs)

    async with worker:
        handle = await client.submit_workflow(_fan_in(cap, join))
        assert await handle.result(timeout=_BOUND_S) == FAN
    assert worker.stats["connects"] == 1  # the stream never broke
    assert worker.stats["disconnects"] == 0
    [outputs] = joined
    assert outputs == {f"m{i}": chr(ord("a") + i) * SIZE for i in range(FAN)}
    described = await handle.describe()
    assert described.usage.retries == 0


def _worker_stub(sidecar: SidecarProcess) -> tuple[grpc.aio.Channel, wg.WorkerServiceStub]:
    limit = 64 * 1024 * 1024  # the sidecar's default message limit, as the SDKs set theirs
    channel = grpc.aio.insecure_channel(
        sidecar.target,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    return channel, wg.WorkerServiceStub(channel)


async def _poll(stub: wg.WorkerServiceStub, cap: str, max_tasks: int) -> list[w.TaskAssignment]:
    response = await stub.PollTask(
        w.PollTaskRequest(worker_name="fan-poller", capabilities=[cap], max_tasks=max_tasks), timeout=30
    )
    return list(response.assignments)


async def test_a_polled_fan_in_brings_its_large_dependency_outputs_as_blobs(
    sidecar: SidecarProcess, client: Client
) -> None:
    cap, join = f"big-{_suffix()}", f"join-{_suffix()}"
    handle = await client.submit_workflow(_fan_in(cap, join))
    channel, stub = _worker_stub(sidecar)
    async with channel:
        done = 0
        while done < FAN:
            for a in await _poll(stub, cap, FAN):
                data = bytes([ord("a") + done % 26]) * SIZE
                output = common_pb2.Payload(data=data, content_type="application/octet-stream")
                completion = w.TaskCompletion(
                    workflow_id=a.workflow_id, task_id=a.task_id, attempt=a.attempt, output=output
                )
                await stub.CompleteTask(w.CompleteTaskRequest(completion=completion), timeout=30)
                done += 1
        [assignment] = await _poll(stub, join, 1)  # 80 MB inline: the sidecar could not send it
        assert assignment.ByteSize() <= 16 * 1024 * 1024 + 64 * 1024
        by_blob = [d for d in assignment.dependencies if d.output.WhichOneof("content") == "blob"]
        assert len(by_blob) >= FAN - 4  # four 4 MiB outputs at most still fit inline
        tasks = {t.task_id: t for t in await handle.tasks(include_payloads=True)}
        for dep in assignment.dependencies:
            if dep.output.WhichOneof("content") == "blob":
                assert dep.output.blob.size_bytes == SIZE
                assert dep.output.content_type == "application/octet-stream"
                data = await client.state.blobs.get(dep.output.blob.sha256)
            else:
                data = dep.output.data
            assert data == tasks[dep.task_id].output.data
        await client.raw.worker.CompleteTask(
            w.CompleteTaskRequest(
                completion=w.TaskCompletion(
                    workflow_id=assignment.workflow_id, task_id="join", attempt=assignment.attempt
                )
            )
        )
    await handle.wait(timeout=_BOUND_S)


async def test_a_poll_for_many_large_inputs_gets_what_fits_and_the_rest_next(
    sidecar: SidecarProcess, client: Client
) -> None:
    cap = f"in-{_suffix()}"
    for half in range(2):  # a submit is one message too: two of ten 4 MiB inputs
        spec = WorkflowSpec(f"inputs-{half}")
        for i in range(10):
            spec.task(f"t{i}", capability=cap, input="x" * (SIZE - 16))
        await client.submit_workflow(spec)
    channel, stub = _worker_stub(sidecar)
    async with channel:
        first = await _poll(stub, cap, FAN)  # 80 MB asked for: an answer over 64 MiB could not be sent
        assert 0 < len(first) < FAN
        assert sum(a.ByteSize() for a in first) <= 64 * 1024 * 1024
        rest: list[w.TaskAssignment] = []
        async with asyncio.timeout(_BOUND_S):
            while len(first) + len(rest) < FAN:  # the rest were handed back, uncharged, at once
                rest += await _poll(stub, cap, FAN)
        keys = {(a.workflow_id, a.task_id) for a in first + rest}
        assert len(keys) == FAN
        assert all(a.attempt == 1 for a in first)
