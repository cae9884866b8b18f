"""The Python SDK against a real sidecar: the flags of spawn and pools.put, and a workflow's tracestate.

``spawn()`` and ``pools.put()`` dropped the response's ``deduplicated`` and
``created`` flags, and the workflow builder could not set the W3C tracestate.
"""

from __future__ import annotations

import json
import pickle
import uuid
from typing import Any

import pytest

from are_sdk import (
    Client,
    InvalidArgumentError,
    PoolInfo,
    SpawnedTasks,
    TaskContext,
    TaskSpec,
    Worker,
    WorkflowSpec,
)

RESULT_TIMEOUT = 30.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


async def test_pools_put_says_whether_it_created_the_pool(client: Client) -> None:
    name = f"pool-{_suffix()}"
    first = await client.pools.put(name, max_concurrency=2)
    assert isinstance(first, PoolInfo)
    assert (first.name, first.max_concurrency, first.created) == (name, 2, True)
    again = await client.pools.put(name, max_concurrency=3)
    assert (again.max_concurrency, again.created) == (3, False)
    # A read is not a create: get and list leave it False.
    assert (await client.pools.get(name)).created is False
    assert all(not pool.created for pool in await client.pools.list())


async def test_a_handles_spawn_says_whether_the_request_id_matched_an_earlier_spawn(client: Client) -> None:
    capability = f"nobody-{_suffix()}"  # no worker: the workflow stays open
    handle = await client.submit_workflow(WorkflowSpec("spawn-flags").task("a", capability=capability))
    try:
        children = (
            TaskSpec("b", capability=capability),
            TaskSpec("c", capability=capability, depends_on=("b",)),
        )
        first = await handle.spawn(*children, request_id="flags.spawn")
        assert isinstance(first, SpawnedTasks)
        assert first == ["b", "c"]  # still the list of ids it always was
        assert first.deduplicated is False
        retried = await handle.spawn(*children, request_id="flags.spawn")
        assert (retried, retried.deduplicated) == (["b", "c"], True)
        assert json.loads(json.dumps(retried)) == ["b", "c"]
        copied = pickle.loads(pickle.dumps(retried))
        assert (copied, copied.deduplicated) == (["b", "c"], True)
        assert "deduplicated=True" in repr(retried)
        assert len(await handle.tasks()) == 3  # the retry added nothing
    finally:
        await handle.cancel()


async def test_a_workers_spawn_says_whether_the_request_id_matched_an_earlier_spawn(client: Client) -> None:
    capability = f"spawner-{_suffix()}"
    seen: dict[str, Any] = {}
    worker = Worker(client, name=f"spawner-{_suffix()}")

    @worker.handler(capability)
    async def plan(ctx: TaskContext) -> Any:
        if ctx.task_id != "plan":
            return "child"
        child = TaskSpec("child", capability=capability)
        first = await ctx.spawn(child, request_id=f"{ctx.task_id}.spawn")
        retried = await ctx.spawn(child, request_id=f"{ctx.task_id}.spawn")
        seen.update(first=(list(first), first.deduplicated), retried=(list(retried), retried.deduplicated))
        return {"spawned": retried}  # JSON-serialisable as a list

    async with worker:
        spec = WorkflowSpec("worker-spawn-flags").task("plan", capability=capability)
        handle = await client.submit_workflow(spec)
        await handle.wait(timeout=RESULT_TIMEOUT)
        assert (await handle.task("plan")).output == {"spawned": ["child"]}
    assert seen == {"first": (["child"], False), "retried": (["child"], True)}


async def test_a_workers_attempt_carries_the_submitters_tracestate(client: Client) -> None:
    """The sidecar keeps a valid traceparent's tracestate and hands it to every attempt's worker."""
    capability = f"traced-{_suffix()}"
    seen: dict[str, tuple[str, str]] = {}
    worker = Worker(client, name=f"traced-{_suffix()}")

    @worker.handler(capability)
    async def record(ctx: TaskContext) -> str:
        seen[ctx.workflow_id] = (ctx.traceparent, ctx.tracestate)
        return "ok"

    state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    async with worker:
        traced = WorkflowSpec("tracestate", traceparent=TRACEPARENT, tracestate=state).task(
            "a", capability=capability
        )
        assert traced.to_proto().trace_context.tracestate == state
        handle = await client.submit_workflow(traced)
        await handle.wait(timeout=RESULT_TIMEOUT)
        assert (await handle.describe()).trace_id == TRACE_ID  # the sidecar took the trace context
        # Without a valid traceparent the tracestate belongs to no trace: dropped (W3C).
        raw = WorkflowSpec("untraced").task("a", capability=capability).to_proto()
        raw.trace_context.tracestate = state
        untraced = await client.submit_workflow(raw)
        await untraced.wait(timeout=RESULT_TIMEOUT)
    traceparent, tracestate = seen[handle.workflow_id]
    assert traceparent.startswith(f"00-{TRACE_ID}-")
    assert tracestate == state
    assert seen[untraced.workflow_id][1] == ""


async def test_a_tracestate_over_512_characters_is_refused_naming_the_field(client: Client) -> None:
    spec = WorkflowSpec("long-state").task("a", capability=f"nobody-{_suffix()}").to_proto()
    spec.trace_context.traceparent = TRACEPARENT
    spec.trace_context.tracestate = "k=" + "v" * 511
    with pytest.raises(InvalidArgumentError) as refused:
        await client.submit_workflow(spec)
    assert refused.value.reason == "LIMIT_EXCEEDED"
    assert [v.field for v in refused.value.field_violations] == ["spec.trace_context.tracestate"]
