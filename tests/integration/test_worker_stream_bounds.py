"""The worker stream's bounds, over a real sidecar: the acks it owes, and the results of a half-close.

A worker that never reads its stream must not grow the sidecar's memory:
the sidecar stops reading from it instead (gRPC's flow control then holds
the worker's writes), and carries on once the worker reads. A worker that
half-closes (worker_service.proto, WorkerDrain) has the results it sent
recorded, those with a state patch too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc

from are_sdk import Client
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import errors_pb2, state_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_service_pb2 as ss
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import worker_service_pb2_grpc as rpc
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from are_sdk.testing import SidecarProcess
from tests.integration.test_scheduler import submit, task, unique_capability, wait_closed

_HEARTBEATS = 10_000  # a full heartbeat batch: each invalid item earns a refusal ack
_BATCHES = 150  # 24 MB sent, 1.5 million refusals owed: about 300 MiB of acks if nothing holds the reader
_RSS_GROWTH_BOUND_KIB = 64 * 1024  # the acks owed (20,000, 8 MiB) and one batch, with transport buffers
_WRITE_WAIT_S = 5.0  # a write not done by then is held by flow control: the sidecar stopped reading


def _status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``-like field of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def _register(call: grpc.aio.StreamStreamCall, capability: str, concurrency: int) -> None:
    await call.write(
        w.ConnectRequest(
            register=w.WorkerRegistration(
                worker_name="bounds", capabilities=[capability], max_concurrency=concurrency
            )
        )
    )
    first = await asyncio.wait_for(call.read(), 10)
    assert first.HasField("registered")


async def test_a_worker_that_never_reads_is_not_read_either_and_gets_every_ack_once_it_reads() -> None:
    """Batches of invalid heartbeats sent without reading: the sidecar's memory stays bounded
    (it stops reading: a write stays pending), and once the worker reads, the pending write
    goes through and every item of every batch sent gets its refusal, none lost."""
    with SidecarProcess.start(args=["--durability", "relaxed"]) as process:
        async with grpc.aio.insecure_channel(process.target) as channel:
            call = rpc.WorkerServiceStub(channel).Connect()
            await _register(call, unique_capability("never-reads"), 1)
            bad = w.TaskHeartbeat(workflow_id="bad id!", task_id="t", attempt=1)
            batch = w.ConnectRequest(heartbeat=w.HeartbeatBatch(heartbeats=[bad] * _HEARTBEATS))
            rss_before = _status_kib(process.pid, "VmRSS")
            written = 0
            pending: asyncio.Future[None] | None = None
            for _ in range(_BATCHES):
                write = asyncio.ensure_future(call.write(batch))
                done, _ = await asyncio.wait({write}, timeout=_WRITE_WAIT_S)
                if not done:
                    pending = write  # the sidecar holds the stream's writes: it stopped reading
                    break
                write.result()
                written += 1
            growth = _status_kib(process.pid, "VmHWM") - rss_before
            assert growth < _RSS_GROWTH_BOUND_KIB, (
                f"the sidecar grew {growth // 1024} MiB after {written} unread batches of refusals"
            )
            assert pending is not None, f"all {written} batches were read: the reader never waited"

            # The worker reads now: the sidecar reads again, and owes every refusal.
            sent = written + 1
            refusals = 0
            async with asyncio.timeout(120):
                while refusals < sent * _HEARTBEATS:
                    message = await call.read()
                    assert message is not grpc.aio.EOF
                    assert message.WhichOneof("message") == "acks"
                    for ack in message.acks.acks:
                        assert (ack.subject, ack.accepted) == (w.ACK_SUBJECT_HEARTBEAT, False)
                        assert ack.reason == errors_pb2.ERROR_REASON_INVALID_ARGUMENT
                    refusals += len(message.acks.acks)
                await pending
                await call.done_writing()
                assert await call.read() is grpc.aio.EOF
            assert refusals == sent * _HEARTBEATS
            assert await call.code() == grpc.StatusCode.OK


async def test_completions_with_state_patches_sent_before_a_half_close_are_all_recorded(
    client: Client,
) -> None:
    """One CompletionBatch with a merge patch on each of 4 held attempts, a WorkerDrain, then the
    half-close: each completion is recorded (COMPLETED at attempt 1, its patch in the state
    document), none lost to the worker's disconnection while it waited for the patch lock."""
    n = 4
    capability = unique_capability("half-close")
    workflow_id = await submit(client, *(task(f"t{i}", capability) for i in range(n)))
    call = client.raw.worker.Connect()
    await _register(call, capability, n)
    held: list[w.TaskAssignment] = []
    async with asyncio.timeout(20):
        while len(held) < n:
            message = await call.read()
            assert message is not grpc.aio.EOF
            held += message.assignments.assignments
    completions = [
        w.TaskCompletion(
            workflow_id=a.workflow_id,
            task_id=a.task_id,
            attempt=a.attempt,
            output=c.Payload(data=b"1", content_type="application/json"),
            state_patch=state_pb2.StatePatch(merge_patch_json=json.dumps({a.task_id: 1}).encode()),
        )
        for a in held
    ]
    await call.write(w.ConnectRequest(complete=w.CompletionBatch(completions=completions)))
    await call.write(w.ConnectRequest(drain=w.WorkerDrain(reason="leaving")))
    await call.done_writing()
    refused: list[str] = []
    async with asyncio.timeout(30):
        while (message := await call.read()) is not grpc.aio.EOF:
            refused += [f"{a.task_id}: {a.message}" for a in message.acks.acks if not a.accepted]
    assert refused == []

    # Recorded when the stream ends (a task lost with the worker would wait for another one).
    tasks = (await client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=workflow_id))).tasks
    outcomes = {x.task_id: (t.TaskState.Name(x.state), x.attempt, x.failure.message) for x in tasks}
    assert outcomes == {f"t{i}": ("TASK_STATE_COMPLETED", 1, "") for i in range(n)}
    assert (await wait_closed(client, workflow_id)).state == wf.WORKFLOW_STATE_COMPLETED
    state = await client.raw.state.GetState(ss.GetStateRequest(workflow_id=workflow_id))
    assert json.loads(state.values[0].value_json) == {f"t{i}": 1 for i in range(n)}
