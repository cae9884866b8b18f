"""The scheduler engine: workflows, readiness, leases, retries, pools, recovery.

Everything runs on one event loop. Every public operation mutates the
in-memory graph synchronously and joins the current *transaction*: one
storage batch per loop turn holding every task and workflow row that changed
and every event recorded. The transaction is submitted to the group
committer at the end of the turn; only once it is durable are its events
published, its assignments and cancellations delivered to workers and its
callers answered. So every acknowledged transition is in LMDB before the
acknowledgement, and a completion, the readiness it releases and the next
dispatch share one commit.

The hot path is a few dictionary operations: a finished task decrements the
unresolved-dependency counter of each dependent (never a scan of the
workflow), ready tasks go to a per-(capability, pool) queue served by
priority then round-robin across workflows, and idle workers sit in
per-capability sets. Timeouts, backoffs and rate-limit refills share one
timer heap and one loop timer.

A task given an ``intent`` is routed to a capability when it is scheduled,
and routed again while it waits in a queue whenever the set of served
capabilities changes (:meth:`Scheduler.served_changed`, in the background,
a bounded slice per loop turn). "Served" is :meth:`Scheduler.serves`: by a
standing worker (the router's view) or by unary long polls lately.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec

from are_core._backoff import backoff
from are_core.storage import Batch, Codec, GroupCommitter, Storage, join_key, prefix_key
from are_core.trace import Event, EventDraft, EventSink, EventUsage, FailureInfo

from ._conditions import evaluate, is_json_content_type
from ._errors import (
    BudgetExceededError,
    NotAwaitingApprovalError,
    PoolNotFoundError,
    PoolQueueFullError,
    RequestIdConflictError,
    RoutingError,
    SpecError,
    TaskAlreadyCompletedError,
    TaskExistsError,
    TaskNotFoundError,
    TaskNotHeldError,
    TooManyOpenBytesError,
    TooManyOpenTasksError,
    WorkflowClosedError,
    WorkflowExistsError,
    WorkflowNotClosedError,
    WorkflowNotFoundError,
)
from ._model import (
    OPEN_WORKFLOW_STATES,
    TERMINAL_TASK_STATES,
    Approval,
    Assignment,
    CacheKey,
    DependencyResult,
    Failure,
    PoolLimits,
    RetryPolicy,
    TaskOrigin,
    TaskRecord,
    TaskSpec,
    Usage,
    WorkflowRecord,
    WorkflowSpec,
    saturating_add,
)
from ._validate import validate_graph

__all__ = [
    "TABLES",
    "Cancellation",
    "PoolStatus",
    "Scheduler",
    "TaskView",
    "UsageTotal",
    "WorkerHandle",
    "WorkflowView",
]

_log = logging.getLogger("are.scheduler")

T_WORKFLOWS = "sched_workflows"  # workflow id -> WorkflowRecord
T_BY_TIME = "sched_wf_by_time"  # u64(~create_ns) NUL workflow id -> b"" (newest first)
T_OPEN = "sched_open"  # workflow id -> b"" while RUNNING or CANCELLING
T_TASKS = "sched_tasks"  # workflow id NUL u64(index) -> TaskRecord
T_SPECS = "sched_task_specs"  # workflow id NUL u64(index) -> TaskSpec (written once)
T_REQUESTS = "sched_requests"  # request id -> workflow id NUL request hash
T_SPAWNS = "sched_spawn_requests"  # workflow id NUL request id -> _SpawnReceipt
T_POOLS = "sched_pools"  # pool name -> PoolLimits
T_DELETING = "sched_deleting"  # workflow id -> b"" from a delete's first commit to its last
TABLES = (T_WORKFLOWS, T_BY_TIME, T_OPEN, T_TASKS, T_SPECS, T_REQUESTS, T_SPAWNS, T_POOLS, T_DELETING)

_U64 = (1 << 64) - 1
_FAIL_STATES = frozenset({"FAILED", "REJECTED", "CANCELLED"})
_HANDLING_RULES = frozenset({"ALL_DONE", "ONE_FAILED", "ONE_SUCCESS"})
_NOT_RETRIED_KINDS = frozenset({"CANCELLED", "BUDGET_EXCEEDED", "APPROVAL_REJECTED"})
_DEFAULT_POLICY = RetryPolicy()
_RECENT_CLOSED = 1024
# ... and their tasks at most: the recently closed workflows stay in memory (answers for late
# results, events and reads), so they are bounded by tasks too (1,024 closed workflows of 10,000
# tasks each would be some 13 GB); the latest one is kept whatever its size.
_RECENT_CLOSED_TASKS = 100_000
# ... and their payload bytes (see _payload_bytes: outputs up to 4 MiB a task, failures, inputs)
# at most, which the task bound alone leaves at up to hundreds of GB; the latest one is kept.
_RECENT_CLOSED_BYTES = 64 << 20
# The most tasks of open workflows held in memory, unless configured (see
# Scheduler.open_tasks). Over it, a new workflow (submit, fork) is told to retry
# in 5 s and a spawn in 1 s: a running workflow that grows gets the room that
# closing ones free a little before new workflows do.
DEFAULT_MAX_OPEN_TASKS = 1_000_000
# The most payload bytes that open workflows hold in memory, unless configured (see
# Scheduler.open_bytes and _payload_bytes): inline inputs, cache-key prompts and condition
# values, and once recorded inline outputs, heartbeat details and failures. 1 GiB, room for
# 128 tasks at the largest inline input and output (4 MiB each), or a million at 1 KiB.
DEFAULT_MAX_OPEN_BYTES = 1 << 30
# New work (a submit or a fork) is admitted only while it keeps each count within this share
# of its bound, in percent, rounded down; a spawn into an open workflow may use the whole
# bound. The rest is headroom for work under way: a flood of submits cannot fill the bound
# and leave every running workflow's spawns refused while new workflows take each room
# that frees. At a bound of 10, new work gets 9 and spawns the last one; at a bound of 1,
# new work gets none. So that a new workflow between the share and the whole bound is not
# refused for good, one is also admitted when nothing open holds any of the bound (the
# count is 0): it could not fit at any other time (see Scheduler._check_open_work).
_NEW_WORK_SHARE_PERCENT = 90
_OPEN_TASKS_RETRY_S = 5.0
_SPAWN_RETRY_S = 1.0
_REFUSALS_LOG_NS = 60 * 1_000_000_000  # at most one warning a minute while refusing for it
# Worker-reported events of an attempt are accepted for this long after it
# ended (event.proto, ReportedEvent): reports sent just after a result, or
# after the workflow closed, are not lost.
REPORT_GRACE_S = 300
_REPORT_GRACE_NS = REPORT_GRACE_S * 1_000_000_000
_COMPACT_MIN = 16_384  # timer heap entries before stale ones are swept
# A queue (or a pool's backlog) is compacted once its stale entries outnumber its live ones
# and this many (see _compact_if_stale).
_STALE_SLACK = 1024
# A re-route pass (see Scheduler.served_changed) yields the loop after this
# many queue entries looked at, or this many route calls (about 0.2 ms each):
# a turn of it costs a few milliseconds, however many tasks wait.
_REROUTE_ENTRIES_PER_TURN = 1024
_REROUTE_ROUTES_PER_TURN = 16
_REROUTE_RETRY_S = 1.0  # after a pass that failed; doubling while they keep failing, up to:
_REROUTE_RETRY_MAX_S = 60.0
# A capability counts as served by unary polls for at least this long after its
# last poll ended (see Scheduler.serves): a poller's next poll follows its
# answer within a round trip, so its class does not flicker between polls (and
# each poll does not start a re-route pass) even with a zero grace.
_POLL_GAP_S = 1.0

RouteHook = Callable[["TaskSpec", "TaskRecord"], tuple[str, dict[str, Any]]]
"""``route(spec, record)`` -> (capability, event attributes); raises RoutingError."""
CacheLookupHook = Callable[[CacheKey, TaskOrigin], Awaitable["tuple[bytes, str, dict[str, Any]] | None"]]
"""``lookup(key, origin)`` -> (output, content type, event attributes) on a hit, None on a miss.

``origin`` names the task looked up for (its workflow and task; no attempt
has begun): the cache's own event of the lookup names it too, and is
recorded before the hook returns, so it comes before the task's
TASK_CACHE_HIT or TASK_CACHE_MISS. A hit whose answer is a blob carries its
digest and size in the attributes ``CACHE_BLOB_SHA256`` and
``CACHE_BLOB_SIZE`` (the output is then empty).
"""
CacheStoreHook = Callable[[CacheKey, bytes, str, "Usage | None", str, int, TaskOrigin], None]
"""``store(key, output, content_type, usage, blob_sha256, blob_size, origin)`` after a task completes.

Called for a cache-keyed task (not ``read_only``) once its completion is
durable. ``origin`` names the task and the attempt that completed it (with
its span id): the cache's event of the store names them.
"""
BlobReferenceHook = Callable[[Batch, str, str], None]
"""``reference(batch, workflow_id, sha256)``: stages the workflow's reference to a blob a task payload names.

Called with the batch that stores the payload (a spec's input, an output),
so the reference commits with it; it must not raise.
"""
ServedHook = Callable[[str], bool]
"""``served(capability)``: whether a standing worker taking work serves it now (the router's view).

The engine adds unary polls to it (:meth:`Scheduler.serves`).
"""
WorkerHook = Callable[["WorkerHandle"], None]
"""``changed(worker)``: connected, load or draining changed, or disconnected (``connected`` False)."""

_wf_codec = Codec(WorkflowRecord)
_task_codec = Codec(TaskRecord)
_spec_codec = Codec(TaskSpec)
_pool_codec = Codec(PoolLimits)


class _SpawnReceipt(msgspec.Struct, frozen=True):
    """What a spawn with a request_id added, kept to answer its retries."""

    request_hash: str
    task_ids: list[str]


_spawn_codec = Codec(_SpawnReceipt)


class Cancellation(msgspec.Struct, frozen=True):
    """Asks a worker to stop an attempt."""

    workflow_id: str
    task_id: str
    attempt: int
    reason: str  # TaskCancelReason name without prefix
    message: str


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's live counters."""

    running: int
    queued: int
    backlog: int
    available_requests: float
    llm_tokens_last_minute: int
    dispatched_total: int
    rejected_total: int
    oldest_queued_age_ms: int


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """A task's record with its spec, for readers."""

    workflow_id: str
    record: TaskRecord
    spec: TaskSpec


class WorkflowView(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow's record with its result payload, for readers."""

    record: WorkflowRecord
    result: bytes | None = None
    result_content_type: str = ""
    last_sequence: int = 0
    result_blob_sha256: str = ""  # the result is this blob (``result`` is then empty)
    result_blob_size: int = 0


# Attributes a cache lookup hook returns with a hit: the tokens and cost the
# cached answer cost when it was first made (what the hit saved).
CACHE_ENTRY_ID = "are.cache.entry_id"
CACHE_SAVED_TOKENS = "are.cache.saved_tokens"
CACHE_SAVED_COST = "are.cache.saved_cost_micro_usd"
CACHE_SAVED_INPUT_TOKENS = "are.cache.saved_input_tokens"
CACHE_SAVED_OUTPUT_TOKENS = "are.cache.saved_output_tokens"
CACHE_BLOB_SHA256 = "are.cache.blob_sha256"
CACHE_BLOB_SIZE = "are.cache.blob_size_bytes"


class UsageTotal(msgspec.Struct, kw_only=True):
    """Usage summed over workflows."""

    usage: Usage = msgspec.field(default_factory=Usage)
    task_attempts: int = 0
    retries: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    cache_hits: int = 0
    cache_saved_tokens: int = 0
    cache_saved_cost_micro_usd: int = 0
    workflows: int = 0

    def add(self, rec: WorkflowRecord) -> None:
        """Adds one workflow's usage (saturating: the sums are sent as int64)."""
        self.usage.add(rec.usage)
        self.task_attempts += rec.task_attempts
        self.retries += rec.retries
        self.tasks_completed += rec.tasks_completed
        self.tasks_failed += rec.tasks_failed
        self.cache_hits += rec.cache_hits
        self.cache_saved_tokens = saturating_add(self.cache_saved_tokens, rec.cache_saved_tokens)
        self.cache_saved_cost_micro_usd = saturating_add(
            self.cache_saved_cost_micro_usd, rec.cache_saved_cost_micro_usd
        )
        self.workflows += 1


class WorkerHandle:
    """A connected worker (stream) or one waiting poll (unary): its slots and leases."""

    __slots__ = (
        "announced",
        "capabilities",
        "connected",
        "draining",
        "free",
        "held",
        "max_concurrency",
        "name",
        "on_assign",
        "on_cancel",
        "one_answer",
        "worker_id",
    )

    def __init__(
        self,
        worker_id: str,
        name: str,
        capabilities: Sequence[str],
        max_concurrency: int,
        *,
        on_assign: Callable[[list[Assignment]], None],
        on_cancel: Callable[[list[Cancellation]], None],
    ) -> None:
        self.worker_id = worker_id
        self.name = name
        self.capabilities = tuple(dict.fromkeys(capabilities))
        self.max_concurrency = max_concurrency
        self.free = max_concurrency
        self.held: dict[tuple[str, str], _Task] = {}
        self.on_assign = on_assign
        self.on_cancel = on_cancel
        self.draining = False
        self.connected = True
        self.announced = False  # WORKER_CONNECTED recorded (stream workers; not each poll)
        # A long poll's worker: it answers once, with one commit's assignments (see _flush).
        self.one_answer = False


class _Task:
    __slots__ = (
        "cap",
        "dependents",
        "deps",
        "ended",
        "holder",
        "in_backlog",
        "in_queue",
        "key",
        "n_fail",
        "n_ok",
        "n_skip",
        "queued_ns",
        "rec",
        "spec",
        "token",
        "unresolved",
        "wf",
    )

    def __init__(self, wf: _Workflow, rec: TaskRecord, spec: TaskSpec) -> None:
        self.wf = wf
        self.rec = rec
        self.spec = spec
        self.key = wf.prefix + rec.index.to_bytes(8, "big")  # = join_key(workflow_id, index)
        self.deps: tuple[str, ...] = spec.depends_on + rec.extra_depends_on
        self.dependents: list[_Task] = []
        self.unresolved = 0
        self.n_ok = 0
        self.n_fail = 0
        self.n_skip = 0
        self.holder: WorkerHandle | None = None
        self.in_queue = False
        self.in_backlog = False
        self.queued_ns = 0
        self.token = 0  # bumps on every state change, so stale timers are ignored
        self.cap = rec.capability or spec.capability  # an intent's routed capability, or the spec's
        # (attempt, end ns, worker id) of the last attempt that ended while in memory (see check_held)
        self.ended: tuple[int, int, str] | None = None


class _Workflow:
    __slots__ = (
        "commit",
        "last_seq",
        "open",
        "order",
        "payload_bytes",
        "prefix",
        "rec",
        "recent_bytes",
        "tasks",
        "watchers",
    )

    def __init__(self, rec: WorkflowRecord) -> None:
        self.rec = rec
        self.commit: asyncio.Future[None] | None = None  # the last flushed transaction that changed it
        self.prefix = prefix_key(rec.workflow_id)
        self.tasks: dict[str, _Task] = {}
        self.order: list[_Task] = []
        self.open = 0
        self.last_seq = 0
        self.watchers: set[asyncio.Event] = set()
        # The payload bytes its tasks hold (inputs, outputs, heartbeat details, failures...;
        # a blob reference's bytes are not here): see _payload_bytes and Scheduler.open_bytes.
        self.payload_bytes = 0
        self.recent_bytes = 0  # payload_bytes when it joined the recently closed (see _keep_recent)


class _Queue:
    """Ready tasks of one (capability, pool): by priority, round-robin across workflows.

    An entry is live while its task is ``in_queue`` for this capability: a
    task dequeued or re-routed while it waits leaves a stale entry behind
    (lazy deletion). ``size`` counts the entries, stale ones too;
    ``waiting`` the tasks waiting here, each once (the engine keeps it:
    at zero every entry left is stale). ``served`` orders the queues a
    worker could take from (see ``Scheduler._pump_pass``): stamped when
    the queue is made and at each dispatch from it, so among heads of one
    priority the queue served least recently goes first.
    """

    __slots__ = ("buckets", "cap", "pool", "served", "size", "waiting")

    def __init__(self, cap: str = "", pool: str = "", served: int = 0) -> None:
        self.buckets: list[OrderedDict[str, deque[_Task]]] = [OrderedDict() for _ in range(6)]
        self.size = 0
        self.waiting = 0
        self.cap = cap
        self.pool = pool
        self.served = served

    def clear(self) -> None:
        """Drops every entry, when all are stale (a reader holding the old buckets keeps them)."""
        self.buckets = [OrderedDict() for _ in range(6)]
        self.size = 0

    def push(self, task: _Task) -> None:
        bucket = self.buckets[task.spec.priority]
        line = bucket.get(task.wf.rec.workflow_id)
        if line is None:
            bucket[task.wf.rec.workflow_id] = deque((task,))
        else:
            line.append(task)
        self.size += 1

    def pop(self) -> _Task | None:
        for bucket in self.buckets:
            while bucket:
                wf_id, line = next(iter(bucket.items()))
                task = line.popleft()
                self.size -= 1
                if line:
                    bucket.move_to_end(wf_id)
                else:
                    del bucket[wf_id]
                if task.in_queue and task.cap == self.cap:
                    return task
        return None

    def head(self) -> _Task | None:
        """The task :meth:`pop` would return next, left in place (stale entries before it go as there)."""
        for bucket in self.buckets:
            while bucket:
                wf_id, line = next(iter(bucket.items()))
                task = line[0]
                if task.in_queue and task.cap == self.cap:
                    return task
                line.popleft()
                self.size -= 1
                if line:
                    bucket.move_to_end(wf_id)
                else:
                    del bucket[wf_id]
        return None

    def push_front(self, task: _Task) -> None:
        bucket = self.buckets[task.spec.priority]
        line = bucket.get(task.wf.rec.workflow_id)
        if line is None:
            bucket[task.wf.rec.workflow_id] = deque((task,))
            bucket.move_to_end(task.wf.rec.workflow_id, last=False)
        else:
            line.appendleft(task)
        self.size += 1

    def live(self, task: _Task) -> bool:
        """Whether an entry for ``task`` is live (what :meth:`pop` checks, inlined there)."""
        return task.in_queue and task.cap == self.cap

    def compact(self) -> None:
        """Drops the stale entries (and a live task's repeats), keeping the order of the rest.

        Lazy deletion alone leaves a moved task's entry in a queue no worker
        pops (a re-route leaves only queues nobody serves), holding the task
        and its workflow in memory for good; the re-route pass that reads a
        queue through calls this, at a cost in proportion to that reading.
        """
        kept: set[_Task] = set()
        size = 0
        for bucket in self.buckets:
            for wf_id, line in list(bucket.items()):
                live: deque[_Task] = deque()
                for task in line:
                    if task not in kept and self.live(task):
                        kept.add(task)
                        live.append(task)
                if live:
                    bucket[wf_id] = live
                    size += len(live)
                else:
                    del bucket[wf_id]
        self.size = size


class _Backlog(_Queue):
    """Ready tasks of one pool held back because its queue is full.

    Same shape as :class:`_Queue` (priority, then round-robin across
    workflows, so one workflow's released fan-out cannot starve another's),
    but an entry is live while the task is ``in_backlog``.
    """

    __slots__ = ()

    def live(self, task: _Task) -> bool:
        return task.in_backlog

    def pop(self) -> _Task | None:
        for bucket in self.buckets:
            while bucket:
                wf_id, line = next(iter(bucket.items()))
                task = line.popleft()
                self.size -= 1
                if line:
                    bucket.move_to_end(wf_id)
                else:
                    del bucket[wf_id]
                if task.in_backlog:
                    return task
        return None


class _Pool:
    __slots__ = (
        "backlog",
        "backlogged",
        "dispatched_total",
        "limits",
        "llm_level",
        "llm_used",
        "llm_used_sum",
        "queued",
        "refill_ns",
        "rejected_total",
        "running",
        "tokens",
    )

    def __init__(self, limits: PoolLimits, now: int) -> None:
        self.limits = limits
        self.running = 0
        self.queued = 0
        self.backlog = _Backlog()  # entries may be stale (lazy deletion); ``backlogged`` is exact
        self.backlogged = 0
        self.tokens = limits.bucket_size
        self.llm_level = float(limits.llm_tokens_per_minute)
        self.llm_used: deque[tuple[int, int]] = deque()  # (when, tokens) of the last minute
        self.llm_used_sum = 0  # of llm_used's tokens
        self.refill_ns = now
        self.dispatched_total = 0
        self.rejected_total = 0

    def refill(self, now: int) -> None:
        elapsed = (now - self.refill_ns) / 1e9
        self.refill_ns = now
        limits = self.limits
        if limits.requests_per_second:
            self.tokens = min(limits.bucket_size, self.tokens + elapsed * limits.requests_per_second)
        if limits.llm_tokens_per_minute:
            self.llm_level = min(
                float(limits.llm_tokens_per_minute),
                self.llm_level + elapsed * limits.llm_tokens_per_minute / 60.0,
            )

    def wait_ns(self, now: int, estimate: int) -> int:
        """0 when a dispatch may happen now, else ns until it may (-1: when a task ends)."""
        limits = self.limits
        if limits.max_concurrency and self.running >= limits.max_concurrency:
            return -1
        self.refill(now)
        wait = 0
        if limits.requests_per_second and self.tokens < 1.0:
            wait = int((1.0 - self.tokens) / limits.requests_per_second * 1e9) + 1
        if limits.llm_tokens_per_minute and estimate and self.llm_level <= 0:
            need = (1.0 - self.llm_level) * 60.0 / limits.llm_tokens_per_minute
            wait = max(wait, int(need * 1e9) + 1)
        return wait

    def charge(self, now: int, estimate: int) -> None:
        if self.limits.requests_per_second:
            self.tokens -= 1.0
        if estimate:
            self.llm_level -= estimate
            self._used(now, estimate)

    def correct(self, now: int, delta: int) -> None:
        if delta:
            self.llm_level -= delta
            self._used(now, delta)

    def _used(self, now: int, tokens: int) -> None:
        """Notes tokens used (or given back) now; forgets those older than a minute.

        Pruned here, not only when the pool is read (GetPool): a sidecar
        nobody asked kept an entry or two per task for good.
        """
        self._prune(now)
        self.llm_used.append((now, tokens))
        self.llm_used_sum += tokens

    def _prune(self, now: int) -> None:
        horizon = now - 60 * 10**9
        used = self.llm_used
        while used and used[0][0] < horizon:
            self.llm_used_sum -= used.popleft()[1]

    def tokens_last_minute(self, now: int) -> int:
        self._prune(now)
        return max(0, self.llm_used_sum)


class _Txn:
    __slots__ = ("after", "assign", "batch", "cancel", "events", "future", "tasks", "workflows")

    def __init__(self, batch: Batch, future: asyncio.Future[None]) -> None:
        self.batch = batch
        self.future = future
        self.tasks: set[_Task] = set()
        self.workflows: set[_Workflow] = set()
        self.events: list[Event] = []
        self.assign: dict[WorkerHandle, list[Assignment]] = {}
        # Each cancellation with how many of the worker's assignments in this commit preceded it.
        self.cancel: dict[WorkerHandle, list[tuple[int, Cancellation]]] = {}
        self.after: list[Callable[[], None]] = []


def _last_end(rec: TaskRecord) -> tuple[int, int, str] | None:
    """(attempt, end ns, worker id) of a closed task's last attempt, as its record knows it; else None.

    The record keeps no end time per attempt: a closed task's last attempt
    ended at the latest when the task closed. Used for tasks whose in-memory
    ``ended`` is gone (a restart, a workflow no longer among the recent ones).
    """
    if rec.state not in TERMINAL_TASK_STATES or not rec.close_ns or not rec.attempt:
        return None
    return rec.attempt, rec.close_ns, rec.worker_id


def _ran(rec: TaskRecord) -> bool:
    """Whether a closed task ran, as a handler of a failure must have (workflow.proto COMPLETED).

    COMPLETED ran, from a worker or the cache; FAILED ran only if an attempt
    started (a dispatch sets ``start_ns``): a task failed by its
    schedule-to-start or schedule-to-close timeout while queued, or by its
    routing, never did. A fork's kept outcome keeps its source's ``start_ns``.
    """
    return rec.state == "COMPLETED" or (rec.state == "FAILED" and rec.start_ns > 0)


def _check_waiting_acyclic(specs: Sequence[TaskSpec], waiting: Sequence[_Task]) -> None:
    """Raises SpecError DAG_CYCLE if a new task reaches upstream a task that ``waiting`` makes wait for it.

    With dependents_wait every task of ``waiting`` comes to depend on every
    spawned task, so a spawned task that depends, directly or through other
    tasks (new or existing), on one of them or on a task downstream of them
    would wait for itself: the workflow would hang. ``specs`` passed
    :func:`validate_graph` (acyclic among themselves, dependencies known).
    """
    if not waiting:
        return
    # Each existing task downstream of a waiting dependent (itself included), with that dependent.
    below: dict[str, str] = {}
    for dependent in waiting:
        stack = [dependent]
        while stack:
            task = stack.pop()
            if task.rec.task_id not in below:
                below[task.rec.task_id] = dependent.rec.task_id
                stack.extend(task.dependents)
    reaches = _reaching(specs, below)
    for i, spec in enumerate(specs):
        for j, dep in enumerate(spec.depends_on):
            origin = reaches.get(dep) or below.get(dep, "")
            if origin:
                via = "" if dep == origin else f", which follows {origin!r}"
                raise SpecError(
                    "DAG_CYCLE",
                    f"tasks[{i}].depends_on[{j}]",
                    f"the dependencies would form a cycle: {origin!r} would wait for {spec.task_id!r} "
                    f"(dependents_wait), which depends on {dep!r}{via}",
                )


def _reaching(specs: Sequence[TaskSpec], below: dict[str, str]) -> dict[str, str]:
    """For each of the acyclic ``specs``, the task of ``below`` it reaches upstream (its value), or "".

    A post-order walk over the new tasks' own edges; an edge to an existing
    task ends there (``below`` holds every existing task that leads on).
    Iterative, as :func:`find_cycle` is, so deep chains do not recurse.
    """
    index = {spec.task_id: i for i, spec in enumerate(specs)}
    reaches: dict[str, str] = {}
    for root in specs:
        walk = [(root.task_id, 0)]
        while walk and root.task_id not in reaches:
            node, position = walk[-1]
            deps = specs[index[node]].depends_on
            if position < len(deps):
                walk[-1] = (node, position + 1)
                if deps[position] in index and deps[position] not in reaches:
                    walk.append((deps[position], 0))
                continue
            walk.pop()
            origins = (reaches[d] if d in index else below.get(d, "") for d in deps)
            reaches[node] = next((origin for origin in origins if origin), "")
    return reaches


def _budget_amount(amount: float) -> str:
    """A budget's limit or value for a message: a count as it is, seconds to the millisecond ("1.502s")."""
    if isinstance(amount, int):
        return str(amount)
    return f"{amount:.3f}".rstrip("0").rstrip(".") + "s"


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(13)


def _utf8_len(text: str) -> int:
    """The UTF-8 length of ``text``, without encoding it when it is ASCII (checked in O(1))."""
    return len(text) if text.isascii() else len(text.encode())


def _failure_bytes(failure: Failure | None) -> int:
    """The payload bytes of a failure: the details, message and stack trace of it and each cause.

    A worker sets them (up to 1 MiB of details, 32 KiB of message and 64 KiB
    of trace a level, at most 1 MiB in all with causes); the rest (type,
    content type, kind) is at most a few hundred characters a level.
    """
    total = 0
    while failure is not None:
        total += len(failure.details) + _utf8_len(failure.message) + _utf8_len(failure.stack_trace)
        failure = failure.cause
    return total


def _spec_bytes(spec: TaskSpec) -> int:
    """The payload bytes of a task's spec: its inline input, cache-key prompt and condition values.

    Each can be large (4 MiB, 1 MiB, 16 x 64 KiB); a condition value counts
    as compact JSON. The rest of a spec is bounded small by the sidecar
    (labels, intent: a few KiB) or is the graph (``depends_on``); ``raw``,
    the submitted spec kept for readers, is not counted: the sidecar takes
    the input and the prompt out of it, and leaves the conditions' JSON text
    (their values are counted once, as decoded).
    """
    total = len(spec.input)
    if spec.cache_key is not None:
        total += _utf8_len(spec.cache_key.prompt)
    for condition in spec.conditions:
        if condition.value is not None:
            total += len(msgspec.json.encode(condition.value))
    return total


def _payload_bytes(spec: TaskSpec, rec: TaskRecord) -> int:
    """The payload bytes a task holds in memory, which :attr:`Scheduler.open_bytes` sums.

    Its spec's (:func:`_spec_bytes`), and what its record holds: the recorded
    output, the last heartbeat details (kept for the next attempt, until the
    workflow closes) and the last failure with its causes (kept even once a
    retry completes). Every count is kept by this definition: built with it
    at fork and start, with its spec part alone at submit and spawn (a new
    record holds nothing), and changed by its parts as a record
    changes (``_set_output``, ``_set_failure``, ``_set_heartbeat_details``).
    A blob payload is a reference (the input or output is then empty): only
    its record is held, which the bound on tasks accounts for.
    """
    return (
        _spec_bytes(spec)
        + len(rec.output or b"")
        + len(rec.heartbeat_details or b"")
        + _failure_bytes(rec.failure)
    )


# What encoding a spec can raise: an int past 64 bits (OverflowError), a lone surrogate
# (UnicodeEncodeError, a ValueError), a type msgpack has not, nesting past the interpreter.
_UNSTORABLE = (msgspec.EncodeError, OverflowError, ValueError, TypeError, RecursionError)


def _encode_specs(specs: Iterable[TaskSpec], default_pool: str, field: str) -> list[tuple[TaskSpec, bytes]]:
    """Each spec, its pool set (``default_pool`` when it names none), with its stored row.

    Encoded before a submit or spawn stages anything, so a spec that cannot
    be stored (the sidecar refuses such values first) leaves the batch and
    memory untouched: SpecError names ``field[i]``.
    """
    rows: list[tuple[TaskSpec, bytes]] = []
    try:
        for spec in specs:
            pooled = spec if spec.pool else msgspec.structs.replace(spec, pool=default_pool)
            rows.append((pooled, _spec_codec.encode(pooled)))
    except _UNSTORABLE as error:
        raise SpecError("INVALID_ARGUMENT", f"{field}[{len(rows)}]", f"cannot be stored: {error}") from None
    return rows


def _runs_again(
    specs: Sequence[TaskSpec], records: Sequence[TaskRecord], rerun_task_ids: Sequence[str]
) -> set[str]:
    """The tasks of a fork that run again: the rerun tasks and everything downstream of them."""
    downstream: dict[str, list[str]] = {}
    for spec, old_rec in zip(specs, records, strict=True):
        for dep in spec.depends_on + old_rec.extra_depends_on:
            downstream.setdefault(dep, []).append(spec.task_id)
    again = set(rerun_task_ids)
    stack = list(rerun_task_ids)
    while stack:
        for child in downstream.get(stack.pop(), ()):
            if child not in again:
                again.add(child)
                stack.append(child)
    return again


def _keep_outcome(rec: TaskRecord, old: TaskRecord, source_id: str, now: int) -> None:
    """A fork's task keeps the terminal outcome ``old`` had in ``source_id``: its state, output, failure."""
    rec.state = old.state
    reason = f"kept from {source_id}"
    if old.state != "COMPLETED" and old.state_reason:
        reason = f"{reason}: {old.state_reason}"[:1024]
    rec.state_reason = reason
    rec.output = old.output
    rec.output_content_type = old.output_content_type
    rec.output_blob_sha256 = old.output_blob_sha256
    rec.output_blob_size = old.output_blob_size
    rec.failure = old.failure
    rec.approval = msgspec.structs.replace(old.approval) if old.approval is not None else None
    rec.capability = old.capability
    rec.start_ns = old.start_ns  # whether (and when) it ran: a handler that ran still handles (_ran)
    rec.close_ns = now


def _admitted_within(count: int, incoming: int, bound: int, *, new_work: bool) -> int | None:
    """None when ``incoming`` more may join ``count`` under ``bound``; else the limit they would pass.

    New work may take the new-work share of the bound (rounded down), or the
    whole bound when the count is 0 (nothing open holds any of it); a spawn
    may take the whole bound.
    """
    limit = bound * _NEW_WORK_SHARE_PERCENT // 100 if new_work else bound
    if count + incoming <= limit or (count == 0 and incoming <= bound):
        return None
    return limit


class Scheduler:
    """Runs workflows on one event loop, durable through ``storage`` and ``committer``.

    Args:
        storage: Where records live (tables :data:`TABLES` must be declared).
        committer: The group committer for ``storage``.
        events: Where transitions are recorded as events, or None.
        clock: Wall-clock nanoseconds (tests may pass a fake).
        rng: ``random.random``-like source for backoff jitter.
        max_open_tasks: The most tasks of open workflows held in memory: a
            spawn that would take :attr:`open_tasks` over it, or a submit or
            fork over 90% of it (the rest is kept for spawns into running
            workflows), is refused with :class:`TooManyOpenTasksError`
            (recovery at start never is).
        max_open_bytes: The most payload bytes that open workflows hold in
            memory (:attr:`open_bytes`: inline inputs and outputs, cache-key
            prompts, condition values, heartbeat details and failures): work
            over it is refused as for ``max_open_tasks``, with
            :class:`TooManyOpenBytesError`; a recorded output, heartbeat or
            failure is never refused, and counts.
    """

    def __init__(  # noqa: PLR0915 - one statement per field of state
        self,
        storage: Storage,
        committer: GroupCommitter,
        events: EventSink | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        rng: Callable[[], float] = random.random,
        max_open_tasks: int = DEFAULT_MAX_OPEN_TASKS,
        max_open_bytes: int = DEFAULT_MAX_OPEN_BYTES,
    ) -> None:
        if max_open_tasks < 1:
            raise ValueError(f"max_open_tasks must be at least 1, got {max_open_tasks}")
        if max_open_bytes < 1:
            raise ValueError(f"max_open_bytes must be at least 1, got {max_open_bytes}")
        self._storage = storage
        self._committer = committer
        self._events = events
        self._clock = clock
        self._rng = rng
        self._open: dict[str, _Workflow] = {}
        self._recent: OrderedDict[str, _Workflow] = OrderedDict()
        self._deleting: set[str] = set()  # workflow ids a delete is removing (their ids stay taken)
        self._recent_tasks = 0  # the tasks of the workflows in _recent
        self._recent_bytes = 0  # and their payload bytes, as each was when it joined
        # The tasks of the workflows in _open (every entry of their ``order``), kept as they open,
        # spawn and close: the bound on them is checked without a scan (see _check_open_work).
        self._open_tasks = 0
        self._max_open_tasks = max_open_tasks
        self._open_tasks_refused = 0  # refusals for the bound since the start
        # The payload bytes of the workflows in _open (the sum of their payload_bytes), kept as
        # they open, spawn, record outputs, heartbeat details and failures, and close.
        self._open_bytes = 0
        self._max_open_bytes = max_open_bytes
        self._open_bytes_refused = 0
        self._refusals_logged = (0, 0)  # (when the last warning about them was written, their count then)
        self._pools: dict[str, _Pool] = {}
        # Capability -> pool -> queue, while a task waits in one of the capability's queues
        # or a worker waits idle for it (see _left_queue); capability -> worker id -> handle of
        # the idle workers, dropped when the last leaves: both bounded by what is live.
        self._queues: dict[str, dict[str, _Queue]] = {}
        self._idle: dict[str, dict[str, WorkerHandle]] = {}
        # The queues a pump may dispatch from: a task waits in them and a worker waits idle for
        # their capability. Kept as either side changes (see _queue_push, _left_queue, _reidle,
        # _unidle), so a pump visits no capability that has nothing queued or no idle worker.
        self._ready: dict[_Queue, None] = {}
        self._served_seq = 0  # the last stamp given to a queue's ``served``
        self._workers: dict[str, WorkerHandle] = {}
        self._txn: _Txn | None = None
        self._heap: list[tuple[int, int, str, Any, int]] = []
        self._heap_seq = 0
        self._compact_at = _COMPACT_MIN
        # Closed workflows dropped from the recent ones since the heap's last sweep: how many,
        # their tasks, their payload bytes (see _forget_recent).
        self._dropped_recent = [0, 0, 0]
        self._next_pump_ns = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._resolved: deque[_Task] = deque()
        self._closing: list[_Workflow] = []
        self._pump_wanted = False
        self._pending_commits: set[asyncio.Future[None]] = set()
        self._stopped = False
        self._polls: dict[asyncio.Future[list[Assignment]], WorkerHandle] = {}  # long polls waiting
        self.draining = False
        """Set by :meth:`drain`: the sidecar is stopping; long waits end early."""
        self._requests: dict[str, tuple[str, str]] = {}  # request ids not yet committed
        self._spawn_requests: dict[bytes, _SpawnReceipt] = {}  # spawn request ids not yet committed
        self._ids = random.Random()  # noqa: S311 - span ids need uniqueness, not secrecy
        # Integration hooks, installed by the sidecar when the capability exists
        # (None: the feature is off). Only tasks that use a feature reach its hook.
        self.route: RouteHook | None = None
        """Picks the capability of a task's ``intent`` when it is scheduled (and re-routes it, below)."""
        self.capability_served: ServedHook | None = None
        """With ``route``: whether a standing worker serves a capability now; :meth:`serves` adds
        unary polls, and :meth:`served_changed` re-routes on that."""
        self.cache_lookup: CacheLookupHook | None = None
        """Looks a task's ``cache_key`` up when it is scheduled; None is a miss."""
        self.cache_store: CacheStoreHook | None = None
        """Stores a cache-keyed task's output after its durable completion (fire and forget)."""
        self.stage_blob_reference: BlobReferenceHook | None = None
        """Stages, in the commit's own batch, a workflow's reference to each blob its task payloads name."""
        self.worker_changed: WorkerHook | None = None
        """Told when a worker connects, its load changes, or it goes (``gone``)."""
        self.commit_failed: Callable[[BaseException], None] | None = None
        """Told when a commit fails: memory is then ahead of the durable records
        (there is no rollback), so the owner should stop the process and let a
        restart recover from LMDB. Without it the engine carries on, logging."""
        self._lookups: set[asyncio.Task[None]] = set()
        self._reroute_pending: set[str] = set()  # capabilities whose served state changed, not yet looked at
        self._reroute_failures = 0  # passes failed in a row (see _reroute)
        self._reroute_job: asyncio.Task[None] | None = None
        self.reroute_grace_s = 10.0
        """How long a capability stays unserved before the intent tasks waiting on it are routed
        elsewhere (0: at once): a class gone for a moment (its workers restarting, or not yet
        reconnected after the sidecar's own restart) keeps its tasks."""
        # Capability -> when it lost its last worker, oldest first: an entry past the grace says
        # no more than none does (the start, earlier still), so a timer drops it then (see
        # _note_unserved): bounded by the capabilities that lost their last worker within a grace.
        self._unserved_since: OrderedDict[str, int] = OrderedDict()
        self._unserved_timer = False  # the "unserved" timer is armed (one at a time)
        self._rechecks: dict[str, int] = {}  # capability -> when its "reroute" timer fires
        # Capabilities whose queues may hold intent tasks (one was queued there since the
        # queues were made): a re-route pass reads no other queue. Dropped with the queues.
        self._intent_caps: set[str] = set()
        self._started_ns = 0
        # Unary polls, by capability (see serves): the long polls waiting now and the attempts
        # held by poll workers that polled for it (entries dropped at zero: bounded by the polls
        # waiting and the attempts held), and when the last of those ended, oldest first (an entry
        # is dropped by its capability's "polls" timer once older than the poll window, or sooner
        # when any capability's polls end: bounded by the capabilities polled within a window).
        self._poll_waiting: dict[str, int] = {}
        self._poll_held: dict[str, int] = {}
        # When a poll worker holding an attempt for the capability last showed life (the
        # assignment, or a heartbeat): a held attempt serves its class only within the poll
        # window of that (a poller that died holding one serves nothing). Dropped with _poll_held.
        self._poll_contact: dict[str, int] = {}
        self._poll_ended: OrderedDict[str, int] = OrderedDict()
        self._poll_checks: set[str] = set()  # capabilities whose "polls" timer is armed

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Loads pools and every open workflow, and carries on where they stopped.

        Tasks that were RUNNING when the sidecar stopped are scheduled again
        (their next dispatch is attempt+1 with the same idempotency key); the
        lost attempt is not charged to the retry policy, and their wait for a
        worker, bounded by schedule-to-start, counts from the restart.

        Every open workflow is loaded, even past ``max_open_tasks`` or
        ``max_open_bytes`` (a bound may have been lowered since they were
        admitted): the engine then serves them and refuses new work until
        enough of them close.
        """
        now = self._clock()
        self._started_ns = now
        self._pools["default"] = _Pool(PoolLimits(name="default", create_ns=now, update_ns=now), now)
        for _, raw in self._storage.scan(T_POOLS, limit=100_000):
            limits = _pool_codec.decode(raw)
            self._pools[limits.name] = _Pool(limits, now)
        open_ids = self._open_ids()
        ready: list[tuple[tuple[int, int, int], _Task]] = []
        for wf_id in open_ids:
            wf_raw = self._storage.get(T_WORKFLOWS, wf_id.encode())
            if wf_raw is None:
                continue
            self._recover(_wf_codec.decode(wf_raw), ready)
        # Queues and backlogs are rebuilt in the order tasks became ready: what
        # was running first (it had left the queue), then by schedule time, so
        # the queue bound holds and the earliest ready tasks are queued again.
        ready.sort(key=lambda item: item[0])
        for _, task in ready:
            rec, key = task.rec, task.spec.cache_key
            if task.spec.intent and rec.capability:
                self._enqueue(task, now)  # past its lookup and its route
            elif key is not None and self.cache_lookup is not None and not rec.attempt:
                # Its scheduling may have stopped with the cache lookup in flight (the record
                # does not tell that from a miss): ask again rather than run what may be cached.
                self._look_up(task, key)
            elif task.spec.intent:
                # Stopped before the intent was routed: finish it, or it would wait on capability "".
                self._route_and_enqueue(task, now)
            else:
                self._enqueue(task, now)
        if open_ids:
            self._settle()
            self._pump()
            await self._commit_now()
        self._log_started()

    def _open_ids(self) -> list[str]:
        """The ids of the workflows stored open, every one of them (read a page at a time)."""
        open_ids: list[str] = []
        after: bytes | None = None
        while rows := self._storage.scan(T_OPEN, start=after, limit=100_000):
            open_ids.extend(key.decode() for key, _ in rows)
            after = rows[-1][0] + b"\x00"
        return open_ids

    def _log_started(self) -> None:
        """Logs what the start loaded, with a warning when it is over a bound (tasks or payload bytes)."""
        fields = {
            "open_workflows": len(self._open),
            "open_tasks": self._open_tasks,
            "max_open_tasks": self._max_open_tasks,
            "open_bytes": self._open_bytes,
            "max_open_bytes": self._max_open_bytes,
        }
        over = [
            what
            for what, count, bound in (
                ("more tasks than max_open_tasks", self._open_tasks, self._max_open_tasks),
                ("more inline payload bytes than max_open_bytes", self._open_bytes, self._max_open_bytes),
            )
            if count > bound
        ]
        if over:
            _log.warning(
                f"the open workflows hold {' and '.join(over)}: all are served, and new "
                "workflows and spawned tasks are refused (RESOURCE_EXHAUSTED) until enough of them close",
                extra={"fields": fields},
            )
        else:
            _log.info("scheduler started", extra={"fields": fields})

    def _recover(  # noqa: C901 - one branch per task state
        self, rec: WorkflowRecord, ready: list[tuple[tuple[int, int, int], _Task]]
    ) -> None:
        """Rebuilds one open workflow; its ready tasks are appended to ``ready`` (sort key, task)."""
        w = _Workflow(rec)
        self._open[rec.workflow_id] = w
        prefix = prefix_key(rec.workflow_id)
        specs = self._storage.scan(T_SPECS, prefix=prefix, limit=10_000_000)
        rows = self._storage.scan(T_TASKS, prefix=prefix, limit=10_000_000)
        for (_, spec_raw), (_, task_raw) in zip(specs, rows, strict=True):
            task = _Task(w, _task_codec.decode(task_raw), _spec_codec.decode(spec_raw))
            w.tasks[task.rec.task_id] = task
            w.order.append(task)
            w.payload_bytes += _payload_bytes(task.spec, task.rec)
        self._open_tasks += len(w.order)
        self._open_bytes += w.payload_bytes
        rec.counts = {}
        for task in w.order:
            rec.counts[task.rec.state] = rec.counts.get(task.rec.state, 0) + 1
            if task.rec.state not in TERMINAL_TASK_STATES:
                w.open += 1
            self._wire(task)
        for task in w.order:
            state = task.rec.state
            if (
                task.spec.schedule_to_close_s
                and task.rec.first_schedule_ns
                and state not in TERMINAL_TASK_STATES
            ):
                deadline = task.rec.first_schedule_ns + int(task.spec.schedule_to_close_s * 1e9)
                self._at(deadline, "s2close", task, 0)  # counted from before the restart
            if state == "RUNNING":
                self._requeue_uncharged(
                    task,
                    task.rec.worker_id,
                    "sidecar restart",
                    "re-dispatched after a sidecar restart",
                    self._started_ns,
                )
                ready.append(((0, task.rec.start_ns, len(ready)), task))
            elif state == "SCHEDULED":
                ready.append(((1, task.rec.schedule_ns, len(ready)), task))
                if task.spec.schedule_to_start_s and task.rec.schedule_ns:
                    # The deadline counts from its scheduling before the restart.
                    deadline = task.rec.schedule_ns + int(task.spec.schedule_to_start_s * 1e9)
                    self._at(deadline, "s2s", task, task.token)
            elif state == "BACKING_OFF":
                self._at(task.rec.next_attempt_ns, "backoff", task, task.token)
            elif state == "AWAITING_APPROVAL" and task.rec.approval and task.rec.approval.expire_ns:
                self._at(task.rec.approval.expire_ns, "approval", task, task.token)
            elif state == "PENDING" and not task.unresolved:
                self._decide(task)
        self._at(rec.deadline_ns, "deadline", w, 0)
        if rec.state == "CANCELLING" or not w.open:
            self._closing.append(w)

    async def stop(self) -> None:
        """Stops timers and waits for transactions in flight; in-flight attempts stay RUNNING."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        job = self._reroute_job
        if job is not None:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        if self._txn is not None:
            self._flush()
        if self._pending_commits:
            await asyncio.gather(*self._pending_commits, return_exceptions=True)

    # ------------------------------------------------------------ transactions

    def _t(self) -> _Txn:
        txn = self._txn
        if txn is None:
            loop = asyncio.get_running_loop()
            txn = self._txn = _Txn(self._storage.batch(), loop.create_future())
            loop.call_soon(self._flush)
        return txn

    def _dirty(self, task: _Task) -> None:
        self._t().tasks.add(task)

    def _dirty_wf(self, w: _Workflow) -> None:
        self._t().workflows.add(w)

    def _flush(self) -> None:
        txn = self._txn
        if txn is None:
            return
        self._txn = None
        for worker in txn.assign:
            if worker.one_answer:
                # A poll answers with one commit's assignments (its first): a dispatch to it in
                # a later transaction would be delivered after it answered, and reach no one.
                self.forget_poller(worker)
        batch = txn.batch
        for task in txn.tasks:
            batch.put(T_TASKS, task.key, _task_codec.encode(task.rec))
        for w in txn.workflows:
            w.commit = txn.future
            rec = w.rec
            wf_key = rec.workflow_id.encode()
            batch.put(T_WORKFLOWS, wf_key, _wf_codec.encode(rec))
            if rec.state in OPEN_WORKFLOW_STATES:
                batch.put(T_OPEN, wf_key, b"")
            else:
                batch.delete(T_OPEN, wf_key)
        # Admitted whatever the committer's pending bounds: memory already changed, and a
        # refusal would stop the sidecar (see commit_failed). The scheduler's work is bounded
        # where it enters (SubmitWorkflow and SpawnTasks check the committer's room first).
        try:
            commit = self._committer.enqueue(batch, bounded=False)
        except Exception as error:  # noqa: BLE001 - the committer is closing: as a failed commit
            commit = asyncio.get_running_loop().create_future()
            commit.set_exception(error)
        self._pending_commits.add(commit)
        commit.add_done_callback(lambda done: self._committed(txn, done))

    def _committed(self, txn: _Txn, done: asyncio.Future[None]) -> None:  # noqa: C901 - flat delivery steps
        self._pending_commits.discard(done)
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is not None:
            _log.error("scheduler commit failed", exc_info=error)
            if not txn.future.done():
                txn.future.set_exception(error)
            txn.future.exception()  # mark retrieved
            if self.commit_failed is not None and not isinstance(error, asyncio.CancelledError):
                self.commit_failed(error)
            return
        if self._events is not None and txn.events:
            self._events.publish(txn.events)
        for worker in dict.fromkeys([*txn.assign, *txn.cancel]):
            if worker.connected:
                _deliver(worker, txn.assign.get(worker, []), txn.cancel.get(worker, []))
        for callback in txn.after:
            callback()
        for w in txn.workflows:
            for watcher in w.watchers:
                watcher.set()
        if not txn.future.done():
            txn.future.set_result(None)

    async def _commit_now(self) -> None:
        if self._txn is not None:
            future = self._txn.future
            self._flush()
            await asyncio.shield(future)  # a caller gone must not cancel a shared commit

    def _event(
        self, event_type: str, task: _Task | None = None, w: _Workflow | None = None, **fields: Any
    ) -> None:
        events = self._events
        if events is None:
            return
        if task is not None:
            w = task.wf
            rec = task.rec
            if "task_id" not in fields:
                fields["task_id"] = rec.task_id
            if "attempt" not in fields:
                fields["attempt"] = rec.attempt
            if "task_state" not in fields:
                fields["task_state"] = rec.state
            if "span_id" not in fields and rec.state == "RUNNING" and fields["attempt"] == rec.attempt:
                # An event of the running attempt belongs to its span (event.proto Event.span_id);
                # rec.span_id is that attempt's only while it runs (the events ending it pass theirs).
                fields["span_id"] = rec.span_id
        assert w is not None
        wf_rec = w.rec
        if "workflow_state" not in fields:
            fields["workflow_state"] = wf_rec.state
        txn = self._txn or self._t()
        event = events.record(
            txn.batch, EventDraft(event_type=event_type, workflow_id=wf_rec.workflow_id, **fields)
        )
        w.last_seq = event.sequence
        txn.events.append(event)
        txn.workflows.add(w)  # watchers wake up on any recorded change

    def _worker_event(self, event_type: str, worker: WorkerHandle, attributes: dict[str, Any]) -> None:
        """Records an event of a worker (no workflow) in the current commit."""
        if self._events is None:
            return
        txn = self._txn or self._t()
        txn.events.append(
            self._events.record(
                txn.batch,
                EventDraft(event_type=event_type, worker_id=worker.worker_id, attributes=attributes),
            )
        )

    # -------------------------------------------------------------- submission

    def check_request(self, request_id: str, request_hash: str) -> str | None:
        """The workflow a request_id already created, or None; raises on a conflict."""
        if not request_id:
            return None
        pending = self._requests.get(request_id)
        if pending is not None:
            wf_id, stored_hash = pending
        else:
            raw = self._storage.get(T_REQUESTS, request_id.encode())
            if raw is None:
                return None
            wf_id, _, stored_hash = raw.decode().partition("\x00")
        if stored_hash != request_hash:
            raise RequestIdConflictError(f"request_id {request_id!r} was used with a different request")
        return wf_id

    def check_room(self, tasks: int, nbytes: int) -> None:
        """Refuses, before anything changes, work the committer has no room for now.

        The scheduler's transactions are admitted whatever the committer's
        pending bounds (see :meth:`_flush`): backpressure applies where work
        enters, to a submit or spawn of ``tasks`` tasks whose request is
        ``nbytes`` long (about what its rows take). Work as large as a bound
        alone is taken when nothing else is pending (a request the message
        size allows is never refused for its size alone).

        Raises:
            StorageBusyError: Too many writes are waiting for the storage; retry later.
        """
        committer = self._committer
        committer.check_room(
            min(4 * tasks + 8, committer.max_pending_mutations),
            min(nbytes + 256 * tasks + 4096, committer.max_pending_bytes),
        )

    async def submit(  # noqa: C901, PLR0915 - the checks read best in order
        self,
        spec: WorkflowSpec,
        *,
        request_id: str = "",
        request_hash: str = "",
        stage: Callable[[Batch, str], Callable[[], None] | None] | None = None,
    ) -> tuple[WorkflowRecord, bool]:
        """Validates, stores and starts a workflow; returns it and whether it was deduplicated.

        ``stage(batch, workflow_id)``, when given, adds the caller's rows (the
        initial state document) to the submit's batch once the spec is valid;
        if it raises, nothing is stored and the error propagates. What it
        returns, if anything, runs once WORKFLOW_SUBMITTED is recorded, to
        record the rows' own events after it (it must not raise).

        Raises:
            SpecError: a bad spec (nothing stored).
            RequestIdConflictError, WorkflowExistsError, PoolQueueFullError.
            TooManyOpenTasksError: the open workflows hold too many tasks now, or (its subclass
                TooManyOpenBytesError) too many inline payload bytes (nothing stored).
        """
        earlier = self.check_request(request_id, request_hash)
        if earlier is not None:
            return await self.deduplicated(earlier), True
        validate_graph(spec.tasks)
        pools: dict[str, int] = {}
        default_pool = spec.default_pool or "default"
        if default_pool not in self._pools:
            raise SpecError("POOL_NOT_FOUND", "spec.default_pool", f"pool {default_pool!r} does not exist")
        nbytes = 0  # the payload bytes of the specs, for max_open_bytes
        for i, task_spec in enumerate(spec.tasks):
            pool = task_spec.pool or default_pool
            if pool not in self._pools:
                raise SpecError("POOL_NOT_FOUND", f"spec.tasks[{i}].pool", f"pool {pool!r} does not exist")
            if not task_spec.depends_on and not task_spec.requires_approval:
                pools[pool] = pools.get(pool, 0) + 1
            nbytes += _spec_bytes(task_spec)
        result_task_id = spec.result_task_id
        if result_task_id:
            if not any(t.task_id == result_task_id for t in spec.tasks):
                raise SpecError(
                    "UNKNOWN_DEPENDENCY",
                    "spec.result_task_id",
                    f"{result_task_id!r} is not a task of the workflow",
                )
        else:
            upstream = {d for t in spec.tasks for d in t.depends_on}
            sinks = [t.task_id for t in spec.tasks if t.task_id not in upstream]
            result_task_id = sinks[0] if len(sinks) == 1 else ""
        self._check_open_work(len(spec.tasks), nbytes, "spec.tasks")
        self._check_queues(pools, spec.workflow_id)
        wf_id = spec.workflow_id or _new_id("wf_")
        self._check_new_id(wf_id)
        rows = _encode_specs(spec.tasks, default_pool, "spec.tasks")  # before anything is staged
        after_submitted = stage(self._t().batch, wf_id) if stage is not None else None
        now = self._clock()
        trace_id, parent_span = _parse_traceparent(spec.traceparent)
        rec = WorkflowRecord(
            workflow_id=wf_id,
            name=spec.name,
            labels=dict(spec.labels),
            budget=spec.budget,
            create_ns=now,
            deadline_ns=now + int(spec.budget.max_duration_s * 1e9),
            trace_id=trace_id or secrets.token_hex(16),
            parent_span_id=parent_span,
            # W3C: a tracestate belongs to its traceparent's trace; without one it is dropped.
            tracestate=spec.tracestate if trace_id else "",
            result_task_id=result_task_id,
            request_id=request_id,
            request_hash=request_hash,
            task_count=len(spec.tasks),
            default_pool=default_pool,
            default_retry_policy=spec.default_retry_policy,
        )
        w = _Workflow(rec)
        batch = self._t().batch
        batch.put(T_BY_TIME, join_key(_U64 - now, wf_id), b"")
        if request_id:
            batch.put(T_REQUESTS, request_id.encode(), f"{wf_id}\x00{request_hash}".encode())
            self._requests[request_id] = (wf_id, request_hash)
            self._t().after.append(lambda: self._forget_request(request_id))
        self._add_tasks(w, rows, now, parent="", depth=0)
        w.payload_bytes += nbytes  # new records hold nothing yet: the specs' bytes, counted above
        self._open[wf_id] = w
        self._open_tasks += len(w.order)
        self._open_bytes += w.payload_bytes
        self._dirty_wf(w)
        self._event(
            "WORKFLOW_SUBMITTED",
            w=w,
            attributes={
                "are.workflow.name": spec.name,
                "are.workflow.task_count": len(spec.tasks),
                **({"are.request_id": request_id} if request_id else {}),
                # The W3C trace the workflow's spans belong to, so exporters need no engine lookup.
                "are.trace_id": rec.trace_id,
                **({"are.parent_span_id": rec.parent_span_id} if rec.parent_span_id else {}),
            },
        )
        if after_submitted is not None:
            after_submitted()
        self._at(rec.deadline_ns, "deadline", w, 0)
        for task in w.order:
            if not task.deps:
                self._decide(task)
        self._settle()
        self._pump()
        await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
        return rec, False

    async def deduplicated(self, wf_id: str) -> WorkflowRecord:
        """The workflow an earlier submit with the same request_id made, once that submit is durable.

        The earlier submit may still be committing: answering its retry
        sooner would acknowledge a workflow a crash can still undo.
        """
        await self._settled_commit(wf_id)
        return self._load_workflow(wf_id).record

    async def _settled_commit(self, wf_id: str) -> None:
        """Waits for the commit holding the workflow's latest in-memory change (none: returns at once)."""
        pending = self.durable(wf_id)
        if pending is not None:
            await asyncio.shield(pending)

    def _forget_request(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def _forget_spawn_request(self, key: bytes) -> None:
        self._spawn_requests.pop(key, None)

    def _check_queues(self, incoming: dict[str, int], workflow_id: str) -> None:
        for name, n in incoming.items():
            pool = self._pools[name]
            if pool.queued + n > pool.limits.queue_limit:
                pool.rejected_total += 1
                if self._events is not None:
                    txn = self._t()
                    txn.events.append(
                        self._events.record(
                            txn.batch,
                            EventDraft(
                                event_type="POOL_QUEUE_FULL",
                                workflow_id=workflow_id,
                                attributes={"are.pool": name, "are.queue_length": pool.queued},
                            ),
                        )
                    )
                raise PoolQueueFullError(name, pool.queued, n, pool.limits.queue_limit, retry_after_s=1.0)

    def _check_open_work(self, tasks: int, nbytes: int, field: str, *, into: _Workflow | None = None) -> None:
        """Refuses work that would take the open tasks or payload bytes over their bounds.

        ``tasks`` tasks holding ``nbytes`` payload bytes: a new workflow
        (``into`` None: a submit or a fork) is admitted while each count stays
        within the new-work share of its bound (:data:`_NEW_WORK_SHARE_PERCENT`),
        or when nothing open holds any of it, so that a workflow up to a whole
        bound is admitted once nothing else is open rather than refused for
        good; a spawn into the open workflow ``into`` may take the whole bound.
        Work that could not fit even alone (a spawn: with what ``into`` holds
        already, which stays held while it is open) is refused as invalid input
        (LIMIT_EXCEEDED naming ``field``), since no retry would ever succeed.
        A count already past its bound (the bound was lowered, or outputs,
        heartbeat details or failures were recorded past it) refuses all such
        work until it falls back, even work that adds none of it. Changes
        nothing but the refusal counters.

        Raises:
            SpecError: LIMIT_EXCEEDED: not ever, however many workflows close.
            TooManyOpenTasksError, TooManyOpenBytesError: Not now; retry after
                the hint (5 s for new work, 1 s for a spawn).
        """
        held_tasks = len(into.order) if into is not None else 0
        held_bytes = into.payload_bytes if into is not None else 0
        if held_tasks + tasks > self._max_open_tasks:
            raise SpecError(
                "LIMIT_EXCEEDED",
                field,
                f"{held_tasks + tasks:,} tasks in one workflow exceed the sidecar's max_open_tasks "
                f"{self._max_open_tasks:,}",
                limit=self._max_open_tasks,
            )
        if held_bytes + nbytes > self._max_open_bytes:
            raise SpecError(
                "LIMIT_EXCEEDED",
                field,
                f"{held_bytes + nbytes:,} bytes of inline payloads in one workflow exceed the sidecar's "
                f"max_open_bytes {self._max_open_bytes:,} (send large payloads as blobs)",
                limit=self._max_open_bytes,
            )
        new_work = into is None
        retry_after_s = _OPEN_TASKS_RETRY_S if new_work else _SPAWN_RETRY_S
        share = _admitted_within(self._open_tasks, tasks, self._max_open_tasks, new_work=new_work)
        if share is not None:
            self._open_tasks_refused += 1
            self._warn_refusing("max_open_tasks")
            raise TooManyOpenTasksError(
                self._open_tasks,
                tasks,
                self._max_open_tasks,
                retry_after_s,
                share_limit=share if new_work else None,
            )
        share = _admitted_within(self._open_bytes, nbytes, self._max_open_bytes, new_work=new_work)
        if share is not None:
            self._open_bytes_refused += 1
            self._warn_refusing("max_open_bytes")
            raise TooManyOpenBytesError(
                self._open_bytes,
                nbytes,
                self._max_open_bytes,
                retry_after_s,
                share_limit=share if new_work else None,
            )

    def _warn_refusing(self, limit: str) -> None:
        """Logs a refusal for ``limit``, at most one warning a minute whichever bound refused."""
        now = self._clock()
        last_ns, last_count = self._refusals_logged
        refused = self._open_tasks_refused + self._open_bytes_refused
        if last_ns and now - last_ns < _REFUSALS_LOG_NS:
            return
        self._refusals_logged = (now, refused)
        _log.warning(
            f"refusing work: the open workflows are at {limit} (retry hint given)",
            extra={
                "fields": {
                    "open_workflows": len(self._open),
                    "open_tasks": self._open_tasks,
                    "max_open_tasks": self._max_open_tasks,
                    "open_bytes": self._open_bytes,
                    "max_open_bytes": self._max_open_bytes,
                    "refused_since_last_warning": refused - last_count,
                }
            },
        )

    @property
    def open_tasks(self) -> int:
        """The tasks of the open workflows, all held in memory (exact, kept as they open and close)."""
        return self._open_tasks

    @property
    def max_open_tasks(self) -> int:
        """The bound on :attr:`open_tasks` that new work is admitted under."""
        return self._max_open_tasks

    @property
    def open_bytes(self) -> int:
        """The payload bytes the open workflows hold in memory (exact; see ``_payload_bytes``).

        Every task's inline input, cache-key prompt and condition values; once
        recorded, its inline output, its last heartbeat details and its last
        failure with its causes (each replacing the earlier one: a retried
        attempt's output, a new heartbeat's details, a later attempt's
        failure); a blob reference adds none. Kept as workflows open, spawn,
        record outputs, heartbeats and failures, and close. An output,
        heartbeat or failure is never refused for the bound (the work is under
        way or done): it is counted even past it, and new work is refused
        until room comes back.
        """
        return self._open_bytes

    @property
    def max_open_bytes(self) -> int:
        """The bound on :attr:`open_bytes` that new work is admitted under."""
        return self._max_open_bytes

    def _payload_changed(self, w: _Workflow, delta: int) -> None:
        """Adds ``delta`` payload bytes to ``w``, and to :attr:`open_bytes` while it is open."""
        w.payload_bytes += delta
        if self._open.get(w.rec.workflow_id) is w:
            self._open_bytes += delta

    def _set_output(self, task: _Task, output: bytes | None) -> None:
        """Records ``output`` as the task's (replacing any earlier), keeping the byte counts exact."""
        rec = task.rec
        delta = len(output or b"") - len(rec.output or b"")
        rec.output = output
        self._payload_changed(task.wf, delta)

    def _set_failure(self, task: _Task, failure: Failure) -> None:
        """Records ``failure`` as the task's last (replacing any earlier), keeping the byte counts exact.

        Never refused for :attr:`max_open_bytes`: the attempt has ended.
        """
        rec = task.rec
        delta = _failure_bytes(failure) - _failure_bytes(rec.failure)
        rec.failure = failure
        self._payload_changed(task.wf, delta)

    def _set_heartbeat_details(self, task: _Task, details: bytes, content_type: str) -> None:
        """Records a heartbeat's details (replacing the last; empty ones free them), keeping the counts exact.

        Never refused for :attr:`max_open_bytes`: the attempt is under way.
        """
        rec = task.rec
        delta = len(details) - len(rec.heartbeat_details or b"")
        rec.heartbeat_details = details
        rec.heartbeat_content_type = content_type
        self._payload_changed(task.wf, delta)

    def _add_tasks(
        self, w: _Workflow, rows: list[tuple[TaskSpec, bytes]], now: int, *, parent: str, depth: int
    ) -> list[_Task]:
        """Adds the tasks of ``rows`` (from :func:`_encode_specs`) to ``w`` and their rows to the batch.

        The specs were encoded first, so nothing here raises half-way: a spec
        that cannot be stored was refused before the batch or ``w`` changed.
        The caller adds their payload bytes to ``w`` (it summed them for the
        bound check; a new task's record holds none).
        """
        batch = self._t().batch
        added: list[_Task] = []
        for spec, row in rows:
            index = len(w.order)
            rec = TaskRecord(
                task_id=spec.task_id, index=index, create_ns=now, parent_task_id=parent, spawn_depth=depth
            )
            task = _Task(w, rec, spec)
            w.tasks[spec.task_id] = task
            w.order.append(task)
            w.rec.counts["PENDING"] = w.rec.counts.get("PENDING", 0) + 1
            w.open += 1
            batch.put(T_SPECS, task.key, row)
            if spec.input_blob_sha256 and self.stage_blob_reference is not None:
                self.stage_blob_reference(batch, w.rec.workflow_id, spec.input_blob_sha256)
            self._dirty(task)
            added.append(task)
        for task in added:
            self._wire(task)
        return added

    def _wire(self, task: _Task) -> None:
        tasks = task.wf.tasks
        for dep_id in task.deps:
            dep = tasks[dep_id]
            dep.dependents.append(task)
            state = dep.rec.state
            if state in TERMINAL_TASK_STATES:
                self._tally(task, state)
            else:
                task.unresolved += 1

    @staticmethod
    def _tally(task: _Task, state: str) -> None:
        if state == "COMPLETED":
            task.n_ok += 1
        elif state == "SKIPPED":
            task.n_skip += 1
        else:
            task.n_fail += 1

    # ---------------------------------------------------------------- readiness

    def _decide(self, task: _Task) -> None:  # noqa: C901, PLR0912 - one branch per trigger rule
        """Applies the trigger rule to a PENDING task: schedule it, skip it, or wait."""
        if task.rec.state != "PENDING" or task.wf.rec.state != "RUNNING":
            return
        rule = task.spec.trigger_rule
        done = not task.unresolved
        if not task.deps:
            verdict: bool | None = True
        elif rule == "ALL_SUCCESS":
            verdict = False if (task.n_fail or task.n_skip) else (True if done else None)
        elif rule == "ALL_DONE":
            verdict = True if done else None
        elif rule == "ONE_FAILED":
            verdict = True if task.n_fail else (False if done else None)
        elif rule == "ONE_SUCCESS":
            verdict = True if task.n_ok else (False if done else None)
        else:  # NONE_FAILED
            verdict = False if task.n_fail else (True if done else None)
        if verdict is None:
            return
        if not verdict:
            self._skip(task, "trigger_rule", f"skipped: trigger rule {rule} can no longer be met")
            return
        tasks = task.wf.tasks
        if any(tasks[c.task_id].rec.state not in TERMINAL_TASK_STATES for c in task.spec.conditions):
            # A rule met early (ONE_SUCCESS, ONE_FAILED) must not judge a dependency still running by
            # the output it does not have yet: skipped for good, though it might have held. The task
            # waits; that dependency's end decides it again.
            return
        for condition in task.spec.conditions:
            dep = tasks[condition.task_id].rec
            # A blob output has no inline JSON, and an output whose content type is not JSON is
            # not parsed (common.proto Payload): either way the condition sees no value.
            done = (
                dep.state == "COMPLETED"
                and not dep.output_blob_sha256
                and is_json_content_type(dep.output_content_type)
            )
            output = dep.output if done else None
            if not evaluate(condition, output):
                detail = (
                    f"condition on {condition.task_id}:{condition.pointer} {condition.operator} was false"
                )
                self._skip(task, "condition", f"skipped: {detail}")
                return
        now = self._clock()
        if task.spec.requires_approval and task.rec.approval is None:
            expire = now + int(task.spec.approval_timeout_s * 1e9) if task.spec.approval_timeout_s else 0
            task.rec.approval = Approval(request_ns=now, expire_ns=expire)
            self._set_state(task, "AWAITING_APPROVAL", "waiting for approval")
            self._event("TASK_AWAITING_APPROVAL", task)
            if expire:
                self._at(expire, "approval", task, task.token)
            return
        self._schedule(task, now)

    def _schedule(self, task: _Task, now: int) -> None:
        self._set_state(task, "SCHEDULED", "")
        task.rec.schedule_ns = now
        if not task.rec.first_schedule_ns:
            task.rec.first_schedule_ns = now
            if task.spec.schedule_to_close_s:
                self._at(now + int(task.spec.schedule_to_close_s * 1e9), "s2close", task, 0)
        self._event(
            "TASK_SCHEDULED",
            task,
            attempt=task.rec.attempt + 1,  # the attempt it is queued for, as TASK_RETRY_SCHEDULED says
            attributes={"are.pool": task.spec.pool, "are.priority": task.spec.priority},
        )
        spec = task.spec
        # The cache first: an answer there needs no worker, so no route
        # either (and a failed routing would use up an attempt for nothing).
        if spec.cache_key is not None and self.cache_lookup is not None and not task.rec.attempt:
            self._look_up(task, spec.cache_key)
        elif not self._route_and_enqueue(task, now):
            return
        if spec.schedule_to_start_s:
            self._at(now + int(spec.schedule_to_start_s * 1e9), "s2s", task, task.token)

    def _route_and_enqueue(self, task: _Task, now: int) -> bool:
        """Routes an intent (if the task has one) and queues the task; False when routing failed."""
        if task.spec.intent and not self._routed(task):
            return False
        self._enqueue(task, now)
        return True

    def _routed(self, task: _Task) -> bool:
        """Routes an intent to a capability; False when the attempt failed with ROUTING.

        A task routed before (a retry, say) whose intent now clears no
        threshold keeps its capability and waits for it: the router knows a
        worker's card only while the worker is connected, so the class that
        just lost its worker (the one whose attempt failed) is not gone for
        good; a re-route moves the task if another class is served.
        """
        rec = task.rec
        try:
            if self.route is None:
                raise RoutingError("no router is configured to route task intents")  # noqa: TRY301
            capability, attributes = self.route(task.spec, rec)
        except RoutingError as error:
            if rec.capability and self.route is not None:
                task.cap = rec.capability
                kept = {
                    "are.intent": task.spec.intent[:256],
                    "are.route.capability": rec.capability,
                    "are.route.kept": True,
                    "are.route.reason": f"kept the previous capability: {error}"[:256],
                }
                self._event("TASK_ROUTED", task, attributes=kept)
                return True
            if rec.next_attempt_ns:  # the retry its last failure scheduled: counted as if dispatched
                rec.next_attempt_ns = 0
                rec.retries += 1
                task.wf.rec.retries += 1
            rec.attempt += 1  # a routing failure uses up an attempt, so the policy bounds it
            task.wf.rec.task_attempts += 1
            failure = Failure(message=str(error)[:1024], type="NO_ROUTE_ABOVE_THRESHOLD", kind="ROUTING")
            self._attempt_failed(task, failure, None, 0.0)
            return False
        task.cap = capability
        rec.capability = capability
        self._event("TASK_ROUTED", task, attributes={"are.intent": task.spec.intent[:256], **attributes})
        return True

    # ---------------------------------------------------------------- re-routing

    def served_changed(self, capabilities: Iterable[str]) -> None:
        """Capabilities gained their first or lost their last worker: re-route the intent tasks waiting.

        An intent is routed when its task is scheduled, preferring a class a
        worker serves then; the task then waits in that capability's queue
        (or its pool's backlog). When a capability loses its last worker,
        the intent tasks waiting on it are routed again; when one gains its
        first, so are those waiting on any capability nobody serves. A task
        moves only when the new pick differs and is served now (a move to
        another unserved queue would gain nothing; a later change looks
        again); it keeps its priority and its place behind the tasks of its
        workflow already there, its record is updated in the same commit as
        a TASK_ROUTED event with ``are.route.rerouted`` and
        ``are.route.previous_capability``. Nothing above the threshold, or a
        failing router, leaves it where it is: its attempt is not charged
        and it waits for a worker or its own schedule-to-start timeout. Tasks
        that named a capability, and attempts handed to a worker, are never
        re-routed. Only tasks waiting on a capability unserved for
        :attr:`reroute_grace_s` (counted from the start for one not served
        since) move: a class that comes back within it keeps its tasks; a
        timer looks again when the grace ends.

        Served is :meth:`serves`: a stream worker (the router tells the
        sidecar, which calls this) or unary polls lately. The engine calls
        this itself for polls: when a poll arrives for a capability nothing
        served, and when a poll-served class's polls have stopped for the
        poll window (its grace then counted from its last poll's end).

        The work runs in the background, a bounded slice per loop turn
        (``_REROUTE_ENTRIES_PER_TURN`` entries looked at,
        ``_REROUTE_ROUTES_PER_TURN`` route calls), and routes each intent
        text once per pass: many queued tasks usually share one intent.
        """
        if self.route is None or self.capability_served is None or self._stopped:
            return
        served, now = self.serves, self._clock()
        capabilities = set(capabilities)
        for capability in capabilities:
            if served(capability):
                self._unserved_since.pop(capability, None)
            else:
                self._note_unserved(capability, now)
        self._reroute_soon(capabilities)

    def _note_unserved(self, cap: str, since: int) -> None:
        """Records that ``cap`` is served by nobody since ``since`` (an earlier time recorded stays).

        Once the grace has passed since then the entry tells :meth:`_settled`
        nothing that its absence does not (a capability with none counts from
        the start, earlier still), so the "unserved" timer drops it: the map
        holds only the capabilities that lost their last worker within a grace.
        """
        unserved = self._unserved_since
        if cap in unserved:
            return
        unserved[cap] = since
        if not self._unserved_timer:
            self._unserved_timer = True
            self._at(since + int(self.reroute_grace_s * 1e9), "unserved", None, 0)

    def _unserved_expired(self, now: int) -> None:
        """The "unserved" timer: drops the entries past the grace, oldest first; armed again for the next.

        Entries are in the order recorded, which is nearly the order of
        their times (a poll-served class's is its last poll's end): an older
        one behind a younger goes when the younger does, within a grace.
        """
        self._unserved_timer = False
        unserved = self._unserved_since
        grace = int(self.reroute_grace_s * 1e9)
        while unserved:
            cap, since = next(iter(unserved.items()))
            if now - since < grace:
                self._unserved_timer = True
                self._at(since + grace, "unserved", None, 0)
                return
            del unserved[cap]

    def serves(self, capability: str) -> bool:
        """Whether ``capability`` is served now, as re-routing and the pick of an intent count it.

        Served by a standing worker taking work (the :attr:`capability_served`
        hook: the router's view of the stream workers), or by unary long polls
        lately: a poll for it is waiting now, an attempt is held by a poll
        worker that polled for it and showed life within the poll window
        (the assignment or a heartbeat: a poller busy on a long task, whose
        SDK heartbeats every second or so, comes back; one that died holding
        it does not, though its lease runs on), or the last of those ended
        within the poll window (:attr:`reroute_grace_s`, at least
        ``_POLL_GAP_S``: the time between a poller's answer and its next
        poll). A poll-served class thus keeps its tasks as long as a stream
        class would, counted from its last poll.
        """
        if self._poll_served(capability):
            return True
        hook = self.capability_served
        return hook is not None and hook(capability)

    def _poll_window_ns(self) -> int:
        """How long a capability counts as poll-served after its last poll activity ended."""
        return int(max(self.reroute_grace_s, _POLL_GAP_S) * 1e9)

    def _poll_served(self, cap: str) -> bool:
        if cap in self._poll_waiting:
            return True
        last = self._poll_ended.get(cap)
        if cap in self._poll_held:
            contact = self._poll_contact.get(cap, 0)
            last = contact if last is None else max(last, contact)
        return last is not None and self._clock() - last < self._poll_window_ns()

    def _poll_contacted(self, worker: WorkerHandle) -> None:
        """A poll worker holding an attempt showed life (a heartbeat): its classes are served again.

        A class whose held attempts had gone silent for the poll window counted
        as served by nobody; a heartbeat flips it back, as a fresh poll does
        (see :meth:`_poll_arrived`), and re-routes once.
        """
        now = self._clock()
        window = self._poll_window_ns()
        contact = self._poll_contact
        hook = self.capability_served if self.route is not None else None
        gained: list[str] = []
        for cap in worker.capabilities:
            if cap not in self._poll_held:
                continue
            stale = not self._poll_served(cap)
            contact[cap] = now
            if stale and hook is not None and not hook(cap):
                gained.append(cap)
            self._poll_watch(cap, now, window)
        if gained:
            self.served_changed(gained)

    def _poll_arrived(self, capabilities: Sequence[str]) -> None:
        """A long poll waits for ``capabilities``; a capability it makes served re-routes (once).

        Only the flip counts: a capability served already (another poll
        waiting, an attempt held by a poller showing life, a poll ended
        within the window, or a stream worker) is a dictionary lookup or two,
        not a re-route pass.
        """
        waiting = self._poll_waiting
        hook = self.capability_served if self.route is not None else None
        fresh: list[str] = []
        for cap in capabilities:  # every count first: the caller uncounts them all, whatever follows
            if not self._poll_served(cap):
                fresh.append(cap)
            waiting[cap] = waiting.get(cap, 0) + 1
        gained = [cap for cap in fresh if hook is not None and not hook(cap)]
        if gained:  # served now by this poll alone: tasks waiting on unserved classes may come
            self.served_changed(gained)

    def _poll_left(self, capabilities: Sequence[str]) -> None:
        """A long poll for ``capabilities`` ended (answered, timed out or cancelled)."""
        waiting = self._poll_waiting
        now = self._clock()
        for cap in capabilities:
            n = waiting.pop(cap, 1) - 1
            if n > 0:
                waiting[cap] = n
            self._poll_touch(cap, now)

    def _poll_took(self, worker: WorkerHandle) -> None:
        """A poll worker was handed an attempt: it serves its capabilities while it shows life.

        Until the attempt ends, as long as its heartbeats (or the assignment)
        are no older than the poll window: a timer looks again then.
        """
        held = self._poll_held
        now = self._clock()
        window = self._poll_window_ns()
        for cap in worker.capabilities:
            held[cap] = held.get(cap, 0) + 1
            self._poll_contact[cap] = now
            self._poll_watch(cap, now, window)

    def _poll_watch(self, cap: str, now: int, window: int) -> None:
        """Arms ``cap``'s "polls" timer a window from now, unless armed (it re-arms itself while needed)."""
        if cap not in self._poll_checks:
            self._poll_checks.add(cap)
            self._at(now + window, "polls", cap, now)

    def _poll_released(self, worker: WorkerHandle) -> None:
        """An attempt a poll worker held ended (reported, timed out, lost or handed back)."""
        held = self._poll_held
        now = self._clock()
        for cap in worker.capabilities:
            n = held.pop(cap, 1) - 1
            if n > 0:
                held[cap] = n
            else:
                self._poll_contact.pop(cap, None)
            self._poll_touch(cap, now)

    def _poll_touch(self, cap: str, now: int) -> None:
        """Records that poll activity for ``cap`` ended now; prunes ends older than the window.

        When none is left (no poll waiting, no attempt held), a timer looks
        again once the window has passed: the class may have gone for good
        (see :meth:`_polls_quiet`; one timer per capability at a time).
        """
        ended = self._poll_ended
        ended[cap] = now
        ended.move_to_end(cap)
        window = self._poll_window_ns()
        while ended:
            oldest, when = next(iter(ended.items()))
            if now - when < window:
                break
            del ended[oldest]
        if cap not in self._poll_waiting and cap not in self._poll_held:
            self._poll_watch(cap, now, window)

    def _polls_quiet(self, cap: str, ended: int, now: int) -> None:
        """The "polls" timer: ``cap``'s polls may have stopped a window ago (``ended``: the last known).

        Still poll-served: looks again when the window of the latest activity
        (an end, or a held attempt's heartbeat) passes (a poll waiting arms
        the timer again when it ends). Served by nobody: it lost its last
        poller when its last poll ended, or every poller holding an attempt
        for it went silent (dead, most likely: the SDKs heartbeat every second
        or so; a heartbeat makes it served again), so the intent tasks waiting
        on it (in its queues or a pool's backlog) are routed again, as when a
        class loses its last stream worker (its grace counted from that
        activity, so over), and its end is forgotten.
        """
        self._poll_checks.discard(cap)
        if cap in self._poll_waiting:
            return
        last = self._poll_ended.get(cap, ended)
        held = cap in self._poll_held
        if held:
            last = max(last, self._poll_contact.get(cap, 0))
        window = self._poll_window_ns()
        if now - last < window:
            self._poll_checks.add(cap)
            self._at(last + window, "polls", cap, last)
            return
        if not held:
            self._poll_ended.pop(cap, None)  # past the window: as if never polled (see _poll_served)
        if self.route is None or self.capability_served is None or self.serves(cap):
            return
        self._note_unserved(cap, last)
        # Intent tasks may wait on it in its queues, or in a pool's backlog.
        if cap in self._intent_caps or any(pool.backlogged for pool in self._pools.values()):
            self._reroute_soon({cap})

    def _reroute_soon(self, capabilities: set[str]) -> None:
        if self._stopped:
            return
        self._reroute_pending.update(capabilities)
        if self._reroute_job is None and self._reroute_pending:
            self._reroute_job = asyncio.ensure_future(self._reroute())

    def _settled(self, cap: str, now: int) -> bool:
        """Whether ``cap`` has gone unserved for the grace period; if not, a re-check is armed for then.

        A capability never served since the start counts from the start.
        """
        grace = int(self.reroute_grace_s * 1e9)
        if grace <= 0:
            return True
        since = self._unserved_since.get(cap, self._started_ns)
        if now - since >= grace:
            return True
        due = since + grace
        if self._rechecks.get(cap, due + 1) > due:  # none armed, or one for later (the grace shrank)
            self._rechecks[cap] = due
            self._at(due, "reroute", cap, 0)
        return False

    async def _reroute(self) -> None:
        """Runs re-route passes until no served-state change is left to look at.

        A pass that fails leaves tasks where they are and is tried again a
        second later (not at once: a failure that repeats must not spin),
        then 2, 4... up to a minute later while it keeps failing; the log
        has its traceback once per run of failures.
        """
        changed: set[str] = set()
        try:
            while self._reroute_pending and not self._stopped:
                changed, self._reroute_pending = self._reroute_pending, set()
                await self._reroute_pass(changed)
        except Exception:  # noqa: BLE001 - a failing pass leaves tasks where they are, nothing worse
            self._reroute_failures += 1
            failures = self._reroute_failures
            delay = backoff(failures, _REROUTE_RETRY_S, _REROUTE_RETRY_MAX_S)
            if failures == 1:
                _log.exception("re-routing queued intent tasks failed; trying again with backoff")
            else:
                _log.warning(f"re-routing queued intent tasks failed again ({failures} in a row)")
            if not self._stopped:
                asyncio.get_running_loop().call_later(delay, self._reroute_soon, changed)
        else:
            if self._reroute_failures:
                _log.info(f"re-routing queued intent tasks works again ({self._reroute_failures} failures)")
            self._reroute_failures = 0
        finally:
            self._reroute_job = None

    async def _reroute_pass(self, changed: set[str]) -> None:
        """One pass over the intent tasks waiting on capabilities nobody serves now."""
        served, route = self.serves, self.route
        assert route is not None
        # A gain may serve what waits on any unserved capability (None); a loss, what waited on it.
        caps = None if any(served(c) for c in changed) else {c for c in changed if not served(c)}
        if caps is not None and not caps:
            return
        picks: dict[str, tuple[str, dict[str, Any]] | None] = {}  # intent text -> the router's pick
        seen: set[_Task] = set()
        entries = routes = 0
        for cap, task in self._waiting_on(caps, served):
            entries += 1
            if entries >= _REROUTE_ENTRIES_PER_TURN or routes >= _REROUTE_ROUTES_PER_TURN:
                self._after_op()  # dispatches what moved to a served capability
                await asyncio.sleep(0)
                if self._stopped:
                    return
                entries = routes = 0
            # Checked now: the loop ran since this entry was collected.
            if task in seen or not task.spec.intent or task.cap != cap or task.rec.state != "SCHEDULED":
                continue
            if not (task.in_queue or task.in_backlog) or task.wf.rec.state != "RUNNING" or served(cap):
                continue
            seen.add(task)
            intent = task.spec.intent
            if intent not in picks:
                routes += 1
                picks[intent] = self._pick(task, route)
            pick = picks[intent]
            if pick is not None and pick[0] != cap and served(pick[0]):
                self._move(task, pick[0], pick[1])
        self._after_op()

    def _waiting_on(self, caps: set[str] | None, served: ServedHook) -> Iterator[tuple[str, _Task]]:
        """(capability, task) for each queue or backlog entry that may wait on ``caps`` (None: any unserved).

        Each line is copied as it is reached, so the caller may yield the
        loop between entries; entries may be stale (the caller checks).
        """
        now = self._clock()
        considered = self._intent_caps if caps is None else caps & self._intent_caps
        waiting = [c for c in considered if c in self._queues and not served(c)]
        for cap in [c for c in waiting if any(q.size for q in self._queues.get(c, {}).values())]:
            if not self._settled(cap, now):
                continue
            for queue in list(self._queues.get(cap, {}).values()):
                for task in _entries(queue):
                    yield cap, task
                queue.compact()  # what moved out left stale entries here, which no worker pops
        for pool in list(self._pools.values()):
            if pool.backlogged:
                for task in _entries(pool.backlog):
                    if not task.in_backlog or (caps is not None and task.cap not in caps):
                        continue
                    if self._settled(task.cap, now):
                        yield task.cap, task

    def _pick(self, task: _Task, route: RouteHook) -> tuple[str, dict[str, Any]] | None:
        """The router's pick for a waiting task's intent; None when nothing clears the threshold."""
        try:
            return route(task.spec, task.rec)
        except RoutingError:
            return None
        except Exception:  # noqa: BLE001 - a failing router leaves the task where it is
            _log.warning("re-routing an intent failed", exc_info=True)
            return None

    def _move(self, task: _Task, cap: str, attributes: dict[str, Any]) -> None:
        """Re-routes a waiting task to ``cap``: its record and a TASK_ROUTED event in this turn's commit."""
        previous = task.cap
        if task.in_queue:  # the entry in the old queue goes stale; the pool's count is unchanged
            self._left_queue(task)
        task.cap = cap
        task.rec.capability = cap
        self._dirty(task)
        if task.in_queue:
            self._queue_push(task)
            self._pump_wanted = True
        # (A backlogged task keeps its place in the pool's backlog; it is promoted into its new queue.)
        self._event(
            "TASK_ROUTED",
            task,
            attributes={
                "are.intent": task.spec.intent[:256],
                **attributes,
                "are.route.rerouted": True,
                "are.route.previous_capability": previous,
            },
        )

    def _look_up(self, task: _Task, key: CacheKey) -> None:
        """Asks the cache (off the loop's turn); a hit completes the task, a miss enqueues it."""
        assert self.cache_lookup is not None
        token = task.token
        lookup = self.cache_lookup
        # Before any attempt: the workflow and the task, as the TASK_CACHE_* event that follows.
        origin = TaskOrigin(workflow_id=task.wf.rec.workflow_id, task_id=task.rec.task_id)

        async def run() -> None:
            try:
                hit = await lookup(key, origin)
            except Exception:  # noqa: BLE001 - a failing cache is a miss, never a stuck task
                _log.warning("cache lookup failed; dispatching", exc_info=True)
                hit = None
            self._looked_up(task, token, hit)

        job = asyncio.ensure_future(run())
        self._lookups.add(job)
        job.add_done_callback(self._lookups.discard)

    def _looked_up(self, task: _Task, token: int, hit: tuple[bytes, str, dict[str, Any]] | None) -> None:
        rec = task.rec
        if self._stopped:
            return  # answered after a stop: a restarted engine owns the task (and looks it up again)
        if task.token != token or rec.state != "SCHEDULED" or task.wf.rec.state != "RUNNING":
            return
        now = self._clock()
        if hit is None:
            namespace = task.spec.cache_key.namespace if task.spec.cache_key else ""
            self._event("TASK_CACHE_MISS", task, attributes={"are.cache.namespace": namespace})
            self._route_and_enqueue(task, now)
        else:
            output, content_type, attributes = hit
            self._set_output(task, output)
            rec.output_content_type = content_type
            rec.output_blob_sha256 = str(attributes.get(CACHE_BLOB_SHA256, ""))
            rec.output_blob_size = int(attributes.get(CACHE_BLOB_SIZE, 0))
            if rec.output_blob_sha256 and self.stage_blob_reference is not None:
                self.stage_blob_reference(self._t().batch, task.wf.rec.workflow_id, rec.output_blob_sha256)
            rec.close_ns = now
            wf_rec = task.wf.rec
            wf_rec.tasks_completed += 1
            # What the cached answer cost when it was first made is what this hit saved.
            rec.cache_entry_id = str(attributes.get(CACHE_ENTRY_ID, ""))
            rec.cache_saved_tokens = saturating_add(int(attributes.get(CACHE_SAVED_TOKENS, 0)), 0)
            rec.cache_saved_cost_micro_usd = saturating_add(int(attributes.get(CACHE_SAVED_COST, 0)), 0)
            wf_rec.cache_hits += 1
            wf_rec.cache_saved_tokens = saturating_add(wf_rec.cache_saved_tokens, rec.cache_saved_tokens)
            wf_rec.cache_saved_cost_micro_usd = saturating_add(
                wf_rec.cache_saved_cost_micro_usd, rec.cache_saved_cost_micro_usd
            )
            saved = EventUsage(
                input_tokens=saturating_add(int(attributes.get(CACHE_SAVED_INPUT_TOKENS, 0)), 0),
                output_tokens=saturating_add(int(attributes.get(CACHE_SAVED_OUTPUT_TOKENS, 0)), 0),
                cost_micro_usd=rec.cache_saved_cost_micro_usd,
                llm_calls=1 if rec.cache_saved_tokens or rec.cache_saved_cost_micro_usd else 0,
            )
            self._event("TASK_CACHE_HIT", task, task_state="COMPLETED", attributes=attributes, usage=saved)
            self._set_state(task, "COMPLETED", "answered from the cache")
            self._terminal(task)
        self._after_op()

    def _enqueue(self, task: _Task, now: int) -> None:
        """A task became ready: into its pool's queue, or its workflow's backlog when the queue is full.

        Admission (submit, spawn) is checked against the queue beforehand;
        tasks released later by progress are never refused, they wait in
        the backlog and move up as the queue drains (:meth:`_promote`).
        """
        task.queued_ns = now
        pool = self._pools[task.spec.pool]
        if pool.backlogged or pool.queued >= pool.limits.queue_limit:
            task.in_backlog = True
            pool.backlog.push(task)
            pool.backlogged += 1
            return
        self._push_queue(task, pool)

    def _queue_of(self, cap: str, pool_name: str) -> _Queue:
        """The queue of (capability, pool), made on first use."""
        by_pool = self._queues.get(cap)
        if by_pool is None:
            by_pool = self._queues[cap] = {}
        queue = by_pool.get(pool_name)
        if queue is None:
            self._served_seq += 1  # it joins the rotation behind the queues already in it
            queue = by_pool[pool_name] = _Queue(cap, pool_name, self._served_seq)
        return queue

    def _push_queue(self, task: _Task, pool: _Pool) -> None:
        task.in_queue = True
        self._queue_push(task)
        pool.queued += 1
        self._pump_wanted = True

    def _queue_push(self, task: _Task) -> None:
        """Puts a task that now waits (``in_queue``) into the queue of its capability and pool."""
        queue = self._queue_of(task.cap, task.spec.pool)
        queue.push(task)
        queue.waiting += 1
        if queue.waiting == 1 and task.cap in self._idle:
            self._ready[queue] = None
        if task.spec.intent:
            self._intent_caps.add(task.cap)

    def _left_queue(self, task: _Task) -> None:
        """``task`` waits in its queue no more (dispatched, dequeued, or about to be re-routed).

        A queue nobody waits in then holds only stale entries: it goes when
        no task waits in any of its capability's queues and no worker waits
        idle for the capability (made again on the next push, see
        :meth:`_queue_of`; an idle worker's capability keeps its queues, so
        a steady class does not remake them at each task), and is emptied
        otherwise. So a capability named once costs nothing once its tasks
        have left. Constant time (the queues of one capability are one per
        pool at most).
        """
        cap = task.cap
        queue = self._queues[cap][task.spec.pool]
        queue.waiting -= 1
        if queue.waiting:
            _compact_if_stale(queue, queue.waiting)
            return
        self._ready.pop(queue, None)
        if not self._drop_queues(cap) and queue.size:
            queue.clear()

    def _drop_queues(self, cap: str) -> bool:
        """Forgets ``cap``'s queues if no task waits in them and no worker waits idle for it."""
        by_pool = self._queues.get(cap)
        if by_pool is None or cap in self._idle or any(q.waiting for q in by_pool.values()):
            return False
        del self._queues[cap]
        self._intent_caps.discard(cap)
        return True

    def _promote(self, pool: _Pool) -> None:
        """Moves backlogged tasks into the pool's queue while it has room (fair across workflows)."""
        limit = pool.limits.queue_limit
        while pool.backlogged and pool.queued < limit:
            task = pool.backlog.pop()
            if task is None:  # only stale entries were left (cannot happen while backlogged > 0)
                pool.backlogged = 0
                break
            task.in_backlog = False
            pool.backlogged -= 1
            self._push_queue(task, pool)
        if not pool.backlogged and pool.backlog.size:
            pool.backlog.clear()  # only stale entries are left, holding their tasks

    def _dequeue(self, task: _Task) -> None:
        if task.in_queue:
            task.in_queue = False
            pool = self._pools[task.spec.pool]
            pool.queued -= 1
            # It may have been the head that held its queue back (waiting for its pool's LLM
            # tokens): what waited behind it may go now, not at the bucket's refill.
            self._pump_wanted = True
            if pool.backlogged:
                self._promote(pool)
            self._left_queue(task)  # after the promotion: a queue it refills stays
        elif task.in_backlog:
            task.in_backlog = False  # its entry in the backlog goes stale
            pool = self._pools[task.spec.pool]
            pool.backlogged -= 1
            if not pool.backlogged:
                pool.backlog.clear()  # only stale entries are left, holding their tasks
            else:
                _compact_if_stale(pool.backlog, pool.backlogged)

    def _skip(self, task: _Task, why: str, reason: str) -> None:
        self._set_state(task, "SKIPPED", reason)
        task.rec.close_ns = self._clock()
        self._event("TASK_SKIPPED", task, attributes={"are.skip.reason": why, "are.skip.detail": reason})
        self._terminal(task)

    def _set_state(self, task: _Task, state: str, reason: str | None = None) -> None:
        rec = task.rec
        counts = task.wf.rec.counts
        counts[rec.state] -= 1
        counts[state] = counts.get(state, 0) + 1
        if state in _FAIL_STATES and rec.state not in _FAIL_STATES:
            task.wf.rec.tasks_failed += 1  # failed, rejected or cancelled (common.proto)
        rec.state = state
        if reason is not None:
            rec.state_reason = reason
        task.token += 1
        txn = self._txn or self._t()
        txn.tasks.add(task)
        txn.workflows.add(task.wf)

    def _terminal(self, task: _Task) -> None:
        """A task reached a terminal state: queue its dependents for a decision."""
        self._resolved.append(task)
        w = task.wf
        w.open -= 1
        if not w.open:
            self._closing.append(w)

    def _settle(self) -> None:
        """Propagates every finished task to its dependents (iteratively), then closes workflows."""
        resolved = self._resolved
        while resolved:
            task = resolved.popleft()
            state = task.rec.state
            for dependent in task.dependents:
                if dependent.rec.state != "PENDING":
                    continue
                dependent.unresolved -= 1
                self._tally(dependent, state)
                self._decide(dependent)
        while self._closing:
            w = self._closing.pop()
            if w.rec.state in OPEN_WORKFLOW_STATES and not w.open:
                self._close_done(w)

    def _close_done(self, w: _Workflow) -> None:
        if w.rec.state == "CANCELLING":
            self._close(w, "CANCELLED", w.rec.failure)
            return
        failed = [t for t in w.order if t.rec.state in _FAIL_STATES]
        unhandled = [
            t
            for t in failed
            if not any(d.spec.trigger_rule in _HANDLING_RULES and _ran(d.rec) for d in t.dependents)
        ]
        if unhandled:
            first = unhandled[0]
            cause = first.rec.failure.message if first.rec.failure else first.rec.state_reason
            failure = Failure(
                message=f"task {first.rec.task_id!r} ended {first.rec.state}: {cause}",
                type="TASK_FAILED",
                kind=first.rec.failure.kind if first.rec.failure else "APPLICATION",
            )
            self._close(w, "FAILED", failure)
        else:
            self._close(w, "COMPLETED", None)

    def _close(self, w: _Workflow, state: str, failure: Failure | None) -> None:
        rec = w.rec
        rec.state = state
        rec.failure = failure
        rec.close_ns = self._clock()
        self._dirty_wf(w)
        usage = _event_usage(rec.usage)
        failure_info = _failure_info(failure) if failure else None
        self._event(f"WORKFLOW_{state}", w=w, usage=usage, failure=failure_info)
        if self._open.pop(rec.workflow_id, None) is not None:
            self._open_tasks -= len(w.order)
            self._open_bytes -= w.payload_bytes
        self._keep_recent(w)

    def _keep_recent(self, w: _Workflow) -> None:
        """Keeps a closed workflow among the recent ones, dropping the oldest past their bounds."""
        recent = self._recent
        wf_id = w.rec.workflow_id
        if recent.get(wf_id) is w:
            return
        previous = recent.pop(wf_id, None)
        if previous is not None:
            self._forget_recent(previous)
        recent[wf_id] = w
        self._recent_tasks += len(w.order)
        w.recent_bytes = w.payload_bytes
        self._recent_bytes += w.recent_bytes
        while len(recent) > 1 and (
            len(recent) > _RECENT_CLOSED
            or self._recent_tasks > _RECENT_CLOSED_TASKS
            or self._recent_bytes > _RECENT_CLOSED_BYTES
        ):
            _, oldest = recent.popitem(last=False)
            self._forget_recent(oldest)

    def _forget_recent(self, w: _Workflow) -> None:
        """Takes a workflow just dropped from the recently closed out of their counts.

        Its timers (its deadline, its tasks' timeouts) stay in the heap until
        they fire or a sweep drops them (lazy deletion), and they hold the
        workflow: the sweep came only once the heap doubled, so up to 16,384
        such timers kept thousands of closed workflows, outputs and all, past
        the recent bounds. Now the heap is swept too once as many workflows
        (or tasks, or payload bytes) as those bounds hold were dropped since
        the last sweep: what closed workflows hold is at most twice the
        bounds, at a sweep of the heap per 1,024 closed workflows at most.
        """
        self._recent_tasks -= len(w.order)
        self._recent_bytes -= w.recent_bytes
        dropped = self._dropped_recent
        dropped[0] += 1
        dropped[1] += len(w.order)
        dropped[2] += w.recent_bytes
        if (
            dropped[0] >= _RECENT_CLOSED
            or dropped[1] >= _RECENT_CLOSED_TASKS
            or dropped[2] >= _RECENT_CLOSED_BYTES
        ):
            self._compact()

    # ------------------------------------------------------------------ dispatch

    def _pump(self) -> None:
        """Assigns queued tasks to idle workers, within pool limits.

        Runs again while a pass made more work ready (a dispatch promoted
        backlogged tasks into a queue already visited), so nothing waits for
        an unrelated event.
        """
        while True:
            self._pump_wanted = False
            if self._stopped:
                return
            self._pump_pass()
            if not self._pump_wanted:
                return

    def _pump_pass(self) -> None:
        """Dispatches from the ready queues (:attr:`_ready`) until each is empty, blocked or unserved.

        A worker's free slot goes to the most urgent head among the queues of
        its capabilities, and among heads of one priority to the queue served
        least recently (``_Queue.served``): one capability's backlog does not
        starve another that the same workers serve, as one workflow's does not
        starve another's inside a queue. A queue whose head must wait for its
        pool (concurrency, requests or LLM tokens) is done for this pass, as
        before. Capabilities with nothing queued or no idle worker are never
        visited.
        """
        ready = self._ready
        if not ready:
            return
        now = self._clock()
        if len(ready) == 1:
            self._pump_queue(next(iter(ready)), now)
        if len(ready) > 1:  # (also when a dispatch above made another queue ready: it goes in order)
            self._pump_ordered(now)

    def _pump_ordered(self, now: int) -> None:
        """The pass over several ready queues: heads by (priority, ``served``), a dispatch at a time."""
        ready = self._ready
        heap: list[tuple[int, int, int, _Queue]] = []
        for queue in ready:
            task = queue.head()
            if task is not None:
                heap.append((task.spec.priority, queue.served, len(heap), queue))
        heapq.heapify(heap)
        n = len(heap)  # ties after a re-push keep the order of the pushes
        while heap:
            priority, _, _, queue = heap[0]
            task = queue.head() if queue in ready else None
            if task is None:
                heapq.heappop(heap)
                continue
            if task.spec.priority != priority:  # what a dispatch released or cancelled changed its head
                heapq.heapreplace(heap, (task.spec.priority, queue.served, n, queue))
                n += 1
                continue
            pool = self._pools[queue.pool]
            wait = pool.wait_ns(now, task.spec.estimated_tokens)
            if wait:  # the head waits (keeping its place), and what is behind it
                heapq.heappop(heap)
                if wait > 0:
                    self._pump_at(now + wait)
                continue
            queue.pop()  # the head, above
            self._served_seq += 1
            queue.served = self._served_seq
            self._dispatch(task, self._idle_worker(queue.cap), pool, now)
            task = queue.head() if queue in ready else None
            if task is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (task.spec.priority, queue.served, n, queue))
                n += 1

    def _pump_queue(self, queue: _Queue, now: int) -> None:
        """The pass while one queue is ready (the common case): no order across queues to keep."""
        ready = self._ready
        pool = self._pools[queue.pool]
        cap = queue.cap
        served = False
        while len(ready) == 1 and queue in ready:
            task = queue.pop()
            if task is None:  # cannot happen: a ready queue has a task waiting
                break
            wait = pool.wait_ns(now, task.spec.estimated_tokens)
            if wait:
                queue.push_front(task)  # not yet: it keeps its place
                if wait > 0:
                    self._pump_at(now + wait)
                break
            served = True
            self._dispatch(task, self._idle_worker(cap), pool, now)
        if served:
            self._served_seq += 1
            queue.served = self._served_seq

    def _idle_worker(self, cap: str) -> WorkerHandle:
        """The idle worker of ``cap`` that waited longest, moved last: tasks are spread across replicas.

        Workers join the end when they connect or free a slot after being
        full, and move there when they take a task, so a replica is not
        filled before the next gets any (a rotation: constant time).
        """
        idle = self._idle[cap]
        worker = next(iter(idle.values()))
        if len(idle) > 1:
            del idle[worker.worker_id]
            idle[worker.worker_id] = worker
        return worker

    def _dispatch(self, task: _Task, worker: WorkerHandle, pool: _Pool, now: int) -> None:
        w = task.wf
        rec = task.rec
        task.in_queue = False
        pool.queued -= 1
        if pool.backlogged:
            self._promote(pool)
        self._left_queue(task)  # after the promotion: a queue it refills stays, and is popped on
        budget = w.rec.budget
        max_attempts = budget.max_attempts or 10 * budget.max_tasks
        charged = w.rec.task_attempts - w.rec.uncharged_attempts
        if charged >= max_attempts and w.rec.state == "RUNNING":
            # The attempt would pass the budget: it never reaches a worker (an agent would have
            # started its LLM calls). Attempts lost through no fault of their worker (a sidecar
            # restart, a poll answer that did not arrive) are not counted against it.
            self._exceed(w, "max_attempts", max_attempts, charged + 1)
            return
        pool.running += 1
        pool.dispatched_total += 1
        pool.charge(now, task.spec.estimated_tokens)
        if rec.next_attempt_ns:
            # The retry its last failure scheduled. Counted when it starts, as task_attempts are:
            # one cancelled in its backoff never was; an attempt lost through no fault of its
            # worker (a restart) is run again, and that is no further retry.
            rec.next_attempt_ns = 0
            rec.retries += 1
            w.rec.retries += 1
        rec.attempt += 1
        rec.worker_id = worker.worker_id
        rec.capability = task.cap
        rec.start_ns = now
        rec.heartbeat_ns = now
        rec.span_id = f"{self._ids.getrandbits(64) or 1:016x}"  # W3C span id: 8 random bytes, not all zero
        w.rec.task_attempts += 1
        self._set_state(task, "RUNNING", "")
        worker.held[(w.rec.workflow_id, rec.task_id)] = task
        worker.free -= 1
        if worker.free <= 0:
            self._unidle(worker)
        if self.worker_changed is not None:
            self.worker_changed(worker)
        task.holder = worker
        if worker.one_answer:
            self._poll_took(worker)
        deadline = now + int(task.spec.start_to_close_s * 1e9)
        self._at(deadline, "s2c", task, task.token)
        if task.spec.heartbeat_s:
            self._at(now + int(task.spec.heartbeat_s * 1e9), "hb", task, task.token)
        self._event(
            "TASK_DISPATCHED",
            task,
            worker_id=worker.worker_id,
            span_id=rec.span_id,
            attributes={
                "are.capability": task.cap,
                "are.pool": task.spec.pool,
                "are.queue_wait_ms": max(0, (now - task.queued_ns) // 1_000_000),
            },
        )
        self._t().assign.setdefault(worker, []).append(self._assignment(task, deadline))

    def _assignment(self, task: _Task, deadline: int) -> Assignment:
        w = task.wf
        rec = task.rec
        spec = task.spec
        tasks = w.tasks
        exclude = spec.exclude_dependency_outputs
        deps = []
        for dep_id in task.deps:
            d = tasks[dep_id].rec
            deps.append(
                DependencyResult(
                    task_id=dep_id,
                    state=d.state,
                    output=None if exclude else d.output,
                    content_type=d.output_content_type,
                    failure=d.failure if d.state in _FAIL_STATES else None,
                    blob_sha256="" if exclude else d.output_blob_sha256,
                    blob_size=0 if exclude else d.output_blob_size,
                )
            )
        policy = spec.retry_policy or w.rec.default_retry_policy or _DEFAULT_POLICY
        return Assignment(
            workflow_id=w.rec.workflow_id,
            task_id=rec.task_id,
            attempt=rec.attempt,
            idempotency_key=f"{w.rec.workflow_id}/{rec.task_id}",
            capability=task.cap,
            input=spec.input,
            content_type=spec.content_type,
            dependencies=tuple(deps),
            deadline_ns=deadline,
            heartbeat_timeout_s=spec.heartbeat_s,
            traceparent=f"00-{w.rec.trace_id}-{rec.span_id}-01",
            tracestate=w.rec.tracestate,
            last_failure=rec.failure if rec.attempt > 1 else None,
            last_heartbeat_details=rec.heartbeat_details,
            last_heartbeat_content_type=rec.heartbeat_content_type,
            labels=dict(spec.labels),
            maximum_attempts=policy.maximum_attempts + rec.free_attempts,
            input_blob_sha256=spec.input_blob_sha256,
            input_blob_size=spec.input_blob_size,
        )

    def _release(self, task: _Task) -> None:
        """The running attempt ends: free the worker's slot and the pool's."""
        task.ended = (task.rec.attempt, self._clock(), task.rec.worker_id)
        self._release_pool(task)
        worker = task.holder
        task.holder = None
        if worker is not None:
            worker.held.pop((task.wf.rec.workflow_id, task.rec.task_id), None)
            if worker.one_answer:
                self._poll_released(worker)
            worker.free += 1
            if worker.connected and not worker.draining and worker.free == 1:
                self._reidle(worker)
            if self.worker_changed is not None and worker.connected:
                self.worker_changed(worker)
        self._pump_wanted = True

    def _release_pool(self, task: _Task) -> None:
        self._pools[task.spec.pool].running -= 1

    def _unidle(self, worker: WorkerHandle) -> None:
        """The worker takes no more work now; a capability left with no idle worker loses its empty queues."""
        for cap in worker.capabilities:
            idle = self._idle.get(cap)
            if idle is None or idle.pop(worker.worker_id, None) is None or idle:
                continue
            del self._idle[cap]
            by_pool = self._queues.get(cap)
            if by_pool is not None:
                for queue in by_pool.values():
                    self._ready.pop(queue, None)  # no worker to take from it now
                self._drop_queues(cap)  # kept for the idle worker only (see _left_queue)

    def _reidle(self, worker: WorkerHandle) -> None:
        """The worker takes work again: last in each of its capabilities' idle workers (see _idle_worker)."""
        for cap in worker.capabilities:
            idle = self._idle.get(cap)
            if idle is None:
                idle = self._idle[cap] = {}
                by_pool = self._queues.get(cap)
                if by_pool is not None:
                    for queue in by_pool.values():
                        if queue.waiting:
                            self._ready[queue] = None
            idle[worker.worker_id] = worker

    def _after_op(self) -> None:
        self._settle()
        if self._pump_wanted:
            self._pump()

    # ------------------------------------------------------------------ workers

    def connect_worker(
        self,
        name: str,
        capabilities: Sequence[str],
        max_concurrency: int,
        on_assign: Callable[[list[Assignment]], None],
        on_cancel: Callable[[list[Cancellation]], None],
        *,
        worker_id: str = "",
        announce: bool = False,
        one_answer: bool = False,
    ) -> WorkerHandle:
        """Registers a worker with free slots; assignments are delivered through ``on_assign``.

        ``announce`` records WORKER_CONNECTED (and WORKER_DISCONNECTED when it
        goes): for stream workers, not for each unary poll. ``one_answer``
        marks a long poll's worker (set before anything is dispatched to it).
        """
        worker = WorkerHandle(
            worker_id or _new_id(f"{name}-"),
            name,
            capabilities,
            max_concurrency,
            on_assign=on_assign,
            on_cancel=on_cancel,
        )
        worker.one_answer = one_answer
        self._workers[worker.worker_id] = worker
        if announce:
            worker.announced = True
            self._worker_event(
                "WORKER_CONNECTED",
                worker,
                {
                    "are.worker.name": name,
                    "are.worker.capabilities": ",".join(worker.capabilities),
                    "are.worker.max_concurrency": max_concurrency,
                },
            )
        if self.worker_changed is not None:
            self.worker_changed(worker)
        self._reidle(worker)
        self._pump()
        return worker

    def drain_worker(self, worker: WorkerHandle) -> None:
        """No more assignments for ``worker``; results of held tasks are still accepted."""
        worker.draining = True
        self._unidle(worker)
        if self.worker_changed is not None:
            self.worker_changed(worker)

    def disconnect_worker(self, worker: WorkerHandle, *, release_leases: bool = True) -> None:
        """The worker is gone: its held attempts fail with WORKER_LOST and are retried by policy."""
        if not worker.connected:
            return
        worker.connected = False
        self._unidle(worker)
        self._workers.pop(worker.worker_id, None)
        if self.worker_changed is not None:
            self.worker_changed(worker)
        if worker.announced:
            self._worker_event(
                "WORKER_DISCONNECTED",
                worker,
                {"are.worker.held_tasks": len(worker.held) if release_leases else 0},
            )
        if release_leases:
            for task in list(worker.held.values()):
                self._event("TASK_LEASE_EXPIRED", task, worker_id=worker.worker_id)
                failure = Failure(
                    message=f"worker {worker.worker_id} disconnected", type="WORKER_LOST", kind="WORKER_LOST"
                )
                self._attempt_failed(task, failure, None, 0.0)
            self._after_op()

    def forget_poller(self, worker: WorkerHandle) -> None:
        """A poll ended: the poller stops taking work; its leases live on until their timeouts."""
        worker.draining = True  # never idle again; assignments already made are still delivered
        self._unidle(worker)
        self._workers.pop(worker.worker_id, None)

    def _held(self, wf_id: str, task_id: str, attempt: int) -> _Task:
        ids = {"workflow_id": wf_id, "task_id": task_id, "attempt": attempt}
        w = self._open.get(wf_id)
        if w is None:
            closed = self._recent.get(wf_id)
            rec = (
                closed.tasks[task_id].rec
                if closed and task_id in closed.tasks
                else self._load_task(wf_id, task_id)
            )
            if rec.outcome_attempt == attempt and attempt:
                raise TaskAlreadyCompletedError(
                    f"attempt {attempt} of task {task_id!r} already reported its outcome", **ids
                )
            raise TaskNotHeldError(
                f"task {task_id!r} of workflow {wf_id!r} is not running: the workflow is closed", **ids
            )
        task = w.tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(
                f"workflow {wf_id!r} has no task {task_id!r}", workflow_id=wf_id, task_id=task_id
            )
        rec = task.rec
        if rec.state == "RUNNING" and rec.attempt == attempt:
            return task
        if rec.outcome_attempt == attempt and attempt:
            raise TaskAlreadyCompletedError(
                f"attempt {attempt} of task {task_id!r} already reported its outcome", **ids
            )
        raise TaskNotHeldError(
            f"attempt {attempt} of task {task_id!r} is not held (task is {rec.state}, attempt {rec.attempt})",
            **ids,
        )

    def complete(
        self,
        wf_id: str,
        task_id: str,
        attempt: int,
        *,
        output: bytes,
        content_type: str,
        usage: Usage | None,
        stage: Callable[[Batch, TaskSpec], None] | None = None,
        blob_sha256: str = "",
        blob_size: int = 0,
    ) -> asyncio.Future[None]:
        """Records a held attempt's success; returns an awaitable resolved once durable.

        A blob output is ``blob_sha256`` (hex) and ``blob_size`` with an empty
        ``output``; the caller has checked that the blob exists.

        ``stage(batch, spec)``, when given, adds the caller's own rows (the
        attempt's state write) to the completion's batch before anything
        changes; if it raises, nothing is recorded and the error propagates.

        Raises (synchronously, changing nothing): TaskNotHeldError,
        TaskAlreadyCompletedError, TaskNotFoundError, WorkflowNotFoundError.
        """
        task = self._held(wf_id, task_id, attempt)
        now = self._clock()  # before the stage: a state version it writes is not older than the outcome
        if stage is not None:
            stage(self._t().batch, task.spec)
        if blob_sha256 and self.stage_blob_reference is not None:
            self.stage_blob_reference(self._t().batch, wf_id, blob_sha256)
        rec = task.rec
        key = task.spec.cache_key
        if key is not None and not key.read_only and self.cache_store is not None:
            store = self.cache_store
            origin = TaskOrigin(
                workflow_id=task.wf.rec.workflow_id, task_id=rec.task_id, attempt=attempt, span_id=rec.span_id
            )
            self._t().after.append(
                lambda: store(key, output, content_type, usage, blob_sha256, blob_size, origin)
            )
        self._release(task)
        self._set_output(task, output)  # counted even past max_open_bytes: the work is done
        rec.output_content_type = content_type
        rec.output_blob_sha256 = blob_sha256
        rec.output_blob_size = blob_size
        rec.outcome_attempt = attempt
        rec.close_ns = now
        w = task.wf
        w.rec.tasks_completed += 1
        self._set_state(task, "COMPLETED", "")
        self._event(
            "TASK_COMPLETED",
            task,
            worker_id=rec.worker_id,
            usage=_event_usage(usage) if usage else None,
            duration_ns=now - rec.start_ns,
            span_id=rec.span_id,
            attributes={"are.output.size_bytes": blob_size if blob_sha256 else len(output)},
        )
        self._terminal(task)
        if usage is not None:
            self._charge(task, usage, now)
        self._after_op()
        return self._t().future

    def fail(
        self,
        wf_id: str,
        task_id: str,
        attempt: int,
        *,
        failure: Failure,
        usage: Usage | None,
        retry_after_s: float = 0.0,
    ) -> tuple[bool, int, str, asyncio.Future[None]]:
        """Records a held attempt's failure; returns (will_retry, next_attempt_ns, task state, durable)."""
        task = self._held(wf_id, task_id, attempt)
        task.rec.outcome_attempt = attempt
        retry = self._attempt_failed(task, failure, usage, retry_after_s)
        if usage is not None:
            self._charge(task, usage, self._clock())
            # The charge may pass a budget, which cancels the workflow, the retry just scheduled too:
            # the answer must not promise it.
            retry = retry and task.rec.state == "BACKING_OFF"
        self._after_op()
        return retry, task.rec.next_attempt_ns if retry else 0, task.rec.state, self._t().future

    def _attempt_failed(
        self, task: _Task, failure: Failure, usage: Usage | None, retry_after_s: float
    ) -> bool:
        """Ends the running attempt with ``failure``; retries by policy or fails the task."""
        rec = task.rec
        w = task.wf
        now = self._clock()
        ran = rec.state == "RUNNING"  # else it failed before dispatch (routing): no span
        if ran:
            self._release(task)
        self._set_failure(task, failure)  # counted even past max_open_bytes: the attempt has ended
        policy = task.spec.retry_policy or w.rec.default_retry_policy or _DEFAULT_POLICY
        charged = rec.attempt - rec.free_attempts
        retry = (
            w.rec.state == "RUNNING"
            and not failure.non_retryable
            and failure.kind not in _NOT_RETRIED_KINDS
            and failure.type not in policy.non_retryable_types
            and charged < policy.maximum_attempts
        )
        bound = delay = 0.0
        blocked = ""
        if retry:
            bound = policy.delay_bound_s(charged)
            delay = max(self._rng() * bound, retry_after_s)  # full jitter, or the worker's ask if later
            blocked = self._retry_blocked(task, now + int(delay * 1e9))
            retry = not blocked
        final_state = "BACKING_OFF" if retry else "FAILED"
        self._event(
            "TASK_ATTEMPT_FAILED",
            task,
            worker_id=rec.worker_id,
            failure=_failure_info(failure),
            usage=_event_usage(usage) if usage else None,
            duration_ns=now - rec.start_ns if rec.start_ns else None,
            task_state=final_state,
            span_id=rec.span_id if ran else "",
        )
        if retry:
            rec.next_attempt_ns = now + int(delay * 1e9)
            self._set_state(task, "BACKING_OFF", f"retrying after: {failure.message}"[:1024])
            self._event(
                "TASK_RETRY_SCHEDULED",
                task,
                attempt=rec.attempt + 1,
                duration_ns=int(delay * 1e9),
                attributes={
                    "are.retry.backoff_ms": round(delay * 1000, 3),
                    "are.retry.delay_bound_ms": round(bound * 1000, 3),
                    "are.retry.maximum_attempts": policy.maximum_attempts,
                },
            )
            self._at(rec.next_attempt_ns, "backoff", task, task.token)
        else:
            rec.close_ns = now
            reason = f"not retried, {blocked}: {failure.message}" if blocked else failure.message
            self._set_state(task, "FAILED", reason[:1024])
            self._terminal(task)
        return retry

    def _retry_blocked(self, task: _Task, start_ns: int) -> str:
        """Why a retry due at ``start_ns`` could not start (common.proto RetryPolicy), or "" if it could.

        It could not when the task's schedule_to_close_timeout or the
        workflow's max_duration ends by then, or when the workflow's
        max_attempts budget is spent already: the retry would be promised
        (FailTask's will_retry) and never run, and the task's own failure
        replaced by a timeout or a budget failure. The task fails with its
        own failure instead. Attempts lost through no fault of their worker
        are not charged to the budget, as at dispatch.
        """
        rec = task.rec
        w = task.wf
        if task.spec.schedule_to_close_s:
            first = rec.first_schedule_ns or rec.schedule_ns or rec.create_ns  # records of older sidecars
            if start_ns >= first + int(task.spec.schedule_to_close_s * 1e9):
                return "its schedule_to_close_timeout ends before the retry could start"
        if w.rec.deadline_ns and start_ns >= w.rec.deadline_ns:
            return "the workflow's max_duration ends before the retry could start"
        budget = w.rec.budget
        max_attempts = budget.max_attempts or 10 * budget.max_tasks
        if w.rec.task_attempts - w.rec.uncharged_attempts >= max_attempts:
            return f"the workflow's max_attempts budget of {max_attempts} is spent"
        return ""

    def heartbeat(
        self, wf_id: str, task_id: str, attempt: int, details: bytes | None, content_type: str
    ) -> bool:
        """Extends a held attempt's lease; returns whether the worker should stop.

        A poll worker's heartbeat also shows its classes are still served (see :meth:`serves`).
        """
        task = self._held_strict(wf_id, task_id, attempt)
        task.rec.heartbeat_ns = self._clock()
        holder = task.holder
        if holder is not None and holder.one_answer:
            self._poll_contacted(holder)
        if details is not None:  # counted even past max_open_bytes: the attempt is under way
            self._set_heartbeat_details(task, details, content_type)
            self._dirty(task)
        return task.wf.rec.state != "RUNNING"

    def check_held(self, wf_id: str, task_id: str, attempt: int, worker_id: str = "") -> str:
        """Raises unless a worker may report events of the attempt (ReportEvents); returns its holder.

        It may while the attempt runs, and for :data:`REPORT_GRACE_S` after
        it ended (completed, failed, timed out, lost or cancelled, its
        workflow closed or not), so that the events a worker sends just
        after its result are not lost. ``worker_id``, when given (a stream's
        worker), must be the attempt's holder; unary reports name no worker,
        and their events take the holder returned (event.proto: LLM and tool
        events name their worker).

        Raises TaskNotHeldError, TaskNotFoundError or WorkflowNotFoundError.
        """
        ids = {"workflow_id": wf_id, "task_id": task_id, "attempt": attempt}
        w = self._open.get(wf_id) or self._recent.get(wf_id)
        if w is None:  # closed and read back from storage: only each task's last attempt is known
            stored = self._stored(wf_id)
            if stored is None:
                raise WorkflowNotFoundError(f"workflow {wf_id!r} does not exist", workflow_id=wf_id)
            closed_ns = stored.close_ns
            if closed_ns and self._clock() - closed_ns > _REPORT_GRACE_NS:  # every attempt ended by then
                raise TaskNotHeldError(
                    f"task {task_id!r} of workflow {wf_id!r} is not running: the workflow closed "
                    f"over {REPORT_GRACE_S} s ago",
                    **ids,
                )
            rec = self._load_task(wf_id, task_id)  # a scan of the workflow's tasks: only within the grace
            if self._reportable(_last_end(rec), attempt, worker_id):
                return rec.worker_id
            if rec.outcome_attempt == attempt and attempt:
                raise TaskNotHeldError(
                    f"attempt {attempt} of task {task_id!r} is no longer held: it reported its outcome", **ids
                )
            raise TaskNotHeldError(
                f"task {task_id!r} of workflow {wf_id!r} is not running: the workflow is closed", **ids
            )
        try:
            task = self._held_strict(wf_id, task_id, attempt)
        except TaskNotHeldError:
            found = w.tasks[task_id]  # _held found it
            ended = found.ended or _last_end(found.rec)
            if ended is not None and self._reportable(ended, attempt, worker_id):
                return ended[2]
            raise
        if worker_id and task.rec.worker_id != worker_id:
            raise TaskNotHeldError(f"attempt {attempt} of task {task_id!r} is held by another worker", **ids)
        return task.rec.worker_id

    def _reportable(self, ended: tuple[int, int, str] | None, attempt: int, worker_id: str) -> bool:
        """Whether ``ended`` (attempt, end ns, holder) is ``attempt`` (of ``worker_id``) within the grace."""
        if ended is None:
            return False
        ended_attempt, ended_ns, holder = ended
        return (
            ended_attempt == attempt
            and (not worker_id or holder == worker_id)
            and self._clock() - ended_ns <= _REPORT_GRACE_NS
        )

    def _held_strict(self, wf_id: str, task_id: str, attempt: int) -> _Task:
        try:
            return self._held(wf_id, task_id, attempt)
        except TaskAlreadyCompletedError as error:
            raise TaskNotHeldError(
                str(error).replace("already reported", "is no longer held: it reported"),
                workflow_id=wf_id,
                task_id=task_id,
                attempt=attempt,
            ) from None

    def record_events(self, drafts: Sequence[EventDraft]) -> tuple[list[int], asyncio.Future[None]]:
        """Records worker-reported events in the current transaction; returns their sequences."""
        if self._events is None:
            return [0] * len(drafts), _done()
        txn = self._t()
        sequences = []
        for reported in drafts:
            draft = reported
            if not draft.span_id and draft.task_id:
                # No span of the worker's own: the event belongs to its attempt's (event.proto).
                span_id = self._latest_span_id(draft.workflow_id, draft.task_id, draft.attempt)
                if span_id:
                    draft = msgspec.structs.replace(draft, span_id=span_id)
            event = self._events.record(txn.batch, draft)
            txn.events.append(event)
            sequences.append(event.sequence)
        return sequences, txn.future

    def _latest_span_id(self, wf_id: str, task_id: str, attempt: int) -> str:
        """The span id of ``attempt`` if it is its task's latest dispatched one and in memory, else ""."""
        w = self._open.get(wf_id) or self._recent.get(wf_id)
        task = w.tasks.get(task_id) if w is not None else None
        if task is None or not attempt or task.rec.attempt != attempt:
            return ""  # an earlier attempt: its span id is not kept
        return task.rec.span_id  # "" when that attempt never ran (a routing failure)

    def attempt_span_id(self, wf_id: str, task_id: str, attempt: int) -> str:
        """The span id (16 hex digits) of an attempt, or "" when unknown.

        Known for each task's latest attempt that was dispatched (its record
        keeps that one's only): for the events recorded outside the
        scheduler about a running or just-ended attempt (a state patch it
        wrote, a call its worker reported), which belong to its span.
        """
        span_id = self._latest_span_id(wf_id, task_id, attempt)
        if span_id or self._find(wf_id) is not None:
            return span_id
        try:
            rec = self.get_task(wf_id, task_id).record
        except (TaskNotFoundError, WorkflowNotFoundError):
            return ""
        return rec.span_id if attempt and rec.attempt == attempt else ""

    def _charge(self, task: _Task, usage: Usage, now: int) -> None:
        task.rec.usage.add(usage)
        w = task.wf
        w.rec.usage.add(usage)
        self._dirty_wf(w)
        if task.spec.estimated_tokens or self._pools[task.spec.pool].limits.llm_tokens_per_minute:
            self._pools[task.spec.pool].correct(now, usage.tokens - task.spec.estimated_tokens)
        budget = w.rec.budget
        if budget.max_cost_micro_usd and w.rec.usage.cost_micro_usd > budget.max_cost_micro_usd:
            self._exceed(w, "max_cost_micro_usd", budget.max_cost_micro_usd, w.rec.usage.cost_micro_usd)
        elif budget.max_tokens and w.rec.usage.tokens > budget.max_tokens:
            self._exceed(w, "max_tokens", budget.max_tokens, w.rec.usage.tokens)

    # ----------------------------------------------------------------- unary poll

    async def poll(
        self, name: str, capabilities: Sequence[str], max_tasks: int, wait_s: float
    ) -> tuple[str, list[Assignment]]:
        """Waits up to ``wait_s`` for assignments (long poll); returns the worker id and them.

        While it waits, and while its worker holds an attempt, its
        capabilities count as served (:meth:`serves`); a poll for one that
        nothing served re-routes the intent tasks waiting on unserved classes.
        """
        loop = asyncio.get_running_loop()
        got: asyncio.Future[list[Assignment]] = loop.create_future()

        def deliver(assignments: list[Assignment]) -> None:
            if not got.done():
                got.set_result(assignments)
            else:  # the poll already answered (a drain, say): these would reach no one
                self.forget_poller(worker)
                self.hand_back_undelivered(
                    worker.worker_id, [(a.workflow_id, a.task_id, a.attempt) for a in assignments]
                )

        caps = tuple(dict.fromkeys(capabilities))
        try:
            # Before its worker exists: a dispatch to it at once is served too. Inside the try:
            # it counts every capability before it asks the served hook, and all are uncounted below.
            self._poll_arrived(caps)
            worker = self.connect_worker(
                name,
                caps,
                max_tasks,
                deliver,
                lambda _: None,
                worker_id=f"{name}@poll-{secrets.token_hex(4)}",
                one_answer=True,
            )
            self._polls[got] = worker
            # Assignments are delivered after their commit; stop taking more at once.
            if worker.free < max_tasks:
                self.forget_poller(worker)
            handed = False
            try:
                try:
                    assignments = await asyncio.wait_for(asyncio.shield(got), wait_s)
                except TimeoutError:
                    # Dispatched meanwhile: wait for the commit.
                    assignments = await got if worker.free < max_tasks else []
                handed = True
                return worker.worker_id, assignments
            finally:
                self._polls.pop(got, None)
                self.forget_poller(worker)  # first: what is handed back must not come back to it
                if not handed and worker.held:
                    self._hand_back(worker)
        finally:
            self._poll_left(caps)

    def drain(self) -> None:
        """The sidecar is stopping: long polls holding nothing return empty now, watchers wake.

        A poll whose assignments are dispatched but not yet committed still
        gets them (after their commit); watchers see :attr:`draining` and
        end their streams, so a graceful stop does not wait out its grace
        period for callers that are only waiting.
        """
        self.draining = True
        for got, worker in list(self._polls.items()):
            if not worker.held and not got.done():
                got.set_result([])
                self.forget_poller(worker)  # it answered: nothing more may be dispatched to it
        for w in self._open.values():
            for signal in w.watchers:
                signal.set()

    def _hand_back(self, worker: WorkerHandle) -> None:
        """Queues again the attempts dispatched to a poll that ended before returning them.

        The poll's caller went away (its call was cancelled) after the
        dispatch and before the assignments reached it: the worker never saw
        them. Rather than hold them until their lease ends (up to the
        start-to-close timeout), each goes back to its queue at once, and
        the lost attempt is not charged to the retry policy, as after a
        sidecar restart.
        """
        now = self._clock()
        for task in list(worker.held.values()):
            self._release(task)
            self._requeue_uncharged(
                task,
                worker.worker_id,
                "poll ended before delivery",
                "re-dispatched: the poll it went to ended before returning it",
                now,
            )
            self._enqueue(task, now)
        self._after_op()

    def hand_back_undelivered(
        self,
        worker_id: str,
        attempts: Sequence[tuple[str, str, int]],
        *,
        why: str = "the poll's answer did not reach its caller",
    ) -> int:
        """Queues again attempts a poll returned whose call then ended cancelled; returns how many.

        The answer left the sidecar but its caller had gone (a deadline
        passed on the way), or the attempts did not fit in it (``why`` says
        which): the worker never saw them. As for a poll cancelled before it
        returned (:meth:`_hand_back`), each still held by that poll goes back
        to its queue at once, uncharged. An attempt already reported,
        cancelled or re-dispatched is left alone.
        """
        now = self._clock()
        handed = 0
        for wf_id, task_id, attempt in attempts:
            try:
                task = self._held(wf_id, task_id, attempt)
            except (TaskNotHeldError, TaskAlreadyCompletedError, TaskNotFoundError, WorkflowNotFoundError):
                continue
            if task.holder is None or task.holder.worker_id != worker_id:
                continue
            self._release(task)
            self._requeue_uncharged(
                task,
                worker_id,
                "poll answer not delivered",
                f"re-dispatched: {why}",
                now,
            )
            self._enqueue(task, now)
            handed += 1
        if handed:
            self._after_op()
        return handed

    def _requeue_uncharged(self, task: _Task, worker_id: str, event_name: str, reason: str, now: int) -> None:
        """Makes a running attempt lost through no fault of its worker SCHEDULED again.

        The attempt is not charged to the retry policy; the caller queues the task.
        Its wait for a worker starts again, bounded by its schedule-to-start
        timeout as every wait is (the timeout is per attempt; the timer of
        its last wait went stale when it was dispatched).

        Recorded as TASK_LEASE_EXPIRED (the lost attempt, its span's end;
        task_state the new state, SCHEDULED, as the transition it is) then
        TASK_SCHEDULED (the attempt it is queued for), as a scheduling is.
        """
        rec = task.rec
        rec.free_attempts += 1
        task.wf.rec.uncharged_attempts += 1  # nor to the workflow's max_attempts budget
        span_id = rec.span_id  # the lost attempt's: it is no longer RUNNING when its events are recorded
        self._set_state(task, "SCHEDULED", reason)
        self._event("TASK_LEASE_EXPIRED", task, worker_id=worker_id, name=event_name, span_id=span_id)
        rec.schedule_ns = now
        self._event(
            "TASK_SCHEDULED",
            task,
            attempt=rec.attempt + 1,
            attributes={"are.pool": task.spec.pool, "are.priority": task.spec.priority},
        )
        if task.spec.schedule_to_start_s:
            self._at(now + int(task.spec.schedule_to_start_s * 1e9), "s2s", task, task.token)

    # -------------------------------------------------------------------- timers

    def _at(self, when_ns: int, kind: str, subject: Any, token: int) -> None:
        self._heap_seq += 1
        heap = self._heap
        heapq.heappush(heap, (when_ns, self._heap_seq, kind, subject, token))
        if len(heap) >= self._compact_at:
            self._compact()
        if self._timer is None or when_ns < self._timer_at:
            self._arm()

    def _pump_at(self, when_ns: int) -> None:
        """One pending rate-limit wake-up at a time: the earliest wins."""
        if self._next_pump_ns <= self._clock() or when_ns < self._next_pump_ns:
            self._next_pump_ns = when_ns
            self._at(when_ns, "pump", None, 0)

    def _compact(self) -> None:
        """Drops timers whose task has moved on (lazy deletion, amortised O(1) per timer)."""
        live = [entry for entry in self._heap if _timer_live(entry)]
        heapq.heapify(live)
        self._heap = live
        self._compact_at = max(_COMPACT_MIN, 2 * len(live))
        self._dropped_recent = [0, 0, 0]

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._heap or self._stopped:
            return
        when = self._heap[0][0]
        loop = asyncio.get_running_loop()
        delay = max(0.0, (when - self._clock()) / 1e9)
        self._timer_at = when
        self._timer = loop.call_at(loop.time() + delay, self._fire)

    def _fire(self) -> None:
        """Runs every timer that is due, then arms the next.

        A timer whose handler raises (a bug) is logged and skipped: the other
        due timers still run and the next is armed, or one bad timer would
        hold every timeout, retry and deadline after it until some other
        call armed the timer again.
        """
        self._timer = None
        now = self._clock()
        try:
            # self._heap read again each time: a handler may sweep it (see _compact), which
            # makes a new list; popping on from the old one would run its due timers twice.
            while self._heap and self._heap[0][0] <= now:
                _, _, kind, subject, token = heapq.heappop(self._heap)
                try:
                    self._on_timer(kind, subject, token, now)
                except Exception:  # noqa: BLE001 - see above
                    _log.exception(f"a {kind} timer failed; the other timers go on")
            self._after_op()
        finally:
            self._arm()

    def _on_timer(self, kind: str, subject: Any, token: int, now: int) -> None:  # noqa: C901, PLR0911, PLR0912 - one branch per timer kind
        if kind == "pump":
            self._pump_wanted = True
            return
        if kind == "reroute":  # a capability's grace ended (see _settled)
            self._rechecks.pop(subject, None)
            if self.capability_served is not None and not self.serves(subject):
                self._reroute_soon({subject})
            return
        if kind == "polls":  # a capability's polls may have stopped (see _poll_touch)
            self._polls_quiet(subject, token, now)
            return
        if kind == "unserved":  # the oldest capability unserved has been so for the grace
            self._unserved_expired(now)
            return
        if kind == "deadline":
            w: _Workflow = subject
            if w.rec.state == "RUNNING":
                # In seconds to the millisecond, the time run rounded up: whole seconds read
                # "1 > 1" for a 1.5 s budget.
                ran_ms = -(-(now - w.rec.create_ns) // 1_000_000)
                self._exceed(w, "max_duration", round(w.rec.budget.max_duration_s, 3), ran_ms / 1000)
            return
        task: _Task = subject
        if kind == "s2close":  # not made stale by the task's changes of state: it bounds them all
            if task.wf.rec.state == "RUNNING" and task.rec.state not in TERMINAL_TASK_STATES:
                self._schedule_to_close(task, now)
            return
        if task.token != token or task.wf.rec.state != "RUNNING":
            return
        rec = task.rec
        if kind == "backoff" and rec.state == "BACKING_OFF":
            self._schedule(task, now)
        elif kind == "s2s" and rec.state == "SCHEDULED":
            self._dequeue(task)
            message = f"no worker started the task within {task.spec.schedule_to_start_s}s"
            self._fail_timed_out(task, "SCHEDULE_TO_START", message, now)
        elif kind == "s2c" and rec.state == "RUNNING":
            self._timeout(task, "START_TO_CLOSE", f"attempt {rec.attempt} exceeded start_to_close_timeout")
        elif kind == "hb" and rec.state == "RUNNING":
            due = rec.heartbeat_ns + int(task.spec.heartbeat_s * 1e9)
            if due > now:
                self._at(due, "hb", task, token)
            else:
                self._timeout(task, "HEARTBEAT", f"attempt {rec.attempt} missed its heartbeat_timeout")
        elif kind == "approval" and rec.state == "AWAITING_APPROVAL":
            self._reject(task, "are:timeout", "approval timed out", timeout=True)

    def _schedule_to_close(self, task: _Task, now: int) -> None:
        """Fails an open task whose schedule_to_close_timeout passed: its attempt (if any) is stopped.

        The timeout bounds the task from its first scheduling to its result,
        every wait, attempt and backoff included (task.proto): no retry.
        """
        rec = task.rec
        limit = task.spec.schedule_to_close_s
        message = f"the task did not finish within its schedule_to_close_timeout of {limit}s"
        if rec.state == "RUNNING":
            # As any timeout of a running attempt (event.proto): TASK_TIMED_OUT, then
            # TASK_ATTEMPT_FAILED with the same failure; no retry, as the failure says.
            holder = task.holder
            if holder is not None and holder.connected:
                self._stop_attempt(
                    holder,
                    Cancellation(task.wf.rec.workflow_id, rec.task_id, rec.attempt, "TIMED_OUT", message),
                )
            failure = Failure(
                message=message,
                type="TIMEOUT",
                kind="TIMEOUT",
                timeout_type="SCHEDULE_TO_CLOSE",
                non_retryable=True,
            )
            self._event("TASK_TIMED_OUT", task, failure=_failure_info(failure))
            self._attempt_failed(task, failure, None, 0.0)
            return
        self._dequeue(task)
        self._fail_timed_out(task, "SCHEDULE_TO_CLOSE", message, now)

    def _fail_timed_out(self, task: _Task, timeout_type: str, message: str, now: int) -> None:
        """Fails a task (out of any queue, holding no attempt) for a timeout no retry may undo."""
        failure = Failure(
            message=message, type="TIMEOUT", kind="TIMEOUT", timeout_type=timeout_type, non_retryable=True
        )
        self._event("TASK_TIMED_OUT", task, failure=_failure_info(failure))
        self._set_failure(task, failure)
        task.rec.close_ns = now
        self._set_state(task, "FAILED", message)
        self._terminal(task)

    def _timeout(self, task: _Task, timeout_type: str, message: str) -> None:
        failure = Failure(message=message, type="TIMEOUT", kind="TIMEOUT", timeout_type=timeout_type)
        self._event("TASK_TIMED_OUT", task, failure=_failure_info(failure))
        if timeout_type == "HEARTBEAT":  # the lease ran out (event.proto); a start-to-close ends no lease
            self._event("TASK_LEASE_EXPIRED", task, worker_id=task.rec.worker_id)
        holder = task.holder
        if holder is not None and holder.connected:
            self._stop_attempt(
                holder,
                Cancellation(
                    task.wf.rec.workflow_id, task.rec.task_id, task.rec.attempt, "TIMED_OUT", message
                ),
            )
        self._attempt_failed(task, failure, None, 0.0)

    # ---------------------------------------------------- cancel, budgets, approvals

    async def cancel(self, wf_id: str, reason: str, requested_by: str) -> WorkflowRecord:
        """Cancels a workflow (idempotent); returns its record once durable."""
        w = self._open.get(wf_id)
        if w is None:
            # Closed, perhaps by a commit still in flight (an earlier cancel's): answer once it is durable.
            await self._settled_commit(wf_id)
            return self._load_workflow(wf_id).record
        w.rec.state = "CANCELLING"
        w.rec.failure = Failure(
            message=f"cancelled by {requested_by or 'a client'}: {reason}".rstrip(": "),
            type="CANCELLED",
            kind="CANCELLED",
        )
        self._dirty_wf(w)
        self._event("WORKFLOW_CANCEL_REQUESTED", w=w, attributes={"are.cancel.reason": reason})
        self._stop_all(w, "WORKFLOW_CANCELLED", "the workflow was cancelled")
        self._after_op()
        await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
        return w.rec

    def _stop_attempt(self, holder: WorkerHandle, cancellation: Cancellation) -> None:
        """Tells ``holder`` to stop an attempt, after what this commit assigned it so far (see _deliver)."""
        txn = self._t()
        txn.cancel.setdefault(holder, []).append((len(txn.assign.get(holder, ())), cancellation))

    def _stop_all(self, w: _Workflow, cancel_reason: str, message: str) -> None:
        now = self._clock()
        for task in w.order:
            rec = task.rec
            if rec.state in TERMINAL_TASK_STATES:
                continue
            span_id = rec.span_id if rec.state == "RUNNING" else ""  # the attempt it ends, if one runs
            if rec.state == "RUNNING":
                holder = task.holder
                if holder is not None and holder.connected:
                    self._stop_attempt(
                        holder,
                        Cancellation(w.rec.workflow_id, rec.task_id, rec.attempt, cancel_reason, message),
                    )
                self._release(task)
            self._dequeue(task)
            rec.close_ns = now
            self._set_state(task, "CANCELLED", message)
            self._event("TASK_CANCELLED", task, span_id=span_id)
            self._terminal(task)

    def _exceed(self, w: _Workflow, budget: str, limit: float, value: float) -> None:
        """Fails ``w`` for passing ``budget``: counts are ints, max_duration is seconds (a float)."""
        if w.rec.state != "RUNNING":
            return
        failure = Failure(
            message=f"budget {budget} exceeded: {_budget_amount(value)} > {_budget_amount(limit)}",
            type="BUDGET_EXCEEDED",
            kind="BUDGET_EXCEEDED",
            details=msgspec.json.encode({"budget": budget, "limit": limit, "value": value}),
            details_content_type="application/json",
        )
        self._event(
            "WORKFLOW_BUDGET_EXCEEDED",
            w=w,
            failure=_failure_info(failure),
            attributes={"are.budget.name": budget, "are.budget.limit": limit, "are.budget.value": value},
        )
        w.rec.state = "CANCELLING"
        self._stop_all(w, "BUDGET_EXCEEDED", failure.message)
        self._settle_now(w)
        self._close(w, "FAILED", failure)

    def _settle_now(self, w: _Workflow) -> None:
        # Dependents of cancelled tasks are cancelled too, so nothing is left to decide.
        self._closing = [c for c in self._closing if c is not w]

    async def resolve_approval(
        self, wf_id: str, task_id: str, approve: bool, approver: str, comment: str
    ) -> TaskView:
        """Approves (schedules) or rejects a task waiting at its gate."""
        w = self._open.get(wf_id)
        if w is None:
            view = self.get_task(wf_id, task_id)
            raise NotAwaitingApprovalError(
                f"task {task_id!r} is {view.record.state}, not AWAITING_APPROVAL",
                task_state=view.record.state,
            )
        task = w.tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(
                f"workflow {wf_id!r} has no task {task_id!r}", workflow_id=wf_id, task_id=task_id
            )
        if task.rec.state != "AWAITING_APPROVAL" or task.rec.approval is None:
            raise NotAwaitingApprovalError(
                f"task {task_id!r} is {task.rec.state}, not AWAITING_APPROVAL", task_state=task.rec.state
            )
        now = self._clock()
        approval = task.rec.approval
        approval.approver = approver
        approval.comment = comment
        approval.resolve_ns = now
        attributes = {"are.approval.approver": approver, "are.approval.comment": comment[:1024]}
        if approve:
            approval.decision = "APPROVE"
            self._event("TASK_APPROVED", task, attributes=attributes)
            self._schedule(task, now)
        else:
            self._reject(task, approver, comment, timeout=False)
        self._after_op()
        await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
        return TaskView(workflow_id=wf_id, record=task.rec, spec=task.spec)

    def _reject(self, task: _Task, approver: str, comment: str, *, timeout: bool) -> None:
        now = self._clock()
        approval = task.rec.approval
        if approval is not None:
            approval.decision = "REJECT"
            approval.approver = approver
            approval.comment = comment
            approval.resolve_ns = now
        failure = Failure(
            message=f"rejected by {approver}: {comment}" if comment else f"rejected by {approver}",
            type="APPROVAL_REJECTED",
            kind="TIMEOUT" if timeout else "APPROVAL_REJECTED",
            timeout_type="APPROVAL" if timeout else "",
        )
        self._set_failure(task, failure)
        task.rec.close_ns = now
        self._set_state(task, "REJECTED", failure.message[:1024])
        self._event(
            "TASK_REJECTED",
            task,
            failure=_failure_info(failure),
            attributes={"are.approval.approver": approver, "are.approval.comment": comment[:1024]},
        )
        self._terminal(task)

    def list_approvals(
        self, wf_id: str, labels: dict[str, str], after: tuple[int, str, str] | None, limit: int
    ) -> tuple[list[TaskView], tuple[int, str, str] | None]:
        """Tasks waiting at approval gates, oldest request first (open workflows only)."""
        waiting: list[tuple[int, str, str, _Task]] = []
        workflows = (
            [self._open[wf_id]] if wf_id in self._open else ([] if wf_id else list(self._open.values()))
        )
        for w in workflows:
            if not w.rec.counts.get("AWAITING_APPROVAL"):
                continue
            waiting.extend(
                (task.rec.approval.request_ns, w.rec.workflow_id, task.rec.task_id, task)
                for task in w.order
                if task.rec.state == "AWAITING_APPROVAL"
                and task.rec.approval is not None
                and all(task.spec.labels.get(k) == v for k, v in labels.items())
            )
        waiting.sort(key=lambda item: item[:3])
        if after is not None:
            waiting = [item for item in waiting if item[:3] > after]
        page = waiting[:limit]
        more = len(waiting) > limit
        views = [TaskView(workflow_id=item[1], record=item[3].rec, spec=item[3].spec) for item in page]
        return views, (page[-1][:3] if more and page else None)

    # ------------------------------------------------------------------- spawn

    async def spawn(  # noqa: C901, PLR0912, PLR0915 - checks in contract order, then wiring
        self,
        wf_id: str,
        specs: Sequence[TaskSpec],
        *,
        parent_task_id: str = "",
        parent_attempt: int = 0,
        dependents_wait: bool = False,
        request_id: str = "",
        request_hash: str = "",
    ) -> tuple[list[str], bool]:
        """Adds tasks to a running workflow (dynamic expansion).

        Returns the added task ids and whether ``request_id`` matched an
        earlier spawn into this workflow (then nothing is added and its ids
        are returned; a retried parent attempt spawns once).

        Raises:
            RequestIdConflictError: ``request_id`` was used in this workflow
                with a different request.
            TooManyOpenTasksError: the open workflows hold too many tasks now,
                or (its subclass TooManyOpenBytesError) too many inline payload
                bytes (nothing changed; checked after the workflow's budget).
                A spawn may take the whole bound, new workflows only a share.
        """
        if request_id:
            key = join_key(wf_id, request_id)
            receipt = self._spawn_requests.get(key)
            if receipt is None:
                raw = self._storage.get(T_SPAWNS, key)
                receipt = _spawn_codec.decode(raw) if raw is not None else None
            if receipt is not None:
                if receipt.request_hash != request_hash:
                    raise RequestIdConflictError(
                        f"request_id {request_id!r} was used in {wf_id!r} with a different request"
                    )
                await self._settled_commit(wf_id)  # the earlier spawn may still be committing
                return list(receipt.task_ids), True
        w = self._open.get(wf_id)
        if w is None:
            self._load_workflow(wf_id)
            raise WorkflowClosedError(f"workflow {wf_id!r} is closed", workflow_id=wf_id)
        if w.rec.state != "RUNNING":
            raise WorkflowClosedError(f"workflow {wf_id!r} is {w.rec.state}", workflow_id=wf_id)
        parent: _Task | None = None
        if parent_task_id:
            parent = w.tasks.get(parent_task_id)
            if parent is None:
                raise TaskNotFoundError(
                    f"workflow {wf_id!r} has no task {parent_task_id!r}",
                    workflow_id=wf_id,
                    task_id=parent_task_id,
                )
            if parent.rec.state != "RUNNING" or parent.rec.attempt != parent_attempt:
                raise TaskNotHeldError(
                    f"attempt {parent_attempt} of task {parent_task_id!r} is not running",
                    workflow_id=wf_id,
                    task_id=parent_task_id,
                    attempt=parent_attempt,
                )
        for i, spec in enumerate(specs):
            if spec.task_id in w.tasks:
                raise TaskExistsError(
                    f"tasks[{i}].task_id", f"task {spec.task_id!r} already exists in {wf_id!r}"
                )
        validate_graph(specs, field="tasks", existing=w.tasks)
        # The parent's dependents that will also wait for the new tasks (dependents_wait).
        waiting: list[_Task] = []
        if parent is not None and dependents_wait:
            waiting = [d for d in parent.dependents if d.rec.state == "PENDING"]
        _check_waiting_acyclic(specs, waiting)
        incoming: dict[str, int] = {}
        incoming_bytes = 0  # the payload bytes of the specs, for max_open_bytes
        for i, spec in enumerate(specs):
            pool = spec.pool or w.rec.default_pool
            if pool not in self._pools:
                raise SpecError("POOL_NOT_FOUND", f"tasks[{i}].pool", f"pool {pool!r} does not exist")
            incoming_bytes += _spec_bytes(spec)
            if not spec.requires_approval and all(
                d in w.tasks and w.tasks[d].rec.state in TERMINAL_TASK_STATES for d in spec.depends_on
            ):
                incoming[pool] = incoming.get(pool, 0) + 1  # ready at once: admitted into the queue
        depth = parent.rec.spawn_depth + 1 if parent else 0
        budget = w.rec.budget
        if len(w.order) + len(specs) > budget.max_tasks:
            self._exceed(w, "max_tasks", budget.max_tasks, len(w.order) + len(specs))
            self._after_op()
            await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
            raise BudgetExceededError(
                f"spawning {len(specs)} tasks exceeds max_tasks {budget.max_tasks}",
                budget="max_tasks",
                limit=budget.max_tasks,
            )
        if depth > budget.max_spawn_depth:
            self._exceed(w, "max_spawn_depth", budget.max_spawn_depth, depth)
            self._after_op()
            await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
            raise BudgetExceededError(
                f"spawn depth {depth} exceeds max_spawn_depth {budget.max_spawn_depth}",
                budget="max_spawn_depth",
                limit=budget.max_spawn_depth,
            )
        self._check_open_work(len(specs), incoming_bytes, "tasks", into=w)
        self._check_queues(incoming, wf_id)  # raises POOL_QUEUE_FULL; only its event is recorded
        rows = _encode_specs(specs, w.rec.default_pool, "tasks")  # before anything is staged
        now = self._clock()
        added = self._add_tasks(w, rows, now, parent=parent_task_id, depth=depth)
        w.payload_bytes += incoming_bytes  # new records hold nothing yet: the specs' bytes
        self._open_tasks += len(added)
        self._open_bytes += incoming_bytes
        w.rec.task_count = len(w.order)
        self._dirty_wf(w)
        if waiting:
            new_ids = tuple(t.rec.task_id for t in added)
            for dependent in waiting:
                dependent.rec.extra_depends_on += new_ids
                dependent.deps += new_ids
                for t in added:
                    t.dependents.append(dependent)
                    dependent.unresolved += 1
                self._dirty(dependent)
        ids = [t.rec.task_id for t in added]
        if request_id:
            key = join_key(wf_id, request_id)
            receipt = _SpawnReceipt(request_hash=request_hash, task_ids=ids)
            self._t().batch.put(T_SPAWNS, key, _spawn_codec.encode(receipt))
            self._spawn_requests[key] = receipt
            self._t().after.append(lambda: self._forget_spawn_request(key))
        self._event(
            "TASKS_SPAWNED",
            w=w,
            task_id=parent_task_id,
            attributes={"are.spawn.task_ids": ",".join(ids)[:4096], "are.spawn.count": len(ids)},
        )
        for task in added:
            if not task.unresolved:
                self._decide(task)
        self._after_op()
        await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
        return ids, False

    # ------------------------------------------------------------------- pools

    async def put_pool(self, limits: PoolLimits) -> tuple[PoolLimits, bool]:
        """Creates or replaces a pool's limits; returns it as stored and whether it is new."""
        now = self._clock()
        existing = self._pools.get(limits.name)
        if existing is None and len(self._pools) >= 1000:
            raise PoolQueueFullError(limits.name, len(self._pools), 1, 1000, 60.0)
        created_ns = existing.limits.create_ns if existing else now
        stored = msgspec.structs.replace(limits, create_ns=created_ns, update_ns=now)
        batch = self._t().batch
        batch.put(T_POOLS, stored.name.encode(), _pool_codec.encode(stored))
        if existing is None:
            self._pools[stored.name] = _Pool(stored, now)
        else:
            existing.refill(now)
            existing.limits = stored
            existing.tokens = min(existing.tokens, stored.bucket_size)
            self._promote(existing)  # a longer queue takes backlogged tasks at once
        self._pump_wanted = True
        self._after_op()
        await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
        return stored, existing is None

    def get_pool(self, name: str) -> tuple[PoolLimits, PoolStatus]:
        """A pool's limits and live counts."""
        pool = self._pools.get(name)
        if pool is None:
            raise PoolNotFoundError(f"pool {name!r} does not exist", pool=name)
        now = self._clock()
        pool.refill(now)
        oldest = 0
        for by_pool in self._queues.values():
            queue = by_pool.get(name)
            if queue is None:
                continue
            for bucket in queue.buckets:
                for line in bucket.values():
                    for task in line:
                        if task.in_queue and task.cap == queue.cap:
                            oldest = max(oldest, (now - task.queued_ns) // 1_000_000)
                            break
        status = PoolStatus(
            running=pool.running,
            queued=pool.queued,
            backlog=pool.backlogged,
            available_requests=pool.tokens if pool.limits.requests_per_second else 0.0,
            llm_tokens_last_minute=pool.tokens_last_minute(now),
            dispatched_total=pool.dispatched_total,
            rejected_total=pool.rejected_total,
            oldest_queued_age_ms=oldest,
        )
        return pool.limits, status

    def pool_names(self) -> list[str]:
        """Every pool's name, sorted."""
        return sorted(self._pools)

    # ------------------------------------------------------------------- reads

    def _find(self, wf_id: str) -> _Workflow | None:
        return self._open.get(wf_id) or self._recent.get(wf_id)

    def _load_workflow(self, wf_id: str) -> WorkflowView:
        w = self._find(wf_id)
        if w is not None:
            return self._view(w)
        rec = self._stored(wf_id)
        if rec is None:
            raise WorkflowNotFoundError(f"workflow {wf_id!r} does not exist", workflow_id=wf_id)
        result: TaskRecord | None = None
        if rec.state == "COMPLETED" and rec.result_task_id:
            with contextlib.suppress(TaskNotFoundError):
                result = self._load_task(wf_id, rec.result_task_id)
        return _workflow_view(rec, result, 0)

    def _stored(self, wf_id: str, view: Any = None) -> WorkflowRecord | None:
        """A closed workflow's record as stored; None if there is none, or its delete has begun."""
        raw = (view or self._storage).get(T_WORKFLOWS, wf_id.encode())
        if not raw:
            return None
        rec = _wf_codec.decode(raw)
        return None if rec.deleting else rec

    def _view(self, w: _Workflow) -> WorkflowView:
        result: TaskRecord | None = None
        if w.rec.state == "COMPLETED" and w.rec.result_task_id:
            task = w.tasks.get(w.rec.result_task_id)
            if task is not None and task.rec.state == "COMPLETED":
                result = task.rec
        return _workflow_view(w.rec, result, w.last_seq)

    def get_workflow(self, wf_id: str) -> WorkflowView:
        """A workflow's status and result."""
        return self._load_workflow(wf_id)

    def _load_task(self, wf_id: str, task_id: str) -> TaskRecord:
        return self.get_task(wf_id, task_id).record

    def get_task(self, wf_id: str, task_id: str) -> TaskView:
        """One task's status and spec."""
        w = self._find(wf_id)
        if w is not None:
            task = w.tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError(
                    f"workflow {wf_id!r} has no task {task_id!r}", workflow_id=wf_id, task_id=task_id
                )
            return TaskView(workflow_id=wf_id, record=task.rec, spec=task.spec)
        if self._stored(wf_id) is None:
            raise WorkflowNotFoundError(f"workflow {wf_id!r} does not exist", workflow_id=wf_id)
        with self._storage.read() as view:
            for key, raw in view.scan(T_SPECS, prefix=prefix_key(wf_id), limit=10_000_000):
                spec = _spec_codec.decode(raw)
                if spec.task_id == task_id:
                    rec_raw = view.get(T_TASKS, key)
                    assert rec_raw is not None
                    return TaskView(workflow_id=wf_id, record=_task_codec.decode(rec_raw), spec=spec)
        raise TaskNotFoundError(
            f"workflow {wf_id!r} has no task {task_id!r}", workflow_id=wf_id, task_id=task_id
        )

    def list_tasks(  # noqa: C901 - memory and storage paths side by side
        self, wf_id: str, states: frozenset[str], after_index: int, limit: int
    ) -> tuple[list[TaskView], int | None]:
        """A page of a workflow's tasks in submission order; returns them and the next index."""
        w = self._find(wf_id)
        out: list[TaskView] = []
        if w is not None:
            order = w.order
            i = after_index
            while i < len(order) and len(out) < limit:
                task = order[i]
                i += 1
                if not states or task.rec.state in states:
                    out.append(TaskView(workflow_id=wf_id, record=task.rec, spec=task.spec))
            return out, (i if i < len(order) else None)
        if self._stored(wf_id) is None:
            raise WorkflowNotFoundError(f"workflow {wf_id!r} does not exist", workflow_id=wf_id)
        start = join_key(wf_id, after_index)
        end = join_key(wf_id, _U64)
        next_index: int | None = None
        with self._storage.read() as view:
            while len(out) < limit:
                rows = view.scan(T_TASKS, start=start, end=end, limit=limit)
                if not rows:
                    next_index = None
                    break
                for key, raw in rows:
                    rec = _task_codec.decode(raw)
                    next_index = rec.index + 1
                    if not states or rec.state in states:
                        spec_raw = view.get(T_SPECS, key)
                        assert spec_raw is not None
                        out.append(TaskView(workflow_id=wf_id, record=rec, spec=_spec_codec.decode(spec_raw)))
                        if len(out) >= limit:
                            break
                start = join_key(wf_id, next_index or 0)
            if next_index is not None and not view.scan(
                T_TASKS, start=join_key(wf_id, next_index), end=end, limit=1
            ):
                next_index = None
        return out, next_index

    def list_workflows(
        self,
        states: frozenset[str],
        *,
        labels: dict[str, str],
        start_ns: int,
        end_ns: int,
        after_key: bytes | None,
        limit: int,
    ) -> tuple[list[WorkflowView], bytes | None]:
        """A page of workflows, newest first; returns them and the cursor of the next page."""
        out: list[WorkflowView] = []
        low = join_key(_U64 - end_ns + 1) if end_ns else None
        start = after_key + b"\x00" if after_key else low
        high = join_key(_U64 - start_ns, b"\xff") if start_ns else None
        last: bytes | None = None
        scanned = 0
        exhausted = False
        with self._storage.read() as view:
            while len(out) < limit and scanned < 100_000:
                rows = view.scan(T_BY_TIME, start=start, end=high, limit=256)
                if not rows:
                    exhausted = True
                    break
                for key, _ in rows:
                    scanned += 1
                    last = key
                    wf_id = key[9:].decode()
                    w = self._find(wf_id)
                    if w is not None:
                        rec = w.rec
                    else:
                        stored = self._stored(wf_id, view)
                        if stored is None:
                            continue
                        rec = stored
                    if states and rec.state not in states:
                        continue
                    if any(rec.labels.get(k) != v for k, v in labels.items()):
                        continue
                    out.append(WorkflowView(record=rec))
                    if len(out) >= limit:
                        break
                start = (last or b"") + b"\x00"
            if (
                not exhausted
                and last is not None
                and not view.scan(T_BY_TIME, start=last + b"\x00", end=high, limit=1)
            ):
                exhausted = True
        return out, (None if exhausted or last is None else last)

    def usage(
        self, start_ns: int, end_ns: int, labels: dict[str, str], group_by: str
    ) -> tuple[UsageTotal, dict[str, UsageTotal]]:
        """Sums usage over the workflows created in ``[start_ns, end_ns)`` having ``labels``.

        Returns the total and, when ``group_by`` names a label, the sums per
        value of that label (at most 1,000 groups; the rest go under "").
        """
        total = UsageTotal()
        groups: dict[str, UsageTotal] = {}
        low = join_key(_U64 - end_ns + 1)
        high = join_key(_U64 - start_ns, b"\xff")
        with self._storage.read() as view:
            start: bytes | None = low
            while True:
                rows = view.scan(T_BY_TIME, start=start, end=high, limit=1024)
                if not rows:
                    break
                for key, _ in rows:
                    wf_id = key[9:].decode()
                    w = self._find(wf_id)
                    if w is not None:
                        rec = w.rec
                    else:
                        stored = self._stored(wf_id, view)
                        if stored is None:
                            continue
                        rec = stored
                    if any(rec.labels.get(k) != v for k, v in labels.items()):
                        continue
                    total.add(rec)
                    if group_by:
                        value = rec.labels.get(group_by, "")
                        if value not in groups and len(groups) >= 1000:
                            value = ""
                        groups.setdefault(value, UsageTotal()).add(rec)
                start = rows[-1][0] + b"\x00"
        return total, groups

    def watch(self, wf_id: str) -> asyncio.Event:
        """An event set after each durable change of an open workflow (call ``unwatch`` after)."""
        signal = asyncio.Event()
        w = self._find(wf_id)
        if w is None:
            self._load_workflow(wf_id)
            signal.set()
            return signal
        w.watchers.add(signal)
        return signal

    def durable(self, wf_id: str) -> asyncio.Future[None] | None:
        """The commit that makes the workflow's in-memory state durable, or None when it already is.

        Readers that must only report durable state (a watch) await it before
        reading: the in-memory record runs ahead of LMDB by one transaction.
        """
        w = self._open.get(wf_id) or self._recent.get(wf_id)
        if w is None:
            return None
        txn = self._txn
        if txn is not None and w in txn.workflows:
            return txn.future
        commit = w.commit
        return commit if commit is not None and not commit.done() else None

    def unwatch(self, wf_id: str, signal: asyncio.Event) -> None:
        """Stops signalling ``signal``."""
        w = self._find(wf_id)
        if w is not None:
            w.watchers.discard(signal)

    # ------------------------------------------------------ integration reads

    def workflow_state(self, wf_id: str) -> str | None:
        """The workflow's state name (RUNNING, CANCELLING, COMPLETED, ...), or None if unknown."""
        w = self._open.get(wf_id) or self._recent.get(wf_id)
        if w is not None:
            return w.rec.state
        rec = self._stored(wf_id)
        return None if rec is None else rec.state

    def output_pointer(self, wf_id: str, task_id: str) -> str:
        """The task's ``output_state_pointer`` if the task is in an open workflow, else ""."""
        w = self._open.get(wf_id)
        if w is None:
            return ""
        task = w.tasks.get(task_id)
        return task.spec.output_state_pointer if task is not None else ""

    # ------------------------------------------------------------ delete, fork

    def _check_new_id(self, wf_id: str) -> None:
        """Raises WorkflowExistsError unless ``wf_id`` is free for a new workflow (submit, fork)."""
        if wf_id in self._deleting:
            raise WorkflowExistsError(f"workflow {wf_id!r} is being deleted; submit it again once deleted")
        if wf_id in self._open or wf_id in self._recent or self._storage.get(T_WORKFLOWS, wf_id.encode()):
            raise WorkflowExistsError(f"workflow {wf_id!r} already exists")

    async def delete(self, wf_id: str, *, before_rows: Callable[[], Awaitable[int]] | None = None) -> int:
        """Removes a closed workflow's records (tasks, specs, indexes); returns the bytes freed.

        Its first commit marks the workflow as being deleted: from then on
        reads answer NOT_FOUND, as they will once it is gone, and its id stays
        taken (a submit of it is refused). Then ``before_rows`` runs (what
        else of the workflow goes: its state, memory and blobs; it returns the
        bytes it freed), then its tasks go in bounded batches, and the
        workflow row last. A crash between those commits leaves a workflow
        that reads as NOT_FOUND (:meth:`unfinished_deletes` names it, and the
        sidecar's start finishes it; a delete again does too); before the mark,
        a crash half-way left specs whose task rows were gone, and reading
        the workflow or its tasks failed with an internal error. The rows of
        a new workflow of the same id are never touched: the id is taken
        until the last commit.

        Raises:
            WorkflowNotFoundError, WorkflowNotClosedError.
        """
        if wf_id in self._deleting:
            raise WorkflowNotFoundError(f"workflow {wf_id!r} is being deleted", workflow_id=wf_id)
        self._deleting.add(wf_id)
        try:
            rec, freed = await self._mark_deleting(wf_id)
            if before_rows is not None:
                freed += await before_rows()
            return freed + await self._delete_rows(rec)
        finally:
            self._deleting.discard(wf_id)

    async def _mark_deleting(self, wf_id: str) -> tuple[WorkflowRecord, int]:
        """Commits the mark of a delete that begins; returns the record and its row's size."""
        if wf_id in self._open:
            raise WorkflowNotClosedError(
                f"workflow {wf_id!r} is {self._open[wf_id].rec.state}", workflow_id=wf_id
            )
        raw = self._storage.get(T_WORKFLOWS, wf_id.encode())
        if raw is None:
            raise WorkflowNotFoundError(f"workflow {wf_id!r} does not exist", workflow_id=wf_id)
        rec = _wf_codec.decode(raw)
        dropped = self._recent.pop(wf_id, None)
        if dropped is not None:
            self._forget_recent(dropped)
        if not rec.deleting:  # else a delete a crash cut short: marked already
            rec.deleting = True
            batch = self._storage.batch().put(T_WORKFLOWS, wf_id.encode(), _wf_codec.encode(rec))
            await self._committer.submit(batch.put(T_DELETING, wf_id.encode(), b""))
        return rec, len(raw)

    def unfinished_deletes(self) -> list[str]:
        """The workflows whose delete a stop cut short (marked, not yet gone), for a start to finish."""
        return [key.decode() for key, _ in self._storage.scan(T_DELETING, limit=100_000)]

    async def _delete_rows(self, rec: WorkflowRecord) -> int:
        wf_id = rec.workflow_id
        freed = 0
        prefix = prefix_key(wf_id)
        for table in (T_SPAWNS, T_TASKS, T_SPECS):
            while True:
                rows = self._storage.scan(table, prefix=prefix, limit=5000)
                if not rows:
                    break
                batch = self._storage.batch()
                for key, value in rows:
                    batch.delete(table, key)
                    freed += len(key) + len(value)
                await self._committer.submit(batch)
        batch = self._storage.batch()
        batch.delete(T_WORKFLOWS, wf_id.encode())
        batch.delete(T_BY_TIME, join_key(_U64 - rec.create_ns, wf_id))
        if rec.request_id:
            batch.delete(T_REQUESTS, rec.request_id.encode())
        batch.delete(T_DELETING, wf_id.encode())
        await self._committer.submit(batch)
        return freed

    def check_fork(self, source_id: str, new_id: str, rerun_task_ids: Sequence[str] = ()) -> None:
        """Raises what :meth:`fork` would for these arguments, changing nothing.

        ForkWorkflow calls it before it copies any state, so that a fork the
        scheduler would refuse leaves nothing behind.

        Raises:
            WorkflowNotFoundError, WorkflowExistsError, SpecError (unknown rerun id),
            PoolNotFoundError, TooManyOpenTasksError (or TooManyOpenBytesError).
        """
        self._fork_source(source_id, new_id, rerun_task_ids)

    def _fork_source(
        self, source_id: str, new_id: str, rerun_task_ids: Sequence[str]
    ) -> tuple[WorkflowRecord, list[TaskSpec], list[TaskRecord], set[str]]:
        """The source of a fork, its tasks and those that run again, after every check a fork makes.

        The fork is checked against the bounds as new work, with every spec's
        payload bytes (:func:`_spec_bytes`) and the output and failure of
        every terminal task that does not run again (a fork copies no
        heartbeat details): at least what it will hold (a task ended after
        the fork's cutoff starts again, without them), since
        :meth:`check_fork` does not know the cutoff and must not admit what
        :meth:`fork` would refuse.
        """
        source = self._load_workflow(source_id).record
        self._check_new_id(new_id)
        specs: list[TaskSpec] = []
        records: list[TaskRecord] = []
        w_src = self._find(source_id)
        if w_src is not None:
            specs = [t.spec for t in w_src.order]
            records = [t.rec for t in w_src.order]
        else:
            prefix = prefix_key(source_id)
            with self._storage.read() as view:
                for key, spec_raw in view.scan(T_SPECS, prefix=prefix, limit=10_000_000):
                    rec_raw = view.get(T_TASKS, key)
                    assert rec_raw is not None
                    specs.append(_spec_codec.decode(spec_raw))
                    records.append(_task_codec.decode(rec_raw))
        ids = {spec.task_id for spec in specs}
        for i, task_id in enumerate(rerun_task_ids):
            if task_id not in ids:
                raise SpecError(
                    "UNKNOWN_DEPENDENCY",
                    f"rerun_task_ids[{i}]",
                    f"{task_id!r} is not a task of {source_id!r}",
                )
        for spec in specs:
            if spec.pool not in self._pools:
                raise PoolNotFoundError(f"pool {spec.pool!r} does not exist", pool=spec.pool)
        again = _runs_again(specs, records, rerun_task_ids)
        kept_outputs = sum(
            len(old.output or b"") + _failure_bytes(old.failure)
            for spec, old in zip(specs, records, strict=True)
            if old.state in TERMINAL_TASK_STATES and spec.task_id not in again
        )
        self._check_open_work(
            len(specs), sum(_spec_bytes(spec) for spec in specs) + kept_outputs, "workflow_id"
        )
        return source, specs, records, again

    async def fork(  # noqa: C901 - copy, decide what reruns, wire, start
        self,
        source_id: str,
        new_id: str,
        *,
        cutoff_ns: int,
        rerun_task_ids: Sequence[str] = (),
        labels: dict[str, str] | None = None,
        source_version: int = 0,
    ) -> WorkflowRecord:
        """Starts ``new_id`` from ``source_id`` as it was at ``cutoff_ns`` (time travel).

        Each task keeps the terminal status it had by then (COMPLETED with
        its output; FAILED, REJECTED or CANCELLED with its failure; SKIPPED),
        unless listed in ``rerun_task_ids`` or downstream of one; every other
        task starts again from PENDING. The tasks waiting on a kept one are
        decided by their trigger rules as they would have been (the
        dependents of a kept failure are skipped under ALL_SUCCESS, run
        under ONE_FAILED), and the new workflow closes as any does once its
        last task ends: FAILED while a kept failure is not handled. Spawned
        tasks are kept with their edges. ``labels`` replace the source's
        (empty: the source's). The new workflow's state is the caller's business.

        Raises:
            WorkflowNotFoundError, WorkflowExistsError, SpecError (unknown rerun id),
            PoolNotFoundError, TooManyOpenTasksError or TooManyOpenBytesError
            (checked again here: the caller's own steps since
            :meth:`check_fork` may have let others in).
        """
        source, specs, records, again = self._fork_source(source_id, new_id, rerun_task_ids)
        now = self._clock()
        rec = WorkflowRecord(
            workflow_id=new_id,
            name=source.name,
            labels=dict(labels) if labels else dict(source.labels),
            budget=source.budget,
            create_ns=now,
            deadline_ns=now + int(source.budget.max_duration_s * 1e9),
            trace_id=secrets.token_hex(16),
            result_task_id=source.result_task_id,
            task_count=len(specs),
            default_pool=source.default_pool,
            default_retry_policy=source.default_retry_policy,
            forked_from=source_id,
            forked_version=source_version,
        )
        w = _Workflow(rec)
        rows = [_spec_codec.encode(spec) for spec in specs]  # all before anything is staged
        batch = self._t().batch
        batch.put(T_BY_TIME, join_key(_U64 - now, new_id), b"")
        for index, (spec, old) in enumerate(zip(specs, records, strict=True)):
            # Terminal states are final: one ended by the cutoff had that state then.
            kept = (
                old.state in TERMINAL_TASK_STATES and old.close_ns <= cutoff_ns and spec.task_id not in again
            )
            task_rec = TaskRecord(
                task_id=spec.task_id,
                index=index,
                create_ns=now,
                parent_task_id=old.parent_task_id,
                spawn_depth=old.spawn_depth,
                extra_depends_on=old.extra_depends_on,
            )
            if kept:
                _keep_outcome(task_rec, old, source_id, now)
            task = _Task(w, task_rec, spec)
            w.tasks[spec.task_id] = task
            w.order.append(task)
            w.payload_bytes += _payload_bytes(spec, task_rec)
            rec.counts[task_rec.state] = rec.counts.get(task_rec.state, 0) + 1
            if not kept:
                w.open += 1
            elif task_rec.state == "COMPLETED":
                rec.tasks_completed += 1
            elif task_rec.state in _FAIL_STATES:
                rec.tasks_failed += 1  # failed, rejected or cancelled (as _set_state counts them)
            batch.put(T_SPECS, task.key, rows[index])
            if self.stage_blob_reference is not None:
                for digest in (spec.input_blob_sha256, task_rec.output_blob_sha256):
                    if digest:
                        self.stage_blob_reference(batch, new_id, digest)
            self._dirty(task)
        for task in w.order:
            self._wire(task)
        self._open[new_id] = w
        self._open_tasks += len(w.order)
        self._open_bytes += w.payload_bytes
        self._dirty_wf(w)
        self._event(
            "WORKFLOW_SUBMITTED",
            w=w,
            attributes={
                "are.workflow.name": source.name,
                "are.workflow.task_count": len(specs),
                "are.fork.source_workflow_id": source_id,
                "are.fork.source_state_version": source_version,
                "are.trace_id": w.rec.trace_id,
            },
        )
        self._event(
            "WORKFLOW_FORKED",
            w=w,
            attributes={
                "are.fork.source_workflow_id": source_id,
                "are.fork.source_state_version": source_version,
            },
        )
        self._at(rec.deadline_ns, "deadline", w, 0)
        for task in w.order:
            if task.rec.state == "PENDING" and not task.unresolved:
                self._decide(task)
        if not w.open:
            self._closing.append(w)
        self._settle()
        self._pump()
        await asyncio.shield(self._t().future)  # a caller gone must not cancel a shared commit
        return rec

    def counters(self) -> dict[str, int]:
        """Engine-wide counters for diagnostics and benchmarks."""
        return {
            "open_workflows": len(self._open),
            "open_tasks": self._open_tasks,
            "max_open_tasks": self._max_open_tasks,
            "open_tasks_refused": self._open_tasks_refused,
            "open_bytes": self._open_bytes,
            "max_open_bytes": self._max_open_bytes,
            "open_bytes_refused": self._open_bytes_refused,
            "recent_closed_workflows": len(self._recent),
            "recent_closed_tasks": self._recent_tasks,
            "recent_closed_bytes": self._recent_bytes,
            "workers": len(self._workers),
            "timers": len(self._heap),
            "queued": sum(p.queued for p in self._pools.values()),
            "backlog": sum(p.backlogged for p in self._pools.values()),
            "running": sum(p.running for p in self._pools.values()),
        }


def _deliver(
    worker: WorkerHandle, assignments: list[Assignment], cancellations: list[tuple[int, Cancellation]]
) -> None:
    """Delivers one commit's assignments and cancellations to a worker in the order they were made.

    A cancellation made after k of the commit's assignments to the worker follows those and
    precedes the rest: an attempt that ended (a timeout) before its slot was given again is
    cancelled first, so the worker never holds more than its max_concurrency, and one assigned
    then cancelled in the same commit (a budget its own dispatch exceeded) is cancelled after
    its assignment. A long poll answers once, so its assignments go together, less those
    cancelled in the same commit: it hears of no cancellation, and their slots may have been
    given again (so it never gets more than its max_tasks, nor an attempt already over).
    """
    if worker.one_answer:
        if assignments:
            over = {(c.workflow_id, c.task_id, c.attempt) for _, c in cancellations}
            worker.on_assign([a for a in assignments if (a.workflow_id, a.task_id, a.attempt) not in over])
        if cancellations:
            worker.on_cancel([c for _, c in cancellations])
        return
    sent = 0
    run: list[Cancellation] = []
    for at, cancellation in cancellations:
        if at > sent:
            if run:
                worker.on_cancel(run)
                run = []
            worker.on_assign(assignments[sent:at])
            sent = at
        run.append(cancellation)
    if run:
        worker.on_cancel(run)
    if sent < len(assignments):
        worker.on_assign(assignments[sent:] if sent else assignments)


def _compact_if_stale(queue: _Queue, live: int) -> None:
    """Drops a queue's (or backlog's) stale entries once they outnumber its ``live`` ones and a slack.

    Only a pop drops stale entries, and it stops at the first live task of
    the first bucket that has one: while a task waits that no worker takes
    (its capability's workers gone), or a steady stream of higher priority
    keeps the lower buckets unread, every task cancelled or timed out while
    queued behind it left its entry, holding the task and its whole closed
    workflow in memory for good. Amortised constant time: a compaction of
    ``size`` entries follows at least ``size / 2`` removals since the last.
    """
    if queue.size > 2 * live + _STALE_SLACK:
        queue.compact()


def _entries(queue: _Queue) -> Iterator[_Task]:
    """A queue's (or backlog's) entries, live or stale, each line copied as it is reached."""
    for bucket in queue.buckets:
        for line in list(bucket.values()):
            yield from list(line)


def _timer_live(entry: tuple[int, int, str, Any, int]) -> bool:
    kind, subject, token = entry[2], entry[3], entry[4]
    if kind in ("pump", "reroute", "polls", "unserved"):
        return True
    if kind == "deadline":
        return bool(subject.rec.state == "RUNNING")
    return bool(subject.token == token and subject.wf.rec.state == "RUNNING")


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _parse_traceparent(traceparent: str) -> tuple[str, str]:
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        try:
            int(parts[1], 16)
            int(parts[2], 16)
        except ValueError:
            return "", ""
        if parts[1] != "0" * 32:
            return parts[1].lower(), parts[2].lower()
    return "", ""


def _workflow_view(rec: WorkflowRecord, result: TaskRecord | None, last_sequence: int) -> WorkflowView:
    """A workflow's view with its result task's output (inline or blob), if it has one."""
    if result is None:
        return WorkflowView(record=rec, last_sequence=last_sequence)
    return WorkflowView(
        record=rec,
        result=result.output,
        result_content_type=result.output_content_type,
        last_sequence=last_sequence,
        result_blob_sha256=result.output_blob_sha256,
        result_blob_size=result.output_blob_size,
    )


def _event_usage(usage: Usage) -> EventUsage:
    return EventUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_micro_usd=usage.cost_micro_usd,
        llm_calls=usage.llm_calls,
        tool_calls=usage.tool_calls,
    )


def _failure_info(failure: Failure) -> FailureInfo:
    return FailureInfo(
        message=failure.message,
        type=failure.type,
        non_retryable=failure.non_retryable,
        kind=failure.kind,
        timeout_type=failure.timeout_type,
    )
