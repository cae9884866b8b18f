"""A model-based randomized test of the scheduler engine (engine, no server).

A pure-Python model of what the engine documents drives random operations:
workflows (DAGs with trigger rules, priorities, pools with concurrency
limits and queue bounds, retries with backoff, schedule-to-start,
start-to-close and heartbeat timeouts, approval gates, intents routed by a
fake router, budgets), fake workers connecting, draining, taking tasks,
heartbeating, completing, failing, going silent or disconnecting,
cancellations, clock advances, and engine restarts, clean (stop, start) or
crashed (the engine dropped with its uncommitted transaction, the storage
closed and opened again). After every step the engine is checked against the
model: task states and counts, holders and leases, trigger rules at dispatch,
workflow closing and final state, pool bounds and counts, priorities, retry
attempts and backoff bounds, and what was acknowledged before a restart.

The engine runs on a fake clock; its timers are fired by re-arming its loop
timer after each advance. A seed that fails prints its operation log.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from are_core.scheduler import (
    TABLES,
    TERMINAL_TASK_STATES,
    Assignment,
    Budget,
    Cancellation,
    Failure,
    NotAwaitingApprovalError,
    PoolLimits,
    PoolQueueFullError,
    RetryPolicy,
    RoutingError,
    Scheduler,
    TaskNotHeldError,
    TaskRecord,
    TaskSpec,
    WorkerHandle,
    WorkflowSpec,
)
from are_core.storage import Durability, GroupCommitter, Storage
from tests.unit.scheduler.test_bounds import _sizes
from tests.unit.scheduler.test_reroute import Clock

SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)
STEPS = 400
CAPS = ("c1", "c2")
FAIL_STATES = frozenset({"FAILED", "REJECTED", "CANCELLED"})
HANDLING_RULES = frozenset({"ALL_DONE", "ONE_FAILED", "ONE_SUCCESS"})
RULES = ("ALL_SUCCESS", "ALL_DONE", "ONE_FAILED", "ONE_SUCCESS", "NONE_FAILED")
STATES = (
    frozenset({"PENDING", "SCHEDULED", "AWAITING_APPROVAL", "RUNNING", "BACKING_OFF"}) | TERMINAL_TASK_STATES
)
POOLS = {
    "default": PoolLimits(name="default"),
    "p1": PoolLimits(name="p1", max_concurrency=2, max_queue_length=4),
    "p2": PoolLimits(name="p2", max_concurrency=1),
    "p3": PoolLimits(name="p3", requests_per_second=0.5, burst=1),
}


def verdict(rule: str, states: list[str]) -> bool | None:
    """What the documented trigger rule says given the dependencies' states (None: wait)."""
    if not states:
        return True
    ok = sum(s == "COMPLETED" for s in states)
    failed = sum(s in FAIL_STATES for s in states)
    skipped = sum(s == "SKIPPED" for s in states)
    done = all(s in TERMINAL_TASK_STATES for s in states)
    if rule == "ALL_SUCCESS":
        return False if failed or skipped else (True if done else None)
    if rule == "ALL_DONE":
        return True if done else None
    if rule == "ONE_FAILED":
        return True if failed else (False if done else None)
    if rule == "ONE_SUCCESS":
        return True if ok else (False if done else None)
    return False if failed else (True if done else None)  # NONE_FAILED


class Router:
    """Routes the intent "any" to the first served capability, else c1; "none" clears no threshold."""

    def __init__(self) -> None:
        self.served: Callable[[str], bool] = lambda _: False

    def route(self, spec: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:
        if spec.intent == "none":
            raise RoutingError("nothing above the threshold")
        return next((c for c in CAPS if self.served(c)), CAPS[0]), {}


@dataclass
class MTask:
    spec: TaskSpec
    policy: RetryPolicy
    dependents: list[str] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)  # depends_on, then what spawns made it wait for
    delivered: int = 0  # the last attempt delivered to a worker
    not_before_ns: int = 0  # a retry is not dispatched before this
    acked: str = ""  # an acknowledged outcome: "COMPLETED" (with output), "FAILED", "BACKING_OFF"
    output: bytes = b""
    unacked: bool = False  # an outcome reported whose commit was not awaited (a crash may lose it)


@dataclass
class MWorkflow:
    wf_id: str
    tasks: dict[str, MTask]
    cancelled: bool = False  # a cancellation was acknowledged
    closed: str = ""  # the final state once seen


class FakeWorker:
    """A worker: what it holds (task -> attempt), as the engine delivered it."""

    def __init__(self, run: Run, name: str, caps: tuple[str, ...], concurrency: int) -> None:
        self.run = run
        self.name = name
        self.caps = caps
        self.concurrency = concurrency
        self.alive = True
        self.draining = False
        self.held: dict[tuple[str, str], int] = {}
        self.handle: WorkerHandle | None = None

    def assign(self, batch: list[Assignment]) -> None:
        if self.alive:
            for a in batch:
                try:
                    self.run.on_assign(self, a)
                except Exception as error:  # noqa: BLE001 - raised by the next check, not lost in the loop
                    self.run.errors.append(error)

    def cancel(self, batch: list[Cancellation]) -> None:
        for c in batch:
            self.run.log.append(
                f"  {self.name} told to cancel {c.workflow_id}/{c.task_id}#{c.attempt} {c.reason}"
            )
            if self.held.get((c.workflow_id, c.task_id)) == c.attempt:
                del self.held[(c.workflow_id, c.task_id)]


class Run:
    """One seed: the engine, the model and the operation log."""

    def __init__(self, seed: int, path: Path) -> None:
        self.rnd = random.Random(seed)
        self.path = path
        self.clock = Clock()
        self.router = Router()
        self.log: list[str] = []
        self.workflows: dict[str, MWorkflow] = {}
        self.workers: list[FakeWorker] = []
        self.n_wf = 0
        self.n_worker = 0
        self.dispatched: list[tuple[str, str]] = []  # this step's dispatches
        self.errors: list[Exception] = []  # raised in delivery callbacks
        self.stats: Counter[str] = Counter()
        self.storage: Storage
        self.committer: GroupCommitter
        self.engine: Scheduler

    # ------------------------------------------------------------ engine life

    async def open(self) -> None:
        self.storage = Storage.open(self.path, tables=TABLES, durability=Durability.RELAXED)
        self.committer = GroupCommitter(self.storage)
        await self.start()

    async def start(self) -> None:
        engine = Scheduler(self.storage, self.committer, clock=self.clock, rng=self.rnd.random)
        engine.route = self.router.route
        engine.capability_served = lambda cap: any(
            w.alive and not w.draining and cap in w.caps for w in self.workers
        )
        self.router.served = engine.serves
        engine.reroute_grace_s = 5.0
        self.engine = engine
        await engine.start()

    async def close(self) -> None:
        await self.engine.stop()
        await self.committer.aclose()
        self.storage.close()

    def kill_workers(self) -> None:
        for w in self.workers:
            w.alive = False
        self.workers = []

    async def restart(self, *, crash: bool) -> None:
        old = self.engine
        self.kill_workers()
        if crash:
            # The process dies between two turns: what was not flushed is lost; a
            # commit already handed to LMDB lands (or not: here it does).
            old._stopped = True
            if old._timer is not None:
                old._timer.cancel()
            if old._reroute_job is not None:
                old._reroute_job.cancel()
            old._txn = None
            if old._pending_commits:
                await asyncio.gather(*old._pending_commits, return_exceptions=True)
            await self.committer.aclose()
            self.storage.close()
            self.storage = Storage.open(self.path, tables=TABLES, durability=Durability.RELAXED)
            self.committer = GroupCommitter(self.storage)
        else:
            await old.stop()
        for mw in self.workflows.values():
            for mt in mw.tasks.values():
                mt.unacked = False  # it landed or it did not: both are allowed
        running = self.running_snapshot()
        await self.start()
        await self.quiesce()
        for (wf_id, task_id), attempt in running.items():
            rec = self.engine.get_task(wf_id, task_id).record
            # Re-dispatched with attempt+1 (or waiting for it), the lost attempt uncharged.
            if rec.state == "SCHEDULED":
                assert rec.attempt == attempt, (wf_id, task_id, rec.attempt, attempt)
            elif rec.state == "RUNNING":
                assert rec.attempt == attempt + 1, (wf_id, task_id, rec.attempt, attempt)
            else:
                assert rec.state in TERMINAL_TASK_STATES, (task_id, rec.state)

    def running_snapshot(self) -> dict[tuple[str, str], int]:
        """Durably RUNNING tasks (their dispatch was delivered) and their attempt, before a restart."""
        out = {}
        for wf_id, mw in self.workflows.items():
            if mw.closed:
                continue
            for task_id, mt in mw.tasks.items():
                rec = self.engine.get_task(wf_id, task_id).record
                if rec.state == "RUNNING" and mt.delivered == rec.attempt:
                    out[(wf_id, task_id)] = rec.attempt
        return out

    async def quiesce(self) -> None:
        """Until the engine has committed and delivered everything, and no timer is due."""
        engine = self.engine
        for i in range(2000):
            busy = (
                engine._txn is not None
                or engine._pending_commits
                or (engine._timer is not None and engine._timer_at <= self.clock.now)
                or engine._reroute_job is not None
                or engine._reroute_pending
            )
            if not busy:
                await asyncio.sleep(0)
                if engine._txn is None and not engine._pending_commits:
                    return
            await asyncio.sleep(0 if i < 100 else 0.001)
        raise AssertionError("the engine did not quiesce")

    # ------------------------------------------------------------- deliveries

    def on_assign(self, worker: FakeWorker, a: Assignment) -> None:
        mw = self.workflows[a.workflow_id]
        mt = mw.tasks[a.task_id]
        key = (a.workflow_id, a.task_id)
        assert not mw.cancelled, f"{key} dispatched after its workflow's cancellation was acknowledged"
        assert a.attempt > mt.delivered, f"{key} attempt {a.attempt} after {mt.delivered}"
        assert mt.acked != "COMPLETED", f"{key} dispatched again after an acknowledged completion"
        for other in self.workers:
            if other.alive and key in other.held:
                raise AssertionError(
                    f"{key} attempt {a.attempt} given to {worker.name}: {other.name} holds it"
                )
        assert a.capability in worker.caps, (a.capability, worker.caps)
        assert not worker.draining
        assert len(worker.held) < worker.concurrency, f"{worker.name} over its concurrency with {key}"
        rule = mt.spec.trigger_rule
        states = [d.state for d in a.dependencies]
        assert [d.task_id for d in a.dependencies] == mt.deps
        assert verdict(rule, states) is True, f"{key} ran with {rule} over {states}"
        rec = self.engine.get_task(a.workflow_id, a.task_id).record
        assert rec.start_ns >= mt.not_before_ns, f"{key} retried before its backoff ended"
        assert rec.attempt == a.attempt
        assert a.maximum_attempts == mt.policy.maximum_attempts + rec.free_attempts
        assert rec.attempt - rec.free_attempts <= mt.policy.maximum_attempts, f"{key} over max attempts"
        mt.delivered = a.attempt
        self.stats[f"attempt{a.attempt}"] += 1
        self.log.append(f"  {worker.name} got {key}#{a.attempt}")
        worker.held[key] = a.attempt
        self.dispatched.append(key)

    # ------------------------------------------------------------- operations

    def random_spec(self) -> WorkflowSpec:
        rnd = self.rnd
        n = rnd.randint(1, 6)
        tasks = []
        for i in range(n):
            deps = tuple(sorted(rnd.sample([f"t{j}" for j in range(i)], k=rnd.randint(0, min(i, 2)))))
            intent = rnd.random() < 0.15
            tasks.append(
                TaskSpec(
                    task_id=f"t{i}",
                    capability="" if intent else rnd.choice(CAPS),
                    intent=rnd.choice(("any", "any", "none")) if intent else "",
                    depends_on=deps,
                    trigger_rule=rnd.choice(RULES) if deps else "ALL_SUCCESS",
                    priority=rnd.randint(1, 5),
                    pool=rnd.choice(("", "", "p1", "p2", "p3")),
                    retry_policy=RetryPolicy(
                        initial_interval_s=rnd.choice((0.5, 1.0, 2.0)),
                        backoff_coefficient=2.0,
                        maximum_interval_s=rnd.choice((0.0, 3.0)),
                        maximum_attempts=rnd.randint(1, 3),
                    ),
                    start_to_close_s=rnd.choice((10.0, 20.0, 600.0)),
                    heartbeat_s=rnd.choice((0.0, 0.0, 4.0)),
                    schedule_to_start_s=rnd.choice((0.0, 0.0, 0.0, 30.0)),
                    requires_approval=rnd.random() < 0.1,
                    approval_timeout_s=rnd.choice((0.0, 15.0)),
                )
            )
        budget = Budget(max_attempts=rnd.randint(3, 12)) if rnd.random() < 0.15 else Budget()
        duration = Budget(max_duration_s=120.0) if rnd.random() < 0.1 else None
        self.n_wf += 1
        return WorkflowSpec(workflow_id=f"wf{self.n_wf}", tasks=tuple(tasks), budget=duration or budget)

    async def op_submit(self) -> None:
        spec = self.random_spec()
        roots: Counter[str] = Counter(
            t.pool or "default" for t in spec.tasks if not t.depends_on and not t.requires_approval
        )
        full = [p for p, n in roots.items() if self.engine.get_pool(p)[1].queued + n > POOLS[p].queue_limit]
        shape = [
            (t.task_id, t.depends_on, t.trigger_rule, t.pool, t.priority, t.capability or t.intent)
            for t in spec.tasks
        ]
        self.log.append(f"submit {spec.workflow_id} {shape}")
        tasks = {
            t.task_id: MTask(spec=t, policy=t.retry_policy or RetryPolicy(), deps=list(t.depends_on))
            for t in spec.tasks
        }
        for t in spec.tasks:
            for d in t.depends_on:
                tasks[d].dependents.append(t.task_id)
        self.workflows[spec.workflow_id] = MWorkflow(
            spec.workflow_id, tasks
        )  # its first dispatch shares its commit
        try:
            await self.engine.submit(spec)
        except PoolQueueFullError:
            del self.workflows[spec.workflow_id]
            assert full, "POOL_QUEUE_FULL with room in the queue"
            return
        assert not full, f"admitted past the queue bound of {full}"

    def op_connect(self) -> None:
        self.n_worker += 1
        caps = self.rnd.choice((("c1",), ("c2",), CAPS))
        worker = FakeWorker(self, f"w{self.n_worker}", caps, self.rnd.randint(1, 3))
        self.log.append(f"connect {worker.name} {caps} {worker.concurrency}")
        self.workers.append(worker)
        worker.handle = self.engine.connect_worker(
            worker.name, caps, worker.concurrency, worker.assign, worker.cancel, worker_id=worker.name
        )
        self.engine.served_changed(caps)

    def op_disconnect(self) -> None:
        if not self.workers:
            return
        worker = self.rnd.choice(self.workers)
        self.log.append(f"disconnect {worker.name} holding {sorted(worker.held)}")
        worker.alive = False
        self.workers.remove(worker)
        assert worker.handle is not None
        self.engine.disconnect_worker(worker.handle)
        self.engine.served_changed(worker.caps)

    def op_drain(self) -> None:
        live = [w for w in self.workers if not w.draining]
        if not live:
            return
        worker = self.rnd.choice(live)
        self.log.append(f"drain {worker.name}")
        worker.draining = True
        assert worker.handle is not None
        self.engine.drain_worker(worker.handle)
        self.engine.served_changed(worker.caps)

    def pick_held(self) -> tuple[FakeWorker, tuple[str, str], int] | None:
        held = [(w, k, a) for w in self.workers for k, a in w.held.items()]
        return self.rnd.choice(held) if held else None

    async def op_complete(self) -> None:
        picked = self.pick_held()
        if picked is None:
            return
        worker, (wf_id, task_id), attempt = picked
        output = f'"{wf_id}/{task_id}/{attempt}"'.encode()
        self.log.append(f"complete {wf_id}/{task_id}#{attempt} by {worker.name}")
        durable = self.engine.complete(wf_id, task_id, attempt, output=output, content_type="", usage=None)
        del worker.held[(wf_id, task_id)]
        mt = self.workflows[wf_id].tasks[task_id]
        if self.rnd.random() < 0.2:
            mt.unacked = True  # not awaited: a crash may lose it
            return
        await durable
        mt.acked = "COMPLETED"
        mt.output = output

    async def op_fail(self) -> None:
        picked = self.pick_held()
        if picked is None:
            return
        worker, (wf_id, task_id), attempt = picked
        mw = self.workflows[wf_id]
        mt = mw.tasks[task_id]
        non_retryable = self.rnd.random() < 0.2
        before = self.engine.get_task(wf_id, task_id).record
        charged = before.attempt - before.free_attempts
        wf_running = self.engine.get_workflow(wf_id).record.state == "RUNNING"
        self.log.append(f"fail {wf_id}/{task_id}#{attempt} by {worker.name} non_retryable={non_retryable}")
        now = self.clock.now
        will_retry, next_ns, state, durable = self.engine.fail(
            wf_id, task_id, attempt, failure=Failure(message="boom", non_retryable=non_retryable), usage=None
        )
        del worker.held[(wf_id, task_id)]
        expected = wf_running and not non_retryable and charged < mt.policy.maximum_attempts
        assert will_retry is expected, (wf_id, task_id, attempt, charged, mt.policy)
        if will_retry:
            bound = mt.policy.delay_bound_s(charged)
            assert state == "BACKING_OFF"
            assert 0 <= next_ns - now <= int(bound * 1e9), (next_ns - now, bound)
            mt.not_before_ns = next_ns
        else:
            assert state == "FAILED"
        if self.rnd.random() < 0.2:
            mt.unacked = True
            return
        await durable

    async def op_spawn(self) -> None:
        """A running attempt adds tasks to its workflow (dynamic expansion)."""
        picked = self.pick_held()
        if picked is None:
            return
        _, (wf_id, parent_id), attempt = picked
        mw = self.workflows[wf_id]
        wait = self.rnd.random() < 0.5
        first = len(mw.tasks)
        specs = [
            TaskSpec(
                task_id=f"t{first + i}",
                capability=self.rnd.choice(CAPS),
                depends_on=(f"t{first}",) if i else (),
                priority=self.rnd.randint(1, 5),
                pool=self.rnd.choice(("", "p1")),
                retry_policy=RetryPolicy(initial_interval_s=1.0, maximum_attempts=2),
                start_to_close_s=20.0,
            )
            for i in range(self.rnd.randint(1, 2))
        ]
        pending = [
            d
            for d in mw.tasks[parent_id].dependents
            if self.engine.get_task(wf_id, d).record.state == "PENDING"
        ]
        self.log.append(f"spawn {wf_id}/{parent_id}#{attempt} {[t.task_id for t in specs]} wait={wait}")
        for t in specs:
            mw.tasks[t.task_id] = MTask(
                spec=t, policy=t.retry_policy or RetryPolicy(), deps=list(t.depends_on)
            )
            for d in t.depends_on:
                mw.tasks[d].dependents.append(t.task_id)
        if wait:
            for d in pending:
                for t in specs:
                    mw.tasks[d].deps.append(t.task_id)
                    mw.tasks[t.task_id].dependents.append(d)
        try:
            await self.engine.spawn(
                wf_id, specs, parent_task_id=parent_id, parent_attempt=attempt, dependents_wait=wait
            )
        except PoolQueueFullError:
            for t in reversed(specs):
                del mw.tasks[t.task_id]
                for d in t.depends_on:
                    mw.tasks[d].dependents.remove(t.task_id)
            if wait:
                for d in pending:
                    del mw.tasks[d].deps[-len(specs) :]
            return
        self.stats["spawned"] += len(specs)

    def op_heartbeat(self) -> None:
        for worker in self.workers:
            if self.rnd.random() < 0.5:
                continue
            for (wf_id, task_id), attempt in list(worker.held.items()):
                self.engine.heartbeat(wf_id, task_id, attempt, None, "")

    async def op_advance(self) -> None:
        seconds = self.rnd.choice((0.3, 1.0, 2.5, 5.0, 12.0))
        self.log.append(f"advance {seconds}")
        self.clock.advance(seconds)
        self.engine._arm()  # the loop timer fires now, as it would at the new time

    async def op_cancel(self) -> None:
        open_ids = [wf_id for wf_id, mw in self.workflows.items() if not mw.closed]
        if not open_ids:
            return
        wf_id = self.rnd.choice(open_ids)
        self.log.append(f"cancel {wf_id}")
        rec = await self.engine.cancel(wf_id, "test", "model")
        if rec.state == "CANCELLED":
            self.workflows[wf_id].cancelled = True

    async def op_approve(self) -> None:
        views, _ = self.engine.list_approvals("", {}, None, 100)
        if not views:
            return
        view = self.rnd.choice(views)
        approve = self.rnd.random() < 0.7
        self.log.append(f"approve {view.workflow_id}/{view.record.task_id} {approve}")
        try:
            await self.engine.resolve_approval(view.workflow_id, view.record.task_id, approve, "me", "")
        except NotAwaitingApprovalError:
            raise AssertionError("listed as awaiting approval, yet not") from None

    # ------------------------------------------------------------- invariants

    def check(self, *, priorities: dict[tuple[str, str], tuple[str, str, int]] | None) -> None:  # noqa: PLR0912, PLR0915
        engine = self.engine
        if self.errors:
            raise self.errors[0]
        held_by: dict[tuple[str, str], str] = {}
        for worker in self.workers:
            for key, attempt in worker.held.items():
                held_by[key] = worker.name
                rec = engine.get_task(*key).record
                assert (rec.state, rec.attempt) == ("RUNNING", attempt), (
                    key,
                    worker.name,
                    rec.state,
                    rec.attempt,
                    attempt,
                )
                assert rec.worker_id == worker.name
        handles: dict[tuple[str, str], str] = {}
        for handle in engine._workers.values():
            for key in handle.held:
                assert key not in handles, f"{key} held by two workers"
                handles[key] = handle.worker_id
        pool_running: Counter[str] = Counter()
        pool_scheduled: Counter[str] = Counter()
        for wf_id, mw in self.workflows.items():
            view = engine.get_workflow(wf_id)
            wf = view.record
            tasks, _ = engine.list_tasks(wf_id, frozenset(), 0, 1000)
            states = {t.record.task_id: t.record.state for t in tasks}
            assert set(states) == set(mw.tasks), f"{wf_id} lost or gained tasks"
            for state in states.values():
                assert state in STATES
            counts = Counter(states.values())
            assert {k: v for k, v in wf.counts.items() if v} == dict(counts), (wf_id, wf.counts, counts)
            assert wf.tasks_completed == counts["COMPLETED"], (wf_id, wf.tasks_completed, counts)
            assert wf.tasks_failed == counts["FAILED"], (wf_id, wf.tasks_failed, counts)
            all_terminal = all(s in TERMINAL_TASK_STATES for s in states.values())
            if wf.state == "RUNNING":
                assert not all_terminal, f"{wf_id} open with every task terminal"
                assert not mw.cancelled
            else:
                assert wf.state in ("COMPLETED", "FAILED", "CANCELLED"), wf.state
                assert all_terminal, f"{wf_id} {wf.state} with open tasks {states}"
                if mw.closed:
                    assert wf.state == mw.closed, f"{wf_id} was {mw.closed}, now {wf.state}"
                mw.closed = wf.state
                if mw.cancelled:
                    assert wf.state == "CANCELLED"
                elif wf.state == "COMPLETED" or (wf.failure and wf.failure.kind != "BUDGET_EXCEEDED"):
                    unhandled = [
                        t
                        for t, s in states.items()
                        if s in FAIL_STATES
                        and not any(
                            mw.tasks[d].spec.trigger_rule in HANDLING_RULES
                            and states[d] in ("COMPLETED", "FAILED")
                            for d in mw.tasks[t].dependents
                        )
                    ]
                    expected = "FAILED" if unhandled else "COMPLETED"
                    assert wf.state == expected, (wf_id, wf.state, states, unhandled)
            for t in tasks:
                rec, spec = t.record, t.spec
                mt = mw.tasks[rec.task_id]
                key = (wf_id, rec.task_id)
                if mt.acked == "COMPLETED":
                    assert rec.state == "COMPLETED", f"{key} acknowledged COMPLETED, now {rec.state}"
                    assert rec.output == mt.output
                assert rec.attempt - rec.free_attempts <= mt.policy.maximum_attempts
                dep_states = [states[d] for d in mt.deps]
                if rec.state == "RUNNING":
                    pool_running[spec.pool] += 1
                    # A RUNNING attempt is held by one live worker (leases of a worker gone are released).
                    assert key in handles, f"{key} RUNNING with no worker holding it"
                    assert engine._workers[handles[key]].connected
                    assert held_by.get(key) == handles[key], (key, held_by.get(key), handles[key])
                elif rec.state == "SCHEDULED":
                    pool_scheduled[spec.pool] += 1
                if rec.state in ("SCHEDULED", "RUNNING", "AWAITING_APPROVAL") or (
                    rec.state in ("COMPLETED", "FAILED") and rec.attempt
                ):
                    assert verdict(spec.trigger_rule, dep_states) is not False or spec.trigger_rule in (
                        "ONE_FAILED",
                        "ONE_SUCCESS",
                    ), (key, rec.state, dep_states)
                if rec.state == "PENDING" and wf.state == "RUNNING":
                    assert verdict(spec.trigger_rule, dep_states) is None, (
                        f"{key} stuck PENDING over {dep_states}"
                    )
                if rec.state == "SKIPPED":
                    assert verdict(spec.trigger_rule, dep_states) is False or wf.state != "RUNNING", (
                        key,
                        dep_states,
                    )
        for name, limits in POOLS.items():
            _, status = engine.get_pool(name)
            if limits.max_concurrency:
                assert status.running <= limits.max_concurrency, (name, status)
            assert status.queued <= limits.queue_limit, (name, status)
            assert status.running == pool_running[name], (name, status, pool_running)
            assert status.queued + status.backlog == pool_scheduled[name], (name, status, pool_scheduled)
        # Work conservation: no task waits in a queue while a worker of its capability is idle
        # and its pool has room.
        for w in engine._open.values():
            for task in w.order:
                if not task.in_queue:
                    continue
                limits = POOLS[task.spec.pool]
                if limits.requests_per_second:
                    continue  # waits for its bucket
                if (
                    limits.max_concurrency
                    and engine.get_pool(task.spec.pool)[1].running >= limits.max_concurrency
                ):
                    continue
                for worker in self.workers:
                    if (
                        task.cap in worker.caps
                        and not worker.draining
                        and len(worker.held) < worker.concurrency
                    ):
                        raise AssertionError(f"{task.rec.task_id} waits while {worker.name} is idle")
        # Priorities: what was dispatched from a queue in this step had no lower priority than a
        # task that waited in the same queue through the whole step.
        if priorities is not None:
            for key in self.dispatched:
                rec_cap = engine.get_task(*key).record.capability
                spec = self.workflows[key[0]].tasks[key[1]].spec
                for other, (cap, pool, priority) in priorities.items():
                    w = engine._open.get(other[0])
                    task = w.tasks[other[1]] if w else None
                    if task is None or not task.in_queue or other == key:
                        continue
                    if (cap, pool) == (rec_cap, spec.pool or "default"):
                        self.stats["priority_checks"] += 1
                        assert spec.priority <= priority, (key, spec.priority, other, priority)

    def queued_snapshot(self) -> dict[tuple[str, str], tuple[str, str, int]]:
        out = {}
        for w in self.engine._open.values():
            for task in w.order:
                if task.in_queue:
                    out[(w.rec.workflow_id, task.rec.task_id)] = (
                        task.cap,
                        task.spec.pool,
                        task.spec.priority,
                    )
        return out

    # ------------------------------------------------------------- the run

    async def step(self) -> None:
        ops: list[tuple[float, Callable[[], Any]]] = [
            (12, self.op_submit),
            (8, self.op_connect),
            (3, self.op_disconnect),
            (2, self.op_drain),
            (20, self.op_complete),
            (8, self.op_fail),
            (3, self.op_spawn),
            (5, self.op_heartbeat),
            (15, self.op_advance),
            (3, self.op_cancel),
            (4, self.op_approve),
            (1, lambda: self.restart(crash=False)),
            (1, lambda: self.restart(crash=True)),
        ]
        op = self.rnd.choices([o for _, o in ops], weights=[w for w, _ in ops])[0]
        before = self.queued_snapshot()
        self.dispatched = []
        restarts = op.__name__ == "<lambda>"
        self.stats[op.__name__ if not restarts else "restart"] += 1
        if restarts:
            self.log.append("restart")
        result = op()
        if asyncio.iscoroutine(result):
            await result
        await self.quiesce()
        self.check(priorities=None if restarts else before)

    async def finish(self) -> None:
        """Serves everything to the end; then nothing is left keyed by capability."""
        self.log.append("finish")
        for _ in range(400):
            if all(mw.closed for mw in self.workflows.values()):
                break
            if not any(w.caps == CAPS and not w.draining for w in self.workers):
                self.n_worker += 1
                worker = FakeWorker(self, f"f{self.n_worker}", CAPS, 8)
                self.workers.append(worker)
                worker.handle = self.engine.connect_worker(
                    worker.name, CAPS, 8, worker.assign, worker.cancel, worker_id=worker.name
                )
                self.engine.served_changed(CAPS)
            for worker in self.workers:
                for (wf_id, task_id), attempt in list(worker.held.items()):
                    del worker.held[(wf_id, task_id)]
                    # An earlier completion here may have exceeded a budget, cancelling this
                    # attempt; the cancellation is on its way (after the commit).
                    with contextlib.suppress(TaskNotHeldError):
                        self.engine.complete(
                            wf_id, task_id, attempt, output=b"1", content_type="", usage=None
                        )
            views, _ = self.engine.list_approvals("", {}, None, 100)
            for view in views:
                await self.engine.resolve_approval(
                    view.workflow_id, view.record.task_id, approve=True, approver="me", comment=""
                )
            self.clock.advance(3.0)
            self.engine._arm()
            await self.quiesce()
            self.check(priorities=None)
        open_left = [wf_id for wf_id, mw in self.workflows.items() if not mw.closed]
        assert not open_left, f"never closed: {open_left}"
        for worker in list(self.workers):
            worker.alive = False
            assert worker.handle is not None
            self.engine.disconnect_worker(worker.handle)
            self.engine.served_changed(worker.caps)
        self.workers = []
        self.clock.advance(60.0)
        self.engine._arm()
        await self.quiesce()
        self.engine._arm()
        await self.quiesce()
        assert self.engine.counters()["open_workflows"] == 0
        assert not any(_sizes(self.engine).values()), _sizes(self.engine)


# ------------------------------------------------- what the model found, reduced


class OrderedWorker:
    """Logs what the engine delivers, in order: ("assign" | "cancel", task id, attempt)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []

    def assign(self, batch: list[Assignment]) -> None:
        self.log.extend(("assign", a.task_id, a.attempt) for a in batch)

    def cancel(self, batch: list[Cancellation]) -> None:
        self.log.extend(("cancel", c.task_id, c.attempt) for c in batch)


async def test_a_timed_out_attempt_is_cancelled_before_its_slot_is_given_again(tmp_path: Path) -> None:
    """A timeout frees the worker's one slot and the next task takes it in the same commit: the
    worker hears of the cancellation first, so it never holds more than max_concurrency."""
    run = Run(0, tmp_path / "data")
    await run.open()
    worker = OrderedWorker()
    run.engine.connect_worker("w", ["c1"], 1, worker.assign, worker.cancel)
    short = TaskSpec(
        task_id="a", capability="c1", start_to_close_s=10.0, retry_policy=RetryPolicy(maximum_attempts=1)
    )
    await run.engine.submit(WorkflowSpec(tasks=(short, TaskSpec(task_id="b", capability="c1"))))
    await run.quiesce()
    assert worker.log == [("assign", "a", 1)]
    run.clock.advance(11)
    run.engine._arm()
    await run.quiesce()
    assert worker.log[1:] == [("cancel", "a", 1), ("assign", "b", 1)]
    await run.close()


async def test_attempts_cancelled_in_the_commit_that_assigned_them_are_cancelled_before_their_slots_go(
    tmp_path: Path,
) -> None:
    """The dispatch that exceeds a budget cancels the attempts just assigned, and their slots go to
    another workflow's task in the same commit: the worker hears of the assignments, then their
    cancellations, then the new assignment (never more than max_concurrency held)."""
    run = Run(0, tmp_path / "data")
    await run.open()
    tasks = tuple(TaskSpec(task_id=t, capability="c1", priority=1) for t in ("a1", "a2"))
    await run.engine.submit(WorkflowSpec(tasks=tasks, budget=Budget(max_attempts=1)))
    await run.engine.submit(WorkflowSpec(tasks=(TaskSpec(task_id="b", capability="c1", priority=2),)))
    worker = OrderedWorker()
    run.engine.connect_worker("w", ["c1"], 2, worker.assign, worker.cancel)
    await run.quiesce()
    assert worker.log == [
        ("assign", "a1", 1),
        ("assign", "a2", 1),
        ("cancel", "a1", 1),
        ("cancel", "a2", 1),
        ("assign", "b", 1),
    ]
    await run.close()


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_operations_keep_the_documented_invariants(seed: int, tmp_path: Path) -> None:
    run = Run(seed, tmp_path / "data")
    await run.open()
    try:
        for name, limits in POOLS.items():
            if name != "default":
                await run.engine.put_pool(limits)
        for _ in range(STEPS):
            await run.step()
        await run.finish()
    except BaseException:
        print("\n".join(run.log[-60:]))
        raise
    finally:
        await run.close()
