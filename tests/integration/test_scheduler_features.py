"""Approvals, dynamic sub-tasks, pools, budgets and watching, over real gRPC."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from google.protobuf.duration_pb2 import Duration

from are_sdk import (
    AlreadyExistsError,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf

from .test_scheduler import (
    StreamWorker,
    echo,
    expect_error,
    get_task,
    submit,
    task,
    unique_capability,
    wait_closed,
)


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _state(client: Client, workflow_id: str, task_id: str) -> int:
    return int((await get_task(client, workflow_id, task_id)).state)


async def test_an_approval_gate_waits_for_a_human_and_a_rejection_follows_the_trigger_rules(
    client: Client,
) -> None:
    cap = unique_capability("hitl")
    async with StreamWorker(client, echo, capabilities=[cap]) as worker:
        workflow_id = await submit(
            client,
            task("draft", cap),
            task("review", cap, "draft", requires_approval=True, labels={"desk": "legal"}),
            task("publish", cap, "review"),
            task("second_review", cap, "draft", requires_approval=True),
            task("notify", cap, "second_review", trigger_rule=t.TRIGGER_RULE_ONE_FAILED),
        )
        async with asyncio.timeout(10):
            while True:
                waiting = await client.raw.scheduler.ListApprovals(
                    s.ListApprovalsRequest(workflow_id=workflow_id)
                )
                if len(waiting.tasks) == 2:
                    break
                await asyncio.sleep(0.01)
        assert {x.task_id for x in waiting.tasks} == {"review", "second_review"}
        assert all(x.state == t.TASK_STATE_AWAITING_APPROVAL for x in waiting.tasks)
        assert json.loads(waiting.tasks[0].spec.input.data)  # the human sees the input
        by_label = await client.raw.scheduler.ListApprovals(
            s.ListApprovalsRequest(workflow_id=workflow_id, labels={"desk": "legal"})
        )
        assert [x.task_id for x in by_label.tasks] == ["review"]
        page = await client.raw.scheduler.ListApprovals(
            s.ListApprovalsRequest(workflow_id=workflow_id, page_size=1)
        )
        assert len(page.tasks) == 1 and page.next_page_token
        assert "review" not in {a.task_id for a in worker.seen}
        approved = await client.raw.scheduler.ResolveApproval(
            s.ResolveApprovalRequest(
                workflow_id=workflow_id,
                task_id="review",
                decision=t.APPROVAL_DECISION_APPROVE,
                approver="ann",
                comment="fine",
            )
        )
        assert approved.task.approval.approver == "ann"
        assert approved.task.approval.decision == t.APPROVAL_DECISION_APPROVE
        await client.raw.scheduler.ResolveApproval(
            s.ResolveApprovalRequest(
                workflow_id=workflow_id,
                task_id="second_review",
                decision=t.APPROVAL_DECISION_REJECT,
                approver="bob",
            )
        )
        await expect_error(
            client.raw.scheduler.ResolveApproval(
                s.ResolveApprovalRequest(
                    workflow_id=workflow_id, task_id="review", decision=t.APPROVAL_DECISION_APPROVE
                )
            ),
            FailedPreconditionError,
            "TASK_NOT_AWAITING_APPROVAL",
        )
        await expect_error(
            client.raw.scheduler.ResolveApproval(
                s.ResolveApprovalRequest(workflow_id=workflow_id, task_id="review")
            ),
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            "decision",
        )
        status = await wait_closed(client, workflow_id)
    assert await _state(client, workflow_id, "publish") == t.TASK_STATE_COMPLETED
    assert await _state(client, workflow_id, "second_review") == t.TASK_STATE_REJECTED
    assert await _state(client, workflow_id, "notify") == t.TASK_STATE_COMPLETED
    assert status.state == wf.WORKFLOW_STATE_COMPLETED  # the rejection was handled by notify


async def test_a_running_task_spawns_sub_tasks_and_its_dependents_wait_for_them(client: Client) -> None:
    cap = unique_capability("spawn")
    spawned: list[str] = []

    async def handler(a: w.TaskAssignment) -> Any:
        if a.task_id == "planner":
            response = await client.raw.scheduler.SpawnTasks(
                s.SpawnTasksRequest(
                    workflow_id=a.workflow_id,
                    parent_task_id="planner",
                    parent_attempt=a.attempt,
                    tasks=[task("part1", cap), task("part2", cap), task("merge", cap, "part1", "part2")],
                    dependents_wait=True,
                )
            )
            spawned.extend(response.task_ids)
        return echo(a)

    async with StreamWorker(client, handler, capabilities=[cap]):
        workflow_id = await submit(client, task("planner", cap), task("report", cap, "planner"))
        status = await wait_closed(client, workflow_id)
    assert spawned == ["part1", "part2", "merge"]
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    assert status.task_counts.total == 5
    report = json.loads(status.result.data)
    assert set(report["deps"]) == {"planner", "part1", "part2", "merge"}
    merge = await get_task(client, workflow_id, "merge")
    assert merge.parent_task_id == "planner"


async def test_a_spawn_with_a_request_id_adds_its_tasks_once_even_from_a_retried_attempt(
    client: Client,
) -> None:
    cap = unique_capability("spawn-once")
    answers: list[tuple[int, list[str], bool]] = []

    async def handler(a: w.TaskAssignment) -> Any:
        if a.task_id == "planner":
            response = await client.raw.scheduler.SpawnTasks(
                s.SpawnTasksRequest(
                    workflow_id=a.workflow_id,
                    parent_task_id="planner",
                    parent_attempt=a.attempt,
                    tasks=[task("child", cap)],
                    request_id=f"{a.workflow_id}-plan",
                )
            )
            answers.append((a.attempt, list(response.task_ids), response.deduplicated))
            if a.attempt == 1:  # fails after spawning; its retry spawns again
                return c.Failure(message="planner lost its way")
        return echo(a)

    retry = c.RetryPolicy(maximum_attempts=2, initial_interval=Duration(nanos=10_000_000))
    async with StreamWorker(client, handler, capabilities=[cap]):
        workflow_id = await submit(client, task("planner", cap, retry_policy=retry))
        status = await wait_closed(client, workflow_id)
    assert answers == [(1, ["child"], False), (2, ["child"], True)]
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    assert status.task_counts.total == 2
    # The same request_id with other tasks is a conflict, not a silent no-op.
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(
                workflow_id=workflow_id, tasks=[task("other", cap)], request_id=f"{workflow_id}-plan"
            )
        ),
        AlreadyExistsError,
        "REQUEST_ID_CONFLICT",
    )
    # So is the same task with another input (the hash is of the request as sent).
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(
                workflow_id=workflow_id,
                parent_task_id="planner",
                parent_attempt=2,
                tasks=[task("child", cap, input=c.Payload(data=b'"other"', content_type="application/json"))],
                request_id=f"{workflow_id}-plan",
            )
        ),
        AlreadyExistsError,
        "REQUEST_ID_CONFLICT",
    )
    # A request_id of the wrong shape is refused naming it; nothing is added.
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(workflow_id=workflow_id, tasks=[task("other", cap)], request_id="not/an id")
        ),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "request_id",
    )
    assert (await get_task(client, workflow_id, "child")).task_id == "child"
    await expect_error(get_task(client, workflow_id, "other"), NotFoundError, "TASK_NOT_FOUND")


async def test_spawning_is_refused_when_not_held_and_past_max_tasks_fails_the_workflow(
    client: Client,
) -> None:
    cap = unique_capability("spawn-limit")
    workflow_id = await submit(client, task("a", cap), task("b", cap), budget=wf.WorkflowBudget(max_tasks=3))
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(
                workflow_id=workflow_id, parent_task_id="a", parent_attempt=1, tasks=[task("x", cap)]
            )
        ),
        FailedPreconditionError,
        "TASK_NOT_HELD",
    )
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(workflow_id=workflow_id, tasks=[task("x", cap, "nope")])
        ),
        InvalidArgumentError,
        "UNKNOWN_DEPENDENCY",
        "tasks[0].depends_on[0]",
    )
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(workflow_id=workflow_id, tasks=[task("x", cap), task("y", cap)])
        ),
        ResourceExhaustedError,
        "BUDGET_EXCEEDED",
    )
    status = (await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert status.state == wf.WORKFLOW_STATE_FAILED
    assert status.failure.kind == c.FAILURE_KIND_BUDGET_EXCEEDED
    assert status.task_counts.cancelled == 2


async def test_a_cost_budget_fails_the_workflow_and_cancels_running_tasks(client: Client) -> None:
    cap = unique_capability("budget")

    def handler(a: w.TaskAssignment) -> Any:
        return None if a.task_id == "slow" else echo(a)

    async with StreamWorker(client, handler, capabilities=[cap]) as worker:
        original = worker._handle

        async def costly(assignments: list[w.TaskAssignment]) -> None:
            for a in assignments:
                worker.seen.append(a)
                if a.task_id == "expensive":
                    done = w.TaskCompletion(
                        workflow_id=a.workflow_id,
                        task_id=a.task_id,
                        attempt=a.attempt,
                        output=c.Payload(data=b"1"),
                        usage=c.Usage(cost_micro_usd=5_000, input_tokens=10),
                    )
                    await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[done])))
                else:
                    await original([a])

        worker._handle = costly  # type: ignore[method-assign]  # this worker's only: one task reports a cost
        workflow_id = await submit(
            client,
            task("slow", cap),
            task("expensive", cap),
            task("later", cap, "expensive"),
            budget=wf.WorkflowBudget(max_cost_micro_usd=1_000),
        )
        status = await wait_closed(client, workflow_id)
        await _wait_for(lambda: worker.cancellations)
    assert status.state == wf.WORKFLOW_STATE_FAILED
    assert status.failure.type == "BUDGET_EXCEEDED"
    assert status.usage.usage.cost_micro_usd == 5_000
    assert await _state(client, workflow_id, "slow") == t.TASK_STATE_CANCELLED
    assert worker.cancellations[0].reason == w.TASK_CANCEL_REASON_BUDGET_EXCEEDED


async def test_pools_limit_concurrency_and_refuse_overflowing_queues(client: Client) -> None:
    cap = unique_capability("pooled")
    pool = unique_capability("p")
    put = await client.raw.scheduler.PutPool(
        s.PutPoolRequest(pool=s.Pool(name=pool, max_concurrency=2, max_queue_length=30))
    )
    assert put.created and put.pool.max_queue_length == 30
    running = 0
    most = 0

    async def handler(a: w.TaskAssignment) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        running -= 1
        return 1

    async with StreamWorker(client, handler, capabilities=[cap], concurrency=10):
        workflow_id = await submit(client, *[task(f"t{i}", cap, pool=pool) for i in range(20)])
        await expect_error(
            submit(client, *[task(f"u{i}", cap, pool=pool) for i in range(20)]),
            ResourceExhaustedError,
            "POOL_QUEUE_FULL",
        )
        status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    assert most <= 2
    got = await client.raw.scheduler.GetPool(s.GetPoolRequest(name=pool))
    assert got.status.dispatched_total == 20
    assert got.status.rejected_total == 1
    assert got.status.running == 0 and got.status.queued == 0
    listed = await client.raw.scheduler.ListPools(s.ListPoolsRequest())
    assert {"default", pool} <= {p.pool.name for p in listed.pools}
    await expect_error(
        client.raw.scheduler.GetPool(s.GetPoolRequest(name="nope")), NotFoundError, "POOL_NOT_FOUND"
    )
    await expect_error(
        client.raw.scheduler.PutPool(s.PutPoolRequest(pool=s.Pool(name="x", max_concurrency=-1))),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "pool.max_concurrency",
    )


async def test_the_pool_queue_full_error_carries_a_retry_hint(client: Client) -> None:
    pool = unique_capability("tiny")
    await client.raw.scheduler.PutPool(s.PutPoolRequest(pool=s.Pool(name=pool, max_queue_length=1)))
    cap = unique_capability("nobody")
    error = await expect_error(
        submit(client, task("a", cap, pool=pool), task("b", cap, pool=pool)),
        ResourceExhaustedError,
        "POOL_QUEUE_FULL",
    )
    assert error.retry_after is not None


async def test_priorities_and_round_robin_across_workflows_inside_a_pool(client: Client) -> None:
    cap = unique_capability("fair")
    order: list[str] = []
    big = await submit(client, *[task(f"big{i}", cap) for i in range(20)])
    small = await submit(client, *[task(f"small{i}", cap) for i in range(3)])
    urgent = await submit(client, task("urgent", cap, priority=1))

    def handler(a: w.TaskAssignment) -> Any:
        order.append(a.task_id)
        return 1

    async with StreamWorker(client, handler, capabilities=[cap], concurrency=1):
        for workflow_id in (big, small, urgent):
            await wait_closed(client, workflow_id)
    assert order[0] == "urgent"
    # The small workflow is not starved behind the big one: its tasks interleave.
    assert max(order.index(f"small{i}") for i in range(3)) < 8


async def test_watch_streams_changes_until_the_workflow_closes(client: Client) -> None:
    cap = unique_capability("watch")
    workflow_id = await submit(client, task("a", cap), task("b", cap, "a"))
    updates: list[wf.Workflow] = []

    async def watch() -> None:
        async for update in client.raw.scheduler.WatchWorkflow(
            s.WatchWorkflowRequest(workflow_id=workflow_id)
        ):
            updates.append(update.workflow)  # noqa: PERF401 - the test reads the list while it grows

    watcher = asyncio.ensure_future(watch())
    await _wait_for(lambda: updates)
    assert updates[0].state == wf.WORKFLOW_STATE_RUNNING
    async with StreamWorker(client, echo, capabilities=[cap]):
        await asyncio.wait_for(watcher, 10)
    assert updates[-1].state == wf.WORKFLOW_STATE_COMPLETED
    assert len(updates) >= 2
    await expect_error(
        anext(aiter(client.raw.scheduler.WatchWorkflow(s.WatchWorkflowRequest(workflow_id="nope")))),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )


async def test_reported_events_need_a_held_attempt(client: Client) -> None:
    cap = unique_capability("events")
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap))
        await _wait_for(lambda: worker.held)
        from are_sdk._proto.are.v1 import event_pb2

        ok = event_pb2.ReportedEvent(
            workflow_id=workflow_id,
            task_id="a",
            attempt=1,
            event_type=event_pb2.EVENT_TYPE_LLM_CALL,
            name="gpt",
        )
        response = await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[ok]))
        assert len(response.sequences) == 1
        stale = event_pb2.ReportedEvent(
            workflow_id=workflow_id, task_id="a", attempt=9, event_type=event_pb2.EVENT_TYPE_TOOL_CALL
        )
        await expect_error(
            client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[ok, stale])),
            FailedPreconditionError,
            "TASK_NOT_HELD",
        )
        await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_usage_is_summed_per_workflow_and_grouped_by_label(client: Client) -> None:
    cap = unique_capability("usage")
    team = unique_capability("team")

    async def handler(a: w.TaskAssignment) -> Any:
        return None

    async with StreamWorker(client, handler, capabilities=[cap]) as worker:
        ids = [
            await submit(client, task("a", cap), labels={"team": team, "kind": kind})
            for kind in ("x", "x", "y")
        ]
        await _wait_for(lambda: len(worker.held) == 3)
        done = [
            w.TaskCompletion(
                workflow_id=a.workflow_id,
                task_id=a.task_id,
                attempt=a.attempt,
                output=c.Payload(data=b"1"),
                usage=c.Usage(input_tokens=10, output_tokens=5, cost_micro_usd=100, llm_calls=1),
            )
            for a in worker.held.values()
        ]
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=done)))
        for workflow_id in ids:
            status = await wait_closed(client, workflow_id)
            assert status.usage.usage.cost_micro_usd == 100
            assert status.usage.usage.input_tokens == 10
            assert status.usage.tasks_completed == 1
    usage = await client.raw.scheduler.GetUsage(
        s.GetUsageRequest(labels={"team": team}, group_by_label="kind")
    )
    assert usage.workflow_count == 3
    assert usage.total.usage.cost_micro_usd == 300
    assert usage.total.usage.llm_calls == 3
    assert [(g.label_value, g.workflow_count, g.usage.usage.cost_micro_usd) for g in usage.groups] == [
        ("x", 2, 200),
        ("y", 1, 100),
    ]
    await expect_error(
        client.raw.scheduler.GetUsage(
            s.GetUsageRequest(start_time={"seconds": 2_000_000_000}, end_time={"seconds": 1_000_000_000})
        ),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "end_time",
    )


async def test_a_resumed_watch_skips_what_it_already_saw(client: Client) -> None:
    cap = unique_capability("resume")
    workflow_id = await submit(client, task("a", cap))
    first = await anext(
        aiter(client.raw.scheduler.WatchWorkflow(s.WatchWorkflowRequest(workflow_id=workflow_id)))
    )
    assert first.sequence > 0
    received: list[s.WatchWorkflowResponse] = []

    async def resume() -> None:
        request = s.WatchWorkflowRequest(workflow_id=workflow_id, after_sequence=first.sequence)
        async for update in client.raw.scheduler.WatchWorkflow(request):
            received.append(update)  # noqa: PERF401 - the test reads the list while it grows

    watcher = asyncio.ensure_future(resume())
    await asyncio.sleep(0.2)  # not a timing assertion: nothing changed, so nothing may arrive
    assert received == []
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))
    await asyncio.wait_for(watcher, 10)
    assert received[-1].workflow.state == wf.WORKFLOW_STATE_CANCELLED
    assert received[-1].sequence > first.sequence
