"""A scheduler commit that fails stops the sidecar at once; the restart finds every acknowledged workflow.

The fault is real: the sidecar's file-size limit (RLIMIT_FSIZE, set on the
running process) stops LMDB from growing its file, so a commit fails with
EFBIG (Python ignores SIGXFSZ). The scheduler has no rollback, so it must
not carry on with memory ahead of LMDB.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from pathlib import Path

import pytest

from are_sdk import Client, RpcError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from are_sdk.testing import SidecarProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit on another process")

_EXIT_COMMIT_FAILED = 70


def _spec(i: int) -> wf.WorkflowSpec:
    payload = c.Payload(data=b"x" * (256 * 1024), content_type="application/octet-stream")
    return wf.WorkflowSpec(
        tasks=[t.TaskSpec(task_id=f"t{i}", capability="nobody-serves-this", input=payload)]
    )


async def test_a_failed_commit_stops_the_sidecar_and_a_restart_finds_every_acknowledged_workflow(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    process = SidecarProcess.start(data_dir=data)
    acknowledged: list[str] = []
    try:
        # Room for a few dozen workflows, then the file cannot grow.
        limit = (data / "lmdb" / "data.mdb").stat().st_size + 8 * 1024 * 1024
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
        async with await Client.connect(process.target) as client:
            for i in range(400):  # 100 MiB at most; the file may not grow at all
                try:
                    response = await client.raw.scheduler.SubmitWorkflow(
                        s.SubmitWorkflowRequest(spec=_spec(i)), timeout=10
                    )
                except RpcError:
                    break
                acknowledged.append(response.workflow_id)
        deadline = time.monotonic() + 20
        while process.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert process.returncode == _EXIT_COMMIT_FAILED, process.log_text()[-2000:]
        assert "a scheduler commit failed" in process.log_text()
        assert acknowledged  # some were committed before the limit was reached
    finally:
        process.kill()
        process.cleanup()

    restarted = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(restarted.target) as client:
            for workflow_id in acknowledged:
                status = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))
                assert status.workflow.state == wf.WORKFLOW_STATE_RUNNING
            # And it takes work again.
            response = await client.raw.scheduler.SubmitWorkflow(s.SubmitWorkflowRequest(spec=_spec(999)))
            assert response.workflow_id
    finally:
        restarted.kill()
        restarted.cleanup()
