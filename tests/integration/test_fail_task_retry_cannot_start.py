"""FailTask promises no retry that could not start, over real gRPC.

common.proto RetryPolicy: a failure is not retried "when a retry could not
start before the task's schedule_to_close_timeout or the workflow's budget
runs out". FailTask answered will_retry=true for such a retry; it never ran,
and the task's own failure was replaced by a SCHEDULE_TO_CLOSE timeout or a
later BUDGET_EXCEEDED (with no worker polling, the workflow stayed RUNNING).
Now the answer is will_retry=false, the task FAILED with its own failure,
and the workflow fails with it.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from are_sdk import Client
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf

from .test_scheduler import fail_with, get_task, submit, task, unique_capability, wait_closed

_POLL_TIMEOUT_S = 10.0


async def _poll_one(client: Client, cap: str) -> w.TaskAssignment:
    """Polls until one assignment arrives (a retry's backoff may outlast a poll); bounded."""
    for _ in range(5):
        polled = await client.raw.worker.PollTask(
            w.PollTaskRequest(worker_name="poller", capabilities=[cap], max_tasks=1), timeout=_POLL_TIMEOUT_S
        )
        if polled.assignments:
            got: w.TaskAssignment = polled.assignments[0]
            return got
    raise AssertionError(f"no assignment of {cap!r}")


async def _fail(client: Client, a: w.TaskAssignment, *, retry_after_s: float = 0.0) -> w.FailTaskResponse:
    failure = w.TaskFailure(
        workflow_id=a.workflow_id,
        task_id=a.task_id,
        attempt=a.attempt,
        failure=fail_with("own", type_="AppErr"),
    )
    if retry_after_s:
        failure.retry_after.FromSeconds(int(retry_after_s))
    response: w.FailTaskResponse = await client.raw.worker.FailTask(w.FailTaskRequest(failure=failure))
    return response


async def _assert_failed_with_its_own_failure(client: Client, workflow_id: str) -> None:
    status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_FAILED
    assert status.failure.type == "TASK_FAILED"
    assert status.failure.message == "task 'a' ended FAILED: own"
    a = await get_task(client, workflow_id, "a")
    assert a.state == t.TASK_STATE_FAILED
    assert (a.failure.type, a.failure.kind, a.failure.message) == (
        "AppErr",
        c.FAILURE_KIND_APPLICATION,
        "own",
    )


_BACKOFF_30S = c.RetryPolicy(
    initial_interval=Duration(seconds=30), backoff_coefficient=1.0, maximum_attempts=3
)


@pytest.mark.parametrize(
    ("task_fields", "spec_fields"),
    [
        ({"schedule_to_close_timeout": Duration(seconds=60)}, {}),
        ({}, {"budget": wf.WorkflowBudget(max_duration=Duration(seconds=60))}),
    ],
    ids=["schedule_to_close_timeout", "max_duration"],
)
async def test_a_retry_due_after_a_deadline_is_not_promised(
    client: Client, task_fields: dict[str, Any], spec_fields: dict[str, Any]
) -> None:
    cap = unique_capability("retry-deadline")
    workflow_id = await submit(
        client, task("a", cap, retry_policy=_BACKOFF_30S, **task_fields), **spec_fields
    )
    a = await _poll_one(client, cap)
    answer = await _fail(client, a, retry_after_s=120)  # the retry would start after the 60 s deadline
    assert (answer.will_retry, answer.task_state) == (False, t.TASK_STATE_FAILED)
    assert not answer.HasField("next_attempt_time")
    await _assert_failed_with_its_own_failure(client, workflow_id)


async def test_a_retry_past_the_max_attempts_budget_is_not_promised(client: Client) -> None:
    cap = unique_capability("retry-budget")
    ten = c.RetryPolicy(initial_interval=Duration(nanos=10_000_000), maximum_attempts=10)
    workflow_id = await submit(
        client, task("a", cap, retry_policy=ten), budget=wf.WorkflowBudget(max_attempts=3)
    )
    answers = []
    for _ in range(3):
        answer = await _fail(client, await _poll_one(client, cap))
        answers.append((answer.will_retry, answer.task_state))
    assert answers == [
        (True, t.TASK_STATE_BACKING_OFF),
        (True, t.TASK_STATE_BACKING_OFF),
        (False, t.TASK_STATE_FAILED),  # a 4th attempt would pass max_attempts: no retry promised
    ]
    await _assert_failed_with_its_own_failure(client, workflow_id)
