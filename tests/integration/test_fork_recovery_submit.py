"""SubmitWorkflow of a workflow id whose fork a crash cut short, while the sidecar settles that fork.

At start the sidecar settles the forks a crash cut short (``state_forks_pending``):
a fork whose workflow the scheduler created is finished, any other is undone
(its copied document, notes and blob references deleted). State calls wait
for that, and so does a SubmitWorkflow naming such an id: it must not mix
with the settling (the id is taken until the fork is settled; a submit
arriving then would be refused ALREADY_EXISTS), and once accepted the
workflow is exactly what was submitted.

Defect found: a SubmitWorkflow arriving before the settling had reached its
id was accepted when the fork had no document left (a crash in the middle of
undoing it); the settling then saw a workflow the scheduler knew and
*finished* the fork, giving the submitted workflow the fork's notes and
recording the fork's request id as done with it. One arriving while the
fork's document was being deleted (the head goes first, then the rows in
bounded batches) was accepted half-way, and the rest of the deletion removed
the submitted workflow's own initial state.

The crashed forks are written into the data folder with the project's storage
API while no sidecar runs: one with a large document (its undo takes many
commits, so submits arrive while it runs) and one, later in key order,
whose document was already deleted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec

from are_core.state import MemoryStore, NoteInput, StateEngine
from are_core.storage import GroupCommitter, Storage
from are_sdk import Client
from are_sdk._proto.are.v1 import scheduler_service_pb2, task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess
from sidecar._server import TABLES
from sidecar._state import FORK_REQUESTS_TABLE, FORKS_PENDING_TABLE, _ForkRecord, _PendingFork

BIG = "fork-big"  # a fork cut short with its whole document: undone at start, in many commits
HALF = "fork-half"  # a fork cut short while it was being undone: notes left, no document
MEMBERS = 150_000  # members of BIG's document (the undo deletes 5,000 rows per commit)


async def _crashed_forks(data: Path) -> None:
    """What two forks cut short by SIGKILL leave: their pending rows, a document, notes."""
    storage = Storage.open(data, tables=TABLES)
    committer = GroupCommitter(storage)
    try:
        engine = StateEngine(storage, committer)
        for first in range(0, MEMBERS, 50_000):  # a batch holds at most 100,000 mutations
            part = {f"k{i:06d}": i for i in range(first, first + 50_000)}
            await engine.patch(BIG, merge_patch=json.dumps(part).encode())
        memory = MemoryStore(storage, committer, embedder=None, index_dir=data / "indexes" / "memory")
        for wid in (BIG, HALF):
            await memory.add(wid, [NoteInput(text=f"copied into {wid}", vector=[1.0, 0.0])])
        memory.save_all()
        batch = storage.batch()
        for wid in (BIG, HALF):
            pending = _PendingFork(f"request-{wid}", _ForkRecord(b"\x00" * 32, wid, 1))
            batch.put(FORKS_PENDING_TABLE, wid.encode(), msgspec.msgpack.encode(pending))
        await committer.submit(batch)
    finally:
        await committer.aclose()
        storage.close()


async def _submit(client: Client, workflow_id: str) -> None:
    """Submits the workflow: it waits for the settling of a fork to its id, rather than being refused."""
    spec = workflow_pb2.WorkflowSpec(
        workflow_id=workflow_id,
        tasks=[task_pb2.TaskSpec(task_id="hold", capability="nobody")],
        initial_state={"data": json.dumps({"mine": workflow_id}).encode()},
    )
    response = await client.raw.scheduler.SubmitWorkflow(
        scheduler_service_pb2.SubmitWorkflowRequest(spec=spec), timeout=60
    )
    assert (response.workflow_id, response.deduplicated) == (workflow_id, False)


def _rows(storage: Storage, workflow_id: str) -> dict[str, int]:
    prefix = workflow_id.encode() + b"\x00"
    return {
        "state_members": len(storage.scan("state_members", prefix=prefix)),
        "state_versions": len(storage.scan("state_versions", prefix=prefix)),
        "memory_notes": len(storage.scan("memory_notes", prefix=prefix)),
    }


async def test_a_submit_naming_a_fork_being_settled_waits_until_it_is_settled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _crashed_forks(data)
    with SidecarProcess.start(data_dir=data, args=["--memory-embedder", "off"]) as sidecar:
        async with await Client.connect(sidecar.target) as client:
            await asyncio.gather(_submit(client, BIG), _submit(client, HALF))
            seen = {}
            for wid in (BIG, HALF):
                state = client.state.for_workflow(wid)  # state calls wait for the settling
                hydration = await state.memory.hydrate([1.0, 0.0])
                seen[wid] = (
                    await state.get(),
                    [c.version async for c in state.checkpoints()],
                    hydration.texts,
                )
            assert seen == {wid: ({"mine": wid}, [1], []) for wid in (BIG, HALF)}
        assert sidecar.stop() == 0
    storage = Storage.open(data, tables=TABLES)
    try:
        assert storage.count(FORKS_PENDING_TABLE) == 0
        assert storage.count(FORK_REQUESTS_TABLE) == 0  # neither fork is recorded as done
        expected = {"state_members": 1, "state_versions": 1, "memory_notes": 0}
        assert {wid: _rows(storage, wid) for wid in (BIG, HALF)} == {BIG: expected, HALF: expected}
    finally:
        storage.close()
