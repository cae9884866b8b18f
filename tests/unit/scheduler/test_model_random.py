"""A model-based randomized test of the scheduler engine (engine, no server).

A pure-Python model of what the engine documents drives random operations:
workflows (DAGs with trigger rules, priorities, pools with concurrency
limits and queue bounds, retries with backoff, schedule-to-start,
start-to-close and heartbeat timeouts, approval gates, intents routed by a
fake router, budgets, conditions on upstream outputs, cache keys answered by a fake
cache, LLM-token rate limits), fake workers connecting, draining, taking
tasks, heartbeating, completing, failing, going silent or disconnecting,
unary long polls (answered, timed out at once, abandoned before or after
their answer, pollers that go silent holding attempts), cancellations, clock
advances, and engine restarts, clean (stop, start) or crashed (the engine
dropped with its uncommitted transaction, the storage closed and opened
again). After every step the engine is checked against the model: task
states and counts, holders and leases (a stream worker's or a poll's),
trigger rules and conditions at each decision (replayed from the trace, in
its order), cache hits and misses as the trace tells them, workflow closing
and final state, pool bounds and counts, request and LLM-token buckets,
priorities, retry attempts and backoff bounds, each wait in SCHEDULED
bounded by schedule-to-start from when it began, the engine's accounting of
unary polls, and what was acknowledged before a restart.

The engine runs on a fake clock; its timers are fired by re-arming its loop
timer after each advance. A seed that fails prints its operation log.
``MODEL_SEEDS=1-100 MODEL_STEPS=500`` runs more seeds (by hand, offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from are_core.scheduler import (
    CACHE_BLOB_SHA256,
    CACHE_BLOB_SIZE,
    CACHE_ENTRY_ID,
    CACHE_SAVED_TOKENS,
    TABLES,
    TERMINAL_TASK_STATES,
    Assignment,
    Budget,
    CacheKey,
    Cancellation,
    Condition,
    Failure,
    NotAwaitingApprovalError,
    PoolLimits,
    PoolQueueFullError,
    RetryPolicy,
    RoutingError,
    Scheduler,
    TaskNotHeldError,
    TaskOrigin,
    TaskRecord,
    TaskSpec,
    Usage,
    WorkerHandle,
    WorkflowSpec,
)
from are_core.storage import Batch, Durability, GroupCommitter, Storage
from are_core.trace import Event, EventDraft
from tests.unit.scheduler.test_bounds import _sizes
from tests.unit.scheduler.test_reroute import Clock


def _seeds(text: str) -> tuple[int, ...]:
    """ "1-100" or "3,7": the seeds to run (MODEL_SEEDS), for a longer exploration by hand."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return tuple(out)


SEEDS = _seeds(os.environ.get("MODEL_SEEDS", "1-8"))
STEPS = int(os.environ.get("MODEL_STEPS", "400"))
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
    "p4": PoolLimits(name="p4", llm_tokens_per_minute=600, max_queue_length=6),
}
TOKEN_POOL = "p4"
PROMPTS = ("q1", "q2", "q3")
_MISSING = object()
EPS = 1e-6


def holds(condition: Condition, output: bytes | None) -> bool:
    """What the documented condition says of a dependency's output (None: not COMPLETED, or a blob).

    The model's conditions point at a top-level member ("/n", "/ok", "/x") of an object.
    """
    found: object = _MISSING
    if output is not None:
        try:
            document = json.loads(output)
        except ValueError:
            document = _MISSING
        if isinstance(document, dict):
            found = document.get(condition.pointer[1:], _MISSING)
    op, value = condition.operator, condition.value
    if found is _MISSING:
        return op in ("NOT_EXISTS", "NOT_EQUAL")
    if op == "EQUAL":
        return found == value and type(found) is type(value)
    if op == "NOT_EQUAL":
        return not (found == value and type(found) is type(value))
    if op == "GREATER_THAN":
        # The model draws GREATER_THAN only with an int value (see random_conditions).
        return isinstance(found, int) and not isinstance(found, bool) and found > value  # type: ignore[operator]
    if op == "TRUTHY":
        return found not in (None, False, 0, "", [], {})
    return op == "EXISTS"


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
    blob: str = ""  # the acknowledged output's blob digest ("" inline)
    unacked: bool = False  # an outcome reported whose commit was not awaited (a crash may lose it)
    waiting: tuple[int, int] | None = None  # SCHEDULED when last checked: (attempt, since when)
    reported: dict[int, tuple[bytes, str] | None] = field(
        default_factory=dict
    )  # attempt -> output, None: failed


@dataclass
class MWorkflow:
    wf_id: str
    tasks: dict[str, MTask]
    cancelled: bool = False  # a cancellation was acknowledged
    closed: str = ""  # the final state once seen


class FakeWorker:
    """A worker: what it holds (task -> attempt), as the engine delivered it.

    A stream worker hears of cancellations; a poller (the holder of a unary poll's answer,
    named by the poll's worker id) does not: it learns that an attempt ended when a heartbeat
    or a report is refused, or here when the check finds the attempt over (``sync``).
    """

    def __init__(
        self, run: Run, name: str, caps: tuple[str, ...], concurrency: int, *, poller: bool = False
    ) -> None:
        self.run = run
        self.name = name
        self.caps = caps
        self.concurrency = concurrency
        self.alive = True
        self.draining = False
        self.poller = poller
        self.silent = False  # a poller that stopped talking: its leases run out by their timeouts
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

    def sync(self) -> None:
        """A poller drops the attempts that ended without it (timed out, cancelled, budget)."""
        for key, attempt in list(self.held.items()):
            rec = self.run.engine.get_task(*key).record
            if (rec.state, rec.attempt) == ("RUNNING", attempt):
                continue
            assert rec.attempt >= attempt, (key, rec.attempt, attempt)
            assert (
                rec.outcome_attempt != attempt or attempt in self.run.workflows[key[0]].tasks[key[1]].reported
            ), f"{key}#{attempt} has an outcome its poller {self.name} never reported"
            self.run.log.append(f"  {self.name} lost {key}#{attempt} ({rec.state})")
            del self.held[key]


@dataclass
class MPoll:
    """A unary long poll waiting (its asyncio task) for the model to collect its answer."""

    name: str
    caps: tuple[str, ...]
    max_tasks: int
    task: asyncio.Task[tuple[str, list[Assignment]]]
    abandoned: bool = False  # its caller went away (the call cancelled), at some moment


class Sink:
    """Keeps the events the engines publish (after their commit), stamped with the fake clock.

    An engine that records an event after it was stopped changes a store it no longer owns.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.events: list[Event] = []
        self._sequence = 0

    def for_engine(self, engine: Scheduler) -> EngineSink:
        return EngineSink(self, engine)

    def record(self, batch: Batch, draft: EventDraft) -> Event:
        self._sequence += 1
        fields = msgspec.structs.asdict(draft)
        fields["event_time_unix_ns"] = self.run.clock.now
        fields["attributes"] = dict(draft.attributes)
        return Event(sequence=self._sequence, **fields)

    def publish(self, events: Sequence[Event]) -> None:
        self.events.extend(events)


class EngineSink:
    """One engine's view of the sink."""

    def __init__(self, sink: Sink, engine: Scheduler) -> None:
        self.sink = sink
        self.engine = engine

    def record(self, batch: Batch, draft: EventDraft) -> Event:
        if self.engine._stopped:
            self.sink.run.errors.append(
                AssertionError(
                    f"a stopped engine recorded {draft.event_type} {draft.workflow_id}/{draft.task_id}"
                )
            )
        return self.sink.record(batch, draft)

    def publish(self, events: Sequence[Event]) -> None:
        self.sink.publish(events)


class FakeCache:
    """The cache hooks: answers by prompt, at once or late (a lookup the model answers later), or failing.

    Every answer a prompt ever had is kept: a hit must be one of them.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.entries: dict[str, tuple[bytes, str, int, str]] = {}  # prompt -> output, blob, size, entry id
        self.history: dict[str, dict[str, tuple[bytes, str]]] = {}  # prompt -> entry id -> output, blob
        self.slow: list[tuple[asyncio.Future[None], Scheduler]] = []  # late lookups, by engine
        self.stored: set[tuple[str, bytes, str]] = set()
        self.n_entries = 0

    def hooks(self, engine: Scheduler) -> None:
        async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
            return await self.lookup(key, engine)

        engine.cache_lookup = lookup
        engine.cache_store = self.store

    async def lookup(self, key: CacheKey, engine: Scheduler) -> tuple[bytes, str, dict[str, Any]] | None:
        rnd = self.run.rnd
        if rnd.random() < 0.25:
            late: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.slow.append((late, engine))
            await late
        else:
            await asyncio.sleep(0)
        if rnd.random() < 0.1:
            raise RuntimeError("the cache is down")
        entry = self.entries.get(key.prompt)
        if entry is None:
            return None
        output, blob, size, entry_id = entry
        attributes: dict[str, Any] = {CACHE_ENTRY_ID: entry_id, CACHE_SAVED_TOKENS: len(output)}
        if blob:
            attributes |= {CACHE_BLOB_SHA256: blob, CACHE_BLOB_SIZE: size}
        return output, "application/json", attributes

    def store(  # noqa: PLR0917 - the engine's CacheStoreHook, positional
        self,
        key: CacheKey,
        output: bytes,
        content_type: str,
        usage: Usage | None,
        blob: str,
        size: int,
        origin: TaskOrigin,
    ) -> None:
        assert not key.read_only
        assert (key.prompt, output, blob) in self.run.reported_by_prompt, (key.prompt, output, blob)
        self.n_entries += 1
        entry_id = f"e{self.n_entries}"
        self.entries[key.prompt] = (output, blob, size, entry_id)
        self.history.setdefault(key.prompt, {})[entry_id] = (output, blob)
        self.stored.add((key.prompt, output, blob))

    def slow_of(self, engine: Scheduler) -> int:
        return sum(1 for late, owner in self.slow if owner is engine and not late.done())


class Run:
    """One seed: the engine, the model and the operation log."""

    def __init__(self, seed: int, path: Path) -> None:
        self.rnd = random.Random(seed)
        self.path = path
        self.clock = Clock()
        self.router = Router()
        self.log: list[str] = []
        self.workflows: dict[str, MWorkflow] = {}
        self.workers: list[FakeWorker] = []  # stream workers and the pollers holding a poll's answer
        self.polls: list[MPoll] = []  # long polls not yet collected
        self.n_wf = 0
        self.n_worker = 0
        self.dispatched: list[tuple[str, str]] = []  # this step's dispatches
        self.handed_back: set[tuple[str, str]] = set()  # this step's poll answers handed back
        self.errors: list[Exception] = []  # raised in delivery callbacks
        self.stats: Counter[str] = Counter()
        self.sink = Sink(self)
        self.cache = FakeCache(self)
        self.reported_by_prompt: set[tuple[str, bytes, str]] = set()  # what cache-keyed tasks reported
        # The trace replayed in order: how far, what had COMPLETED, which tasks were decided
        # (scheduled, gated or skipped once), the cache's answers, and the LLM-token bucket.
        self.replayed = 0
        self.completed: set[tuple[str, str]] = set()
        self.decided: set[tuple[str, str]] = set()
        self.missed: set[tuple[str, str]] = set()
        self.hits: set[tuple[str, str]] = set()
        self.ran: set[tuple[str, str]] = set()  # dispatched at least once
        self.level = 0.0
        self.level_ns = 0
        self.used: deque[tuple[int, int]] = deque()
        self.checked_ns = self.clock.now  # the clock at the last check
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
        engine._events = self.sink.for_engine(engine)
        engine.route = self.router.route
        engine.capability_served = lambda cap: any(
            w.alive and not w.draining and not w.poller and cap in w.caps for w in self.workers
        )
        self.router.served = engine.serves
        engine.reroute_grace_s = 5.0
        self.cache.hooks(engine)
        self.engine = engine
        # A new engine's pools start full.
        self.level = float(POOLS[TOKEN_POOL].llm_tokens_per_minute)
        self.level_ns = self.clock.now
        self.used.clear()
        await engine.start()

    async def close(self) -> None:
        await self.end_polls()
        await self.engine.stop()
        await self.committer.aclose()
        self.storage.close()

    def kill_workers(self) -> None:
        for w in self.workers:
            w.alive = False
        self.workers = []

    async def end_polls(self) -> None:
        """The callers of the polls waiting go away (a restart, the end)."""
        for poll in self.polls:
            poll.task.cancel()
        await asyncio.gather(*(poll.task for poll in self.polls), return_exceptions=True)
        self.polls = []

    async def restart(self, *, crash: bool) -> None:
        old = self.engine
        await self.end_polls()
        self.kill_workers()
        if crash:
            await self.crash(old)
        else:
            await old.stop()  # its late cache lookups may still answer it (it must not listen)
        self.replay()
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

    async def crash(self, old: Scheduler) -> None:
        """The process dies between two turns: what was not flushed is lost; a commit already
        handed to LMDB lands (or not: here it does); its cache lookups die with it."""
        old._stopped = True
        if old._timer is not None:
            old._timer.cancel()
        if old._reroute_job is not None:
            old._reroute_job.cancel()
        old._txn = None
        if old._pending_commits:
            await asyncio.gather(*old._pending_commits, return_exceptions=True)
        for late, owner in self.cache.slow:
            if owner is old:
                late.cancel()
        await asyncio.sleep(0)
        await self.committer.aclose()
        self.storage.close()
        self.storage = Storage.open(self.path, tables=TABLES, durability=Durability.RELAXED)
        self.committer = GroupCommitter(self.storage)

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
        """Until the engine has committed and delivered everything, and no timer is due.

        Late cache lookups wait for the model; a poll answered is collected (its caller
        may then hand it back, which is more work: so again, a bounded number of times).
        """
        for _ in range(20):
            await self._quiesce_engine()
            if not await self.collect_polls():
                return
        raise AssertionError("poll answers kept coming")

    async def _quiesce_engine(self) -> None:
        engine = self.engine
        for i in range(2000):
            busy = (
                engine._txn is not None
                or engine._pending_commits
                or (engine._timer is not None and engine._timer_at <= self.clock.now)
                or engine._reroute_job is not None
                or engine._reroute_pending
                or len(engine._lookups) > self.cache.slow_of(engine)
                or any(got.done() for got in engine._polls)
                or any(
                    poll.task.done() is False and poll.name not in self.poll_names() for poll in self.polls
                )
            )
            if not busy:
                await asyncio.sleep(0)
                if engine._txn is None and not engine._pending_commits:
                    return
            await asyncio.sleep(0 if i < 100 else 0.001)
        raise AssertionError("the engine did not quiesce")

    def poll_names(self) -> set[str]:
        """The polls the engine has a worker for (a poll started but not yet run has none)."""
        return {worker.name for worker in self.engine._polls.values()}

    async def collect_polls(self) -> bool:
        """Takes the answers of the polls that returned; True if any did."""
        collected = False
        for poll in list(self.polls):
            if not poll.task.done():
                continue
            self.polls.remove(poll)
            collected = True
            if poll.task.cancelled():
                self.log.append(f"  poll {poll.name} ended cancelled")
                continue
            worker_id, assignments = poll.task.result()
            assert len(assignments) <= poll.max_tasks, (poll.name, len(assignments), poll.max_tasks)
            self.log.append(f"  poll {poll.name} answered {[(a.task_id, a.attempt) for a in assignments]}")
            if not assignments:
                continue
            if poll.abandoned or self.rnd.random() < 0.05:
                # The answer did not reach its caller (its call ended cancelled on the way).
                held = [(a.workflow_id, a.task_id, a.attempt) for a in assignments]
                handed = self.engine.hand_back_undelivered(worker_id, held)
                self.stats["poll_handed_back"] += handed
                self.log.append(f"  poll {poll.name} not delivered: {handed} handed back")
                for wf_id, task_id, attempt in held:
                    rec = self.engine.get_task(wf_id, task_id).record
                    assert (rec.state, rec.attempt, rec.worker_id) != ("RUNNING", attempt, worker_id)
                    self.handed_back.add((wf_id, task_id))  # queued again behind what went meanwhile
                continue
            holder = FakeWorker(self, worker_id, poll.caps, poll.max_tasks, poller=True)
            self.workers.append(holder)
            for a in assignments:
                self.on_assign(holder, a)
            self.stats["poll_answered"] += 1
        return collected

    # ------------------------------------------------------------- deliveries

    def on_assign(self, worker: FakeWorker, a: Assignment) -> None:
        mw = self.workflows[a.workflow_id]
        mt = mw.tasks[a.task_id]
        key = (a.workflow_id, a.task_id)
        assert not mw.cancelled, f"{key} dispatched after its workflow's cancellation was acknowledged"
        assert a.attempt > mt.delivered, f"{key} attempt {a.attempt} after {mt.delivered}"
        assert mt.acked != "COMPLETED", f"{key} dispatched again after an acknowledged completion"
        assert key not in self.hits, f"{key} dispatched after the cache answered it"
        for other in self.workers:
            # A poller hears of no cancellation: an attempt of its that ended is not its any more.
            if other.alive and key in other.held and (not other.poller or other.held[key] >= a.attempt):
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
            pool = rnd.choice(("", "", "p1", "p2", "p3", "p4"))
            tasks.append(
                TaskSpec(
                    task_id=f"t{i}",
                    capability="" if intent else rnd.choice(CAPS),
                    intent=rnd.choice(("any", "any", "none")) if intent else "",
                    depends_on=deps,
                    trigger_rule=rnd.choice(RULES) if deps else "ALL_SUCCESS",
                    priority=rnd.randint(1, 5),
                    pool=pool,
                    estimated_tokens=rnd.choice((0, 50, 200, 800)) if pool == TOKEN_POOL else 0,
                    conditions=self.random_conditions(deps),
                    cache_key=CacheKey(
                        namespace="n", prompt=rnd.choice(PROMPTS), read_only=rnd.random() < 0.3
                    )
                    if rnd.random() < 0.25
                    else None,
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

    def random_conditions(self, deps: tuple[str, ...]) -> tuple[Condition, ...]:
        rnd = self.rnd
        if not deps or rnd.random() < 0.6:
            return ()
        choices = (
            ("/n", "EQUAL", 1),
            ("/n", "NOT_EQUAL", 2),
            ("/n", "GREATER_THAN", 0),
            ("/ok", "TRUTHY", None),
            ("/n", "EXISTS", None),
            ("/x", "NOT_EXISTS", None),
        )
        picked = rnd.sample(choices, k=rnd.randint(1, 2))
        return tuple(
            Condition(task_id=rnd.choice(deps), pointer=pointer, operator=op, value=value)
            for pointer, op, value in picked
        )

    def random_output(self, key: tuple[str, str], attempt: int) -> tuple[bytes, str]:
        """A completion's output: a JSON object the conditions read, text that is not JSON, or a blob."""
        ident = f"{key[0]}/{key[1]}/{attempt}"
        r = self.rnd.random()
        if r < 0.08:
            return b"", hashlib.sha256(ident.encode()).hexdigest()
        if r < 0.14:
            return f"not json {ident}".encode(), ""
        return json.dumps(
            {"id": ident, "n": self.rnd.randint(0, 3), "ok": self.rnd.random() < 0.5}
        ).encode(), ""

    def random_usage(self, key: tuple[str, str]) -> Usage | None:
        estimate = self.workflows[key[0]].tasks[key[1]].spec.estimated_tokens
        if self.rnd.random() < 0.4:
            return None
        tokens = self.rnd.choice((0, estimate, 2 * estimate + 10, estimate // 2, 30))
        return Usage(input_tokens=tokens // 3, output_tokens=tokens - tokens // 3, llm_calls=1)

    async def op_submit(self) -> None:
        spec = self.random_spec()
        roots: Counter[str] = Counter(
            t.pool or "default" for t in spec.tasks if not t.depends_on and not t.requires_approval
        )
        full = [p for p, n in roots.items() if self.engine.get_pool(p)[1].queued + n > POOLS[p].queue_limit]
        shape = [
            (
                t.task_id,
                t.depends_on,
                t.trigger_rule,
                t.pool,
                t.priority,
                t.capability or t.intent,
                *(
                    [f"if {[(c.task_id, c.pointer, c.operator, c.value) for c in t.conditions]}"]
                    if t.conditions
                    else []
                ),
                *(
                    [f"cache {t.cache_key.prompt}{' ro' if t.cache_key.read_only else ''}"]
                    if t.cache_key
                    else []
                ),
                *([f"est {t.estimated_tokens}"] if t.estimated_tokens else []),
            )
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
        streams = [w for w in self.workers if not w.poller]
        if not streams:
            return
        worker = self.rnd.choice(streams)
        self.log.append(f"disconnect {worker.name} holding {sorted(worker.held)}")
        worker.alive = False
        self.workers.remove(worker)
        assert worker.handle is not None
        self.engine.disconnect_worker(worker.handle)
        self.engine.served_changed(worker.caps)

    def op_drain(self) -> None:
        live = [w for w in self.workers if not w.draining and not w.poller]
        if not live:
            return
        worker = self.rnd.choice(live)
        self.log.append(f"drain {worker.name}")
        worker.draining = True
        assert worker.handle is not None
        self.engine.drain_worker(worker.handle)
        self.engine.served_changed(worker.caps)

    def pick_held(self) -> tuple[FakeWorker, tuple[str, str], int] | None:
        held = [(w, k, a) for w in self.workers if not w.silent for k, a in w.held.items()]
        return self.rnd.choice(held) if held else None

    async def op_complete(self) -> None:
        picked = self.pick_held()
        if picked is None:
            return
        worker, (wf_id, task_id), attempt = picked
        output, blob = self.random_output((wf_id, task_id), attempt)
        usage = self.random_usage((wf_id, task_id))
        self.log.append(f"complete {wf_id}/{task_id}#{attempt} by {worker.name} {output[-40:]!r}{blob[:8]}")
        mt = self.workflows[wf_id].tasks[task_id]
        key = mt.spec.cache_key
        if key is not None:
            self.reported_by_prompt.add((key.prompt, output, blob))
        mt.reported[attempt] = (output, blob)
        durable = self.engine.complete(
            wf_id,
            task_id,
            attempt,
            output=output,
            content_type="",
            usage=usage,
            blob_sha256=blob,
            blob_size=len(blob),
        )
        del worker.held[(wf_id, task_id)]
        if self.rnd.random() < 0.2:
            mt.unacked = True  # not awaited: a crash may lose it
            return
        await durable
        mt.acked = "COMPLETED"
        mt.output = output
        mt.blob = blob
        if key is not None and not key.read_only:
            assert (key.prompt, output, blob) in self.cache.stored, (
                f"{(wf_id, task_id)} not stored in the cache"
            )

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
        wf_before = self.engine.get_workflow(wf_id).record
        wf_running = wf_before.state == "RUNNING"
        # common.proto RetryPolicy: no retry is promised that could not start before the workflow's
        # budget runs out: its max_attempts spent already (attempts lost uncharged not counted)...
        max_attempts = wf_before.budget.max_attempts or 10 * wf_before.budget.max_tasks
        budget_spent = wf_before.task_attempts - wf_before.uncharged_attempts >= max_attempts
        self.log.append(f"fail {wf_id}/{task_id}#{attempt} by {worker.name} non_retryable={non_retryable}")
        now = self.clock.now
        mt.reported[attempt] = None
        will_retry, next_ns, state, durable = self.engine.fail(
            wf_id,
            task_id,
            attempt,
            failure=Failure(message="boom", non_retryable=non_retryable),
            usage=self.random_usage((wf_id, task_id)),
        )
        del worker.held[(wf_id, task_id)]
        expected = (
            wf_running and not non_retryable and charged < mt.policy.maximum_attempts and not budget_spent
        )
        if expected and not will_retry:
            # ... or its max_duration ended by the time the (jittered) delay chose: only a delay
            # bound that reaches the deadline may refuse it.
            reach = now + int(mt.policy.delay_bound_s(charged) * 1e9)
            assert reach >= wf_before.deadline_ns, (wf_id, task_id, attempt, reach, wf_before.deadline_ns)
            expected = False
        assert will_retry is expected, (wf_id, task_id, attempt, charged, mt.policy)
        if will_retry:
            bound = mt.policy.delay_bound_s(charged)
            if state == "CANCELLED":
                # The slot it freed went to a task of its workflow whose dispatch exceeded the
                # workflow's budget, in the same call: the retry was cancelled with the rest.
                failure = self.engine.get_workflow(wf_id).record.failure
                assert failure is not None and failure.kind == "BUDGET_EXCEEDED", (wf_id, failure)
                state = "BACKING_OFF"
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
            if self.rnd.random() < 0.5 or worker.silent:
                continue
            for (wf_id, task_id), attempt in list(worker.held.items()):
                self.engine.heartbeat(wf_id, task_id, attempt, None, "")

    def op_poll(self) -> None:
        """A unary long poll: it waits (until answered or abandoned), or returns at once if nothing is ready.

        The engine's wait is in real time: a poll told to wait waits until the model ends it.
        """
        self.n_worker += 1
        caps = self.rnd.choice((("c1",), ("c2",), CAPS))
        max_tasks = self.rnd.randint(1, 2)
        wait_s = self.rnd.choice((0.0, 3600.0, 3600.0))
        name = f"p{self.n_worker}"
        self.log.append(f"poll {name} {caps} {max_tasks} wait={wait_s}")
        task = asyncio.ensure_future(self.engine.poll(name, caps, max_tasks, wait_s))
        self.polls.append(MPoll(name, caps, max_tasks, task))
        self.stats["polls"] += 1

    def op_silence(self) -> None:
        """A poller holding attempts stops talking (dies): its leases end by their timeouts."""
        talking = [w for w in self.workers if w.poller and not w.silent and w.held]
        if talking:
            worker = self.rnd.choice(talking)
            self.log.append(f"silence {worker.name} holding {sorted(worker.held)}")
            worker.silent = True

    def op_cache_answer(self) -> None:
        """The cache answers some of its late lookups (an old engine's too)."""
        for late, _ in self.cache.slow:
            if not late.done() and self.rnd.random() < 0.5:
                late.set_result(None)
        self.cache.slow = [(late, owner) for late, owner in self.cache.slow if not late.done()]

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

    # ------------------------------------------------------------- the trace

    def replay(self) -> None:
        """Reads the events published since the last call, in their order.

        Each decision (a task scheduled or gated once, or skipped) is checked against the
        conditions over what had COMPLETED by then; each cache answer against the dispatches;
        each dispatch and reported usage of the token pool against the model's bucket.
        """
        events = self.sink.events
        while self.replayed < len(events):
            event = events[self.replayed]
            self.replayed += 1
            key = (event.workflow_id, event.task_id)
            mw = self.workflows.get(event.workflow_id)
            mt = mw.tasks.get(event.task_id) if mw is not None else None
            if mt is None:
                continue
            kind = event.event_type
            if kind in ("TASK_COMPLETED", "TASK_CACHE_HIT"):
                self.completed.add(key)
            if kind in ("TASK_CACHE_HIT", "TASK_CACHE_MISS", "TASK_DISPATCHED"):
                self.replay_cache(event, key, mt.spec)
            if (
                kind in ("TASK_SCHEDULED", "TASK_AWAITING_APPROVAL", "TASK_SKIPPED")
                and key not in self.decided
            ):
                self.decided.add(key)
                self.replay_decision(event, key, mt.spec)
            if mt.spec.pool == TOKEN_POOL:
                self.replay_tokens(event, key, mt.spec)

    def replay_cache(self, event: Event, key: tuple[str, str], spec: TaskSpec) -> None:
        """A cache-keyed task is answered (once, never run) or missed, and runs only after a miss."""
        kind = event.event_type
        if kind == "TASK_DISPATCHED":
            if spec.cache_key is not None:
                assert key in self.missed, f"{key} dispatched without the cache's miss"
            self.ran.add(key)
            return
        assert spec.cache_key is not None, key
        assert key not in self.ran and key not in self.hits, f"{key} {kind} after it ran or was answered"
        if kind == "TASK_CACHE_HIT":
            assert event.attempt == 0, (key, event.attempt)
            self.hits.add(key)
        else:
            self.missed.add(key)
        self.stats[kind] += 1

    def replay_decision(self, event: Event, key: tuple[str, str], spec: TaskSpec) -> None:
        """The conditions at the task's decision, over the outputs of what had COMPLETED by then."""
        why = event.attributes.get("are.skip.reason", "") if event.event_type == "TASK_SKIPPED" else ""
        if why == "trigger_rule":
            return
        outcomes = []
        for condition in spec.conditions:
            assert condition.task_id in spec.depends_on
            dep = (event.workflow_id, condition.task_id)
            rec = self.engine.get_task(*dep).record if dep in self.completed else None
            output = rec.output if rec is not None and not rec.output_blob_sha256 else None
            outcomes.append(holds(condition, output))
        if why == "condition":
            assert False in outcomes, (key, "skipped on conditions that hold", outcomes)
            first = spec.conditions[outcomes.index(False)]
            detail = str(event.attributes.get("are.skip.detail", ""))
            assert f"{first.task_id}:{first.pointer} {first.operator}" in detail, (key, detail, outcomes)
            self.stats["skipped_on_condition"] += 1
        else:
            assert all(outcomes), (key, event.event_type, "with a condition false", outcomes)
            self.stats["conditions_held"] += bool(spec.conditions)

    def replay_tokens(self, event: Event, key: tuple[str, str], spec: TaskSpec) -> None:
        """The LLM-token bucket: an estimate charged at dispatch (with a token left); usage corrects it."""
        cap = float(POOLS[TOKEN_POOL].llm_tokens_per_minute)
        t = event.event_time_unix_ns
        if event.event_type == "TASK_DISPATCHED" and spec.estimated_tokens:
            self.level = min(cap, self.level + (t - self.level_ns) / 1e9 * cap / 60.0)
            self.level_ns = t
            assert self.level > -EPS, f"{key} dispatched with {self.level:.3f} LLM tokens left"
            self.level -= spec.estimated_tokens
            self.used.append((t, spec.estimated_tokens))
            self.stats["token_dispatches"] += 1
        elif event.event_type in ("TASK_COMPLETED", "TASK_ATTEMPT_FAILED") and event.usage is not None:
            delta = event.usage.input_tokens + event.usage.output_tokens - spec.estimated_tokens
            if delta:
                self.level -= delta
                self.used.append((t, delta))

    # ------------------------------------------------------------- invariants

    def check(self, *, priorities: dict[tuple[str, str], tuple[str, str, int]] | None) -> None:  # noqa: PLR0912, PLR0915
        engine = self.engine
        if self.errors:
            raise self.errors[0]
        self.replay()
        held_by: dict[tuple[str, str], str] = {}
        poll_held: Counter[str] = Counter()
        for worker in self.workers:
            if worker.poller:
                worker.sync()
                for _ in worker.held:
                    poll_held.update(worker.caps)
            for key, attempt in worker.held.items():
                assert key not in held_by, f"{key} held by {held_by.get(key)} and {worker.name}"
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
        # The engine's count of unary polls, by capability: those waiting, the attempts pollers hold.
        polls_waiting: Counter[str] = Counter()
        for poll in self.polls:
            polls_waiting.update(poll.caps)
        assert engine._poll_waiting == dict(polls_waiting), (engine._poll_waiting, polls_waiting)
        assert engine._poll_held == dict(poll_held), (engine._poll_held, poll_held)
        pool_running: Counter[str] = Counter()
        pool_scheduled: Counter[str] = Counter()
        looking = 0
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
            ended_failed = counts["FAILED"] + counts["REJECTED"] + counts["CANCELLED"]  # common.proto
            assert wf.tasks_failed == ended_failed, (wf_id, wf.tasks_failed, counts)
            hits = [t.record for t in tasks if t.record.state == "COMPLETED" and not t.record.attempt]
            assert wf.cache_hits == len(hits), (wf_id, wf.cache_hits, len(hits))
            assert wf.cache_saved_tokens == sum(r.cache_saved_tokens for r in hits)
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
                    assert (rec.output, rec.output_blob_sha256) == (mt.output, mt.blob)
                # Every outcome was reported by the model; a completion without an attempt, by the cache.
                assert not rec.outcome_attempt or rec.outcome_attempt in mt.reported, (
                    key,
                    rec.outcome_attempt,
                )
                if rec.state == "COMPLETED" and rec.attempt:
                    assert mt.reported.get(rec.outcome_attempt) == (rec.output, rec.output_blob_sha256), key
                elif rec.state == "COMPLETED":
                    assert spec.cache_key is not None and key in self.hits, f"{key} COMPLETED, never run"
                    answers = self.cache.history.get(spec.cache_key.prompt, {})
                    assert answers.get(rec.cache_entry_id) == (rec.output, rec.output_blob_sha256), key
                if rec.state == "RUNNING":
                    holder = engine._open[wf_id].tasks[rec.task_id].holder
                    assert holder is not None and holder.connected, key
                    assert holder.worker_id == rec.worker_id and key in holder.held, key
                    assert held_by.get(key) == rec.worker_id, (key, held_by.get(key), rec.worker_id)
                    if not holder.one_answer:
                        assert handles.get(key) == rec.worker_id, (key, handles.get(key))
                assert rec.attempt - rec.free_attempts <= mt.policy.maximum_attempts
                dep_states = [states[d] for d in mt.deps]
                if rec.state == "RUNNING":
                    # A RUNNING attempt is held by one live worker or poller (leases of a worker gone
                    # are released; a poll's, handed back if its caller never had it), above.
                    pool_running[spec.pool] += 1
                elif rec.state == "SCHEDULED":
                    engine_task = engine._open[wf_id].tasks[rec.task_id]
                    if engine_task.in_queue or engine_task.in_backlog:
                        pool_scheduled[spec.pool] += 1
                    else:  # its cache lookup is under way (again after a restart: a miss is not recorded)
                        assert spec.cache_key is not None and not rec.attempt, key
                        looking += 1
                if rec.state in ("SCHEDULED", "RUNNING", "AWAITING_APPROVAL") or (
                    rec.state in ("COMPLETED", "FAILED") and rec.attempt
                ):
                    assert verdict(spec.trigger_rule, dep_states) is not False or spec.trigger_rule in (
                        "ONE_FAILED",
                        "ONE_SUCCESS",
                    ), (key, rec.state, dep_states)
                if rec.state == "PENDING" and wf.state == "RUNNING":
                    # Undecided, or a rule met early waiting for a dependency its conditions name.
                    named = [states[c.task_id] for c in spec.conditions]
                    waits = any(s not in TERMINAL_TASK_STATES for s in named)
                    assert verdict(spec.trigger_rule, dep_states) is None or waits, (
                        f"{key} stuck PENDING over {dep_states}"
                    )
                if rec.state == "SKIPPED":
                    assert (
                        verdict(spec.trigger_rule, dep_states) is False
                        or wf.state != "RUNNING"
                        or rec.state_reason.startswith("skipped: condition")  # checked by the replay
                    ), (key, dep_states)
                self.check_wait(key, mt, rec, wf.state)
        self.checked_ns = self.clock.now
        assert looking <= len(engine._lookups), (looking, len(engine._lookups))
        for name, limits in POOLS.items():
            _, status = engine.get_pool(name)
            if limits.max_concurrency:
                assert status.running <= limits.max_concurrency, (name, status)
            assert status.queued <= limits.queue_limit, (name, status)
            assert status.running == pool_running[name], (name, status, pool_running)
            assert status.queued + status.backlog == pool_scheduled[name], (name, status, pool_scheduled)
        # The LLM-token bucket (after get_pool refilled it) is the model's, and so is its last minute.
        token_pool = engine._pools[TOKEN_POOL]
        token_cap = float(POOLS[TOKEN_POOL].llm_tokens_per_minute)
        now = self.clock.now
        self.level = min(token_cap, self.level + (now - self.level_ns) / 1e9 * token_cap / 60.0)
        self.level_ns = now
        assert abs(token_pool.llm_level - self.level) < EPS * token_cap, (token_pool.llm_level, self.level)
        while self.used and self.used[0][0] < now - 60 * 10**9:
            self.used.popleft()
        last_minute = engine.get_pool(TOKEN_POOL)[1].llm_tokens_last_minute
        assert last_minute == max(0, sum(n for _, n in self.used)), (last_minute, list(self.used))
        # Work conservation: no task waits in a queue while a worker of its capability (or a poll
        # waiting for it) is idle and its pool has room: a request bucket with a request in it,
        # an LLM-token bucket over a token (the engine looks again when it holds one).
        idle = [
            (w.name, w.caps)
            for w in self.workers
            if not w.poller and not w.draining and len(w.held) < w.concurrency
        ] + [(poll.name, poll.caps) for poll in self.polls]
        tokens_wait = token_pool.llm_level < 1.0 + EPS
        waiting = [task for open_wf in engine._open.values() for task in open_wf.order if task.in_queue]
        estimated = {t.cap for t in waiting if t.spec.pool == TOKEN_POOL and t.spec.estimated_tokens}
        for task in waiting:
            limits = POOLS[task.spec.pool]
            if (
                limits.requests_per_second
                and engine.get_pool(task.spec.pool)[1].available_requests < 1.0 + EPS
            ):
                continue  # waits for its bucket
            if task.spec.pool == TOKEN_POOL and tokens_wait and task.cap in estimated:
                continue  # waits (or waits behind a task that waits) for its bucket
            if (
                limits.max_concurrency
                and engine.get_pool(task.spec.pool)[1].running >= limits.max_concurrency
            ):
                continue
            for name, caps in idle:
                if task.cap in caps:
                    raise AssertionError(
                        f"{task.wf.rec.workflow_id}/{task.rec.task_id} ({task.spec.pool}, {task.cap}, "
                        f"#{task.rec.attempt}) waits while {name} is idle"
                    )
        # Priorities: what was dispatched from a queue in this step had no lower priority than a
        # task that waited in the same queue through the whole step.
        if priorities is not None:
            for key in self.dispatched:
                rec_cap = engine.get_task(*key).record.capability
                spec = self.workflows[key[0]].tasks[key[1]].spec
                for other, (cap, pool, priority) in priorities.items():
                    open_wf = engine._open.get(other[0])
                    waiter = open_wf.tasks[other[1]] if open_wf else None
                    if waiter is None or not waiter.in_queue or other == key or other in self.handed_back:
                        continue
                    if (cap, pool) == (rec_cap, spec.pool or "default"):
                        self.stats["priority_checks"] += 1
                        assert spec.priority <= priority, (key, spec.priority, other, priority)

    def check_wait(self, key: tuple[str, str], mt: MTask, rec: TaskRecord, wf_state: str) -> None:
        """Each wait in SCHEDULED (the first, or after any attempt: a retry, a lease lost, an attempt
        handed back, a restart) is bounded by schedule_to_start_timeout, counted from when the task
        entered SCHEDULED: its schedule time, which fell since the last check and holds while it waits.
        """
        s2s_ns = int(mt.spec.schedule_to_start_s * 1e9)
        if rec.state == "SCHEDULED":
            if mt.waiting is None or mt.waiting[0] != rec.attempt:
                assert self.checked_ns <= rec.schedule_ns <= self.clock.now, (key, "schedule time off")
                mt.waiting = (rec.attempt, rec.schedule_ns)
            since = mt.waiting[1]
            assert rec.schedule_ns == since, (key, "schedule time moved while it waited")
            if s2s_ns and wf_state == "RUNNING":
                assert self.clock.now < since + s2s_ns, f"{key} waited past its schedule_to_start_timeout"
            return
        if (
            mt.waiting is not None
            and rec.failure is not None
            and rec.failure.timeout_type == "SCHEDULE_TO_START"
        ):
            assert s2s_ns and self.clock.now >= mt.waiting[1] + s2s_ns, f"{key} timed out early"
            self.stats["schedule_to_start_timeouts"] += 1
        mt.waiting = None

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
            (6, self.op_poll),
            (1, self.op_silence),
            (3, self.op_cache_answer),
            (1, lambda: self.restart(crash=False)),
            (1, lambda: self.restart(crash=True)),
        ]
        op = self.rnd.choices([o for _, o in ops], weights=[w for w, _ in ops])[0]
        before = self.queued_snapshot()
        self.dispatched = []
        self.handed_back = set()
        restarts = op.__name__ == "<lambda>"
        self.stats[op.__name__ if not restarts else "restart"] += 1
        if restarts:
            self.log.append("restart")
        loop = asyncio.get_running_loop()
        for poll in self.polls:
            if not poll.abandoned and self.rnd.random() < 0.03:
                # Its caller goes away at the op's first turn: before or after a dispatch to it.
                self.log.append(f"abandon {poll.name}")
                poll.abandoned = True
                loop.call_soon(poll.task.cancel)
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
            for late, _ in self.cache.slow:
                if not late.done():
                    late.set_result(None)
            self.cache.slow = []
            if not any(w.caps == CAPS and not w.draining and not w.poller for w in self.workers):
                self.n_worker += 1
                worker = FakeWorker(self, f"f{self.n_worker}", CAPS, 8)
                self.workers.append(worker)
                worker.handle = self.engine.connect_worker(
                    worker.name, CAPS, 8, worker.assign, worker.cancel, worker_id=worker.name
                )
                self.engine.served_changed(CAPS)
            for worker in self.workers:
                if worker.silent:
                    continue
                for (wf_id, task_id), attempt in list(worker.held.items()):
                    del worker.held[(wf_id, task_id)]
                    mt = self.workflows[wf_id].tasks[task_id]
                    mt.reported[attempt] = (b"1", "")
                    if mt.spec.cache_key is not None:
                        self.reported_by_prompt.add((mt.spec.cache_key.prompt, b"1", ""))
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
        await self.end_polls()
        for worker in list(self.workers):
            worker.alive = False
            if worker.poller:
                assert not worker.held, (worker.name, worker.held)
                continue
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
    """The dispatch that would exceed a budget is not made: the workflow fails, the attempt assigned
    before it in the same commit is cancelled, and the slots go to another workflow's task: the
    worker hears of that assignment, then its cancellation, then the new assignment (never more than
    max_concurrency held, and never the attempt over the budget)."""
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
        ("cancel", "a1", 1),
        ("assign", "b", 1),
    ]
    await run.close()


async def test_a_poll_is_not_answered_with_attempts_cancelled_in_the_commit_that_assigned_them(
    tmp_path: Path,
) -> None:
    """A poll for two tasks takes two whose dispatch exceeds their workflow's budget: both are
    cancelled in that commit and their slots go to another workflow's task. A poll hears of no
    cancellation, so its answer is that task alone (never more than max_tasks, none cancelled)."""
    run = Run(0, tmp_path / "data")
    await run.open()
    tasks = tuple(TaskSpec(task_id=t, capability="c1", priority=1) for t in ("a1", "a2"))
    await run.engine.submit(WorkflowSpec(workflow_id="wa", tasks=tasks, budget=Budget(max_attempts=1)))
    await run.engine.submit(
        WorkflowSpec(workflow_id="wb", tasks=(TaskSpec(task_id="b", capability="c1", priority=2),))
    )
    _, answer = await run.engine.poll("poller", ["c1"], 2, 5.0)
    assert [(a.workflow_id, a.task_id, a.attempt) for a in answer] == [("wb", "b", 1)]
    await run.close()


async def test_a_task_behind_a_head_waiting_for_llm_tokens_goes_once_the_head_leaves(tmp_path: Path) -> None:
    """A task with no token estimate waits behind a higher-priority one waiting for the pool's
    LLM tokens (priority order). When that head leaves the queue (its workflow cancelled), the
    task behind it needs no token: it is dispatched at once, not when the bucket refills."""
    run = Run(0, tmp_path / "data")
    await run.open()
    await run.engine.put_pool(PoolLimits(name="tok", llm_tokens_per_minute=60))
    worker = OrderedWorker()
    run.engine.connect_worker("w", ["c1"], 3, worker.assign, worker.cancel)

    def task(task_id: str, estimate: int, priority: int) -> TaskSpec:
        return TaskSpec(
            task_id=task_id, capability="c1", pool="tok", estimated_tokens=estimate, priority=priority
        )

    await run.engine.submit(WorkflowSpec(workflow_id="wa", tasks=(task("a", 100, 1),)))  # 60 - 100 left
    await run.engine.submit(WorkflowSpec(workflow_id="wb", tasks=(task("b", 10, 1),)))  # waits 41 s
    await run.engine.submit(WorkflowSpec(workflow_id="wc", tasks=(task("c", 0, 2),)))  # waits behind b
    await run.quiesce()
    assert worker.log == [("assign", "a", 1)]
    await run.engine.cancel("wb", "not needed", "test")
    await run.quiesce()
    assert worker.log == [("assign", "a", 1), ("assign", "c", 1)]
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
        if os.environ.get("MODEL_STATS"):
            print(seed, dict(sorted(run.stats.items())))
    except BaseException:
        print("\n".join(run.log[-60:]))
        raise
    finally:
        await run.close()
