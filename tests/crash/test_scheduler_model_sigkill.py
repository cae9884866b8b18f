"""A real sidecar against a model of the scheduler's promises: random workflows, real workers, SIGKILLs.

Each seed plans a few random workflows (fan-out/fan-in DAGs with trigger
rules, retries with backoff, tasks that fail for good, fail a few times or
time out, approval gates resolved later, spawned sub-tasks, a pool with a
concurrency limit of 2), and drives them over gRPC against a real sidecar
(``are_sdk.testing.SidecarProcess``) with real workers: two SDK stream
workers (:class:`are_sdk.Worker`) and one unary worker on PollTask /
CompleteTask / FailTask. Handlers derive their outputs from their inputs
(and their dependencies' outputs), plus the attempt number so that the
attempt whose completion stands is visible. Between steps the driver
submits (with a request_id; the sidecar picks the ids), resolves approvals,
cancels, pauses, or SIGKILLs the sidecar: while completions are in flight,
or while a submit, approval or cancellation is on the wire. Then it starts
the sidecar again on the same data folder, reconnects new workers, retries
the calls whose answer it never got, and checks:

* an acknowledged submit, cancellation, approval, completion or final
  failure is still there; a retried submit created no second workflow;
* a task's stored output (GetTask and ListTasks) is what the worker
  reported in the acknowledged completion;
* the trace of every workflow has strictly increasing sequences.

At the end every workflow must reach, within a bounded wait, the terminal
state the model predicts (each task's too), and the workers' own log must
show: no task ran again after its completion (or final failure) was
acknowledged; every run of a task carried the task's idempotency key and a
higher attempt number than the one before; no task started before the
dependencies it waited for had returned (with the very outputs they
returned); the pool never ran more than 2 handlers at once. Each task's
events are consistent with its final state.

Documented behaviour modelled: execution is at least once (a handler whose
result was not acknowledged before a kill runs again, with attempt+1); an
attempt lost to a restart is not charged to the retry policy (the
assignment's ``maximum_attempts`` grows by one instead), which the "flaky"
handler relies on to succeed exactly on its last allowed attempt.

``SCHED_MODEL_SEEDS=1-20 SCHED_MODEL_STEPS=80`` (and ``SCHED_MODEL_WORKFLOWS``,
``SCHED_MODEL_KILLS``) run a longer exploration offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

import are_sdk._worker as sdk_worker
from are_sdk import Client, RetryPolicy, RpcError, TaskContext, TaskError, TaskSpec, Worker, WorkflowSpec
from are_sdk._payload import decode_payload, encode_payload
from are_sdk._proto.are.v1 import (
    common_pb2,
    event_pb2,
    state_service_pb2,
    task_pb2,
    trace_service_pb2,
    workflow_pb2,
)
from are_sdk._proto.are.v1 import scheduler_service_pb2 as spb
from are_sdk._proto.are.v1 import worker_service_pb2 as wpb
from are_sdk.testing import SidecarProcess
from tests.unit.scheduler.test_model_random import _seeds  # "1-20" or "3,7"

SEEDS = _seeds(os.environ.get("SCHED_MODEL_SEEDS", "1-3"))
STEPS = int(os.environ.get("SCHED_MODEL_STEPS", "50"))
WORKFLOWS = int(os.environ.get("SCHED_MODEL_WORKFLOWS", "8"))
KILLS = int(os.environ.get("SCHED_MODEL_KILLS", "5"))
FINAL_WAIT_S = 60.0  # every workflow must close within this, after the last step
CALL_TIMEOUT_S = 20.0
POOL = "mp"
POOL_LIMIT = 2
MOD = 1_000_003
TERMINAL = frozenset({"COMPLETED", "FAILED", "SKIPPED", "REJECTED", "CANCELLED"})
FAIL_STATES = frozenset({"FAILED", "REJECTED", "CANCELLED"})
HANDLING_RULES = frozenset({"ALL_DONE", "ONE_FAILED", "ONE_SUCCESS"})
# The events that carry a task's new state (LEASE_EXPIRED, RETRY_SCHEDULED and
# TIMED_OUT carry the state before the change, or none).
STATE_EVENTS = frozenset(
    {
        "TASK_SCHEDULED",
        "TASK_SKIPPED",
        "TASK_AWAITING_APPROVAL",
        "TASK_REJECTED",
        "TASK_DISPATCHED",
        "TASK_COMPLETED",
        "TASK_ATTEMPT_FAILED",
        "TASK_CANCELLED",
    }
)


def _state(value: int) -> str:
    return task_pb2.TaskState.Name(value).removeprefix("TASK_STATE_")


def _wf_state(value: int) -> str:
    return workflow_pb2.WorkflowState.Name(value).removeprefix("WORKFLOW_STATE_")


def _event_type(value: int) -> str:
    return event_pb2.EventType.Name(value).removeprefix("EVENT_TYPE_")


# ------------------------------------------------------------------ the plan


@dataclass
class TaskPlan:
    """One planned task: what its handler does and what it waits for."""

    task_id: str
    capability: str  # "w": the stream workers; "u": the unary poller
    mode: str  # ok, flaky (fails until its last allowed attempt), fail, timeout, spawn
    deps: tuple[str, ...] = ()
    rule: str = "ALL_SUCCESS"
    approval: str = ""  # "", "approve" or "reject"
    pool: bool = False
    x: int = 0
    pointer: bool = False  # its output is also written to the state document at /<task id>

    def data(self) -> dict[str, Any]:
        # ONE_FAILED may fire before every dependency is terminal: its output ignores theirs.
        summed = [] if self.rule == "ONE_FAILED" else list(self.deps)
        return {"m": self.mode, "x": self.x, "p": self.pool, "d": summed}

    def spec(self) -> TaskSpec:
        retry = {
            "fail": RetryPolicy(maximum_attempts=2, initial_interval=0.05, backoff_coefficient=2.0),
            "flaky": RetryPolicy(
                maximum_attempts=3, initial_interval=0.05, backoff_coefficient=2.0, maximum_interval=0.2
            ),
            "timeout": RetryPolicy(maximum_attempts=1),
        }.get(self.mode, RetryPolicy(maximum_attempts=3, initial_interval=0.05))
        return TaskSpec(
            task_id=self.task_id,
            capability=self.capability,
            input=self.data(),
            depends_on=self.deps,
            trigger_rule=self.rule,
            retry_policy=retry,
            start_to_close_timeout=1.0 if self.mode == "timeout" else 60.0,
            pool=POOL if self.pool else "",
            requires_approval=bool(self.approval),
            output_state_pointer=f"/{self.task_id}" if self.pointer else "",
        )


def _kids(parent: str, x: int) -> list[TaskPlan]:
    """The 2 to 4 tasks a "spawn" task adds (the same on every attempt); the last may wait for the first."""
    n = 2 + x % 3
    return [
        TaskPlan(
            f"{parent}.k{i}",
            "wu"[i % 2],
            "ok",
            deps=(f"{parent}.k0",) if i == n - 1 and i > 1 else (),
            pool=i == 2,
            x=(x * 7 + i) % 1000,
        )
        for i in range(n)
    ]


@dataclass
class WorkflowPlan:
    """One planned workflow and what the driver knows of it."""

    label: str
    tasks: list[TaskPlan]
    cancel: bool
    wid: str = ""
    submit: str = ""  # "", "unknown" (sent, no answer), "acked"
    cancel_call: str = ""  # "", "unknown", "acked"
    cancel_state: str = ""  # the workflow's state in the cancel's answer
    decisions: dict[str, str] = field(default_factory=dict)  # task id -> "unknown" | "acked"

    def spec(self) -> WorkflowSpec:
        spec = WorkflowSpec(f"model-{self.label}", labels={"model": self.label})
        return spec.add(*(t.spec() for t in self.tasks))

    def by_id(self) -> dict[str, TaskPlan]:
        """The planned tasks and those spawned tasks would add, by id."""
        kids = [k for t in self.tasks if t.mode == "spawn" for k in _kids(t.task_id, t.x)]
        return {t.task_id: t for t in [*self.tasks, *kids]}


def _plan(rng: random.Random, label: str) -> WorkflowPlan:
    tasks: list[TaskPlan] = []
    roots = []
    for i in range(rng.randint(1, 3)):
        mode = rng.choices(["ok", "flaky", "fail", "timeout"], weights=[6, 3, 2, 1])[0]
        capability = "w" if mode == "timeout" else rng.choice("wwu")
        pool = capability == "w" and mode != "timeout" and rng.random() < 0.5
        roots.append(TaskPlan(f"r{i}", capability, mode, pool=pool, x=rng.randrange(1000)))
    tasks += roots
    mids = []
    for i in range(rng.randint(1, 4) if rng.random() < 0.7 else rng.randint(5, 10)):
        mode = rng.choices(["ok", "flaky", "fail", "spawn"], weights=[5, 2, 1, 2])[0]
        capability = "w" if mode == "spawn" else rng.choice("wwu")
        deps = tuple(t.task_id for t in rng.sample(roots, rng.randint(1, len(roots))))
        rule = rng.choice(["ALL_SUCCESS", "ALL_SUCCESS", "ALL_DONE", "ONE_FAILED", "NONE_FAILED"])
        approval = rng.choice(["approve", "approve", "reject"]) if rng.random() < 0.3 else ""
        pool = capability == "w" and rng.random() < 0.5
        mids.append(TaskPlan(f"m{i}", capability, mode, deps, rule, approval, pool, rng.randrange(1000)))
    tasks += mids
    for task in tasks:
        task.pointer = rng.random() < 0.3
    sink_deps = tuple(t.task_id for t in mids) + tuple(
        t.task_id for t in roots if rng.random() < 0.3 and t.task_id not in {d for m in mids for d in m.deps}
    )
    tasks.append(TaskPlan("sink", rng.choice("wu"), "ok", sink_deps, rng.choice(["ALL_SUCCESS", "ALL_DONE"])))
    return WorkflowPlan(label, tasks, cancel=rng.random() < 0.25)


def _verdict(rule: str, states: list[str]) -> bool:
    """The trigger rule's final verdict once every dependency is terminal."""
    if not states:
        return True
    ok = sum(s == "COMPLETED" for s in states)
    failed = sum(s in FAIL_STATES for s in states)
    skipped = sum(s == "SKIPPED" for s in states)
    if rule == "ALL_SUCCESS":
        return not failed and not skipped
    if rule == "ALL_DONE":
        return True
    if rule == "ONE_FAILED":
        return failed > 0
    if rule == "ONE_SUCCESS":
        return ok > 0
    return not failed  # NONE_FAILED


def expected(plan: WorkflowPlan) -> tuple[str, dict[str, str], dict[str, int]]:
    """The workflow's final state, each task's, and each completed task's output value ``y``."""
    states: dict[str, str] = {}
    ys: dict[str, int] = {}
    everything: list[TaskPlan] = []
    for task in plan.tasks:  # planned in dependency order
        everything.append(task)
        if not _verdict(task.rule, [states[d] for d in task.deps]):
            states[task.task_id] = "SKIPPED"
        elif task.approval == "reject":
            states[task.task_id] = "REJECTED"
        elif task.mode in ("fail", "timeout"):
            states[task.task_id] = "FAILED"
        else:
            states[task.task_id] = "COMPLETED"
            summed = task.data()["d"]
            ys[task.task_id] = (task.x * 31 + sum(ys[d] for d in summed if states[d] == "COMPLETED")) % MOD
            if task.mode == "spawn":
                for kid in _kids(task.task_id, task.x):
                    everything.append(kid)
                    states[kid.task_id] = "COMPLETED"
                    ys[kid.task_id] = (kid.x * 31 + sum(ys[d] for d in kid.deps)) % MOD
    handled = {
        d
        for t in everything
        if t.rule in HANDLING_RULES and states[t.task_id] in ("COMPLETED", "FAILED")
        for d in t.deps
    }
    unhandled = [t for t, s in states.items() if s in FAIL_STATES and t not in handled]
    return ("FAILED" if unhandled else "COMPLETED"), states, ys


# ------------------------------------------------------------------ workers


class Log:
    """What the workers saw, in the order they saw it (one event loop: a total order)."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []
        self.pool_running = 0
        self.pool_peak = 0

    def add(self, *entry: Any) -> None:
        self.entries.append(entry)


class _AckSession(sdk_worker._Session):
    """The SDK's stream session, also logging the acknowledgements of results."""

    def _on_acks(self, acks: Any) -> None:
        log = getattr(self.worker, "model_log", None)
        if log is not None:
            for ack in acks:
                if ack.subject in (wpb.ACK_SUBJECT_COMPLETION, wpb.ACK_SUBJECT_FAILURE):
                    subject = "complete" if ack.subject == wpb.ACK_SUBJECT_COMPLETION else "fail"
                    log.add(
                        "ack",
                        ack.workflow_id,
                        ack.task_id,
                        ack.attempt,
                        subject,
                        ack.accepted,
                        ack.will_retry,
                    )
        super()._on_acks(acks)


Spawn = Callable[[list[TaskSpec], str], Awaitable[Any]]


async def work(  # noqa: PLR0917 - one call site per kind of worker
    log: Log,
    ctx: tuple[str, str, int, str],
    data: dict[str, Any],
    deps: dict[str, tuple[str, Any]],
    maximum_attempts: int,
    spawn: Spawn | None,
) -> dict[str, Any]:
    """The handler both kinds of worker run: logs, sleeps a little, returns or raises by ``data``."""
    wf, task, attempt, key = ctx
    log.add("start", wf, task, attempt, key, deps)
    pooled = bool(data["p"])
    if pooled:
        log.pool_running += 1
        log.pool_peak = max(log.pool_peak, log.pool_running)
    try:
        await asyncio.sleep(random.Random(f"{wf}/{task}/{attempt}").uniform(0.0, 0.03))
        mode = data["m"]
        if mode == "timeout":
            await asyncio.sleep(30)  # the sidecar's start-to-close timeout cancels it first
        if mode == "fail" or (mode == "flaky" and attempt < maximum_attempts):
            log.add("raise", wf, task, attempt)
            raise TaskError(f"{mode} attempt {attempt}", type="ModelFailure")
        if mode == "spawn":
            assert spawn is not None
            kids = [k.spec() for k in _kids(task, int(data["x"]))]
            log.add("spawn", wf, task, attempt)
            await spawn(kids, f"{task}.kids")
        y = int(data["x"]) * 31
        for dep in data["d"]:
            state, output = deps[dep]
            if state == "COMPLETED":
                y += int(output["y"])
        output = {"t": task, "a": attempt, "y": y % MOD}
        log.add("return", wf, task, attempt, output)
        return output
    finally:
        if pooled:
            log.pool_running -= 1


class ModelWorker(Worker):
    """An SDK stream worker running :func:`work` for capability "w"."""

    def __init__(self, client: Client, log: Log, name: str) -> None:
        super().__init__(client, name=name, max_concurrency=4, shutdown_grace=0.5, reconnect_max_delay=0.5)
        self.model_log = log
        self.register("w", self._handle)

    async def _handle(self, ctx: TaskContext) -> Any:
        deps = {k: (d.state.name, d.output) for k, d in ctx.dependencies.items()}

        async def spawn(specs: list[TaskSpec], request_id: str) -> Any:
            return await ctx.spawn(*specs, dependents_wait=True, request_id=request_id)

        return await work(
            self.model_log,
            (ctx.workflow_id, ctx.task_id, ctx.attempt, ctx.idempotency_key),
            ctx.input,
            deps,
            ctx.maximum_attempts,
            spawn,
        )


async def poll_worker(client: Client, log: Log, stop: asyncio.Event) -> None:
    """A unary worker: PollTask for capability "u", then CompleteTask or FailTask."""

    async def run_one(a: Any) -> None:
        deps = {
            d.task_id: (_state(d.state), decode_payload(d.output) if d.HasField("output") else None)
            for d in a.dependencies
        }
        key = (a.workflow_id, a.task_id, a.attempt)
        try:
            output = await work(
                log, (*key, a.idempotency_key), decode_payload(a.input), deps, a.maximum_attempts, None
            )
        except TaskError as error:
            failure = common_pb2.Failure(
                message=error.message, type=error.type, kind=common_pb2.FAILURE_KIND_APPLICATION
            )
            request: Any = wpb.FailTaskRequest(
                failure=wpb.TaskFailure(workflow_id=key[0], task_id=key[1], attempt=key[2], failure=failure)
            )
            call, subject = client.raw.worker.FailTask, "fail"
        else:
            completion = wpb.TaskCompletion(
                workflow_id=key[0], task_id=key[1], attempt=key[2], output=encode_payload(output)
            )
            request, call, subject = (
                wpb.CompleteTaskRequest(completion=completion),
                client.raw.worker.CompleteTask,
                "complete",
            )
        try:
            response = await call(request, timeout=CALL_TIMEOUT_S)
        except RpcError as error:
            if error.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                log.add("ack", *key, subject, False, False)  # noqa: FBT003 - a log row
            return  # UNAVAILABLE and the like: no answer, the outcome is unknown
        log.add("ack", *key, subject, True, subject == "fail" and response.will_retry)  # noqa: FBT003

    while not stop.is_set():
        try:
            response = await client.raw.worker.PollTask(
                wpb.PollTaskRequest(worker_name="poller", capabilities=["u"], max_tasks=2, identity="model"),
                timeout=3.0,
            )
        except RpcError:
            await asyncio.sleep(0.05)
            continue
        await asyncio.gather(*(run_one(a) for a in response.assignments))


# ------------------------------------------------------------------ the driver


class Run:
    """One seed: the sidecar, its clients and workers, the plans and the checks."""

    def __init__(self, seed: int, data: Path) -> None:
        self.seed = seed
        self.data = data
        self.rng = random.Random(seed)
        self.plans = [_plan(self.rng, f"s{seed}w{i}") for i in range(WORKFLOWS)]
        self.log = Log()
        self.ops: list[str] = []  # the driver's own steps, printed when a check fails
        self.process: SidecarProcess | None = None
        self.client: Client | None = None
        self.workers: list[ModelWorker] = []
        self.poller: asyncio.Task[None] | None = None
        self.poller_stop = asyncio.Event()
        self.kills = 0
        self.retried = 0  # calls made again after a kill lost their answer
        self.seen_events: dict[str, dict[int, bytes]] = {}  # workflow -> sequence -> event listed

    @property
    def c(self) -> Client:
        assert self.client is not None
        return self.client

    # -- life

    async def start(self) -> None:
        self.process = await asyncio.to_thread(SidecarProcess.start, data_dir=self.data)
        self.client = await Client.connect(self.process.target)
        await self.c.pools.put(POOL, max_concurrency=POOL_LIMIT)
        self.workers = [ModelWorker(self.c, self.log, f"mw{i}") for i in range(2)]
        for worker in self.workers:
            await worker.__aenter__()
        self.poller_stop = asyncio.Event()
        self.poller = asyncio.create_task(poll_worker(self.c, self.log, self.poller_stop))

    async def teardown(self) -> None:
        self.poller_stop.set()
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, RpcError):
                await self.poller
        async with asyncio.timeout(20):
            for worker in self.workers:
                with contextlib.suppress(RpcError):
                    await worker.__aexit__(None, None, None)
        if self.client is not None:
            await self.client.close()
        self.client = None

    async def close(self) -> None:
        await self.teardown()
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
            self.process.cleanup()

    async def kill_and_restart(self) -> None:
        assert self.process is not None
        self.process.kill()  # a no-op when a step killed it already
        self.kills += 1
        self.ops.append(f"kill #{self.kills} (log at {len(self.log.entries)})")
        await self.teardown()
        self.process.cleanup()
        await self.start()
        await self.retry_unknown()
        await self.check_durable()

    # -- calls (each marks what it knows before and after its answer)

    async def submit(self, plan: WorkflowPlan) -> None:
        plan.submit = "unknown"
        handle = await self.c.workflows.submit(plan.spec(), request_id=plan.label)
        assert not plan.wid or plan.wid == handle.workflow_id, (plan.label, plan.wid, handle.workflow_id)
        plan.wid, plan.submit = handle.workflow_id, "acked"
        self.ops.append(f"submitted {plan.label} as {plan.wid} (deduplicated={handle.deduplicated})")

    async def cancel(self, plan: WorkflowPlan) -> None:
        plan.cancel_call = "unknown"
        response = await self.c.raw.scheduler.CancelWorkflow(
            spb.CancelWorkflowRequest(workflow_id=plan.wid, reason="model"), timeout=CALL_TIMEOUT_S
        )
        plan.cancel_call, plan.cancel_state = "acked", _wf_state(response.workflow.state)
        self.ops.append(f"cancelled {plan.label}: {plan.cancel_state}")

    async def resolve(self, plan: WorkflowPlan, task_id: str) -> None:
        plan.decisions[task_id] = "unknown"
        decision = plan.by_id()[task_id].approval
        try:
            await self.c.raw.scheduler.ResolveApproval(
                spb.ResolveApprovalRequest(
                    workflow_id=plan.wid,
                    task_id=task_id,
                    decision=task_pb2.APPROVAL_DECISION_APPROVE
                    if decision == "approve"
                    else task_pb2.APPROVAL_DECISION_REJECT,
                    approver="model",
                ),
                timeout=CALL_TIMEOUT_S,
            )
        except RpcError as error:
            if error.reason != "TASK_NOT_AWAITING_APPROVAL":
                raise
            if plan.decisions.get(task_id) != "acked":  # not resolved by a twin call
                del plan.decisions[task_id]  # the workflow closed (a cancellation) first
            return
        plan.decisions[task_id] = "acked"
        self.ops.append(f"{decision}d {plan.label}/{task_id}")

    async def awaiting(self, plan: WorkflowPlan) -> list[str]:
        response = await self.c.raw.scheduler.ListApprovals(
            spb.ListApprovalsRequest(workflow_id=plan.wid, page_size=100), timeout=CALL_TIMEOUT_S
        )
        return [t.task_id for t in response.tasks]

    # -- steps

    def submitted(self) -> list[WorkflowPlan]:
        return [p for p in self.plans if p.submit == "acked"]

    async def next_call(self) -> Callable[[], Awaitable[None]] | None:
        """A random call to make now: a submit, an approval or a cancellation (None: nothing to do)."""
        choice = self.rng.random()
        fresh = [p for p in self.plans if not p.submit]
        if choice < 0.45 and fresh:
            plan = fresh[0]
            return lambda: self.submit(plan)
        if choice < 0.85:
            for plan in self.rng.sample(self.submitted(), len(self.submitted())):
                gates = await self.awaiting(plan)
                if gates:
                    task_id = self.rng.choice(gates)
                    return lambda: self.resolve(plan, task_id)
            return None
        cancellable = [p for p in self.submitted() if p.cancel and not p.cancel_call]
        if cancellable:
            plan = self.rng.choice(cancellable)
            return lambda: self.cancel(plan)
        return None

    async def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.15 and self.kills < KILLS:
            await self.step_kill()
        elif roll < 0.7:
            call = await self.next_call()
            if call is not None:
                await call()
        else:
            await asyncio.sleep(self.rng.uniform(0.01, 0.1))

    async def step_kill(self) -> None:
        call = await self.next_call() if self.rng.random() < 0.5 else None
        if call is None:
            # Results in flight: kill just after a handler returns or fails (its result is on
            # the wire or committing), or after a few more log rows (assignments arriving,
            # spawns under way).
            kinds = self.rng.choice([("return", "raise"), ("spawn",), ("start", "return", "raise", "ack")])
            seen = len(self.log.entries)
            wanted = self.rng.randint(1, 6) if "start" in kinds else 1
            for _ in range(400):
                if sum(e[0] in kinds for e in self.log.entries[seen:]) >= wanted:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(self.rng.uniform(0.0, 0.003))
            await self.kill_and_restart()
            return
        job: asyncio.Future[Any] = asyncio.ensure_future(call())
        if self.rng.random() < 0.5:
            # The same call twice at once (a client that retries on a timeout): kill as soon as
            # either is answered, so an answer that ran ahead of its commit is caught.
            twin = asyncio.ensure_future(call())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({job, twin}, timeout=2.0, return_when=asyncio.FIRST_COMPLETED)
            job = asyncio.gather(job, twin, return_exceptions=True)
        await asyncio.sleep(self.rng.uniform(0.0, 0.004))
        assert self.process is not None
        self.process.kill()  # the call may or may not have been answered
        with contextlib.suppress(RpcError):
            await job
        await self.kill_and_restart()

    async def retry_unknown(self) -> None:
        """Makes again every call whose answer was lost, as a client would."""
        for plan in self.plans:
            if plan.submit == "unknown":
                self.retried += 1
                await self.submit(plan)
                count = 0
                async for _ in self.c.workflows.list(labels={"model": plan.label}):
                    count += 1
                assert count == 1, f"{plan.label}: a retried submit made {count} workflows"
            if plan.cancel_call == "unknown":
                self.retried += 1
                await self.cancel(plan)
            for task_id, status in list(plan.decisions.items()):
                if status == "unknown":
                    self.retried += 1
                    task = (await self.get_task(plan, task_id)).task
                    if _state(task.state) == "AWAITING_APPROVAL":
                        await self.resolve(plan, task_id)
                    elif task.approval.decision:
                        plan.decisions[task_id] = "acked"
                    else:
                        del plan.decisions[task_id]  # cancelled at the gate

    async def get_task(self, plan: WorkflowPlan, task_id: str) -> Any:
        return await self.c.raw.scheduler.GetTask(
            spb.GetTaskRequest(workflow_id=plan.wid, task_id=task_id), timeout=CALL_TIMEOUT_S
        )

    async def tasks(self, plan: WorkflowPlan) -> dict[str, Any]:
        out: dict[str, Any] = {}
        token = ""
        for _ in range(100):
            response = await self.c.raw.scheduler.ListTasks(
                spb.ListTasksRequest(
                    workflow_id=plan.wid, page_size=100, page_token=token, include_payloads=True
                ),
                timeout=CALL_TIMEOUT_S,
            )
            out.update((t.task_id, t) for t in response.tasks)
            token = response.next_page_token
            if not token:
                return out
        raise AssertionError("ListTasks did not end")

    async def state_values(self, plan: WorkflowPlan) -> dict[str, Any]:
        """The outputs written to the workflow's state document (output_state_pointer), by task."""
        pointered = [t.task_id for t in plan.tasks if t.pointer]
        if not pointered:
            return {}
        response = await self.c.raw.state.GetState(
            state_service_pb2.GetStateRequest(workflow_id=plan.wid, paths=[f"/{t}" for t in pointered]),
            timeout=CALL_TIMEOUT_S,
        )
        return {v.path[1:]: json.loads(v.value_json) for v in response.values}

    async def events(self, plan: WorkflowPlan) -> list[Any]:
        out: list[Any] = []
        token = ""
        for _ in range(1000):
            response = await self.c.raw.trace.ListEvents(
                trace_service_pb2.ListEventsRequest(
                    filter=event_pb2.EventFilter(workflow_ids=[plan.wid]), page_size=1000, page_token=token
                ),
                timeout=CALL_TIMEOUT_S,
            )
            out += response.events
            token = response.next_page_token
            if not token:
                return out
        raise AssertionError("ListEvents did not end")

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for entry in self.log.entries:
            kinds[entry[0]] = kinds.get(entry[0], 0) + 1
        acked = {(e[1], e[2], e[3]) for e in self.log.entries if e[0] == "ack"}
        lost = [
            e for e in self.log.entries if e[0] in ("return", "raise") and (e[1], e[2], e[3]) not in acked
        ]
        finals = [expected(p)[0] if p.cancel_state != "CANCELLED" else "CANCELLED" for p in self.plans]
        return (
            f"seed {self.seed}: {self.kills} kills, log {kinds}, pool peak {self.log.pool_peak}, "
            f"workflows {sorted(finals)}, approvals {sum(len(p.decisions) for p in self.plans)}, "
            f"spawns {sum(t.mode == 'spawn' for p in self.plans for t in p.tasks)}, "
            f"results lost {len(lost)}, calls retried {self.retried}"
        )

    # -- checks

    def acked_results(self) -> dict[tuple[str, str], tuple[int, str, bool]]:
        """(workflow, task) -> (attempt, "complete" or "fail", will_retry) of each accepted result."""
        out: dict[tuple[str, str], tuple[int, str, bool]] = {}
        for entry in self.log.entries:
            if entry[0] == "ack" and entry[5]:
                _, wf, task, attempt, subject, _, will_retry = entry
                if subject == "complete":
                    assert (wf, task) not in out or out[wf, task][1] != "complete", (
                        f"{wf}/{task}: two completions acknowledged"
                    )
                out[wf, task] = (attempt, subject, will_retry)
        return out

    def returned(self) -> dict[tuple[str, str, int], Any]:
        return {(e[1], e[2], e[3]): e[4] for e in self.log.entries if e[0] == "return"}

    async def check_durable(self) -> None:
        """After a restart: everything acknowledged is still there."""
        results = self.acked_results()
        returned = self.returned()
        for plan in self.submitted():
            workflows = [w async for w in self.c.workflows.list(labels={"model": plan.label})]
            assert [w.workflow_id for w in workflows] == [plan.wid], (plan.label, workflows)
            got = (
                await self.c.raw.scheduler.GetWorkflow(spb.GetWorkflowRequest(workflow_id=plan.wid))
            ).workflow
            if plan.cancel_call == "acked":
                assert _wf_state(got.state) == plan.cancel_state, (plan.label, _wf_state(got.state))
            tasks = await self.tasks(plan)
            for task_id, status in plan.decisions.items():
                if status == "acked":
                    task = tasks[task_id]
                    want = task_pb2.APPROVAL_DECISION_APPROVE
                    if plan.by_id()[task_id].approval == "reject":
                        want = task_pb2.APPROVAL_DECISION_REJECT
                    assert task.approval.decision == want, (plan.label, task_id, task.approval)
                    assert _state(task.state) != "AWAITING_APPROVAL", (plan.label, task_id)
            for (wf, task_id), (attempt, subject, will_retry) in results.items():
                if wf != plan.wid:
                    continue
                task = tasks[task_id]
                if subject == "complete":
                    assert _state(task.state) == "COMPLETED", (plan.label, task_id, _state(task.state))
                    assert task.attempt == attempt, (plan.label, task_id, task.attempt, attempt)
                    assert decode_payload(task.output) == returned[wf, task_id, attempt], (
                        plan.label,
                        task_id,
                    )
                    if plan.by_id()[task_id].pointer:
                        written = await self.state_values(plan)
                        assert written.get(task_id) == returned[wf, task_id, attempt], (plan.label, task_id)
                    single = (await self.get_task(plan, task_id)).task
                    assert decode_payload(single.output) == returned[wf, task_id, attempt], (
                        plan.label,
                        task_id,
                    )
                elif not will_retry:
                    assert _state(task.state) == "FAILED", (plan.label, task_id, _state(task.state))
            self.check_sequences(plan, await self.events(plan))

    def check_sequences(self, plan: WorkflowPlan, events: list[Any]) -> None:
        """Sequences strictly increase, and every event listed before is still listed, unchanged."""
        sequences = [e.sequence for e in events]
        assert all(a < b for a, b in itertools.pairwise(sequences)), (
            f"{plan.label}: event sequences not strictly increasing: {sequences}"
        )
        now = {e.sequence: e.SerializeToString(deterministic=True) for e in events}
        before = self.seen_events.setdefault(plan.wid, {})
        for sequence, raw in before.items():
            assert now.get(sequence) == raw, f"{plan.label}: event {sequence} changed or vanished"
        before.update(now)

    async def finish(self) -> None:
        """Submits what is left, resolves every gate, and waits (bounded) for every workflow to close."""
        for plan in self.plans:
            if not plan.submit:
                await self.submit(plan)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINAL_WAIT_S
        while True:
            open_plans = []
            for plan in self.plans:
                got = (
                    await self.c.raw.scheduler.GetWorkflow(spb.GetWorkflowRequest(workflow_id=plan.wid))
                ).workflow
                if _wf_state(got.state) in ("RUNNING", "CANCELLING"):
                    open_plans.append(plan)
                    if plan.cancel and not plan.cancel_call:
                        await self.cancel(plan)
                        continue
                    for task_id in await self.awaiting(plan):
                        await self.resolve(plan, task_id)
            if not open_plans:
                return
            assert loop.time() < deadline, (
                f"still open after {FINAL_WAIT_S}s: {[p.label for p in open_plans]}"
            )
            await asyncio.sleep(0.1)

    async def check_final(self) -> None:
        results = self.acked_results()
        returned = self.returned()
        for plan in self.plans:
            got = (
                await self.c.raw.scheduler.GetWorkflow(spb.GetWorkflowRequest(workflow_id=plan.wid))
            ).workflow
            want_state, want_tasks, want_ys = expected(plan)
            state = _wf_state(got.state)
            tasks = await self.tasks(plan)
            states = {t: _state(task.state) for t, task in tasks.items()}
            if plan.cancel_call and plan.cancel_state == "CANCELLED":
                assert state == "CANCELLED", (plan.label, state)
                assert set(states.values()) <= TERMINAL, (plan.label, states)
                for task_id, task_state in states.items():
                    if task_state != "CANCELLED":  # it ended before the cancellation: as the model says
                        assert task_state == want_tasks.get(task_id), (plan.label, task_id, task_state)
            else:
                assert states == want_tasks, (plan.label, states, want_tasks)
                assert state == want_state, (plan.label, state, want_state, got.failure.message)
            for task_id, task in tasks.items():
                if states[task_id] != "COMPLETED":
                    continue
                output = decode_payload(task.output)
                assert output == returned.get((plan.wid, task_id, task.attempt)), (
                    plan.label,
                    task_id,
                    output,
                )
                assert output["y"] == want_ys[task_id], (plan.label, task_id, output, want_ys[task_id])
                acked = results.get((plan.wid, task_id))
                if acked is not None and acked[1] == "complete":
                    assert acked[0] == task.attempt, (plan.label, task_id, acked, task.attempt)
                elif acked is not None:  # a retried failure, then a completion whose ack a kill lost
                    assert acked[2] and acked[0] < task.attempt, (plan.label, task_id, acked, task.attempt)
            events = await self.events(plan)
            self.check_sequences(plan, events)
            self.check_trace(plan, state, states, tasks, events)
            written = await self.state_values(plan)
            for task_id, value in written.items():
                assert states[task_id] == "COMPLETED", (plan.label, task_id, states[task_id], value)
                assert value == decode_payload(tasks[task_id].output), (plan.label, task_id, value)
            pointered = {t.task_id for t in plan.tasks if t.pointer and states[t.task_id] == "COMPLETED"}
            assert set(written) == pointered, (plan.label, sorted(written), sorted(pointered))
        self.check_log()

    def check_trace(
        self, plan: WorkflowPlan, state: str, states: dict[str, str], tasks: dict[str, Any], events: list[Any]
    ) -> None:
        kinds = [_event_type(e.event_type) for e in events]
        assert kinds.count("WORKFLOW_SUBMITTED") == 1, (plan.label, kinds)
        assert kinds.count(f"WORKFLOW_{state}") == 1, (plan.label, state, kinds)
        last: dict[str, Any] = {}
        completed: dict[str, list[int]] = {}
        dispatched: set[tuple[str, int]] = set()
        for event, kind in zip(events, kinds, strict=True):
            if kind in STATE_EVENTS and event.task_id:
                last[event.task_id] = event
            if kind == "TASK_COMPLETED":
                completed.setdefault(event.task_id, []).append(event.attempt)
            if kind == "TASK_DISPATCHED":
                dispatched.add((event.task_id, event.attempt))
        for task_id, task_state in states.items():
            if task_state == "COMPLETED":
                assert completed.get(task_id) == [tasks[task_id].attempt], (plan.label, task_id, completed)
            else:
                assert task_id not in completed, (plan.label, task_id, task_state)
            event = last.get(task_id)
            assert event is not None, (plan.label, task_id, "no event")
            assert _state(event.task_state) == task_state, (
                plan.label,
                task_id,
                _event_type(event.event_type),
                _state(event.task_state),
                task_state,
            )
        started = {(e[2], e[3]) for e in self.log.entries if e[0] == "start" and e[1] == plan.wid}
        assert started <= dispatched, (plan.label, sorted(started - dispatched))

    def check_log(self) -> None:
        """The workers' log: no rerun after an acknowledged result, attempts up, deps first, pool bound."""
        final: dict[tuple[str, str], int] = {}  # task -> index of its acknowledged final result
        attempts: dict[tuple[str, str], int] = {}
        returned_at: dict[tuple[str, str], list[Any]] = {}
        plans = {p.wid: p for p in self.plans}
        for index, entry in enumerate(self.log.entries):
            kind, wf, task = entry[0], entry[1], entry[2]
            if kind == "start":
                _, _, _, attempt, key, deps = entry
                assert (wf, task) not in final, (
                    f"{wf}/{task} ran again (attempt {attempt}) after its result was acknowledged"
                )
                assert key == f"{wf}/{task}", (wf, task, key)
                assert attempt > attempts.get((wf, task), 0), (wf, task, attempt, attempts.get((wf, task)))
                attempts[wf, task] = attempt
                planned = plans[wf].by_id().get(task)
                for dep in planned.deps if planned else ():
                    assert dep in deps, (wf, task, dep, deps)
                    dep_state, dep_output = deps[dep]
                    if planned is not None and planned.rule in ("ALL_SUCCESS", "ALL_DONE", "NONE_FAILED"):
                        assert dep_state in TERMINAL, (wf, task, dep, dep_state)
                    if planned is not None and planned.rule == "ALL_SUCCESS":
                        assert dep_state == "COMPLETED", (wf, task, dep, dep_state)
                    if dep_state == "COMPLETED":
                        assert dep_output in returned_at.get((wf, dep), []), (
                            f"{wf}/{task} started before {dep} returned {dep_output}"
                        )
            elif kind == "return":
                returned_at.setdefault((wf, task), []).append(entry[4])
            elif kind == "ack" and entry[5] and (entry[4] == "complete" or not entry[6]):
                final.setdefault((wf, task), index)
        assert self.log.pool_peak <= POOL_LIMIT, f"pool {POOL} ran {self.log.pool_peak} handlers at once"


@pytest.mark.parametrize("seed", SEEDS)
async def test_scheduler_model_under_sigkill(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdk_worker, "_Session", _AckSession)
    run = Run(seed, tmp_path / "data")
    await run.start()
    try:
        for _ in range(STEPS):
            await run.step()
        if not run.kills:
            await run.step_kill()
        await run.finish()
        await run.check_final()
    except BaseException:
        print(f"seed {seed}, {run.kills} kills; driver steps:\n  " + "\n  ".join(run.ops))
        raise
    finally:
        with contextlib.suppress(Exception):
            await run.close()
    print(run.summary())
    assert any(e[0] == "start" for e in run.log.entries)
