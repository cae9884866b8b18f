"""A DeleteWorkflow cut short between its commits (engine in process over real LMDB, no server).

The delete removes a workflow's rows in several commits (tasks, then specs,
then the record). A crash between them left specs whose task rows were gone:
after the restart, reading the workflow's tasks (GetTask, ForkWorkflow, and
GetWorkflow of a COMPLETED one, which reads its result task) failed with an
internal error and a traceback (found by SIGKILLs under load). The delete's
first commit now marks the workflow: cut short, it reads as NOT_FOUND, its
id stays taken, and a delete again finishes it (the sidecar's start does:
tests/crash/test_delete_sigkill.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from are_core.scheduler import (
    Scheduler,
    TaskNotFoundError,
    TaskSpec,
    WorkflowExistsError,
    WorkflowNotFoundError,
    WorkflowSpec,
)
from are_core.scheduler._engine import T_SPECS
from are_core.storage import GroupCommitter, Storage, prefix_key


class _CrashedError(Exception):
    """The process died here: the commits after this one never happen."""


async def test_a_delete_cut_short_reads_as_not_found_and_a_delete_again_finishes(
    opened: tuple[Storage, GroupCommitter], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    tasks = tuple(TaskSpec(task_id=f"t{i}", capability="nobody") for i in range(12))
    record, _ = await engine.submit(WorkflowSpec(workflow_id="gone", tasks=tasks))
    await engine.cancel(record.workflow_id, "done with it", "test")
    assert engine.get_workflow("gone").record.state == "CANCELLED"

    submit = committer.submit
    commits = 0

    async def dies_after_the_task_rows(batch: Any) -> None:
        nonlocal commits
        commits += 1
        if commits == 3:  # the mark, then the task rows, then (not) the specs
            raise _CrashedError
        await submit(batch)

    monkeypatch.setattr(committer, "submit", dies_after_the_task_rows)
    with pytest.raises(_CrashedError):
        await engine.delete("gone")
    monkeypatch.undo()
    await engine.stop()

    restarted = Scheduler(storage, committer, rng=lambda: 0.0)
    await restarted.start()
    try:
        assert restarted.unfinished_deletes() == ["gone"]  # for the sidecar's start to finish
        with pytest.raises(WorkflowNotFoundError):
            restarted.get_workflow("gone")
        with pytest.raises((WorkflowNotFoundError, TaskNotFoundError)):
            restarted.get_task("gone", "t0")
        with pytest.raises(WorkflowNotFoundError):
            restarted.list_tasks("gone", frozenset(), 0, 100)
        listed, _ = restarted.list_workflows(
            frozenset(), labels={}, start_ns=0, end_ns=0, after_key=None, limit=100
        )
        assert "gone" not in [view.record.workflow_id for view in listed]
        with pytest.raises(WorkflowExistsError):  # its id is taken until the delete ends
            await restarted.submit(WorkflowSpec(workflow_id="gone", tasks=tasks[:1]))

        assert await restarted.delete("gone") > 0  # again: finished
        assert restarted.unfinished_deletes() == []
        assert not storage.scan(T_SPECS, prefix=prefix_key("gone"), limit=1)
        record, _ = await restarted.submit(WorkflowSpec(workflow_id="gone", tasks=tasks[:1]))
        assert record.workflow_id == "gone"  # the id is free again
    finally:
        await restarted.stop()
