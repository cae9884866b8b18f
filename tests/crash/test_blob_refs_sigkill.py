"""SIGKILL right after a submit naming blobs: its references survive with it, and keep the blobs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from are_sdk import Client
from are_sdk._proto.are.v1 import common_pb2, task_pb2, workflow_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk.testing import SidecarProcess

_WAIT_S = 60.0


def _blob(sha256: str) -> common_pb2.Payload:
    return common_pb2.Payload(blob=common_pb2.BlobRef(sha256=sha256))


async def _submit(client: Client, wid: str, *inputs: str) -> None:
    tasks = [task_pb2.TaskSpec(task_id="hold", capability="nobody")]
    tasks += [
        task_pb2.TaskSpec(
            task_id=f"t{i}",
            capability="nobody",
            input=common_pb2.Payload(blob=common_pb2.BlobRef(sha256=sha)),
        )
        for i, sha in enumerate(inputs)
    ]
    spec = workflow_pb2.WorkflowSpec(workflow_id=wid, tasks=tasks)
    await client.raw.scheduler.SubmitWorkflow(s.SubmitWorkflowRequest(spec=spec))


async def test_references_committed_with_a_submit_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    owned_bytes, unowned_bytes = os.urandom(70_000), os.urandom(80_000)
    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            await _submit(client, "uploader")
            owned = await client.state.blobs.put(owned_bytes, workflow_id="uploader")
            unowned = await client.state.blobs.put(unowned_bytes)
            await _submit(client, "user", owned.sha256, unowned.sha256)
            process.kill()  # at once: nothing after the submit's own commit happens
    finally:
        process.kill()
        process.cleanup()

    restarted = SidecarProcess.start(data_dir=data, args=["--blob-unreferenced-ttl-s", "1"])
    try:
        async with await Client.connect(restarted.target) as client:
            scheduler = client.raw.scheduler
            await scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id="uploader"))
            async with asyncio.timeout(_WAIT_S):
                async for _ in scheduler.WatchWorkflow(s.WatchWorkflowRequest(workflow_id="uploader")):
                    pass
            await scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id="uploader"))
            # "user" still references the uploader's blob: deleting its owner keeps it.
            assert await client.state.blobs.get(owned) == owned_bytes

            # Uploaded after both: once the sweep has taken it, it has looked at them too.
            marker = await client.state.blobs.put(os.urandom(1000), check_first=False)
            async with asyncio.timeout(_WAIT_S):
                while await client.state.blobs.check([marker.sha256]):
                    await asyncio.sleep(0.1)
            assert await client.state.blobs.get(unowned) == unowned_bytes
            assert await client.state.blobs.get(owned) == owned_bytes
    finally:
        restarted.cleanup()
