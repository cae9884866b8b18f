"""ForkWorkflow is all or nothing: a fork refused half-way, or cut short by a crash, leaves nothing.

Found by ``tests/crash/test_state_model_sigkill.py``: a SIGKILL after the
fork's document committed and before the scheduler's commit left a state
document (and notes) for a workflow the scheduler never created. Its id
could not be forked to nor submitted again, and DeleteWorkflow did not
know it. The same happened without a crash when the scheduler's hook
refused the fork after the document was copied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from are_core.state import NoteContent, NoteInput, WorkflowNotFoundError
from are_core.storage import GroupCommitter, Storage
from are_sdk import Client, NotFoundError
from sidecar._capability import Runtime
from sidecar._config import load_config
from sidecar._state import FORK_REQUESTS_TABLE, FORKS_PENDING_TABLE, ForkHook, ForkPlan, StateCapability

_WAIT_S = 10.0


@asynccontextmanager
async def _sidecar(
    data: Path, *, known: Callable[[str], bool], hook: ForkHook
) -> AsyncIterator[tuple[StateCapability, Client]]:
    """The state capability on a real gRPC server, with a scheduler stand-in (``known`` workflows)."""
    config = load_config({"data_dir": str(data), "memory_embedder": "off"}, environ={})
    storage = Storage.open(config.data_dir, tables=StateCapability.tables)
    committer = GroupCommitter(storage)
    state = StateCapability(Runtime(config=config, storage=storage, committer=committer))

    def gate(operation: str, workflow_id: str, task_id: str, attempt: int) -> None:
        if not known(workflow_id):
            raise WorkflowNotFoundError(f"workflow {workflow_id!r} does not exist", field="workflow_id")

    state.gate = gate
    state.fork_hook = hook
    state.fork_check = lambda source, target, rerun: None
    await state.start()
    server = grpc.aio.server()
    state.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with await Client.connect(f"127.0.0.1:{port}") as client:
            yield state, client
    finally:
        await server.stop(grace=None)
        await state.stop()
        await committer.aclose()
        storage.close()


def _left(state: StateCapability, workflow_id: str) -> dict[str, int]:
    """Rows of the workflow in every table a fork writes (all 0: nothing is left)."""
    storage = state.runtime.storage
    prefix = workflow_id.encode() + b"\x00"
    return {
        "state_heads": int(storage.get("state_heads", workflow_id.encode()) is not None),
        "state_versions": len(storage.scan("state_versions", prefix=prefix)),
        "state_members": len(storage.scan("state_members", prefix=prefix)),
        "memory_spaces": int(storage.get("memory_spaces", workflow_id.encode()) is not None),
        "memory_notes": len(storage.scan("memory_notes", prefix=prefix)),
        "blob_refs": len(storage.scan("blob_refs", prefix=b"wf:" + prefix)),
        "pending": storage.count(FORKS_PENDING_TABLE),
    }


async def _source(state: StateCapability) -> str:
    digest = (await state.blobs.put(b"context", workflow_id="src"))[0].sha256
    await state.memory.add("src", [NoteInput(text="n", vector=[1.0, 0.0])])
    content = NoteContent(blob_sha256=digest, blob_size_bytes=7)
    await state.memory.add("src", [NoteInput(text="b", vector=[0.0, 1.0], content=content)])
    await state.engine.patch("src", merge_patch=b'{"a": 1}')  # version 1, after the notes
    return digest


async def test_a_fork_the_scheduler_refuses_after_the_copy_leaves_nothing(tmp_path: Path) -> None:
    async def refuse(plan: ForkPlan) -> None:  # the source was deleted meanwhile
        raise WorkflowNotFoundError(
            f"workflow {plan.source_workflow_id!r} does not exist", field="workflow_id"
        )

    async with _sidecar(tmp_path / "data", known=lambda wid: wid == "src", hook=refuse) as (state, client):
        await _source(state)
        with pytest.raises(NotFoundError) as caught:
            await client.state.fork("src", new_workflow_id="copy", request_id="r1")
        assert caught.value.reason == "WORKFLOW_NOT_FOUND"
        assert _left(state, "copy") == dict.fromkeys(_left(state, "copy"), 0)
        assert state.runtime.storage.count(FORK_REQUESTS_TABLE) == 0  # a retry is not answered "done"
        with pytest.raises(NotFoundError):
            await client.state.get("copy")


@pytest.mark.parametrize("scheduler_committed", [False, True])
async def test_a_fork_cut_short_by_a_crash_is_undone_or_finished_at_the_next_start(
    tmp_path: Path, scheduler_committed: bool
) -> None:
    """The crash: the document and notes are committed, the fork's last commit is not."""
    data = tmp_path / "data"
    reached = asyncio.Event()
    crash = asyncio.Event()

    async def stuck(plan: ForkPlan) -> None:
        reached.set()
        await crash.wait()
        raise RuntimeError("the process died here")

    async with _sidecar(data, known=lambda wid: wid == "src", hook=stuck) as (state, client):
        await _source(state)
        fork = asyncio.ensure_future(client.state.fork("src", new_workflow_id="copy", request_id="r1"))
        await asyncio.wait_for(reached.wait(), _WAIT_S)
        assert _left(state, "copy")["state_heads"] == 1
        await state.runtime.committer.aclose()  # nothing commits after the "crash"
        crash.set()
        await asyncio.wait({fork}, timeout=_WAIT_S)
        fork.cancel()
        assert _left(state, "copy")["state_heads"] == 1

    known = {"src", "copy"} if scheduler_committed else {"src"}

    async def unused(plan: ForkPlan) -> None:
        raise AssertionError(plan)

    async with _sidecar(data, known=known.__contains__, hook=unused) as (state, client):
        await state.recovered()
        left = _left(state, "copy")
        assert left["pending"] == 0
        if scheduler_committed:  # the scheduler's commit made it: the fork is finished, its request recorded
            assert (await client.state.get("copy")).values == {"": {"a": 1}}
            assert (left["memory_notes"], left["blob_refs"]) == (2, 1)
            assert state.runtime.storage.count(FORK_REQUESTS_TABLE) == 1
            again = await client.state.fork("src", new_workflow_id="copy", request_id="r1")
            assert (again.workflow_id, again.source_version) == ("copy", 1)
        else:  # undone: the id is free again
            assert left == dict.fromkeys(left, 0)
            with pytest.raises(NotFoundError):
                await client.state.get("copy")
