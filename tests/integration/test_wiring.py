"""The capabilities wired into the scheduler, over real gRPC against the session sidecar.

State: initial state as version 1, completion patches and output pointers in
the completion's commit, retention, the write gate, DeleteWorkflow, fork.
Router: intents routed at scheduling (TASK_ROUTED; a class served only by
unary pollers counts as served) and again while they wait when a worker
class comes or goes, workers mirrored in the router. Cache: a
cache-keyed task answered without dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Iterator
from itertools import count
from typing import Any

import pytest
from google.protobuf import duration_pb2

from are_sdk import (
    AgentCard,
    Client,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TaskContext,
    Worker,
    WorkflowSpec,
)
from are_sdk._proto.are.v1 import agent_pb2, event_pb2, router_service_pb2, state_pb2, trace_service_pb2
from are_sdk._proto.are.v1 import cache_service_pb2 as cs
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_service_pb2 as ss
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from are_sdk.testing import SidecarProcess
from tests.integration.test_scheduler import (
    StreamWorker,
    completion,
    expect_error,
    get_task,
    submit,
    task,
    unique_capability,
    wait_closed,
)

_ids = count()


def _wid(name: str) -> str:
    return f"wire-{name}-{os.getpid()}-{next(_ids)}"


def _json(value: Any) -> c.Payload:
    return c.Payload(data=json.dumps(value).encode(), content_type="application/json")


async def _state(client: Client, workflow_id: str, *paths: str) -> tuple[int, dict[str, Any]]:
    response = await client.raw.state.GetState(ss.GetStateRequest(workflow_id=workflow_id, paths=list(paths)))
    return response.version, {v.path: json.loads(v.value_json) for v in response.values}


async def _poll_one(client: Client, capability: str) -> w.TaskAssignment:
    async with asyncio.timeout(20):
        while True:
            response: w.PollTaskResponse = await client.raw.worker.PollTask(
                w.PollTaskRequest(worker_name="wiring", capabilities=[capability], max_tasks=1), timeout=5
            )
            if response.assignments:
                return response.assignments[0]


async def _events(client: Client, workflow_id: str, event_type: event_pb2.EventType) -> list[event_pb2.Event]:
    response = await client.raw.trace.ListEvents(
        trace_service_pb2.ListEventsRequest(
            filter=event_pb2.EventFilter(workflow_ids=[workflow_id], event_types=[event_type])
        )
    )
    return list(response.events)


def _attributes(event: event_pb2.Event) -> dict[str, Any]:
    return {k: getattr(v, v.WhichOneof("value")) for k, v in event.attributes.items()}


# ------------------------------------------------------------------- state


async def test_initial_state_is_version_1_with_the_workflows_own_retention(client: Client) -> None:
    cap = unique_capability("nobody")
    wid = await submit(
        client,
        task("a", cap),
        workflow_id=_wid("init"),
        initial_state=_json({"plan": {"steps": [1, 2]}, "n": 0}),
        state_retention=wf.StateRetention(keep_versions=2, keep_duration=duration_pb2.Duration(nanos=1000)),
    )
    version, values = await _state(client, wid, "/plan/steps", "/n")
    assert version == 1
    assert values == {"/plan/steps": [1, 2], "/n": 0}
    got = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=wid))
    assert got.workflow.state_version == 1
    # The trace shows the workflow before its first state, and version 1 names that event.
    events = await client.raw.trace.ListEvents(
        trace_service_pb2.ListEventsRequest(filter=event_pb2.EventFilter(workflow_ids=[wid]))
    )
    first, second = events.events[:2]
    assert (first.event_type, second.event_type) == (
        event_pb2.EVENT_TYPE_WORKFLOW_SUBMITTED,
        event_pb2.EVENT_TYPE_STATE_PATCHED,
    )
    checkpoints = await client.raw.state.ListCheckpoints(ss.ListCheckpointsRequest(workflow_id=wid))
    (initial,) = checkpoints.checkpoints
    assert initial.event_sequence == second.sequence
    for n in range(1, 5):
        await client.raw.state.PatchState(
            ss.PatchStateRequest(
                workflow_id=wid, patch=state_pb2.StatePatch(merge_patch_json=json.dumps({"n": n}).encode())
            )
        )
    listed = await client.raw.state.ListCheckpoints(ss.ListCheckpointsRequest(workflow_id=wid))
    assert [cp.version for cp in listed.checkpoints] == [5, 4]  # keep_versions=2, not the default 1,000
    # A workflow without initial_state starts at `{}`, version 1.
    bare = await submit(client, task("a", cap))
    assert await _state(client, bare) == (1, {"": {}})
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wid))
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=bare))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"{nope", "INVALID_JSON"), (b"[1, 2]", "INVALID_JSON")],
)
async def test_a_bad_initial_state_names_the_field_and_stores_nothing(
    client: Client, payload: bytes, reason: str
) -> None:
    wid = _wid("badinit")
    await expect_error(
        submit(client, task("a"), workflow_id=wid, initial_state=c.Payload(data=payload)),
        InvalidArgumentError,
        reason,
        "spec.initial_state.data",
    )
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=wid)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    await expect_error(
        client.raw.state.GetState(ss.GetStateRequest(workflow_id=wid)), NotFoundError, "WORKFLOW_NOT_FOUND"
    )


async def test_a_malformed_retention_duration_names_the_field_and_stores_nothing(client: Client) -> None:
    """nanos of the wrong sign (1 s - 0.999999999 s) was taken as 1 ns of retention."""
    wid = _wid("badkeep")
    retention = wf.StateRetention(keep_duration=duration_pb2.Duration(seconds=1, nanos=-999_999_999))
    await expect_error(
        submit(client, task("a"), workflow_id=wid, state_retention=retention),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "spec.state_retention.keep_duration",
    )
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=wid)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )


async def test_a_completion_patch_and_output_pointer_are_the_attempts_state_write(client: Client) -> None:
    cap = unique_capability("writer")
    wid = await submit(
        client,
        task("a", cap, output_state_pointer="/results/a"),
        task("b", cap, "a"),
        initial_state=_json({"results": {}, "log": []}),
    )
    # Unary: a merge patch plus the output pointer make one new version, written by the attempt.
    a = await _poll_one(client, cap)
    assert a.state_version == 1  # the latest version at dispatch
    response = await client.raw.worker.CompleteTask(
        w.CompleteTaskRequest(
            completion=completion(
                a,
                {"answer": 42},
                state_patch=state_pb2.StatePatch(merge_patch_json=b'{"seen": "a"}'),
            )
        )
    )
    assert response.state_version == 2
    version, values = await _state(client, wid, "/results/a", "/seen", "/log")
    assert (version, values) == (2, {"/results/a": {"answer": 42}, "/seen": "a", "/log": []})
    checkpoints = await client.raw.state.ListCheckpoints(ss.ListCheckpointsRequest(workflow_id=wid))
    assert (checkpoints.checkpoints[0].task_id, checkpoints.checkpoints[0].attempt) == ("a", a.attempt)
    # Stream: operations in the completion, acked once the write is durable.
    async with StreamWorker(client, lambda _: None, capabilities=[cap]) as worker:
        async with asyncio.timeout(20):
            while not worker.held:
                await asyncio.sleep(0.02)
        b = next(iter(worker.held.values()))
        ops = state_pb2.PatchOperationList(
            operations=[
                state_pb2.PatchOperation(
                    op=state_pb2.PATCH_OPERATION_TYPE_SET, path="/log/-", value_json=b'"b"'
                )
            ]
        )
        await worker.send(
            w.ConnectRequest(
                complete=w.CompletionBatch(
                    completions=[completion(b, "done", state_patch=state_pb2.StatePatch(operations=ops))]
                )
            )
        )
        acks = await worker.wait_acks(1)
        assert acks[0].accepted, acks[0]
    closed = await wait_closed(client, wid)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert await _state(client, wid, "/log") == (3, {"/log": ["b"]})
    got = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=wid))
    assert got.workflow.state_version == 3


async def test_a_completion_whose_state_write_cannot_apply_records_nothing(client: Client) -> None:
    cap = unique_capability("badwrite")
    wid = await submit(client, task("a", cap, output_state_pointer="/out"))
    a = await _poll_one(client, cap)
    bad_patch = state_pb2.StatePatch(
        operations=state_pb2.PatchOperationList(
            operations=[
                state_pb2.PatchOperation(
                    op=state_pb2.PATCH_OPERATION_TYPE_SET, path="/x/y/z", value_json=b"1"
                )
            ]
        )
    )
    await expect_error(
        client.raw.worker.CompleteTask(
            w.CompleteTaskRequest(completion=completion(a, 1, state_patch=bad_patch))
        ),
        FailedPreconditionError,
        "PATCH_NOT_APPLICABLE",
        "completion.state_patch.operations.operations[0].path",
    )
    # The output must be JSON to land at the pointer.
    await expect_error(
        client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, b"not json"))),
        InvalidArgumentError,
        "INVALID_JSON",
        "completion.output.data",
    )
    assert (await get_task(client, wid, "a")).state == t.TASK_STATE_RUNNING
    assert (await _state(client, wid))[0] == 1
    response = await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, [1, 2])))
    assert response.state_version == 2
    assert await _state(client, wid, "/out") == (2, {"/out": [1, 2]})


async def test_an_invalid_output_pointer_is_refused_at_submit(client: Client) -> None:
    await expect_error(
        submit(client, task("a", output_state_pointer="no-slash")),
        InvalidArgumentError,
        "INVALID_JSON_POINTER",
        "spec.tasks[0].output_state_pointer",
    )


async def test_state_writes_are_gated_on_the_scheduler(client: Client) -> None:
    patch = state_pb2.StatePatch(merge_patch_json=b'{"k": 1}')
    await expect_error(
        client.raw.state.PatchState(ss.PatchStateRequest(workflow_id=_wid("ghost"), patch=patch)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    cap = unique_capability("gate")
    wid = await submit(client, task("a", cap))
    await expect_error(
        client.raw.state.PatchState(
            ss.PatchStateRequest(workflow_id=wid, patch=patch, task_id="a", attempt=1)
        ),
        FailedPreconditionError,
        "TASK_NOT_HELD",
    )
    a = await _poll_one(client, cap)
    held = await client.raw.state.PatchState(
        ss.PatchStateRequest(workflow_id=wid, patch=patch, task_id="a", attempt=a.attempt)
    )
    assert held.version == 2
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wid))
    await wait_closed(client, wid)
    await expect_error(
        client.raw.state.PatchState(ss.PatchStateRequest(workflow_id=wid, patch=patch)),
        FailedPreconditionError,
        "WORKFLOW_CLOSED",
    )


async def test_delete_workflow_removes_a_closed_workflow_and_its_state(client: Client) -> None:
    cap = unique_capability("del")
    wid = await submit(client, task("a", cap), initial_state=_json({"big": "x" * 1000}))
    await expect_error(
        client.raw.scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=wid)),
        FailedPreconditionError,
        "WORKFLOW_NOT_CLOSED",
    )
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wid))
    await wait_closed(client, wid)
    deleted = await client.raw.scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=wid))
    assert deleted.freed_bytes > 1000
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=wid)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    await expect_error(
        client.raw.state.GetState(ss.GetStateRequest(workflow_id=wid)), NotFoundError, "WORKFLOW_NOT_FOUND"
    )
    await expect_error(
        client.raw.scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=wid)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )


async def test_fork_keeps_tasks_completed_by_the_checkpoint_and_reruns_the_rest(client: Client) -> None:
    cap = unique_capability("fork")
    wid = await submit(
        client,
        task("a", cap),
        task("b", cap, "a"),
        task("c", cap, "b"),
        initial_state=_json({"stage": 0}),
    )
    for stage, name in enumerate(("a", "b"), start=1):
        assignment = await _poll_one(client, cap)
        assert assignment.task_id == name
        patch = state_pb2.StatePatch(merge_patch_json=json.dumps({"stage": stage}).encode())
        await client.raw.worker.CompleteTask(
            w.CompleteTaskRequest(completion=completion(assignment, {"by": name}, state_patch=patch))
        )
    # Version 2 was written by a's completion: at that point only a had completed.
    forked = await client.raw.state.ForkWorkflow(ss.ForkWorkflowRequest(workflow_id=wid, version=2))
    new = forked.workflow_id
    assert await _state(client, new, "/stage") == (1, {"/stage": 1})
    got = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=new))
    assert got.workflow.forked_from.workflow_id == wid
    assert got.workflow.forked_from.state_version == 2
    page = await client.trace.list_events(workflow_ids=[new], event_types=["WORKFLOW_FORKED"])
    (fork_event,) = page.events  # the attribute names event.proto documents
    assert fork_event.attributes["are.fork.source_workflow_id"].string_value == wid
    assert fork_event.attributes["are.fork.source_state_version"].int_value == 2
    kept = await get_task(client, new, "a")
    assert kept.state == t.TASK_STATE_COMPLETED
    assert json.loads(kept.output.data) == {"by": "a"}
    assert (await get_task(client, new, "c")).state == t.TASK_STATE_PENDING
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wid))
    again = await _poll_one(client, cap)
    assert (again.workflow_id, again.task_id) == (new, "b")
    assert json.loads(again.dependencies[0].output.data) == {"by": "a"}
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=new))


async def test_a_fork_the_scheduler_refuses_copies_nothing(client: Client) -> None:
    """An unknown rerun task is refused as state_service.proto says, before any state is copied."""
    cap = unique_capability("fork-refused")
    wid = await submit(client, task("a", cap), initial_state=_json({"stage": 0}))
    new = _wid("fork-refused")
    request = ss.ForkWorkflowRequest(workflow_id=wid, new_workflow_id=new, rerun_task_ids=["a", "nope"])
    refused = client.raw.state.ForkWorkflow(request)
    await expect_error(refused, InvalidArgumentError, "UNKNOWN_DEPENDENCY", "rerun_task_ids[1]")
    await expect_error(
        client.raw.state.GetState(ss.GetStateRequest(workflow_id=new)), NotFoundError, "WORKFLOW_NOT_FOUND"
    )
    # Nothing was left behind: the same new id forks once the request is right.
    forked = await client.raw.state.ForkWorkflow(
        ss.ForkWorkflowRequest(workflow_id=wid, new_workflow_id=new, rerun_task_ids=["a"])
    )
    assert forked.workflow_id == new
    assert await _state(client, new, "/stage") == (1, {"/stage": 0})
    for workflow_id in (wid, new):
        await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_fork_whose_caller_gives_up_is_whole_or_absent(client: Client) -> None:
    """A caller whose deadline passes during a fork's first commit leaves no half fork behind.

    The document's commit was awaited unshielded: a cancel there left the
    document (and the fork's pending record) stored while the rest of the
    fork never ran, until the next start undid it: GetState found a workflow
    GetWorkflow did not, and its id could be neither submitted nor forked to.
    Deadlines from 0.2 to 6 ms land before, in and after that commit; each
    fork must end wholly present (state and workflow) or wholly absent.
    """
    cap = unique_capability("fork-gone")
    source = await submit(client, task("a", cap), initial_state=_json({"stage": 0}))
    targets = []
    for i in range(60):
        new = _wid(f"fork-gone-{i}")
        targets.append(new)
        with contextlib.suppress(DeadlineExceededError):
            await client.raw.state.ForkWorkflow(
                ss.ForkWorkflowRequest(workflow_id=source, new_workflow_id=new), timeout=0.0002 + i * 0.0001
            )
    present = 0
    for new in targets:
        async with asyncio.timeout(10):  # a fork still running settles within milliseconds
            while True:
                has_state = await _found(client.raw.state.GetState(ss.GetStateRequest(workflow_id=new)))
                known = await _found(client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=new)))
                if has_state == known:
                    break
                await asyncio.sleep(0.01)
        present += has_state
        if not has_state:  # absent means absent: the id is free
            again = ss.ForkWorkflowRequest(workflow_id=source, new_workflow_id=new)
            await client.raw.state.ForkWorkflow(again)
        await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=new))
    assert present > 0  # some forks ran (or finished) after their callers gave up
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=source))


async def _found(call: Awaitable[Any]) -> bool:
    """Whether a Get call finds its workflow (False on NOT_FOUND)."""
    try:
        await call
    except NotFoundError:
        return False
    return True


# ------------------------------------------------------------------ router


async def test_an_intent_is_routed_at_scheduling_and_recorded(client: Client) -> None:
    cap = unique_capability("translate")
    words = f"translate legal contracts into klingon zq{next(_ids)}x"
    await client.raw.router.RegisterAgent(
        router_service_pb2.RegisterAgentRequest(
            agent=agent_pb2.AgentCard(
                agent_id=f"agent-{cap}", description=words, capabilities=[cap], cost_per_call_micro_usd=5
            )
        )
    )
    wid = await submit(client, t.TaskSpec(task_id="a", intent=words, input=_json({"doc": 1})))
    assignment = await _poll_one(client, cap)
    assert (assignment.workflow_id, assignment.capability) == (wid, cap)
    assert (await get_task(client, wid, "a")).capability == cap
    routed = await _events(client, wid, event_pb2.EVENT_TYPE_TASK_ROUTED)
    assert len(routed) == 1
    attributes = _attributes(routed[0])
    assert attributes["are.route.capability"] == cap
    assert attributes["are.route.agent_id"] == f"agent-{cap}"
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(assignment, "ok")))
    assert (await wait_closed(client, wid)).state == wf.WORKFLOW_STATE_COMPLETED


async def test_workers_declare_their_cards_and_intents_go_to_the_cheapest_class(client: Client) -> None:
    n = next(_ids)
    words = f"summarise quarterly filings of mining firms zq{n}x"
    classes = {"cheap": 3, "dear": 900}
    caps = {name: unique_capability(f"sum-{name}") for name in classes}
    workers = []
    for name, cost in classes.items():
        card = AgentCard(
            f"class-{name}-{n}", description=words, capabilities=(caps[name],), cost_per_call_micro_usd=cost
        )
        worker = Worker(client, name=f"{name}-{n}", card=card)

        def reply(ctx: TaskContext, answer: str = name) -> str:
            return answer

        worker.register(caps[name], reply)
        workers.append(worker)
    async with workers[0], workers[1]:
        cards, _ = await client.router.list_agents(capability=caps["cheap"])
        assert [(a.agent_id, a.source, a.cost_per_call_micro_usd, a.available) for a in cards] == [
            (f"class-cheap-{n}", "worker", 3, True)
        ]
        assert cards[0].description == words
        handle = await client.submit_workflow(WorkflowSpec().task("a", intent=words))
        assert await handle.result(timeout=30) == "cheap"  # cost-biased: both clear the threshold
        routed = await _events(client, handle.workflow_id, event_pb2.EVENT_TYPE_TASK_ROUTED)
        assert _attributes(routed[0])["are.route.agent_id"] == f"class-cheap-{n}"
    cards, _ = await client.router.list_agents(capability=caps["cheap"])
    assert [a.available for a in cards] in ([], [False])  # the worker left: its class is gone


async def test_an_intent_goes_to_a_class_served_only_by_unary_pollers_not_to_an_unserved_card(
    client: Client,
) -> None:
    """Unary polls are not declared to the router, yet a class served only by pollers counts as
    served when an intent is routed: the task goes to it rather than to a cheaper registered card
    that nobody serves (where it would wait for a worker that never comes)."""
    n = next(_ids)
    words = f"catalogue medieval herbarium manuscripts from padua zq{n}x"
    cheap, polled = unique_capability("herb-cheap"), unique_capability("herb-polled")
    for name, capability, cost in (("cheap", cheap, 3), ("polled", polled, 900)):
        card = agent_pb2.AgentCard(
            agent_id=f"herb-{name}-{n}",
            description=words,
            capabilities=[capability],
            cost_per_call_micro_usd=cost,
        )
        await client.raw.router.RegisterAgent(router_service_pb2.RegisterAgentRequest(agent=card))
    # The dear class's poller: its poll ends empty (nothing is queued); it would poll again at once.
    idle = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name=f"herb-{n}", capabilities=[polled], max_tasks=1), timeout=2
    )
    assert list(idle.assignments) == []
    wid = await submit(client, t.TaskSpec(task_id="a", intent=words, input=_json({"folio": 1})))
    [routed] = await _events(client, wid, event_pb2.EVENT_TYPE_TASK_ROUTED)
    attributes = _attributes(routed)
    assert (attributes["are.route.capability"], attributes["are.route.agent_id"]) == (
        polled,
        f"herb-polled-{n}",
    )
    assignment = await _poll_one(client, polled)
    assert (assignment.workflow_id, assignment.task_id, assignment.capability) == (wid, "a", polled)
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(assignment, "ok")))
    assert (await wait_closed(client, wid)).state == wf.WORKFLOW_STATE_COMPLETED


@pytest.fixture(scope="module")
def quick_reroute_sidecar() -> Iterator[SidecarProcess]:
    """A sidecar whose worker classes may go unserved for 1 s (not 10) before their tasks move."""
    with SidecarProcess.start(args=["--router-reroute-grace-s", "1"]) as process:
        yield process


@pytest.fixture
async def quick(quick_reroute_sidecar: SidecarProcess) -> AsyncIterator[Client]:
    async with await Client.connect(quick_reroute_sidecar.target) as connected:
        yield connected


async def test_a_queued_intent_task_goes_to_the_class_that_comes_after_its_own_left(quick: Client) -> None:
    """Re-routing: the cheap class is full, then leaves; the task waits (past the grace), then goes
    to the dear class."""
    client = quick
    n = next(_ids)
    words = f"appraise antique clocks from geneva workshops zq{n}x"
    cheap, dear = unique_capability("clock-cheap"), unique_capability("clock-dear")
    # The cheap class: one raw stream worker with one slot, which a blocker holds.
    stream = client.raw.worker.Connect()
    card = agent_pb2.AgentCard(
        agent_id=f"clock-cheap-{n}", description=words, capabilities=[cheap], cost_per_call_micro_usd=3
    )
    await stream.write(
        w.ConnectRequest(
            register=w.WorkerRegistration(
                worker_name=f"cheap-{n}", capabilities=[cheap], max_concurrency=1, agent_card=card
            )
        )
    )
    assert (await stream.read()).WhichOneof("message") == "registered"
    blocker = await submit(client, task("block", cheap))
    async with asyncio.timeout(20):
        while (message := await stream.read()).WhichOneof("message") != "assignments":
            pass
    assert [a.task_id for a in message.assignments.assignments] == ["block"]
    wid = await submit(client, t.TaskSpec(task_id="a", intent=words, input=_json({"clock": 1})))
    [first] = await _events(client, wid, event_pb2.EVENT_TYPE_TASK_ROUTED)
    assert _attributes(first)["are.route.capability"] == cheap  # served then, and the cheaper
    # The cheap class leaves; nothing else matches yet: the task keeps waiting, its attempt unspent.
    await stream.done_writing()
    stream.cancel()
    async with asyncio.timeout(10):
        while (await client.router.list_agents(capability=cheap))[0]:
            await asyncio.sleep(0.02)
    waiting = await get_task(client, wid, "a")
    assert (waiting.state, waiting.attempt, waiting.capability) == (t.TASK_STATE_SCHEDULED, 0, cheap)
    # The dear class connects: the task is routed again and served by it.
    dear_card = AgentCard(
        f"clock-dear-{n}", description=words, capabilities=(dear,), cost_per_call_micro_usd=900
    )
    worker = Worker(client, name=f"dear-{n}", card=dear_card)
    worker.register(dear, lambda ctx: "dear")
    async with worker:
        closed = await wait_closed(client, wid, timeout=30)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    done = await get_task(client, wid, "a")
    assert (done.capability, done.attempt) == (dear, 1)
    routed = [_attributes(e) for e in await _events(client, wid, event_pb2.EVENT_TYPE_TASK_ROUTED)]
    assert len(routed) == 2
    assert routed[0]["are.route.capability"] == cheap
    assert routed[0].get("are.route.rerouted") is None
    again = routed[1]
    assert (again["are.route.capability"], again["are.route.agent_id"]) == (dear, f"clock-dear-{n}")
    assert again["are.route.rerouted"] is True
    assert again["are.route.previous_capability"] == cheap
    assert again["are.intent"] == words
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=blocker))


async def test_a_queued_intent_task_follows_its_card_to_the_new_capability_of_a_rolling_upgrade(
    quick: Client,
) -> None:
    """Two stream workers declare one card id: the old one with capability v1 (full), the new
    one with v2. The card's capabilities are its first worker's, so the intent goes to v1 and
    waits; when the old worker leaves, the card serves v2 alone, and the task must be routed
    again and run there (it used to wait on v1, which nobody serves any more)."""
    client = quick
    n = next(_ids)
    words = f"restore faded daguerreotype plates from lyon studios qv{n}w"
    v1, v2 = unique_capability("plate-v1"), unique_capability("plate-v2")
    agent_id = f"plate-restorer-{n}"

    async def connect(name: str, capability: str) -> Any:
        stream = client.raw.worker.Connect()
        card = agent_pb2.AgentCard(agent_id=agent_id, description=words, capabilities=[capability])
        registration = w.WorkerRegistration(
            worker_name=name, capabilities=[capability], max_concurrency=1, agent_card=card
        )
        await stream.write(w.ConnectRequest(register=registration))
        assert (await stream.read()).WhichOneof("message") == "registered"
        return stream

    old = await connect(f"old-{n}", v1)
    blocker = await submit(client, task("block", v1))
    async with asyncio.timeout(20):
        while (message := await old.read()).WhichOneof("message") != "assignments":
            pass
    assert [a.task_id for a in message.assignments.assignments] == ["block"]
    new = await connect(f"new-{n}", v2)
    wid = await submit(client, t.TaskSpec(task_id="a", intent=words, input=_json({"plate": 1})))
    [first] = await _events(client, wid, event_pb2.EVENT_TYPE_TASK_ROUTED)
    assert _attributes(first)["are.route.capability"] == v1
    await old.done_writing()
    old.cancel()
    async with asyncio.timeout(20):
        while (message := await new.read()).WhichOneof("message") != "assignments":
            pass
    [assignment] = message.assignments.assignments
    assert (assignment.workflow_id, assignment.task_id, assignment.attempt) == (wid, "a", 1)
    batch = w.CompletionBatch(completions=[completion(assignment, "restored")])
    await new.write(w.ConnectRequest(complete=batch))
    closed = await wait_closed(client, wid, timeout=20)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    again = _attributes((await _events(client, wid, event_pb2.EVENT_TYPE_TASK_ROUTED))[-1])
    assert (again["are.route.capability"], again["are.route.previous_capability"]) == (v2, v1)
    await new.done_writing()
    new.cancel()
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=blocker))


async def test_a_declared_card_is_checked_and_names_the_field(client: Client) -> None:
    cap = unique_capability("bad-card")
    bad_cards = {
        "register.agent_card.vector": AgentCard("bad-vector", capabilities=(cap,), vector=[1.0, 0.0]),
        "register.agent_card.capabilities[0]": AgentCard("bad-cap", capabilities=("not-served",)),
        "register.agent_card.agent_id": AgentCard("bad id!", capabilities=(cap,)),
    }
    for field, card in bad_cards.items():
        worker = Worker(client, name=f"bad-card-{next(_ids)}", card=card)
        worker.register(cap, lambda ctx: None)
        with pytest.raises(InvalidArgumentError) as caught:
            await worker.run(handle_signals=False)
        assert [v.field for v in caught.value.field_violations] == [field]
        assert worker.stats["connects"] == 0
    cards, _ = await client.router.list_agents(capability=cap)
    assert cards == []  # nothing was declared


async def test_an_intent_nothing_matches_fails_with_routing(client: Client) -> None:
    words = f"qqq{next(_ids)} zzzz vvvv wwww nothing registered matches this"
    wid = await submit(
        client,
        t.TaskSpec(task_id="a", intent=words, retry_policy=c.RetryPolicy(maximum_attempts=1)),
    )
    closed = await wait_closed(client, wid)
    assert closed.state == wf.WORKFLOW_STATE_FAILED
    failed = await get_task(client, wid, "a")
    assert failed.state == t.TASK_STATE_FAILED
    assert failed.failure.kind == c.FAILURE_KIND_ROUTING


async def test_connected_workers_appear_in_the_router_and_leave_at_once(client: Client) -> None:
    cap = unique_capability("visible")

    async def cards() -> list[agent_pb2.AgentCard]:
        response = await client.raw.router.ListAgents(router_service_pb2.ListAgentsRequest(capability=cap))
        return list(response.agents)

    assert await cards() == []
    wid = await submit(client, task("a", cap))
    async with StreamWorker(client, lambda _: None, capabilities=[cap], concurrency=3) as worker:
        async with asyncio.timeout(20):
            while not worker.held:
                await asyncio.sleep(0.02)
        [card] = await cards()
        assert worker.worker_id in card.worker_ids
        assert (card.available, card.running, card.capacity) == (True, 1, 3)
    async with asyncio.timeout(10):
        while await cards():
            await asyncio.sleep(0.02)
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wid))


# ------------------------------------------------------------------- cache


async def test_a_cache_keyed_task_is_answered_from_the_cache_without_dispatch(client: Client) -> None:
    namespace = f"wire{next(_ids)}-{os.getpid()}"
    await client.raw.cache.PutNamespace(cs.PutNamespaceRequest(namespace=cs.CacheNamespace(name=namespace)))
    cap = unique_capability("llm")
    prompt = "what is the capital of france"
    key = t.TaskCacheKey(namespace=namespace, prompt=prompt)
    # A miss is dispatched; its output is stored under the prompt.
    first = await submit(client, task("a", cap, cache_key=key))
    assignment = await _poll_one(client, cap)
    spent = c.Usage(input_tokens=120, output_tokens=30, cost_micro_usd=4_500, llm_calls=1)
    await client.raw.worker.CompleteTask(
        w.CompleteTaskRequest(completion=completion(assignment, "Paris", usage=spent))
    )
    await wait_closed(client, first)
    assert len(await _events(client, first, event_pb2.EVENT_TYPE_TASK_CACHE_MISS)) == 1
    async with asyncio.timeout(10):  # the store follows the durable completion
        while True:
            found = await client.raw.cache.LookupCache(
                cs.LookupCacheRequest(namespace=namespace, prompt=prompt)
            )
            if found.hit:
                break
            await asyncio.sleep(0.02)
    # A hit completes the task with the cached output; nothing is dispatched.
    second = await submit(client, task("a", cap, cache_key=key))
    closed = await wait_closed(client, second)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert json.loads(closed.result.data) == "Paris"
    # Seen once in a loaded CI run: the watch reported the workflow closed before
    # ListEvents showed its TASK_CACHE_HIT; allow the recorder a moment (bounded).
    async with asyncio.timeout(10):
        while not (hits := await _events(client, second, event_pb2.EVENT_TYPE_TASK_CACHE_HIT)):
            await asyncio.sleep(0.05)
    assert len(hits) == 1
    assert _attributes(hits[0])["are.cache.tier"] == "EXACT"
    # The event's usage is what the hit saved: what the cached answer cost when made.
    saved = hits[0].usage
    assert (saved.input_tokens, saved.output_tokens, saved.cost_micro_usd) == (120, 30, 4_500)
    answered = await get_task(client, second, "a")
    assert answered.attempt == 0
    assert answered.cache_entry_id == _attributes(hits[0])["are.cache.entry_id"]
    assert answered.usage.cache_hits == 1
    assert answered.usage.cache_saved_cost_micro_usd == 4_500
    # Cost accounting: the hit saved what the first answer cost, and cost nothing itself.
    assert closed.usage.cache_hits == 1
    assert closed.usage.cache_saved_tokens == 150
    assert closed.usage.cache_saved_cost_micro_usd == 4_500
    assert closed.usage.usage.cost_micro_usd == 0


async def test_a_cache_key_in_an_unknown_namespace_is_refused(client: Client) -> None:
    key = t.TaskCacheKey(namespace=f"missing{next(_ids)}", prompt="p")
    await expect_error(
        submit(client, task("a", cache_key=key)),
        InvalidArgumentError,
        "NAMESPACE_NOT_FOUND",
        "spec.tasks[0].cache_key.namespace",
    )


# ------------------------------------------------------------------- watch


async def _collect(client: Client, request: s.WatchWorkflowRequest) -> list[s.WatchWorkflowResponse]:
    async with asyncio.timeout(20):
        return [message async for message in client.raw.scheduler.WatchWorkflow(request)]


async def test_watch_with_include_tasks_sends_each_change_with_its_event_and_task(client: Client) -> None:
    cap = unique_capability("watch")
    wid = await submit(client, task("a", cap), task("b", cap, "a"))
    watching = asyncio.ensure_future(
        _collect(client, s.WatchWorkflowRequest(workflow_id=wid, include_tasks=True))
    )
    async with StreamWorker(client, lambda a: {"ok": a.task_id}, capabilities=[cap]):
        messages = await watching
    first, *changes = messages
    assert not first.HasField("event")  # the initial status
    assert [m.sequence for m in changes] == sorted({m.sequence for m in changes})
    assert all(m.event.sequence == m.sequence for m in changes)
    kinds = [m.event.event_type for m in changes]
    assert kinds[-1] == event_pb2.EVENT_TYPE_WORKFLOW_COMPLETED
    completed = [m for m in changes if m.event.event_type == event_pb2.EVENT_TYPE_TASK_COMPLETED]
    assert [m.task.task_id for m in completed] == ["a", "b"]
    assert not completed[0].task.HasField("output")  # tasks come without payloads
    assert changes[-1].workflow.state == wf.WORKFLOW_STATE_COMPLETED
    # Resuming after a sequence replays each change after it, one message per change.
    middle = completed[0].sequence
    replay = await _collect(client, s.WatchWorkflowRequest(workflow_id=wid, after_sequence=middle))
    assert [m.sequence for m in replay] == [m.sequence for m in changes if m.sequence > middle]
    assert [m.event.event_type for m in replay] == [
        m.event.event_type for m in changes if m.sequence > middle
    ]
    assert not any(m.HasField("task") for m in replay)  # include_tasks was not asked


async def test_a_resumed_watch_of_a_live_workflow_replays_then_follows(client: Client) -> None:
    cap = unique_capability("resume")
    wid = await submit(client, task("a", cap), task("b", cap, "a"))
    first = await _collect_first(client, wid)
    a = await _poll_one(client, cap)
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, 1)))
    watching = asyncio.ensure_future(
        _collect(client, s.WatchWorkflowRequest(workflow_id=wid, after_sequence=first.sequence))
    )
    b = await _poll_one(client, cap)
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(b, 2)))
    messages = await watching
    kinds = [m.event.event_type for m in messages]
    assert kinds.count(event_pb2.EVENT_TYPE_TASK_COMPLETED) == 2  # a's replayed, b's live
    assert kinds[-1] == event_pb2.EVENT_TYPE_WORKFLOW_COMPLETED
    assert all(m.sequence > first.sequence for m in messages)


async def _collect_first(client: Client, workflow_id: str) -> s.WatchWorkflowResponse:
    message: s.WatchWorkflowResponse
    async with asyncio.timeout(10):
        async for message in client.raw.scheduler.WatchWorkflow(
            s.WatchWorkflowRequest(workflow_id=workflow_id)
        ):
            return message
    raise AssertionError("no initial status")


# --------------------------------------------------------------------- sdk


async def test_the_sdk_worker_writes_state_through_completions(client: Client) -> None:
    from are_sdk import TaskResult, Worker, WorkflowSpec

    cap = unique_capability("sdkstate")
    versions: list[int] = []

    async def step(ctx: TaskContext) -> Any:
        versions.append(ctx.state_version)
        if ctx.task_id == "plan":
            return TaskResult(output={"steps": 2}, state_merge_patch={"phase": "planned"})
        return {"done": True}

    spec = (
        WorkflowSpec("sdk-state", initial_state={"phase": "new"})
        .task("plan", capability=cap, output_state_pointer="/plan")
        .task("act", capability=cap, depends_on=["plan"])
    )
    worker = Worker(client, name=f"sdk-{cap}")
    worker.register(cap, step)
    async with worker:
        handle = await client.submit_workflow(spec)
        assert await handle.result(timeout=20) == {"done": True}
    assert versions == [1, 2]  # act was dispatched after plan's write
    assert await _state(client, handle.workflow_id, "/phase", "/plan") == (
        2,
        {"/phase": "planned", "/plan": {"steps": 2}},
    )
