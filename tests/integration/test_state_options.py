"""State under sidecar options: retention bounds, the message size bound."""

from __future__ import annotations

import grpc
import pytest

from are_sdk import Client, InvalidArgumentError, NotFoundError
from are_sdk._proto.are.v1 import scheduler_service_pb2, task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess


async def test_keep_versions_option_prunes_old_versions() -> None:
    with SidecarProcess.start(
        args=["--state-keep-versions", "3", "--state-keep-age-s", "0.001", "--max-message-bytes", "33554432"]
    ) as sidecar:
        async with await Client.connect(sidecar.target) as client:
            # State belongs to a workflow the scheduler knows; its version 1 is the initial state.
            spec = workflow_pb2.WorkflowSpec(
                workflow_id="retained",
                tasks=[task_pb2.TaskSpec(task_id="hold", capability="nobody")],
                initial_state={"data": b'{"first": true, "n": 0}'},
            )
            await client.raw.scheduler.SubmitWorkflow(scheduler_service_pb2.SubmitWorkflowRequest(spec=spec))
            state = client.state.for_workflow("retained")
            for n in range(1, 10):
                await state.patch({"n": n})
            assert [c.version async for c in state.checkpoints()] == [10, 9, 8]
            with pytest.raises(NotFoundError) as caught:
                await state.read("/n", version=2)
            assert caught.value.reason == "STATE_VERSION_NOT_FOUND"
            assert caught.value.code == grpc.StatusCode.NOT_FOUND
            assert caught.value.metadata["oldest_version"] == "8"
            snapshot = await state.read("/first", "/n", version=8)
            assert snapshot.values == {"/first": True, "/n": 7}
            # A read whose values would not fit in one response message is refused.
            for i in range(4):  # 14 MB: under the 16 MiB document bound, each patch under 4 MiB
                await state.patch({f"blob{i}": "x" * 3_500_000})
            assert len(await state.get("/blob0")) == 3_500_000
            with pytest.raises(InvalidArgumentError) as refused:  # 42 MB of values: over 32 MiB
                await state.read(*[f"/blob{i}" for i in range(4)] * 3)
            assert refused.value.reason == "LIMIT_EXCEEDED"
            assert refused.value.metadata.get("limit", "").isdigit()
            assert [v.field for v in refused.value.field_violations] == ["paths"]
