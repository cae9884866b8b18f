"""The hooks the scheduler installs on or calls on the state capability (no sidecar process)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from are_core.state import NoteInput, TaskNotHeldError, WorkflowNotFoundError
from are_core.storage import GroupCommitter, Storage
from are_sdk import Client, FailedPreconditionError, MemoryNote, NotFoundError
from sidecar._capability import Runtime
from sidecar._config import load_config
from sidecar._state import ForkPlan, StateCapability


@pytest.fixture
async def capability(tmp_path: Path) -> AsyncIterator[StateCapability]:
    config = load_config({"data_dir": str(tmp_path / "data"), "memory_embedder": "off"}, environ={})
    storage = Storage.open(config.data_dir, tables=StateCapability.tables)
    committer = GroupCommitter(storage)
    runtime = Runtime(config=config, storage=storage, committer=committer)
    state = StateCapability(runtime)
    await state.start()
    try:
        yield state
    finally:
        await state.stop()
        await committer.aclose()
        storage.close()


async def test_delete_workflow_state_removes_state_memory_and_unshared_blobs(
    capability: StateCapability,
) -> None:
    storage = capability.runtime.storage
    await capability.engine.patch("done", merge_patch=b'{"a": 1}')
    await capability.engine.patch("done", merge_patch=b'{"a": 2}')
    await capability.memory.add("done", [NoteInput(text="n", vector=[1.0, 0.0])])
    own, _ = await capability.blobs.put(b"only mine", workflow_id="done")
    shared, _ = await capability.blobs.put(b"shared", workflow_id="done")
    await capability.blobs.put(b"shared", workflow_id="other")

    assert await capability.delete_workflow_state("done") > len(b"only mine")

    with pytest.raises(WorkflowNotFoundError):
        capability.engine.get("done")
    for table in ("state_heads", "state_members", "state_versions", "memory_notes", "memory_spaces"):
        assert storage.count(table) == 0, table
    assert capability.blobs.stat(bytes.fromhex(own.sha256)) is None
    assert capability.blobs.stat(bytes.fromhex(shared.sha256)) is not None


async def test_the_memory_embedder_can_be_switched_off(capability: StateCapability) -> None:
    assert capability.memory.embedder is None


async def test_the_scheduler_gate_and_fork_hook_are_honoured(capability: StateCapability) -> None:
    calls: list[tuple[object, ...]] = []

    def gate(operation: str, workflow_id: str, task_id: str, attempt: int) -> None:
        calls.append((operation, workflow_id, task_id, attempt))
        if workflow_id == "ghost":
            raise WorkflowNotFoundError(f"no workflow {workflow_id!r}", field="workflow_id")
        if task_id == "stale":
            raise TaskNotHeldError("task 'stale' attempt 1 is not held")

    async def fork_hook(plan: ForkPlan) -> None:
        calls.append(("fork", plan))

    capability.gate = gate
    capability.fork_hook = fork_hook
    server = grpc.aio.server()
    capability.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with await Client.connect(f"127.0.0.1:{port}") as client:
            assert await client.state.patch("live", {"a": 1}, task_id="t1", attempt=2) == 1
            with pytest.raises(FailedPreconditionError) as held:
                await client.state.patch("live", {"a": 2}, task_id="stale", attempt=1)
            assert held.value.reason == "TASK_NOT_HELD"
            with pytest.raises(NotFoundError) as missing:
                await client.state.memory.add("ghost", [MemoryNote(text="x", vector=[1.0])])
            assert missing.value.reason == "WORKFLOW_NOT_FOUND"
            fork = await client.state.fork("live", new_workflow_id="live-2", rerun_task_ids=["t1"])
            assert fork.source_version == 1
    finally:
        await server.stop(grace=None)
    assert calls[:3] == [
        ("patch", "live", "t1", 2),
        ("patch", "live", "stale", 1),
        ("memory", "ghost", "", 0),
    ]
    kind, plan = calls[3]
    assert kind == "fork"
    assert isinstance(plan, ForkPlan)
    assert plan.source_time_ns > 0  # when version 1 was written: task outcomes after it are not kept
    assert dataclasses.replace(plan, source_time_ns=0) == ForkPlan("live", "live-2", 1, 0, ("t1",), {})
    assert (await client_free_read(capability, "live")) == 1


async def client_free_read(capability: StateCapability, workflow_id: str) -> int:
    """The latest version, read from the engine directly (nothing changed on refusal)."""
    return capability.engine.get(workflow_id, ["/a"]).version
