"""SIGKILL the sidecar mid-patch: every acknowledged state version, note and blob survives."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from are_sdk import Client, MemoryNote, RpcError
from are_sdk._proto.are.v1 import scheduler_service_pb2, task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess

WORKFLOWS = 4
PATCHES_BEFORE_KILL = 40


async def _submit(client: Client, wid: str) -> None:
    """State belongs to a workflow the scheduler knows; its version 1 is the initial `{}`."""
    spec = workflow_pb2.WorkflowSpec(
        workflow_id=wid, tasks=[task_pb2.TaskSpec(task_id="hold", capability="nobody")]
    )
    await client.raw.scheduler.SubmitWorkflow(scheduler_service_pb2.SubmitWorkflowRequest(spec=spec))


async def _writer(client: Client, wid: str, acked: dict[str, int], stop: asyncio.Event) -> None:
    """Patch one workflow in a loop, recording each acknowledged version."""
    for n in range(2, 10_000):  # bounded; the kill ends it far sooner
        if stop.is_set():
            return
        try:
            version = await client.state.patch(wid, {"n": n, f"k{n % 7}": n}, expected_version=n - 1)
        except (RpcError, OSError):
            return
        assert version == n
        acked[wid] = n


async def test_acknowledged_versions_notes_and_blobs_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = SidecarProcess.start(data_dir=data)
    acked: dict[str, int] = {}
    wids = [f"crash-{i}" for i in range(WORKFLOWS)]
    blob = os.urandom(1024 * 1024 + 17)
    try:
        async with await Client.connect(process.target) as client:
            for wid in [*wids, "crash-mem"]:
                await _submit(client, wid)
            memory = client.state.for_workflow("crash-mem").memory
            await memory.add([MemoryNote(text=f"note {i}", vector=[1.0, float(i)]) for i in range(50)])
            ref = await client.state.blobs.put(blob, workflow_id="crash-0")
            stop = asyncio.Event()
            writers = [asyncio.create_task(_writer(client, wid, acked, stop)) for wid in wids]
            for _ in range(3000):  # bounded wait for enough acknowledged patches
                if sum(acked.values()) >= PATCHES_BEFORE_KILL:
                    break
                await asyncio.sleep(0.01)
            process.kill()  # writes are in flight: no shutdown, no index save
            stop.set()
            await asyncio.wait_for(asyncio.gather(*writers, return_exceptions=True), 30)
    finally:
        process.kill()
        process.cleanup()
    assert sum(acked.values()) >= PATCHES_BEFORE_KILL

    restarted = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(restarted.target) as client:
            for wid in wids:
                if wid not in acked:
                    continue
                snapshot = await client.state.get(wid, ["/n"])
                # The last acknowledged version is there (one more may have
                # committed without its acknowledgement reaching us).
                assert snapshot.version in (acked[wid], acked[wid] + 1)
                assert snapshot.values["/n"] == snapshot.version
                at_ack = await client.state.get(wid, ["/n", f"/k{acked[wid] % 7}"], version=acked[wid])
                assert at_ack.values == {"/n": acked[wid], f"/k{acked[wid] % 7}": acked[wid]}
            hits = await client.state.memory.hydrate("crash-mem", [1.0, 49.0], top_k=1)
            assert hits.texts == ["note 49"]  # the index was rebuilt from LMDB
            assert await client.state.blobs.get(ref) == blob
            assert ref.sha256 == hashlib.sha256(blob).hexdigest()
    finally:
        restarted.cleanup()
