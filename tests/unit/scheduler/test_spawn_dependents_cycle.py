"""SpawnTasks with dependents_wait keeps the graph acyclic (engine in process over real LMDB).

With dependents_wait the parent's PENDING dependents come to depend on the
spawned tasks. A spawned task that itself depends, directly or through other
tasks, on such a dependent (or on a task after it) closed a cycle: the spawn
was accepted and the dependent and the new task waited on each other until
the workflow's max_duration. task.proto: the graph must stay acyclic
(DAG_CYCLE); SpawnTasks refuses as SubmitWorkflow does, changing nothing.
And the dependents that wait are the parent's before the spawn: a spawned
task depending on the parent is not one of them (it waited for itself).
"""

from __future__ import annotations

import asyncio

import pytest

from are_core.scheduler import Scheduler, SpecError, TaskSpec, WorkflowSpec
from tests.unit.scheduler.test_engine import FakeWorker

_HANG_GUARD_S = 10.0


def _spec(task_id: str, *deps: str, capability: str = "cap") -> TaskSpec:
    return TaskSpec(task_id=task_id, capability=capability, depends_on=deps)


async def _until(condition: object) -> None:
    async with asyncio.timeout(_HANG_GUARD_S):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def _running_parent(engine: Scheduler, *tasks: TaskSpec) -> tuple[str, FakeWorker]:
    """Submits ``p`` (then ``tasks``) and waits until p's attempt 1 runs on a worker."""
    record, _ = await engine.submit(WorkflowSpec(tasks=(_spec("p"), *tasks)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until(lambda: worker.assignments)
    assert [a.task_id for a in worker.assignments] == ["p"]
    return record.workflow_id, worker


@pytest.mark.parametrize(
    ("spawned", "field"),
    [
        ((_spec("n", "d"),), "tasks[0].depends_on[0]"),  # on the dependent itself
        ((_spec("n", "p", "e"),), "tasks[0].depends_on[1]"),  # on a task after it
        ((_spec("m", "x"), _spec("x", "d")), "tasks[0].depends_on[0]"),  # through another new task
    ],
)
async def test_a_spawn_whose_task_reaches_a_waiting_dependent_is_a_cycle_and_changes_nothing(
    engine: Scheduler, spawned: tuple[TaskSpec, ...], field: str
) -> None:
    workflow_id, _ = await _running_parent(engine, _spec("d", "p"), _spec("e", "d"))
    with pytest.raises(SpecError) as caught:
        await engine.spawn(workflow_id, spawned, parent_task_id="p", parent_attempt=1, dependents_wait=True)
    assert (caught.value.reason, caught.value.field) == ("DAG_CYCLE", field)
    assert "cycle" in caught.value.message
    tasks, _ = engine.list_tasks(workflow_id, frozenset(), 0, 100)
    assert [t.record.task_id for t in tasks] == ["p", "d", "e"]
    assert engine.get_task(workflow_id, "d").record.extra_depends_on == ()
    assert engine.get_workflow(workflow_id).record.task_count == 3


async def test_without_dependents_wait_the_same_spawn_is_no_cycle(engine: Scheduler) -> None:
    workflow_id, _ = await _running_parent(engine, _spec("d", "p"))
    ids, _ = await engine.spawn(workflow_id, (_spec("n", "d"),), parent_task_id="p", parent_attempt=1)
    assert ids == ["n"]


async def test_a_spawned_task_may_depend_on_its_parent_and_the_dependents_wait_for_it(
    engine: Scheduler,
) -> None:
    """Spawned tasks wired to the parent were among its dependents when dependents_wait was applied,
    so each was made to wait for itself and the new tasks: ``n`` (on ``p``) never ran."""
    workflow_id, worker = await _running_parent(engine, _spec("d", "p"), _spec("side"))
    ids, _ = await engine.spawn(
        workflow_id,
        (_spec("n", "p"), _spec("o", "side")),
        parent_task_id="p",
        parent_attempt=1,
        dependents_wait=True,
    )
    assert ids == ["n", "o"]
    assert engine.get_task(workflow_id, "d").record.extra_depends_on == ("n", "o")
    assert engine.get_task(workflow_id, "n").record.extra_depends_on == ()  # not a wait on itself
    await engine.complete(workflow_id, "p", 1, output=b"{}", content_type="", usage=None)
    done: list[str] = []
    while "d" not in done:  # one slot: the ready tasks run one after another
        await _until(lambda: len(worker.assignments) > len(done) + 1)
        task_id = worker.assignments[-1].task_id
        if task_id == "d":
            assert sorted(done) == ["n", "o", "side"]  # d waited for both spawned tasks
        await engine.complete(workflow_id, task_id, 1, output=b"{}", content_type="", usage=None)
        done.append(task_id)
    await _until(lambda: engine.get_workflow(workflow_id).record.state != "RUNNING")
    assert engine.get_workflow(workflow_id).record.state == "COMPLETED"
