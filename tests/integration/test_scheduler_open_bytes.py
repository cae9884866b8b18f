"""The sidecar's bound on the inline payload bytes of open workflows (``--max-open-bytes``), over real gRPC.

Open workflows hold their tasks' inline inputs and outputs in memory, so the
sidecar admits new work only while those bytes leave room: a new workflow
within 90% of the bound, a spawn into a running one within all of it.
Beyond that, RESOURCE_EXHAUSTED with reason RESOURCE_LIMIT, ErrorInfo
metadata naming the limit and the share, and a RetryInfo; room comes back as
workflows close. A workflow whose inline inputs alone exceed the bound is
INVALID_ARGUMENT, LIMIT_EXCEEDED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from are_sdk import Client, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
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

BOUND = 4096  # bytes; new work may take 90% of it, 3,686


@pytest.fixture(scope="module")
def bounded_sidecar() -> Iterator[SidecarProcess]:
    """A sidecar of its own (the bound is sidecar-wide), set through its environment variable."""
    with SidecarProcess.start(env={"ARE_MAX_OPEN_BYTES": str(BOUND)}) as process:
        yield process


@pytest.fixture
async def bounded(bounded_sidecar: SidecarProcess) -> AsyncIterator[Client]:
    async with await Client.connect(bounded_sidecar.target) as connected:
        yield connected


def _padded(n: int) -> c.Payload:
    return c.Payload(data=b"x" * n, content_type="application/octet-stream")


async def test_inline_bytes_over_the_bound_are_resource_exhausted_until_a_workflow_completes(
    bounded: Client,
) -> None:
    cap = unique_capability("bytes")
    first = await submit(
        bounded, task("a", cap, input=_padded(1500)), task("b", cap, "a"), workflow_id="first"
    )
    filler = await submit(
        bounded, task("a", cap, input=_padded(1500)), task("b", cap, "a"), workflow_id="filler"
    )
    held = 2 * (1500 + len(b'{"id": "b"}'))

    refused = await expect_error(
        submit(bounded, task("x", cap, input=_padded(700)), workflow_id="second"),
        ResourceExhaustedError,
        "RESOURCE_LIMIT",
    )
    assert isinstance(refused, ResourceExhaustedError)
    assert refused.metadata == {
        "limit": "max_open_bytes",
        "max_open_bytes": str(BOUND),
        "open_bytes": str(held),
        "incoming_bytes": "700",
        "share": "new_work",
        "share_limit": str(BOUND * 9 // 10),
    }, refused
    assert refused.retry_after is not None and refused.retry_after.total_seconds() > 0, refused
    await expect_error(  # nothing was stored
        bounded.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id="second")),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    # The running workflow spawns into the room new work may not take (past 3,686, within 4,096).
    await bounded.raw.scheduler.SpawnTasks(
        s.SpawnTasksRequest(workflow_id=first, tasks=[task("s0", cap, input=_padded(700))])
    )
    spawned = await expect_error(
        bounded.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(workflow_id=first, tasks=[task("s1", cap, input=_padded(400))])
        ),
        ResourceExhaustedError,
        "RESOURCE_LIMIT",
    )
    assert isinstance(spawned, ResourceExhaustedError)
    assert (spawned.metadata["limit"], spawned.metadata["share"]) == ("max_open_bytes", "all"), spawned
    # Inputs that could never fit are invalid input, not a reason to retry.
    await expect_error(
        submit(bounded, task("h0", cap, input=_padded(3000)), task("h1", cap, input=_padded(1500))),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "spec.tasks",
    )

    async with StreamWorker(bounded, echo, capabilities=[cap]):
        for workflow_id in (first, filler):
            assert (await wait_closed(bounded, workflow_id)).state == wf.WORKFLOW_STATE_COMPLETED
        second = await submit(bounded, task("x", cap, input=_padded(700)), workflow_id="second")
        assert (await wait_closed(bounded, second)).state == wf.WORKFLOW_STATE_COMPLETED
