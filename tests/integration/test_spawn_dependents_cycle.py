"""SpawnTasks refuses a dependents_wait spawn that would close a cycle, over real gRPC.

A spawn from running ``p`` of a task depending on ``p``'s dependent ``d``,
with dependents_wait, made ``d`` wait for the new task while it waited for
``d``: the spawn was accepted and the workflow hung until its max_duration.
task.proto depends_on: the graph must stay acyclic (DAG_CYCLE); SpawnTasks
answers INVALID_ARGUMENT as SubmitWorkflow does, naming the field, and
changes nothing.
"""

from __future__ import annotations

from are_sdk import Client, InvalidArgumentError
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf

from .test_scheduler import completion, expect_error, submit, task, unique_capability, wait_closed


async def _poll_one(client: Client, cap: str) -> w.TaskAssignment:
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="poller", capabilities=[cap], max_tasks=1), timeout=10
    )
    assert len(polled.assignments) == 1
    got: w.TaskAssignment = polled.assignments[0]
    return got


async def test_a_spawned_task_depending_on_a_waiting_dependent_is_a_dag_cycle(client: Client) -> None:
    cap = unique_capability("spawn-cycle")
    workflow_id = await submit(client, task("p", cap), task("d", cap, "p"))
    p = await _poll_one(client, cap)
    assert p.task_id == "p"
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(
                workflow_id=workflow_id,
                parent_task_id="p",
                parent_attempt=p.attempt,
                tasks=[task("n", cap, "d")],
                dependents_wait=True,
            )
        ),
        InvalidArgumentError,
        "DAG_CYCLE",
        "tasks[0].depends_on[0]",
    )
    listed = await client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=workflow_id))
    assert [x.task_id for x in listed.tasks] == ["p", "d"]  # nothing was added

    # Nothing waits on anything new: d runs once p completes, and the workflow closes.
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(p, {"p": 1})))
    d = await _poll_one(client, cap)
    assert d.task_id == "d"
    assert [x.task_id for x in d.dependencies] == ["p"]
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(d, {"d": 1})))
    status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
