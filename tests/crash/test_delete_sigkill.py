"""SIGKILL during a DeleteWorkflow: after the restart the workflow is gone, whole, and its id free.

The delete takes several commits (a mark, the state, the task rows 5,000 at a
time, the record). Killed between them, a workflow used to be left with specs
whose task rows were gone: GetTask, ForkWorkflow (and GetWorkflow of a
COMPLETED one) then failed with an internal error and a traceback, and its
state was gone while the workflow was still listed. Now the start finishes
the delete before it serves. The kill lands at a few points of the delete; what
is checked holds wherever it lands (also after the delete ended).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from are_sdk import Client, NotFoundError, WorkflowSpec
from are_sdk.testing import SidecarProcess

_TASKS = 10_000  # two commits of task rows and two of specs: room for the kill to land between
_WAIT_S = 60.0


@pytest.mark.parametrize("delay_s", [0.015, 0.04])
async def test_a_delete_cut_short_by_sigkill_is_finished_by_the_next_start(
    tmp_path: Path, delay_s: float
) -> None:
    data = tmp_path / "data"
    spec = WorkflowSpec("big", workflow_id="doomed", initial_state={"kept": False})
    for i in range(_TASKS):
        spec.task(f"t{i}", capability="nobody")
    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            handle = await client.submit_workflow(spec)
            await client.state.memory.add("doomed", ["a note of the doomed workflow"])
            await handle.cancel()
            await handle.wait(timeout=_WAIT_S)
            deleting = asyncio.ensure_future(handle.delete())
            await asyncio.sleep(delay_s)
            process.kill()
            await asyncio.gather(deleting, return_exceptions=True)  # cut short, or done just before
    finally:
        process.kill()
        process.cleanup()

    restarted = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(restarted.target) as client:
            handle = client.get_workflow_handle("doomed")
            for read in (handle.describe, lambda: handle.task("t0"), lambda: handle.task(f"t{_TASKS - 1}")):
                with pytest.raises(NotFoundError):
                    await read()
            with pytest.raises(NotFoundError):
                await client.state.get("doomed")
            listed = [w.workflow_id async for w in client.workflows.list(limit=100)]
            assert "doomed" not in listed
            again = await client.submit_workflow(
                WorkflowSpec("again", workflow_id="doomed").task("x", capability="nobody")
            )
            assert [t.task_id for t in await again.tasks()] == ["x"]  # nothing of the old one
            assert (await client.state.memory.hydrate("doomed", "doomed note")).hits == []
        log = restarted.log_path.read_text() if restarted.log_path is not None else ""
        assert "Traceback" not in log
    finally:
        restarted.stop()
