"""The sidecar's bound on the tasks of open workflows (``--max-open-tasks``), over real gRPC.

Open workflows keep all their tasks in memory, so the sidecar admits new
tasks only while the open ones leave room: a new workflow (SubmitWorkflow,
ForkWorkflow) within 90% of the bound, a spawn into a running one
(SpawnTasks) within all of it. Beyond that, RESOURCE_EXHAUSTED with reason
RESOURCE_LIMIT, ErrorInfo metadata naming the limit and the share, and a
RetryInfo; room comes back as workflows close. A data folder holding more
than the bound (it was lowered) still starts and serves what it holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from are_sdk import Client, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_service_pb2 as ss
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from are_sdk.testing import SidecarProcess
from tests.integration.test_scheduler import (
    StreamWorker,
    echo,
    expect_error,
    submit,
    task,
    unique_capability,
    wait_closed,
)

pytestmark = pytest.mark.timeout(120)

BOUND = 5


@pytest.fixture(scope="module")
def bounded_sidecar() -> Iterator[SidecarProcess]:
    """A sidecar of its own (the bound is sidecar-wide), with room for 5 open tasks."""
    with SidecarProcess.start(args=["--max-open-tasks", str(BOUND)]) as process:
        yield process


@pytest.fixture
async def bounded(bounded_sidecar: SidecarProcess) -> AsyncIterator[Client]:
    async with await Client.connect(bounded_sidecar.target) as connected:
        yield connected


def _check_limit(error: ResourceExhaustedError, *, open_tasks: int, incoming: int, new_work: bool) -> None:
    assert error.metadata == {
        "limit": "max_open_tasks",
        "max_open_tasks": str(BOUND),
        "open_tasks": str(open_tasks),
        "incoming_tasks": str(incoming),
        "share": "new_work" if new_work else "all",
        "share_limit": str(BOUND * 9 // 10 if new_work else BOUND),
    }, error
    assert error.retry_after is not None and error.retry_after.total_seconds() > 0, error


async def test_work_over_the_bound_is_resource_exhausted_until_a_workflow_completes(bounded: Client) -> None:
    cap = unique_capability("bound")
    state = c.Payload(data=b'{"stage": 0}', content_type="application/json")
    chain = (task("a", cap), task("b", cap, "a"), task("c", cap, "b"))
    first = await submit(bounded, *chain, workflow_id="first", initial_state=state)
    filler = await submit(bounded, task("a", cap), workflow_id="filler")  # 4: new work's share of 5

    refused = await expect_error(
        submit(bounded, task("x", cap), task("y", cap), workflow_id="second"),
        ResourceExhaustedError,
        "RESOURCE_LIMIT",
    )
    assert isinstance(refused, ResourceExhaustedError)
    _check_limit(refused, open_tasks=4, incoming=2, new_work=True)
    await expect_error(  # nothing was stored
        bounded.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id="second")),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    # The running workflow spawns into the last task of room, which new work may not take.
    await bounded.raw.scheduler.SpawnTasks(s.SpawnTasksRequest(workflow_id=first, tasks=[task("s0", cap)]))
    spawned = await expect_error(
        bounded.raw.scheduler.SpawnTasks(s.SpawnTasksRequest(workflow_id=first, tasks=[task("s1", cap)])),
        ResourceExhaustedError,
        "RESOURCE_LIMIT",
    )
    assert isinstance(spawned, ResourceExhaustedError)
    _check_limit(spawned, open_tasks=5, incoming=1, new_work=False)
    listed = await bounded.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=first))
    assert [t.task_id for t in listed.tasks] == ["a", "b", "c", "s0"]
    # A fork is refused too, as state_service.proto says, copying nothing.
    forked = await expect_error(
        bounded.raw.state.ForkWorkflow(ss.ForkWorkflowRequest(workflow_id=first, new_workflow_id="forked")),
        ResourceExhaustedError,
        "RESOURCE_LIMIT",
    )
    assert isinstance(forked, ResourceExhaustedError)
    _check_limit(forked, open_tasks=5, incoming=4, new_work=True)
    await expect_error(
        bounded.raw.state.GetState(ss.GetStateRequest(workflow_id="forked")),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    # A workflow that could never fit is invalid input, not a reason to retry.
    await expect_error(
        submit(bounded, *(task(f"t{i}", cap) for i in range(BOUND + 1)), workflow_id="huge"),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "spec.tasks",
    )

    async with StreamWorker(bounded, echo, capabilities=[cap]):
        for workflow_id in (first, filler):
            assert (await wait_closed(bounded, workflow_id)).state == wf.WORKFLOW_STATE_COMPLETED
        second = await submit(bounded, task("x", cap), task("y", cap), workflow_id="second")
        assert (await wait_closed(bounded, second)).state == wf.WORKFLOW_STATE_COMPLETED


async def test_a_data_folder_over_a_lowered_bound_starts_serves_and_refuses_new_work(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cap = unique_capability("lowered")
    with SidecarProcess.start(data_dir=data, args=["--max-open-tasks", "100"]) as roomy:
        async with await Client.connect(roomy.target) as client:
            for i in range(3):
                await submit(client, task("a", cap), task("b", cap, "a"), workflow_id=f"held-{i}")
        assert roomy.stop() == 0

    with SidecarProcess.start(data_dir=data, args=["--max-open-tasks", "3"]) as lowered:
        assert "more tasks than max_open_tasks" in lowered.log_text()
        async with await Client.connect(lowered.target) as client:
            for i in range(3):  # all loaded and served
                got = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=f"held-{i}"))
                assert got.workflow.state == wf.WORKFLOW_STATE_RUNNING
            refused = await expect_error(
                submit(client, task("n", cap), workflow_id="new"), ResourceExhaustedError, "RESOURCE_LIMIT"
            )
            assert refused.metadata["open_tasks"] == "6"
            async with StreamWorker(client, echo, capabilities=[cap]):
                assert (await wait_closed(client, "held-0")).state == wf.WORKFLOW_STATE_COMPLETED
                await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id="held-1"))
                await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id="held-2"))
                new = await submit(client, task("n", cap), workflow_id="new")
                assert (await wait_closed(client, new)).state == wf.WORKFLOW_STATE_COMPLETED
