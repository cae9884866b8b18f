"""The scheduler's SDK against a real sidecar: handles, the builder, approvals, pools.

Every test uses capabilities of its own (suffixed with a random id) so that
the workers of one test never receive another test's tasks on the shared
session sidecar.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from are_sdk import (
    CacheKey,
    CacheUsage,
    Client,
    Condition,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RetryPolicy,
    SyncClient,
    TaskContext,
    TaskState,
    Worker,
    WorkflowFailedError,
    WorkflowSpec,
    WorkflowSpecError,
    WorkflowState,
)
from are_sdk._proto.are.v1 import task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess


def _scheduler_served() -> bool:
    from sidecar._capabilities import CAPABILITIES

    return any("are.v1.SchedulerService" in capability.services for capability in CAPABILITIES)


pytestmark = pytest.mark.skipif(
    not _scheduler_served(), reason="no capability serves are.v1.SchedulerService yet"
)

RESULT_TIMEOUT = 30.0


def suffix() -> str:
    return uuid.uuid4().hex[:8]


def make_worker(client: Client, handlers: dict[str, Callable[[TaskContext], Any]], **kwargs: Any) -> Worker:
    worker = Worker(client, name=f"test-{suffix()}", **kwargs)
    for capability, handler in handlers.items():
        worker.register(capability, handler)
    return worker


async def test_submit_returns_a_handle_and_result_decodes_the_sink_output(client: Client) -> None:
    cap = f"double-{suffix()}"
    seen: list[dict[str, Any]] = []

    async def double(ctx: TaskContext) -> dict[str, int]:
        seen.append(ctx.dependency_outputs)
        base = ctx.input["n"] if ctx.input else sum(o["n"] for o in ctx.dependency_outputs.values())
        return {"n": base * 2}

    spec = (
        WorkflowSpec("doubling", labels={"suite": "sdk"})
        .task("a", capability=cap, input={"n": 3})
        .task("b", capability=cap, depends_on=["a"])
        .task("c", capability=cap, depends_on=["a"])
        .task("d", capability=cap, depends_on=["b", "c"])
    )
    async with make_worker(client, {cap: double}):
        handle = await client.submit_workflow(spec)
        assert handle.workflow_id
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"n": 48}
    described = await handle.describe()
    assert described.state is WorkflowState.COMPLETED
    assert described.labels == {"suite": "sdk"}
    assert described.task_counts.completed == described.task_counts.total == 4
    tasks = await handle.tasks(include_payloads=True)
    assert [t.task_id for t in tasks] == ["a", "b", "c", "d"]
    assert all(t.state is TaskState.COMPLETED for t in tasks)
    assert tasks[0].output == {"n": 6}
    assert {"b": {"n": 12}, "c": {"n": 12}} in seen


async def test_request_id_makes_submit_idempotent(client: Client) -> None:
    cap = f"noop-{suffix()}"
    spec = WorkflowSpec("idem").task("only", capability=cap)
    key = f"req-{suffix()}"
    first = await client.workflows.submit(spec, request_id=key)
    second = await client.workflows.submit(spec, request_id=key)
    assert second.workflow_id == first.workflow_id
    assert second.deduplicated and not first.deduplicated
    await first.cancel(reason="test done")


async def test_sidecar_validation_maps_to_invalid_argument_with_the_field(client: Client) -> None:
    message = WorkflowSpec().task("a", capability="c").task("b", capability="c", depends_on=["zz"])
    with pytest.raises(InvalidArgumentError) as caught:
        await client.submit_workflow(message.to_proto(validate=False))
    assert caught.value.reason == "UNKNOWN_DEPENDENCY"
    assert [v.field for v in caught.value.field_violations] == ["spec.tasks[1].depends_on[0]"]
    # The builder sees the same mistake before sending.
    with pytest.raises(WorkflowSpecError) as local:
        await client.submit_workflow(message)
    assert [v.field for v in local.value.field_violations] == ["spec.tasks[1].depends_on[0]"]


async def test_cycles_are_refused_by_the_sidecar_too(client: Client) -> None:
    spec = workflow_pb2.WorkflowSpec(
        tasks=[
            task_pb2.TaskSpec(task_id="a", capability="c", depends_on=["b"]),
            task_pb2.TaskSpec(task_id="b", capability="c", depends_on=["a"]),
        ]
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.submit_workflow(spec)
    assert caught.value.reason == "DAG_CYCLE"
    assert caught.value.field_violations


async def test_unknown_workflow_is_not_found(client: Client) -> None:
    handle = client.get_workflow_handle(f"wf-missing-{suffix()}")
    with pytest.raises(NotFoundError) as caught:
        await handle.describe()
    assert caught.value.reason == "WORKFLOW_NOT_FOUND"


async def test_non_retryable_failure_fails_the_workflow_with_its_failure(client: Client) -> None:
    cap = f"fail-{suffix()}"
    attempts: list[int] = []

    async def refuse(ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        from are_sdk import NonRetryableError

        raise NonRetryableError("the topic is forbidden", details={"topic": ctx.input})

    spec = WorkflowSpec("fails").task(
        "x", capability=cap, input="secret", retry_policy=RetryPolicy(maximum_attempts=3)
    )
    async with make_worker(client, {cap: refuse}):
        handle = await client.submit_workflow(spec)
        with pytest.raises(WorkflowFailedError) as caught:
            await handle.result(timeout=RESULT_TIMEOUT)
    assert caught.value.state is WorkflowState.FAILED
    assert caught.value.workflow_id == handle.workflow_id
    assert attempts == [1]
    task = await handle.task("x")
    assert task.state is TaskState.FAILED
    assert task.failure is not None
    assert (task.failure.type, task.failure.message) == ("NonRetryableError", "the topic is forbidden")
    assert task.failure.non_retryable
    assert task.failure.details == {"topic": "secret"}


async def test_retry_receives_the_last_failure_and_the_same_idempotency_key(client: Client) -> None:
    cap = f"flaky-{suffix()}"
    calls: list[tuple[int, str, str | None]] = []

    async def flaky(ctx: TaskContext) -> str:
        calls.append((ctx.attempt, ctx.idempotency_key, ctx.last_failure.type if ctx.last_failure else None))
        if ctx.attempt == 1:
            raise ValueError("first try fails")
        return "ok"

    policy = RetryPolicy(maximum_attempts=3, initial_interval=0.01)
    spec = WorkflowSpec("retry").task("x", capability=cap, retry_policy=policy)
    async with make_worker(client, {cap: flaky}):
        handle = await client.submit_workflow(spec)
        assert await handle.result(timeout=RESULT_TIMEOUT) == "ok"
    assert [c[0] for c in calls] == [1, 2]
    assert calls[0][1] == calls[1][1] != ""
    assert calls[1][2] == "ValueError"
    described = await handle.describe()
    assert described.usage.retries == 1


async def test_approval_gate_waits_until_approved(client: Client) -> None:
    cap = f"gate-{suffix()}"

    async def echo(ctx: TaskContext) -> Any:
        return ctx.input if ctx.input is not None else ctx.dependency_outputs

    spec = (
        WorkflowSpec("approval")
        .task("draft", capability=cap, input={"text": "hello"})
        .task("review", capability=cap, depends_on=["draft"], requires_approval=True, labels={"gate": cap})
    )
    async with make_worker(client, {cap: echo}):
        handle = await client.submit_workflow(spec)
        async for update in handle.watch(include_tasks=True):
            if update.workflow.task_counts.awaiting_approval:
                break
        gates = await client.workflows.list_approvals(workflow_id=handle.workflow_id)
        assert [g.task_id for g in gates] == ["review"]
        assert gates[0].state is TaskState.AWAITING_APPROVAL
        assert [g.task_id for g in await client.workflows.list_approvals(labels={"gate": cap})] == ["review"]
        approved = await handle.approve("review", approver="tester", comment="fine")
        assert approved.state is TaskState.SCHEDULED or approved.state.value > TaskState.SCHEDULED
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"draft": {"text": "hello"}}
        with pytest.raises(FailedPreconditionError) as caught:
            await handle.approve("review")
        assert caught.value.reason == "TASK_NOT_AWAITING_APPROVAL"
    review = await handle.task("review")
    assert review.approval is not None
    assert (review.approval.decision, review.approval.approver, review.approval.comment) == (
        "APPROVE",
        "tester",
        "fine",
    )


async def test_rejection_follows_the_trigger_rules(client: Client) -> None:
    cap = f"reject-{suffix()}"

    async def echo(ctx: TaskContext) -> str:
        return ctx.task_id

    spec = (
        WorkflowSpec("reject")
        .task("gate", capability=cap, requires_approval=True)
        .task("after", capability=cap, depends_on=["gate"])
        .task("fallback", capability=cap, depends_on=["gate"], trigger_rule="one_failed")
    )
    async with make_worker(client, {cap: echo}):
        handle = await client.submit_workflow(spec)
        while not await handle.approvals():
            await asyncio.sleep(0.02)
        rejected = await handle.reject("gate", approver="tester", comment="no")
        assert rejected.state is TaskState.REJECTED
        final = await handle.wait(timeout=RESULT_TIMEOUT)
    states = {t.task_id: t.state for t in await handle.tasks()}
    assert states == {"gate": TaskState.REJECTED, "after": TaskState.SKIPPED, "fallback": TaskState.COMPLETED}
    assert final.closed


async def test_condition_on_an_upstream_output_skips_a_branch(client: Client) -> None:
    cap = f"cond-{suffix()}"

    async def score(ctx: TaskContext) -> Any:
        return {"score": 0.4} if ctx.task_id == "judge" else ctx.task_id

    spec = (
        WorkflowSpec("conditions")
        .task("judge", capability=cap)
        .task(
            "good", capability=cap, depends_on=["judge"], conditions=[Condition("judge", "/score", ">=", 0.7)]
        )
        .task(
            "poor", capability=cap, depends_on=["judge"], conditions=[Condition("judge", "/score", "<", 0.7)]
        )
        .task("end", capability=cap, depends_on=["good", "poor"], trigger_rule="none_failed")
    )
    async with make_worker(client, {cap: score}):
        handle = await client.submit_workflow(spec)
        await handle.wait(timeout=RESULT_TIMEOUT)
    states = {t.task_id: t.state for t in await handle.tasks()}
    assert states["good"] is TaskState.SKIPPED
    assert states["poor"] is TaskState.COMPLETED
    assert states["end"] is TaskState.COMPLETED


async def test_cancel_stops_a_running_workflow(client: Client) -> None:
    cap = f"slow-{suffix()}"
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def slow(ctx: TaskContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    async with make_worker(client, {cap: slow}):
        handle = await client.submit_workflow(WorkflowSpec("cancel").task("x", capability=cap))
        await asyncio.wait_for(started.wait(), RESULT_TIMEOUT)
        described = await handle.cancel(reason="test", requested_by="tester")
        assert described.state in {WorkflowState.CANCELLING, WorkflowState.CANCELLED}
        with pytest.raises(WorkflowFailedError) as caught:
            await handle.result(timeout=RESULT_TIMEOUT)
        assert caught.value.state is WorkflowState.CANCELLED
        await asyncio.wait_for(stopped.wait(), RESULT_TIMEOUT)
    again = await handle.cancel()
    assert again.state is WorkflowState.CANCELLED


async def test_watch_yields_typed_updates_until_closed(client: Client) -> None:
    cap = f"watch-{suffix()}"

    async def noop(ctx: TaskContext) -> None:
        return None

    spec = WorkflowSpec("watch").task("a", capability=cap).task("b", capability=cap, depends_on=["a"])
    async with make_worker(client, {cap: noop}):
        handle = await client.submit_workflow(spec)
        updates = [u async for u in handle.watch(include_tasks=True)]
    assert updates[-1].workflow.state is WorkflowState.COMPLETED
    assert all(not u.workflow.closed for u in updates[:-1])
    sequences = [u.sequence for u in updates if u.sequence]
    assert sequences == sorted(sequences)
    # Task changes, when the sidecar sends them, arrive typed.
    assert all(u.task.task_id in {"a", "b"} for u in updates if u.task is not None)
    # A closed workflow's watch ends at once with its closing status.
    (last,) = [u async for u in handle.watch()]
    assert last.workflow.state is WorkflowState.COMPLETED
    listed = [
        w.workflow_id async for w in client.workflows.list(states=[WorkflowState.COMPLETED], limit=1000)
    ]
    assert handle.workflow_id in listed


async def test_pools_put_get_list(client: Client) -> None:
    name = f"pool-{suffix()}"
    created = await client.pools.put(name, max_concurrency=2, requests_per_second=50, description="test")
    assert (created.name, created.max_concurrency, created.requests_per_second) == (name, 2, 50)
    fetched = await client.pools.get(name)
    assert fetched.status is not None
    assert fetched.status.running == 0
    assert name in {p.name for p in await client.pools.list()}
    with pytest.raises(NotFoundError) as caught:
        await client.pools.get(f"missing-{suffix()}")
    assert caught.value.reason == "POOL_NOT_FOUND"


def test_sync_client_wraps_the_handles(sidecar: SidecarProcess) -> None:
    spec = WorkflowSpec("sync").task("x", capability=f"nobody-{suffix()}")
    with SyncClient.connect(sidecar.target) as client:
        handle = client.submit_workflow(spec)
        assert isinstance(handle.workflow_id, str)
        handle.cancel(reason="sync test")
        with pytest.raises(WorkflowFailedError) as caught:
            handle.result(timeout=RESULT_TIMEOUT)
        assert caught.value.state is WorkflowState.CANCELLED


def test_sync_client_returns_plain_values(sidecar: SidecarProcess) -> None:
    spec = WorkflowSpec("sync").task("x", capability=f"nobody-{suffix()}")
    with SyncClient.connect(sidecar.target) as client:
        handle = client.submit_workflow(spec)
        try:
            assert handle.describe().state is WorkflowState.RUNNING
        finally:
            handle.cancel()


async def _stored(client: Client, namespace: str, prompt: str) -> Any:
    """The entry a task's background store made, once it is there (bounded: 10 s)."""
    async with asyncio.timeout(10):
        while True:
            hit = await client.cache.lookup(namespace, prompt, exact_only=True)
            if hit is not None:
                return hit
            await asyncio.sleep(0.02)


async def test_a_task_answered_by_the_cache_completes_without_a_worker(client: Client) -> None:
    ns = f"sdk-task-cache-{suffix()}"
    await client.cache.put_namespace(ns)
    prompt = "Summarise the tides of the Bay of Fundy."
    entry = await client.cache.store(
        ns,
        prompt,
        {"summary": "very high"},
        usage=CacheUsage(input_tokens=120, output_tokens=30, cost_micro_usd=900),
    )
    cap = f"nobody-{suffix()}"  # no worker ever declares it
    spec = WorkflowSpec("cached").task(
        "sum", capability=cap, input={"p": prompt}, cache_key=CacheKey(ns, prompt)
    )
    handle = await client.submit_workflow(spec)
    assert await handle.result(timeout=RESULT_TIMEOUT) == {"summary": "very high"}
    task = await handle.task("sum")
    assert task.state is TaskState.COMPLETED
    assert task.cache_entry_id == entry.entry_id
    assert (task.attempt, task.worker_id) == (0, "")
    assert (task.usage.cache_hits, task.usage.task_attempts) == (1, 0)
    assert (task.usage.cache_saved_tokens, task.usage.cache_saved_cost_micro_usd) == (150, 900)
    described = await handle.describe()
    assert (described.usage.cache_saved_tokens, described.usage.cache_saved_cost_micro_usd) == (150, 900)
    assert task.raw.spec.cache_key.namespace == ns  # the key went over the wire as given


async def test_a_cache_miss_is_dispatched_and_its_output_stored_for_the_next_task(client: Client) -> None:
    ns = f"sdk-task-cache-{suffix()}"
    await client.cache.put_namespace(ns)
    prompt = f"Name a colour ({suffix()})."
    cap = f"colour-{suffix()}"
    runs: list[str] = []

    async def answer(ctx: TaskContext) -> dict[str, str]:
        runs.append(ctx.task_id)
        ctx.report_llm_call("test-model", input_tokens=7, output_tokens=3, cost_micro_usd=40)
        return {"colour": "teal"}

    key = CacheKey(ns, prompt, exact_only=True, ttl=3600)
    async with make_worker(client, {cap: answer}):
        first = await client.submit_workflow(WorkflowSpec("miss").task("ask", capability=cap, cache_key=key))
        assert await first.result(timeout=RESULT_TIMEOUT) == {"colour": "teal"}
    assert runs == ["ask"]
    missed = await first.task("ask")
    assert (missed.cache_entry_id, missed.usage.cache_hits, missed.usage.cache_saved_tokens) == ("", 0, 0)
    hit = await _stored(client, ns, prompt)
    assert hit.value == {"colour": "teal"}
    assert hit.usage == CacheUsage(input_tokens=7, output_tokens=3, cost_micro_usd=40)
    # The worker is gone: the same key is now answered by the stored entry.
    second = await client.submit_workflow(WorkflowSpec("hit").task("ask", capability=cap, cache_key=key))
    assert await second.result(timeout=RESULT_TIMEOUT) == {"colour": "teal"}
    answered = await second.task("ask")
    assert answered.cache_entry_id == hit.entry_id
    assert (answered.usage.cache_saved_tokens, answered.usage.cache_saved_cost_micro_usd) == (10, 40)
    assert runs == ["ask"]


async def test_a_read_only_cache_key_does_not_store_the_output(client: Client) -> None:
    ns = f"sdk-task-cache-{suffix()}"
    await client.cache.put_namespace(ns)
    cap = f"echo-{suffix()}"

    async def echo(ctx: TaskContext) -> Any:
        return ctx.input

    async with make_worker(client, {cap: echo}):
        read_only = WorkflowSpec("ro").task(
            "t", capability=cap, input="not kept", cache_key=CacheKey(ns, "read only prompt", read_only=True)
        )
        assert await (await client.submit_workflow(read_only)).result(timeout=RESULT_TIMEOUT) == "not kept"
        # A later storing task: once its entry is there, the earlier store would have been too.
        storing = WorkflowSpec("rw").task(
            "t", capability=cap, input="kept", cache_key=CacheKey(ns, "stored prompt")
        )
        assert await (await client.submit_workflow(storing)).result(timeout=RESULT_TIMEOUT) == "kept"
    assert (await _stored(client, ns, "stored prompt")).value == "kept"
    assert await client.cache.lookup(ns, "read only prompt", exact_only=True) is None
    [stats] = await client.cache.stats(ns)
    assert stats.entries == 1


async def test_cache_key_mistakes_name_the_field(client: Client) -> None:
    blank = WorkflowSpec().task("a", capability="c", cache_key=CacheKey("some-namespace", "  "))
    with pytest.raises(WorkflowSpecError) as local:
        await client.submit_workflow(blank)
    assert [v.field for v in local.value.field_violations] == ["spec.tasks[0].cache_key.prompt"]
    unknown = WorkflowSpec().task("a", capability="c", cache_key=CacheKey(f"missing-{suffix()}", "p"))
    with pytest.raises(InvalidArgumentError) as caught:
        await client.submit_workflow(unknown)
    assert caught.value.reason == "NAMESPACE_NOT_FOUND"
    assert [v.field for v in caught.value.field_violations] == ["spec.tasks[0].cache_key.namespace"]
