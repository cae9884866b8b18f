"""SchedulerService and WorkerService over real gRPC: submit, validate, execute, lease, refuse.

The tests drive the sidecar through the raw layer (generated messages) and a
minimal worker written here on the raw ``Connect`` stream, so they depend on
nothing but the contract. The helpers are imported by the other
``test_scheduler_*`` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Self

import grpc
import pytest

from are_sdk import (
    AlreadyExistsError,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RpcError,
    UnavailableError,
)
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import errors_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf

DONE_STATES = {wf.WORKFLOW_STATE_COMPLETED, wf.WORKFLOW_STATE_FAILED, wf.WORKFLOW_STATE_CANCELLED}

# --------------------------------------------------------------------- helpers


def task(task_id: str, capability: str = "echo", *deps: str, **fields: Any) -> t.TaskSpec:
    """A TaskSpec with a JSON input naming the task."""
    fields.setdefault(
        "input", c.Payload(data=json.dumps({"id": task_id}).encode(), content_type="application/json")
    )
    return t.TaskSpec(task_id=task_id, capability=capability, depends_on=list(deps), **fields)


async def submit(client: Client, *tasks: t.TaskSpec, request_id: str = "", **spec_fields: Any) -> str:
    """Submits a workflow and returns its id."""
    spec = wf.WorkflowSpec(tasks=list(tasks), **spec_fields)
    response = await client.raw.scheduler.SubmitWorkflow(
        s.SubmitWorkflowRequest(spec=spec, request_id=request_id)
    )
    return str(response.workflow_id)


async def wait_closed(client: Client, workflow_id: str, timeout: float = 20.0) -> wf.Workflow:
    """Waits (with WatchWorkflow) until the workflow is closed and returns its status."""
    last: wf.Workflow | None = None
    async with asyncio.timeout(timeout):
        async for update in client.raw.scheduler.WatchWorkflow(
            s.WatchWorkflowRequest(workflow_id=workflow_id)
        ):
            last = update.workflow
    assert last is not None
    return last


async def get_task(client: Client, workflow_id: str, task_id: str) -> t.Task:
    """GetTask."""
    response: s.GetTaskResponse = await client.raw.scheduler.GetTask(
        s.GetTaskRequest(workflow_id=workflow_id, task_id=task_id)
    )
    return response.task


Handler = Callable[[w.TaskAssignment], Any]
"""Returns output bytes (or a JSON-able value), a c.Failure, or None to hold the task."""


class StreamWorker:
    """A worker on the raw Connect stream that runs a handler for every assignment.

    It records every assignment (``seen``), counts executions per idempotency
    key, tracks the concurrency it observes, and keeps the acks it receives.
    """

    def __init__(
        self,
        client: Client,
        handler: Handler,
        *,
        capabilities: Sequence[str] = ("echo",),
        concurrency: int = 8,
    ) -> None:
        self.client = client
        self.handler = handler
        self.capabilities = list(capabilities)
        self.concurrency = concurrency
        self.seen: list[w.TaskAssignment] = []
        self.executions: Counter[str] = Counter()
        self.acks: list[w.TaskAck] = []
        self.cancellations: list[w.TaskCancellation] = []
        self.held: dict[tuple[str, str], w.TaskAssignment] = {}
        self.worker_id = ""
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._ack_event = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._call = self.client.raw.worker.Connect()
        await self._call.write(
            w.ConnectRequest(
                register=w.WorkerRegistration(
                    worker_name="test-worker",
                    capabilities=self.capabilities,
                    max_concurrency=self.concurrency,
                )
            )
        )
        first = await self._call.read()
        self.worker_id = first.registered.worker_id
        self._reader = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Half-closes the stream (the sidecar releases held leases)."""
        if self._call is None:
            return
        call, self._call = self._call, None
        with contextlib.suppress(grpc.aio.UsageError, grpc.RpcError, RuntimeError):
            await call.done_writing()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, grpc.RpcError, asyncio.CancelledError):
                self._reader.cancel()
        call.cancel()

    async def _run(self) -> None:
        call = self._call
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("message")
            if kind == "assignments":
                await self._handle(list(message.assignments.assignments))
            elif kind == "acks":
                self.acks.extend(message.acks.acks)
                self._ack_event.set()
            elif kind == "cancellations":
                self.cancellations.extend(message.cancellations.cancellations)

    async def _handle(self, assignments: list[w.TaskAssignment]) -> None:
        completions, failures = [], []
        for a in assignments:
            self.seen.append(a)
            self.executions[a.idempotency_key] += 1
            result = self.handler(a)
            if asyncio.iscoroutine(result):
                result = await result
            if result is None:
                self.held[(a.workflow_id, a.task_id)] = a
            elif isinstance(result, c.Failure):
                failures.append(
                    w.TaskFailure(
                        workflow_id=a.workflow_id, task_id=a.task_id, attempt=a.attempt, failure=result
                    )
                )
            else:
                completions.append(completion(a, result))
        if completions:
            await self.send(w.ConnectRequest(complete=w.CompletionBatch(completions=completions)))
        if failures:
            await self.send(w.ConnectRequest(fail=w.FailureBatch(failures=failures)))

    async def send(self, request: w.ConnectRequest) -> None:
        """Writes one message on the stream."""
        await self._call.write(request)

    async def wait_acks(self, n: int, timeout: float = 10.0) -> list[w.TaskAck]:
        """Waits until at least ``n`` acks arrived in total."""
        async with asyncio.timeout(timeout):
            while len(self.acks) < n:
                self._ack_event.clear()
                await self._ack_event.wait()
        return self.acks


def completion(a: w.TaskAssignment, result: Any, **fields: Any) -> w.TaskCompletion:
    """A TaskCompletion of an assignment with ``result`` (bytes, or a JSON-able value)."""
    data = result if isinstance(result, bytes) else json.dumps(result).encode()
    return w.TaskCompletion(
        workflow_id=a.workflow_id,
        task_id=a.task_id,
        attempt=a.attempt,
        output=c.Payload(data=data, content_type="application/json"),
        **fields,
    )


def echo(a: w.TaskAssignment) -> Any:
    """Outputs the task id and the outputs of its dependencies."""
    deps = {d.task_id: json.loads(d.output.data) if d.output.data else None for d in a.dependencies}
    return {"task": a.task_id, "deps": deps}


def fail_with(message: str, *, type_: str = "Boom", non_retryable: bool = False) -> c.Failure:
    """An application Failure."""
    return c.Failure(
        message=message, type=type_, non_retryable=non_retryable, kind=c.FAILURE_KIND_APPLICATION
    )


def unique_capability(name: str) -> str:
    """Capabilities per test keep workers of concurrent tests apart on the shared sidecar."""
    return f"{name}-{id(object()):x}"


async def expect_error(
    awaitable: Any, error_type: type[RpcError], reason: str, field: str | None = None
) -> RpcError:
    """Awaits a call that must fail with this exception type, reason and (optionally) field."""
    with pytest.raises(error_type) as caught:
        await awaitable
    error = caught.value
    assert error.reason == reason, error
    if field is not None:
        assert [v.field for v in error.field_violations] == [field], error
    if reason == "LIMIT_EXCEEDED":  # errors.proto: ErrorInfo.metadata "limit" holds the bound
        assert error.metadata.get("limit", "").isdigit(), error
    documented = {  # the metadata errors.proto promises for the reason: what a caller acts on
        "POOL_QUEUE_FULL": ("pool",),
        "BUDGET_EXCEEDED": ("budget",),
        "TASK_NOT_AWAITING_APPROVAL": ("task_state",),
        "WORKFLOW_NOT_FOUND": ("workflow_id",),
        "TASK_NOT_FOUND": ("workflow_id", "task_id"),
        "TASK_NOT_HELD": ("workflow_id", "task_id", "attempt"),
        "TASK_ALREADY_COMPLETED": ("workflow_id", "task_id", "attempt"),
    }
    for key in documented.get(reason, ()):
        assert error.metadata.get(key), error
    return error


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("tasks", "reason", "field"),
    [
        ([task("a"), task("a")], "DUPLICATE_TASK_ID", "spec.tasks[1].task_id"),
        ([task("a"), task("b", "echo", "a", "zz")], "UNKNOWN_DEPENDENCY", "spec.tasks[1].depends_on[1]"),
        ([task("a", "echo", "a")], "DAG_CYCLE", "spec.tasks[0].depends_on[0]"),
        ([task("bad id!")], "INVALID_ARGUMENT", "spec.tasks[0].task_id"),
        ([t.TaskSpec(task_id="a")], "INVALID_ARGUMENT", "spec.tasks[0].target"),
        (
            [task("a", retry_policy=c.RetryPolicy(maximum_attempts=500))],
            "INVALID_ARGUMENT",
            "spec.tasks[0].retry_policy.maximum_attempts",
        ),
        ([task("a", priority=9)], "INVALID_ARGUMENT", "spec.tasks[0].priority"),
        (
            [
                task("a"),
                task(
                    "b",
                    "echo",
                    "a",
                    conditions=[
                        t.Condition(task_id="zz", pointer="/x", operator=t.COMPARISON_OPERATOR_EXISTS)
                    ],
                ),
            ],
            "UNKNOWN_DEPENDENCY",
            "spec.tasks[1].conditions[0].task_id",
        ),
        (
            [
                task("a"),
                task(
                    "b",
                    "echo",
                    "a",
                    conditions=[t.Condition(task_id="a", pointer="x", operator=t.COMPARISON_OPERATOR_EXISTS)],
                ),
            ],
            "INVALID_JSON_POINTER",
            "spec.tasks[1].conditions[0].pointer",
        ),
        (
            [
                task("a"),
                task(
                    "b",
                    "echo",
                    "a",
                    conditions=[
                        t.Condition(
                            task_id="a",
                            pointer="/x",
                            operator=t.COMPARISON_OPERATOR_EQUAL,
                            value_json="{nope",
                        )
                    ],
                ),
            ],
            "INVALID_JSON",
            "spec.tasks[1].conditions[0].value_json",
        ),
        ([task("a", pool="no-such-pool")], "POOL_NOT_FOUND", "spec.tasks[0].pool"),
        ([], "INVALID_ARGUMENT", "spec.tasks"),
    ],
)
async def test_a_bad_spec_is_invalid_argument_naming_the_field_and_stores_nothing(
    client: Client, tasks: list[t.TaskSpec], reason: str, field: str
) -> None:
    workflow_id = (
        f"bad-{reason.lower()}-{len(tasks)}-{field.replace('[', '').replace(']', '').replace('.', '-')}"
    )
    await expect_error(submit(client, *tasks, workflow_id=workflow_id), InvalidArgumentError, reason, field)
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )


async def test_a_cycle_is_named_in_the_message(client: Client) -> None:
    tasks = [task("a", "echo", "c"), task("b", "echo", "a"), task("c", "echo", "b"), task("d")]
    error = await expect_error(submit(client, *tasks), InvalidArgumentError, "DAG_CYCLE")
    assert (
        "a -> b -> c -> a" in error.message
        or "b -> c -> a -> b" in error.message
        or "c -> a -> b -> c" in error.message
    )
    assert error.field_violations[0].field.endswith(".depends_on")


async def test_more_tasks_than_max_tasks_is_limit_exceeded(client: Client) -> None:
    tasks = [task(f"t{i}") for i in range(3)]
    await expect_error(
        submit(client, *tasks, budget=wf.WorkflowBudget(max_tasks=2)),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "spec.tasks",
    )


async def test_an_empty_intent_is_refused_naming_the_field(client: Client) -> None:
    # Routing by intent is wired in (tests/integration/test_wiring.py); an empty one is a bad spec.
    spec = t.TaskSpec(task_id="a", intent=" ")
    await expect_error(submit(client, spec), InvalidArgumentError, "INVALID_ARGUMENT", "spec.tasks[0].intent")


# ---------------------------------------------------------- submit and reads


async def test_submit_returns_at_once_and_reads_show_the_records(client: Client) -> None:
    cap = unique_capability("nobody")
    workflow_id = await submit(
        client, task("a", cap), task("b", cap, "a", display_name="second"), name="reads", labels={"team": "x"}
    )
    assert workflow_id.startswith("wf_")
    status = (await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert status.state == wf.WORKFLOW_STATE_RUNNING
    assert status.name == "reads"
    assert dict(status.labels) == {"team": "x"}
    assert status.task_counts.total == 2
    assert status.task_counts.scheduled == 1
    assert status.task_counts.pending == 1
    assert len(status.trace_id) == 32
    b = await get_task(client, workflow_id, "b")
    assert b.state == t.TASK_STATE_PENDING
    assert b.spec.display_name == "second"
    assert json.loads(b.spec.input.data) == {"id": "b"}
    assert b.idempotency_key
    listed = await client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=workflow_id, page_size=1))
    assert [x.task_id for x in listed.tasks] == ["a"]
    assert not listed.tasks[0].spec.HasField("input")
    rest = await client.raw.scheduler.ListTasks(
        s.ListTasksRequest(workflow_id=workflow_id, page_size=1, page_token=listed.next_page_token)
    )
    assert [x.task_id for x in rest.tasks] == ["b"]
    assert not rest.next_page_token
    pending = await client.raw.scheduler.ListTasks(
        s.ListTasksRequest(workflow_id=workflow_id, states=[t.TASK_STATE_PENDING])
    )
    assert [x.task_id for x in pending.tasks] == ["b"]
    await expect_error(get_task(client, workflow_id, "nope"), NotFoundError, "TASK_NOT_FOUND")
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id, reason="done"))


async def test_request_id_makes_a_retried_submit_return_the_same_workflow(client: Client) -> None:
    cap = unique_capability("nobody")
    first = await client.raw.scheduler.SubmitWorkflow(
        s.SubmitWorkflowRequest(spec=wf.WorkflowSpec(tasks=[task("a", cap)]), request_id="req-1")
    )
    again = await client.raw.scheduler.SubmitWorkflow(
        s.SubmitWorkflowRequest(spec=wf.WorkflowSpec(tasks=[task("a", cap)]), request_id="req-1")
    )
    assert again.workflow_id == first.workflow_id
    assert again.deduplicated and not first.deduplicated
    await expect_error(
        client.raw.scheduler.SubmitWorkflow(
            s.SubmitWorkflowRequest(spec=wf.WorkflowSpec(tasks=[task("b", cap)]), request_id="req-1")
        ),
        AlreadyExistsError,
        "REQUEST_ID_CONFLICT",
    )
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=first.workflow_id))


async def test_a_taken_workflow_id_is_already_exists(client: Client) -> None:
    cap = unique_capability("nobody")
    await submit(client, task("a", cap), workflow_id="taken-id")
    await expect_error(
        submit(client, task("a", cap), workflow_id="taken-id"), AlreadyExistsError, "WORKFLOW_ALREADY_EXISTS"
    )
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id="taken-id"))


async def test_list_workflows_pages_newest_first_and_filters_by_state_and_label(client: Client) -> None:
    cap = unique_capability("nobody")
    label = unique_capability("batch")
    ids = [await submit(client, task("a", cap), labels={"batch": label}) for _ in range(5)]
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=ids[0]))
    seen: list[str] = []
    token = ""
    while True:
        page = await client.raw.scheduler.ListWorkflows(
            s.ListWorkflowsRequest(page_size=2, page_token=token, labels={"batch": label})
        )
        assert len(page.workflows) <= 2
        seen += [x.workflow_id for x in page.workflows]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    running = await client.raw.scheduler.ListWorkflows(
        s.ListWorkflowsRequest(labels={"batch": label}, states=[wf.WORKFLOW_STATE_RUNNING])
    )
    assert [x.workflow_id for x in running.workflows] == list(reversed(ids[1:]))
    cancelled = await client.raw.scheduler.ListWorkflows(
        s.ListWorkflowsRequest(labels={"batch": label}, states=[wf.WORKFLOW_STATE_CANCELLED])
    )
    assert [x.workflow_id for x in cancelled.workflows] == [ids[0]]
    for workflow_id in ids[1:]:
        await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))
    await expect_error(
        client.raw.scheduler.ListWorkflows(s.ListWorkflowsRequest(page_token="%%%")),
        InvalidArgumentError,
        "INVALID_PAGE_TOKEN",
    )


async def test_a_label_filter_of_more_than_8_labels_is_refused_naming_it(client: Client) -> None:
    nine = {f"k{i}": "v" for i in range(9)}  # scheduler_service.proto: at most 8
    await expect_error(
        client.raw.scheduler.ListWorkflows(s.ListWorkflowsRequest(labels=nine)),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "labels",
    )
    await expect_error(
        client.raw.scheduler.ListApprovals(s.ListApprovalsRequest(labels=nine)),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "labels",
    )
    eight = dict(list(nine.items())[:8])
    assert not (await client.raw.scheduler.ListWorkflows(s.ListWorkflowsRequest(labels=eight))).workflows


async def test_cancel_stops_pending_tasks_and_is_idempotent(client: Client) -> None:
    cap = unique_capability("nobody")
    workflow_id = await submit(client, task("a", cap), task("b", cap, "a"))
    first = await client.raw.scheduler.CancelWorkflow(
        s.CancelWorkflowRequest(workflow_id=workflow_id, reason="changed my mind", requested_by="me")
    )
    assert first.workflow.state == wf.WORKFLOW_STATE_CANCELLED
    assert first.workflow.task_counts.cancelled == 2
    assert "changed my mind" in first.workflow.failure.message
    again = await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))
    assert again.workflow.state == wf.WORKFLOW_STATE_CANCELLED
    await expect_error(
        client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id="no-such-workflow")),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )


# ------------------------------------------------------------------ execution


async def test_a_diamond_runs_in_parallel_and_tasks_receive_their_dependencies_outputs(
    client: Client,
) -> None:
    cap = unique_capability("echo")
    async with StreamWorker(client, echo, capabilities=[cap]) as worker:
        workflow_id = await submit(
            client, task("a", cap), task("b", cap, "a"), task("c", cap, "a"), task("d", cap, "b", "c")
        )
        status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    assert status.result_task_id == "d"
    result = json.loads(status.result.data)
    assert result["task"] == "d"
    assert result["deps"]["b"] == {"task": "b", "deps": {"a": {"task": "a", "deps": {}}}}
    assert set(result["deps"]) == {"b", "c"}
    by_task = {a.task_id: a for a in worker.seen}
    assert set(by_task) == {"a", "b", "c", "d"}
    d = by_task["d"]
    assert [x.task_id for x in d.dependencies] == ["b", "c"]
    assert all(x.state == t.TASK_STATE_COMPLETED for x in d.dependencies)
    assert d.attempt == 1
    assert d.idempotency_key
    assert d.trace_context.traceparent.startswith(f"00-{status.trace_id}-")
    assert d.HasField("deadline_time")
    assert d.maximum_attempts == 3
    spans = {a.trace_context.traceparent.split("-")[2] for a in worker.seen}
    assert len(spans) == 4  # a span per attempt
    assert status.task_counts.completed == 4
    assert status.usage.task_attempts == 4


async def test_a_fan_out_is_assigned_in_batches(client: Client) -> None:
    cap = unique_capability("echo")
    held: list[w.TaskAssignment] = []
    batches: list[int] = []

    async with StreamWorker(client, lambda a: None, capabilities=[cap], concurrency=100) as worker:
        original = worker._handle

        async def record(assignments: list[w.TaskAssignment]) -> None:
            batches.append(len(assignments))
            held.extend(assignments)
            await original(assignments)

        worker._handle = record  # type: ignore[method-assign]  # this worker's only: counts each batch
        workflow_id = await submit(
            client, task("root", cap), *[task(f"leaf{i}", cap, "root") for i in range(50)]
        )
        async with asyncio.timeout(10):
            while not held:
                await asyncio.sleep(0.01)
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[completion(held[0], 1)])))
        async with asyncio.timeout(10):
            while len(held) < 51:
                await asyncio.sleep(0.01)
        assert max(batches) > 1  # the 50 ready leaves came in (a few) batches, not 50 messages
        leaves = held[1:]
        await worker.send(
            w.ConnectRequest(complete=w.CompletionBatch(completions=[completion(a, 1) for a in leaves]))
        )
        status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    assert status.task_counts.completed == 51


async def test_trigger_rules_branch_on_failure_and_skips_propagate(client: Client) -> None:
    cap = unique_capability("rules")

    def handler(a: w.TaskAssignment) -> Any:
        return fail_with("primary is down", non_retryable=True) if a.task_id == "primary" else echo(a)

    async with StreamWorker(client, handler, capabilities=[cap]) as worker:
        workflow_id = await submit(
            client,
            task("primary", cap),
            task("fallback", cap, "primary", trigger_rule=t.TRIGGER_RULE_ONE_FAILED),
            task("after_primary", cap, "primary"),  # ALL_SUCCESS: skipped
            task("after_skip", cap, "after_primary"),  # skipped in turn
            task(
                "none_failed", cap, "after_skip", trigger_rule=t.TRIGGER_RULE_NONE_FAILED
            ),  # runs: skip is no failure
            task("cleanup", cap, "primary", "fallback", trigger_rule=t.TRIGGER_RULE_ALL_DONE),
            task("first_answer", cap, "primary", "fallback", trigger_rule=t.TRIGGER_RULE_ONE_SUCCESS),
        )
        status = await wait_closed(client, workflow_id)
    states = {
        x.task_id: t.TaskState.Name(x.state)
        for x in (await client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=workflow_id))).tasks
    }
    assert states == {
        "primary": "TASK_STATE_FAILED",
        "fallback": "TASK_STATE_COMPLETED",
        "after_primary": "TASK_STATE_SKIPPED",
        "after_skip": "TASK_STATE_SKIPPED",
        "none_failed": "TASK_STATE_COMPLETED",
        "cleanup": "TASK_STATE_COMPLETED",
        "first_answer": "TASK_STATE_COMPLETED",
    }
    # The failure was handled (a ONE_FAILED fallback ran), so the workflow completed.
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    fallback = next(a for a in worker.seen if a.task_id == "fallback")
    assert fallback.dependencies[0].state == t.TASK_STATE_FAILED
    assert fallback.dependencies[0].failure.message == "primary is down"
    skipped = await get_task(client, workflow_id, "after_primary")
    assert "trigger rule" in skipped.state_reason


async def test_an_unhandled_failure_fails_the_workflow(client: Client) -> None:
    cap = unique_capability("fails")
    async with StreamWorker(client, lambda a: fail_with("nope", non_retryable=True), capabilities=[cap]):
        workflow_id = await submit(client, task("a", cap), task("b", cap, "a"))
        status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_FAILED
    assert "'a'" in status.failure.message
    assert status.task_counts.failed == 1
    assert status.task_counts.skipped == 1


async def test_conditions_on_upstream_outputs_decide_whether_a_task_runs(client: Client) -> None:
    cap = unique_capability("cond")

    def handler(a: w.TaskAssignment) -> Any:
        return {"score": 0.9, "tags": ["x"], "verdict": "ok"} if a.task_id == "judge" else echo(a)

    def gate(name: str, pointer: str, op: t.ComparisonOperator, value: str = "") -> t.TaskSpec:
        return task(
            name,
            cap,
            "judge",
            conditions=[t.Condition(task_id="judge", pointer=pointer, operator=op, value_json=value)],
        )

    async with StreamWorker(client, handler, capabilities=[cap]):
        workflow_id = await submit(
            client,
            task("judge", cap),
            gate("high", "/score", t.COMPARISON_OPERATOR_GREATER_THAN, "0.7"),
            gate("low", "/score", t.COMPARISON_OPERATOR_LESS_THAN, "0.7"),
            gate("ok", "/verdict", t.COMPARISON_OPERATOR_EQUAL, '"ok"'),
            gate("tagged", "/tags", t.COMPARISON_OPERATOR_CONTAINS, '"x"'),
            gate("missing", "/nope", t.COMPARISON_OPERATOR_EXISTS),
            gate("absent", "/nope", t.COMPARISON_OPERATOR_NOT_EXISTS),
        )
        status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    states = {
        x.task_id: x.state
        for x in (await client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=workflow_id))).tasks
    }
    ran = {k for k, v in states.items() if v == t.TASK_STATE_COMPLETED}
    assert ran == {"judge", "high", "ok", "tagged", "absent"}
    low = await get_task(client, workflow_id, "low")
    assert low.state == t.TASK_STATE_SKIPPED
    assert "judge:/score LESS_THAN" in low.state_reason


# ---------------------------------------------------------- leases and refusals


async def test_the_unary_path_polls_completes_and_refuses_a_second_completion(client: Client) -> None:
    cap = unique_capability("unary")
    workflow_id = await submit(client, task("a", cap), task("b", cap, "a"))
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="poller", capabilities=[cap], max_tasks=5), timeout=10
    )
    assert [a.task_id for a in polled.assignments] == ["a"]
    a = polled.assignments[0]
    assert polled.worker_id
    beat = await client.raw.worker.RecordHeartbeat(
        w.RecordHeartbeatRequest(heartbeat=w.TaskHeartbeat(workflow_id=workflow_id, task_id="a", attempt=1))
    )
    assert not beat.cancel_requested
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, {"ok": True})))
    await expect_error(
        client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, {"ok": False}))),
        FailedPreconditionError,
        "TASK_ALREADY_COMPLETED",
    )
    await expect_error(
        client.raw.worker.CompleteTask(
            w.CompleteTaskRequest(
                completion=w.TaskCompletion(workflow_id=workflow_id, task_id="b", attempt=1)
            )
        ),
        FailedPreconditionError,
        "TASK_NOT_HELD",
    )
    await expect_error(
        client.raw.worker.RecordHeartbeat(
            w.RecordHeartbeatRequest(
                heartbeat=w.TaskHeartbeat(workflow_id=workflow_id, task_id="a", attempt=1)
            )
        ),
        FailedPreconditionError,
        "TASK_NOT_HELD",
    )
    a_now = await get_task(client, workflow_id, "a")
    assert json.loads(a_now.output.data) == {"ok": True}  # the refused completion changed nothing
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="poller", capabilities=[cap]), timeout=10
    )
    b = polled.assignments[0]
    assert json.loads(b.dependencies[0].output.data) == {"ok": True}
    failed = await client.raw.worker.FailTask(
        w.FailTaskRequest(
            failure=w.TaskFailure(workflow_id=workflow_id, task_id="b", attempt=1, failure=fail_with("x"))
        )
    )
    assert failed.will_retry
    assert failed.task_state == t.TASK_STATE_BACKING_OFF
    assert failed.HasField("next_attempt_time")
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_long_poll_answers_every_attempt_dispatched_to_it(client: Client) -> None:
    """Two workflows submitted at once while a poll for two tasks waits: each attempt reaches
    a poll's caller. A poll answers with the assignments of one commit; an attempt dispatched
    to it in a later one used to be held by a poll that had already answered, RUNNING until
    its start-to-close timeout with no worker running it (the Rust SDK's failing-handler test
    stalled so, between two retries' backoff timers)."""
    cap = unique_capability("one-answer")

    async def poll(timeout: float) -> list[w.TaskAssignment]:
        request = w.PollTaskRequest(worker_name="poller", capabilities=[cap], max_tasks=2)
        return list((await client.raw.worker.PollTask(request, timeout=timeout)).assignments)

    for round_ in range(10):  # the two dispatches land in two commits in most rounds
        waiting = asyncio.create_task(poll(10))
        await asyncio.sleep(0.2)  # for ordering only: the poll is waiting when the tasks come
        workflow_ids = await asyncio.gather(submit(client, task("a", cap)), submit(client, task("a", cap)))
        answered = await waiting
        while len(answered) < 2:  # what the first poll did not take goes to the next one
            more = await poll(3)
            assert more, f"round {round_}: an attempt was dispatched and never answered: {answered}"
            answered += more
        assert sorted(a.workflow_id for a in answered) == sorted(workflow_ids)
        for a in answered:
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, "ok")))


async def test_three_pollers_for_several_tasks_complete_a_burst_of_fifty_tasks_exactly_once(
    client: Client,
) -> None:
    """Fifty workflows (one or two tasks, on two capabilities) submitted at once while three
    unary pollers, each asking for four tasks, poll and complete what they get: every task is
    handed out once, at its first attempt, completed once, and every workflow completes."""
    cap, other = unique_capability("burst"), unique_capability("burst-2")
    expected: set[tuple[str, str]] = set()
    seen: Counter[tuple[str, str]] = Counter()
    attempts: list[int] = []

    async def poller(name: str) -> None:
        for _ in range(200):  # bounded: far more polls than it takes
            if len(seen) >= 75 and set(seen) >= expected:
                return
            request = w.PollTaskRequest(worker_name=name, capabilities=[cap, other], max_tasks=4)
            answer = await client.raw.worker.PollTask(request, timeout=3)
            for a in answer.assignments:
                seen[(a.workflow_id, a.task_id)] += 1
                attempts.append(a.attempt)
                await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, "ok")))

    pollers = [asyncio.create_task(poller(f"burst-{i}")) for i in range(3)]
    specs = [
        (task("a", cap), task("b", other)) if i % 2 else (task("a", cap if i % 3 else other),)
        for i in range(50)
    ]
    workflow_ids = await asyncio.gather(*(submit(client, *tasks) for tasks in specs))
    for workflow_id, tasks in zip(workflow_ids, specs, strict=True):
        expected.update((workflow_id, x.task_id) for x in tasks)
    async with asyncio.timeout(60):
        await asyncio.gather(*pollers)
    assert len(expected) == 75
    assert set(seen) == expected
    assert [k for k, n in seen.items() if n != 1] == []
    assert set(attempts) == {1}
    for workflow_id in workflow_ids:
        closed = await wait_closed(client, workflow_id)
        assert closed.state == wf.WORKFLOW_STATE_COMPLETED


async def test_an_empty_poll_returns_before_the_deadline(client: Client) -> None:
    cap = unique_capability("idle")
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="poller", capabilities=[cap]), timeout=1.5
    )
    assert not polled.assignments


async def test_poll_validates_its_request(client: Client) -> None:
    await expect_error(
        client.raw.worker.PollTask(w.PollTaskRequest(worker_name="p", capabilities=[])),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "capabilities",
    )
    await expect_error(
        client.raw.worker.PollTask(w.PollTaskRequest(worker_name="p", capabilities=["x"], max_tasks=1000)),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "max_tasks",
    )


async def test_stream_refusals_are_acks_with_a_reason_and_change_nothing(client: Client) -> None:
    cap = unique_capability("refuse")
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        workflow_id = await submit(client, task("a", cap), task("b", cap, "a"))
        async with asyncio.timeout(10):
            while not worker.held:
                await asyncio.sleep(0.01)
        a = worker.held[(workflow_id, "a")]
        first = completion(a, "first")
        await worker.send(
            w.ConnectRequest(complete=w.CompletionBatch(completions=[first, completion(a, "second")]))
        )
        acks = await worker.wait_acks(2)
        assert [ack.accepted for ack in acks[:2]] == [True, False]
        refused = acks[1]
        assert refused.reason == errors_pb2.ERROR_REASON_TASK_ALREADY_COMPLETED
        assert refused.subject == w.ACK_SUBJECT_COMPLETION
        ghost = w.TaskCompletion(workflow_id=workflow_id, task_id="b", attempt=7)
        await worker.send(w.ConnectRequest(complete=w.CompletionBatch(completions=[ghost])))
        acks = await worker.wait_acks(3)
        assert not acks[2].accepted
        assert acks[2].reason == errors_pb2.ERROR_REASON_TASK_NOT_HELD
        a_now = await get_task(client, workflow_id, "a")
        assert a_now.output.data == b'"first"'
        await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_worker_that_disconnects_loses_its_lease_and_the_task_is_retried(client: Client) -> None:
    cap = unique_capability("lost")
    first = StreamWorker(client, lambda a: None, capabilities=[cap])
    await first.__aenter__()
    workflow_id = await submit(
        client, task("a", cap, retry_policy=c.RetryPolicy(initial_interval={"nanos": 10_000_000}))
    )
    async with asyncio.timeout(10):
        while not first.held:
            await asyncio.sleep(0.01)
    await first.close()
    async with StreamWorker(client, echo, capabilities=[cap]) as second:
        status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    (lost,) = first.seen
    (retried,) = second.seen
    assert (lost.attempt, retried.attempt) == (1, 2)
    assert lost.idempotency_key == retried.idempotency_key
    assert retried.last_failure.kind == c.FAILURE_KIND_WORKER_LOST
    assert status.usage.retries == 1


async def test_retries_follow_the_policy_and_non_retryable_failures_stop_at_once(client: Client) -> None:
    cap = unique_capability("retry")
    policy = c.RetryPolicy(initial_interval={"nanos": 10_000_000}, maximum_attempts=3)

    def handler(a: w.TaskAssignment) -> Any:
        if a.task_id == "flaky":
            return fail_with("transient") if a.attempt < 3 else "ok"
        if a.task_id == "hopeless":
            return fail_with("always")
        return fail_with("bad input", type_="ValueError")

    async with StreamWorker(client, handler, capabilities=[cap]) as worker:
        workflow_id = await submit(
            client,
            task("flaky", cap, retry_policy=policy),
            task("hopeless", cap, retry_policy=policy),
            task(
                "typed",
                cap,
                retry_policy=c.RetryPolicy(maximum_attempts=5, non_retryable_failure_types=["ValueError"]),
            ),
        )
        status = await wait_closed(client, workflow_id)
    attempts = Counter(a.task_id for a in worker.seen)
    assert attempts == {"flaky": 3, "hopeless": 3, "typed": 1}
    assert (await get_task(client, workflow_id, "flaky")).state == t.TASK_STATE_COMPLETED
    hopeless = await get_task(client, workflow_id, "hopeless")
    assert hopeless.state == t.TASK_STATE_FAILED
    assert hopeless.attempt == 3
    assert status.state == wf.WORKFLOW_STATE_FAILED
    assert status.usage.retries == 4


async def test_a_missed_heartbeat_loses_the_lease(client: Client) -> None:
    cap = unique_capability("hb")
    calls: list[int] = []

    def handler(a: w.TaskAssignment) -> Any:
        calls.append(a.attempt)
        return None if a.attempt == 1 else "done"  # the first attempt goes silent

    async with StreamWorker(client, handler, capabilities=[cap]) as worker:
        workflow_id = await submit(
            client,
            task(
                "slow",
                cap,
                heartbeat_timeout={"nanos": 200_000_000},
                retry_policy=c.RetryPolicy(initial_interval={"nanos": 10_000_000}),
            ),
        )
        status = await wait_closed(client, workflow_id)
        assert status.state == wf.WORKFLOW_STATE_COMPLETED
        assert calls == [1, 2]
        second = worker.seen[1]
        assert second.last_failure.kind == c.FAILURE_KIND_TIMEOUT
        assert second.last_failure.timeout_type == c.TIMEOUT_TYPE_HEARTBEAT
        assert any(x.reason == w.TASK_CANCEL_REASON_TIMED_OUT for x in worker.cancellations)
        late = worker.held[(workflow_id, "slow")]
        await worker.send(
            w.ConnectRequest(complete=w.CompletionBatch(completions=[completion(late, "late")]))
        )
        acks = await worker.wait_acks(2)
        assert not acks[-1].accepted


async def test_a_negative_page_size_is_refused_naming_the_field(client: Client) -> None:
    workflow_id = await submit(client, task("a", unique_capability("nobody")))
    for call in (
        client.raw.scheduler.ListWorkflows(s.ListWorkflowsRequest(page_size=-1)),
        client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=workflow_id, page_size=-1)),
        client.raw.scheduler.ListApprovals(s.ListApprovalsRequest(workflow_id=workflow_id, page_size=-1)),
        client.raw.scheduler.ListPools(s.ListPoolsRequest(page_size=-1)),
    ):
        await expect_error(call, InvalidArgumentError, "INVALID_ARGUMENT", "page_size")
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_graceful_stop_takes_the_results_of_held_attempts_within_its_grace(tmp_path: Any) -> None:
    """SIGTERM tells stream workers the grace they have; a result reported within it is recorded
    (the restart does not run the task again), and the stream then ends with SHUTTING_DOWN."""
    from are_sdk.testing import SidecarProcess

    cap = unique_capability("draining")
    data = tmp_path / "data"
    with SidecarProcess.start(data_dir=data, args=["--shutdown-grace-s", "20"]) as process:
        async with await Client.connect(process.target) as client:
            workflow_id = await submit(client, task("long", cap))
            call = client.raw.worker.Connect()
            await call.write(
                w.ConnectRequest(
                    register=w.WorkerRegistration(
                        worker_name="drainer", capabilities=[cap], max_concurrency=1
                    )
                )
            )
            assert (await asyncio.wait_for(call.read(), 10)).HasField("registered")
            (assignment,) = (await asyncio.wait_for(call.read(), 10)).assignments.assignments
            stopping = asyncio.ensure_future(asyncio.to_thread(process.stop))
            notice = await asyncio.wait_for(call.read(), 10)
            assert notice.HasField("drain")
            assert notice.drain.grace_period.seconds >= 10  # the shutdown grace, less a margin
            await call.write(
                w.ConnectRequest(complete=w.CompletionBatch(completions=[completion(assignment, 42)]))
            )
            ack = await asyncio.wait_for(call.read(), 10)
            assert [(a.task_id, a.accepted) for a in ack.acks.acks] == [("long", True)]
            with pytest.raises(grpc.aio.AioRpcError) as ended:  # idle now: ended at once, not at the grace
                await asyncio.wait_for(call.read(), 10)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.wait_for(stopping, 30)
    with SidecarProcess.start(data_dir=data) as process:
        async with await Client.connect(process.target) as client:
            done = await get_task(client, workflow_id, "long")
            assert (done.state, json.loads(done.output.data), done.attempt) == (t.TASK_STATE_COMPLETED, 42, 1)


async def test_a_graceful_stop_ends_watches_and_long_polls_at_once() -> None:
    """SIGTERM ends a WatchWorkflow stream with UNAVAILABLE SHUTTING_DOWN and answers a waiting
    PollTask with no assignment, instead of leaving both to be cut at the end of the grace period
    (60 s here; the process is waited on for at most 30 s, so it must not wait the grace out)."""
    from are_sdk.testing import SidecarProcess

    with SidecarProcess.start(args=["--shutdown-grace-s", "60"]) as process:
        async with await Client.connect(process.target) as client:
            workflow_id = await submit(client, task("waits", unique_capability("nobody")))
            watch = client.raw.scheduler.WatchWorkflow(s.WatchWorkflowRequest(workflow_id=workflow_id))
            first = await asyncio.wait_for(anext(aiter(watch)), 10)
            assert first.workflow.workflow_id == workflow_id
            rest = asyncio.ensure_future(anext(aiter(watch)))
            poll = asyncio.ensure_future(
                client.raw.worker.PollTask(
                    w.PollTaskRequest(worker_name="idle", capabilities=[unique_capability("idle")]),
                    timeout=55,
                )
            )
            await asyncio.sleep(0.3)  # both are waiting in the sidecar
            stopping = asyncio.ensure_future(asyncio.to_thread(process.stop))
            with pytest.raises(UnavailableError) as ended:
                await asyncio.wait_for(rest, 30)
            assert ended.value.reason == "SHUTTING_DOWN"
            answered = await asyncio.wait_for(poll, 30)
            assert list(answered.assignments) == []
            await asyncio.wait_for(stopping, 30)


# ------------------------------------------------ found by tests/integration/test_bad_input_fuzz.py

from are_sdk._proto.are.v1 import event_pb2 as ev  # noqa: E402 - the fuzz regressions' own import


def _reported(workflow_id: str = "wf-x", **fields: Any) -> w.ReportEventsRequest:
    event = ev.ReportedEvent(
        workflow_id=workflow_id, task_id="t", attempt=1, event_type=ev.EVENT_TYPE_TOOL_CALL, **fields
    )
    return w.ReportEventsRequest(events=[event])


async def test_unknown_enum_numbers_are_invalid_argument_naming_the_field(client: Client) -> None:
    """proto3 enums are open: 999 used to reach ``Enum.Name()`` and come back UNKNOWN."""
    sched, worker = client.raw.scheduler, client.raw.worker
    cap = unique_capability("enums")
    workflow_id = await submit(client, task("a", cap), task("gate", cap, requires_approval=True))
    calls = [
        # 999 is no WorkflowState, on purpose.
        (sched.ListWorkflows(s.ListWorkflowsRequest(states=[wf.WORKFLOW_STATE_RUNNING, 999])), "states[1]"),  # type: ignore[list-item]
        # -1 is no TaskState, on purpose.
        (sched.ListTasks(s.ListTasksRequest(workflow_id=workflow_id, states=[-1])), "states[0]"),  # type: ignore[list-item]
        (
            sched.ResolveApproval(
                # 999 is no ApprovalDecision, on purpose.
                s.ResolveApprovalRequest(workflow_id=workflow_id, task_id="gate", decision=999)  # type: ignore[arg-type]
            ),
            "decision",
        ),
        (submit(client, task("a", trigger_rule=999)), "spec.tasks[0].trigger_rule"),
        (
            submit(
                client,
                task("a"),
                # 999 is no ComparisonOperator, on purpose.
                task("b", "echo", "a", conditions=[t.Condition(task_id="a", pointer="/x", operator=999)]),  # type: ignore[arg-type]
            ),
            "spec.tasks[1].conditions[0].operator",
        ),
        (
            worker.FailTask(
                w.FailTaskRequest(
                    failure=w.TaskFailure(
                        workflow_id=workflow_id,
                        task_id="a",
                        attempt=1,
                        failure=c.Failure(kind=999),  # type: ignore[arg-type]  # an unknown kind, on purpose
                    )
                )
            ),
            "failure.failure.kind",
        ),
        (
            worker.FailTask(
                w.FailTaskRequest(
                    failure=w.TaskFailure(
                        workflow_id=workflow_id,
                        task_id="a",
                        attempt=1,
                        failure=c.Failure(timeout_type=-1),  # type: ignore[arg-type]  # unknown, on purpose
                    )
                )
            ),
            "failure.failure.timeout_type",
        ),
        # -1 is no FailureKind, on purpose.
        (worker.ReportEvents(_reported(workflow_id, failure=c.Failure(kind=-1))), "events[0].failure.kind"),  # type: ignore[arg-type]
    ]
    bad_type = _reported(workflow_id)
    bad_type.events[0].event_type = 999  # type: ignore[assignment]  # no such EventType, on purpose
    calls.append((worker.ReportEvents(bad_type), "events[0].event_type"))
    for call, field in calls:
        await expect_error(call, InvalidArgumentError, "INVALID_ARGUMENT", field)
    gate = await get_task(client, workflow_id, "gate")
    assert gate.state == t.TASK_STATE_AWAITING_APPROVAL  # the refused decision changed nothing
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_invalid_timestamps_and_durations_are_invalid_argument_naming_the_field(client: Client) -> None:
    """``Timestamp.ToNanoseconds()`` raised on these (UNKNOWN), and out-of-range nanoseconds
    failed to encode further down; a valid instant before the epoch selects nothing."""
    from google.protobuf import duration_pb2, timestamp_pb2

    sched, worker = client.raw.scheduler, client.raw.worker
    far = timestamp_pb2.Timestamp(seconds=10**12)
    bad_nanos = timestamp_pb2.Timestamp(seconds=1, nanos=-1)
    calls = [
        (sched.ListWorkflows(s.ListWorkflowsRequest(end_time=far)), "end_time"),
        (sched.ListWorkflows(s.ListWorkflowsRequest(start_time=bad_nanos)), "start_time"),
        (
            sched.GetUsage(s.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=-(2**63)))),
            "start_time",
        ),
        (sched.GetUsage(s.GetUsageRequest(end_time=bad_nanos)), "end_time"),
        (worker.ReportEvents(_reported(event_time=far)), "events[0].event_time"),
        (
            worker.ReportEvents(_reported(duration=duration_pb2.Duration(seconds=-(10**12)))),
            "events[0].duration",
        ),
    ]
    for call, field in calls:
        await expect_error(call, InvalidArgumentError, "INVALID_ARGUMENT", field)
    before_epoch = timestamp_pb2.Timestamp(seconds=-1)
    listed = await sched.ListWorkflows(s.ListWorkflowsRequest(end_time=before_epoch))
    assert list(listed.workflows) == []
    usage = await sched.GetUsage(s.GetUsageRequest(end_time=timestamp_pb2.Timestamp(seconds=0)))
    assert usage.workflow_count == 0


async def test_malformed_ids_are_invalid_argument_before_any_lookup(client: Client) -> None:
    """An empty id reached LMDB (MDB_BAD_VALSIZE: UNKNOWN); a 1 MiB one came back quoted in a
    status too large for the client's metadata limit (RESOURCE_EXHAUSTED from its own transport)."""
    sched, worker = client.raw.scheduler, client.raw.worker
    huge = "w" * (1 << 20)
    calls = [
        (sched.GetWorkflow(s.GetWorkflowRequest(workflow_id="")), "workflow_id"),
        (sched.GetWorkflow(s.GetWorkflowRequest(workflow_id=huge)), "workflow_id"),
        (sched.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=huge)), "workflow_id"),
        (sched.GetTask(s.GetTaskRequest(workflow_id="wf-x", task_id="")), "task_id"),
        (sched.ListTasks(s.ListTasksRequest(workflow_id="bad id!")), "workflow_id"),
        (sched.CancelWorkflow(s.CancelWorkflowRequest(workflow_id="")), "workflow_id"),
        (
            sched.ResolveApproval(
                s.ResolveApprovalRequest(
                    workflow_id="wf-x", task_id=huge, decision=t.APPROVAL_DECISION_APPROVE
                )
            ),
            "task_id",
        ),
        (sched.SpawnTasks(s.SpawnTasksRequest(workflow_id="", tasks=[task("a")])), "workflow_id"),
        (sched.GetPool(s.GetPoolRequest(name="")), "name"),
        (worker.RecordHeartbeat(w.RecordHeartbeatRequest()), "heartbeat.workflow_id"),
        (
            worker.CompleteTask(w.CompleteTaskRequest(completion=w.TaskCompletion(workflow_id="wf-x"))),
            "completion.task_id",
        ),
        (worker.ReportEvents(_reported(workflow_id="")), "events[0].workflow_id"),
    ]
    for call, field in calls:
        error = await expect_error(call, InvalidArgumentError, "INVALID_ARGUMENT", field)
        assert len(error.message) < 2048, error.message[:200]


async def test_usage_sums_saturate_instead_of_failing_the_commit(client: Client) -> None:
    """Two completions reporting 2**63 - 1 tokens made the workflow's sum overflow int64: its
    commit could not be encoded and the sidecar stopped (a fail-stop), and GetUsage's total
    (over workflows) came back UNKNOWN."""
    cap = unique_capability("usage")
    label = unique_capability("usage-label")
    workflow_id = await submit(client, task("a", cap), task("b", cap), labels={"fz": label})
    most = 2**63 - 1
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="big-spender", capabilities=[cap], max_tasks=2), timeout=10
    )
    assert len(polled.assignments) == 2
    for assignment in polled.assignments:
        done = completion(assignment, {"ok": True}, usage=c.Usage(input_tokens=most, cost_micro_usd=most))
        await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=done))
    closed = await wait_closed(client, workflow_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert (closed.usage.usage.input_tokens, closed.usage.usage.cost_micro_usd) == (most, most)
    status = (await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert status.usage.usage.input_tokens == most
    usage = await client.raw.scheduler.GetUsage(s.GetUsageRequest(labels={"fz": label}))
    assert (usage.workflow_count, usage.total.usage.input_tokens) == (1, most)


async def test_a_condition_on_an_output_nested_too_deep_to_decode_is_false(client: Client) -> None:
    """An upstream output nested deeper than the JSON decoder recurses raised RecursionError
    inside the engine's completion (UNKNOWN, with the completion half applied in memory);
    it is not JSON to a condition, like any output that does not decode."""
    cap = unique_capability("deep")
    exists = t.Condition(task_id="a", pointer="/0", operator=t.COMPARISON_OPERATOR_EXISTS)
    workflow_id = await submit(
        client,
        task("a", cap),
        task("b", cap, "a", conditions=[exists]),
        task("c", cap, "a", trigger_rule=t.TRIGGER_RULE_ALL_DONE),
    )
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="deep", capabilities=[cap]), timeout=10
    )
    (a,) = polled.assignments
    deep = b"[" * 100_000 + b"]" * 100_000
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, deep)))
    b = await get_task(client, workflow_id, "b")
    assert b.state == t.TASK_STATE_SKIPPED, b.state_reason
    assert (await get_task(client, workflow_id, "a")).state == t.TASK_STATE_COMPLETED
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))
