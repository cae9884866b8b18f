"""The Python SDK's client facade against a real sidecar: defects a review of it reproduced.

Each test failed on the SDK before its fix; the sidecar was right throughout.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from are_sdk import (
    AgentCard,
    Client,
    ClientClosedError,
    ResourceExhaustedError,
    StateRetention,
    SyncClient,
    TaskContext,
    TaskSpec,
    Worker,
    WorkflowSpec,
    WorkflowSpecError,
)
from are_sdk import _state as sdk_state
from are_sdk._proto.are.v1 import scheduler_service_pb2
from are_sdk.testing import SidecarProcess


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


async def test_a_spawned_task_may_depend_on_a_task_the_workflow_has(client: Client) -> None:
    """scheduler_service.proto: "New tasks may depend on existing tasks"; the SDK refused it
    client-side ("unknown dependency 'a'"), from a handle and from a worker's TaskContext."""
    handle = await client.submit_workflow(WorkflowSpec("spawn").task("a", capability=f"nobody-{_suffix()}"))
    try:
        spawned = await handle.spawn(TaskSpec("b", capability=f"nobody-{_suffix()}", depends_on=("a",)))
        assert spawned == ["b"]
        tasks = {task.task_id: task for task in await handle.tasks()}
        assert tasks["b"].depends_on == ("a",)
    finally:
        await handle.cancel()


async def test_wait_raises_when_the_closed_status_is_over_the_clients_message_limit(
    client: Client, sidecar: SidecarProcess
) -> None:
    """Such a status made wait() retry as if the sidecar's subscribers were all taken: it ended
    only at its timeout, claiming the workflow "did not close" (and never, with none)."""
    capability = f"big-{_suffix()}"

    async def big(_: TaskContext) -> str:
        return "x" * (2 << 20)

    worker = Worker(client, name=f"big-{_suffix()}")
    worker.register(capability, big)
    async with worker:
        handle = await client.submit_workflow(WorkflowSpec("big").task("a", capability=capability))
        await handle.wait(timeout=30)
    async with await Client.connect(sidecar.target, max_message_bytes=1 << 20) as small:
        with pytest.raises(ResourceExhaustedError):
            await small.workflows.get_handle(handle.workflow_id).wait(timeout=30)


async def test_blob_uploads_raise_client_closed_and_the_readers_own_error(
    client: Client, sidecar: SidecarProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put after close raised grpc's UsageError; a file gone while put_file read it raised a
    bare CancelledError (its FileNotFoundError lost), which a task group takes for a cancellation."""
    path = tmp_path / "gone.bin"
    path.write_bytes(b"y" * 100)
    hash_file = sdk_state._hash_file

    def hash_then_remove(p: Path) -> tuple[str, int]:
        digest = hash_file(p)
        p.unlink()
        return digest

    monkeypatch.setattr(sdk_state, "_hash_file", hash_then_remove)
    with pytest.raises(FileNotFoundError):
        await client.state.blobs.put_file(path, workflow_id="")
    closed = await Client.connect(sidecar.target)
    await closed.close()
    with pytest.raises(ClientClosedError):
        await closed.state.blobs.put(b"after close", workflow_id="wf-none")


def test_the_blocking_clients_raw_layer_blocks(sidecar: SidecarProcess) -> None:
    """SyncClient.raw.scheduler.GetWorkflow(...) returned a coroutine of the client's private loop."""
    with SyncClient.connect(sidecar.target) as client:
        handle = client.submit_workflow(WorkflowSpec("raw").task("a", capability=f"nobody-{_suffix()}"))
        try:
            got = client.raw.scheduler.GetWorkflow(
                scheduler_service_pb2.GetWorkflowRequest(workflow_id=handle.workflow_id)
            )
            assert got.workflow.workflow_id == handle.workflow_id
        finally:
            handle.cancel()


async def test_listing_at_most_zero_workflows_lists_none(client: Client) -> None:
    handle = await client.submit_workflow(WorkflowSpec("zero").task("a", capability=f"nobody-{_suffix()}"))
    try:
        assert [w async for w in client.workflows.list(limit=0)] == []
        assert len([w async for w in client.workflows.list(limit=1)]) == 1
    finally:
        await handle.cancel()


async def test_router_timestamps_are_aware_as_every_other_timestamp_of_the_sdk(client: Client) -> None:
    card, _ = await client.router.register_agent(
        AgentCard(agent_id=f"tz-{_suffix()}", description="time zones", capabilities=["tz"])
    )
    try:
        assert card.create_time is not None and card.create_time.tzinfo is not None
        assert abs(card.create_time - datetime.now(UTC)) < timedelta(hours=1)
    finally:
        await client.router.deregister_agent(card.agent_id)


@pytest.fixture
def tokyo() -> Iterator[None]:
    """The process's local time zone is Asia/Tokyo (UTC+9) for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.usefixtures("tokyo")
async def test_a_naive_datetime_filter_is_local_time(client: Client) -> None:
    """protobuf reads a naive datetime as UTC: outside UTC, "created in the last minute" found nothing."""
    label = _suffix()
    handle = await client.submit_workflow(
        WorkflowSpec("naive", labels={"t": label}).task("a", capability=f"nobody-{label}")
    )
    try:
        since = datetime.now() - timedelta(minutes=1)  # noqa: DTZ005 - naive on purpose
        found = [w.workflow_id async for w in client.workflows.list(labels={"t": label}, start_time=since)]
        assert found == [handle.workflow_id]
        events = [
            e async for e in client.trace.iter_events(workflow_ids=[handle.workflow_id], start_time=since)
        ]
        assert events
    finally:
        await handle.cancel()


async def test_a_workflow_spec_carries_its_state_retention(client: Client) -> None:
    """workflow.proto's state_retention had no way in from the builder (nor tracestate, still)."""
    spec = WorkflowSpec(
        "retained",
        initial_state={"n": 0},
        state_retention=StateRetention(keep_versions=2, keep_duration=1e-6),
    ).task("a", capability=f"nobody-{_suffix()}")
    handle = await client.submit_workflow(spec)
    try:
        for n in range(1, 5):
            await client.state.patch(handle.workflow_id, merge={"n": n})
        versions = [cp.version async for cp in client.state.checkpoints(handle.workflow_id)]
        assert versions == [5, 4]  # keep_versions=2, not the default 1,000
    finally:
        await handle.cancel()
    with pytest.raises(WorkflowSpecError) as caught:
        WorkflowSpec("bad", state_retention=StateRetention(keep_duration=float("inf"))).task(
            "a", capability="c"
        ).to_proto()
    assert [v.field for v in caught.value.field_violations] == ["spec.state_retention.keep_duration"]
