"""Scheduler records: specs as the engine sees them, and the durable task/workflow rows.

Records made per task (specs, rows, assignments, failures, usage) are
``gc=False``: they hold only scalars, bytes, strings and other such records,
so they can never be part of a reference cycle, and leaving them out of the
cyclic garbage collector's accounting keeps a 10,000-task fan-out from
triggering thousands of collections.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "COUNTER_MAX",
    "TERMINAL_TASK_STATES",
    "TRIGGER_RULES",
    "Approval",
    "Assignment",
    "Budget",
    "CacheKey",
    "Condition",
    "DependencyResult",
    "Failure",
    "PoolLimits",
    "RetryPolicy",
    "TaskOrigin",
    "TaskRecord",
    "TaskSpec",
    "Usage",
    "WorkflowRecord",
    "WorkflowSpec",
    "saturating_add",
]

COUNTER_MAX = 2**63 - 1
"""Sums of reported usage saturate here: records are MessagePack int64, and a sum
past it would fail the commit that stores it (a fail-stop of the sidecar)."""


def saturating_add(total: int, more: int) -> int:
    """``total + more``, at most :data:`COUNTER_MAX`."""
    return min(total + more, COUNTER_MAX)


TRIGGER_RULES = ("ALL_SUCCESS", "ALL_DONE", "ONE_FAILED", "ONE_SUCCESS", "NONE_FAILED")
TERMINAL_TASK_STATES = frozenset({"COMPLETED", "FAILED", "SKIPPED", "REJECTED", "CANCELLED"})
OPEN_WORKFLOW_STATES = frozenset({"RUNNING", "CANCELLING"})


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How failed attempts are retried (defaults as in ``are.v1.RetryPolicy``)."""

    initial_interval_s: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_s: float = 0.0  # 0: 100 x initial_interval_s
    maximum_attempts: int = 3
    non_retryable_types: tuple[str, ...] = ()

    def delay_bound_s(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt ``attempt`` (1-based)."""
        cap = self.maximum_interval_s or 100.0 * self.initial_interval_s
        bound: float = self.initial_interval_s * self.backoff_coefficient ** max(0, attempt - 1)
        return min(bound, cap)


class Condition(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A comparison of a dependency's JSON output at a pointer with a JSON value."""

    task_id: str
    pointer: str
    operator: str  # ComparisonOperator name without prefix
    value: object = None


class CacheKey(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A task's cache key: answered from the cache without dispatch on a hit."""

    namespace: str
    prompt: str
    exact_only: bool = False
    read_only: bool = False
    ttl_s: float = 0.0  # 0: the namespace default


class TaskOrigin(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The task on whose behalf an integration hook acts: what the events it records name.

    A lookup of a task's cache key comes before any attempt (``attempt`` 0,
    no ``span_id``, as the task's own TASK_CACHE_HIT and TASK_CACHE_MISS);
    the store of its output follows a completed attempt, whose number and
    span id (16 hex digits) it carries.
    """

    workflow_id: str
    task_id: str
    attempt: int = 0
    span_id: str = ""


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One task as the engine needs it; ``raw`` keeps the submitted spec for readers."""

    task_id: str
    capability: str
    input: bytes = b""
    content_type: str = ""
    depends_on: tuple[str, ...] = ()
    trigger_rule: str = "ALL_SUCCESS"
    conditions: tuple[Condition, ...] = ()
    retry_policy: RetryPolicy | None = None
    schedule_to_start_s: float = 0.0  # 0: no limit
    start_to_close_s: float = 600.0
    heartbeat_s: float = 0.0  # 0: no heartbeat required
    schedule_to_close_s: float = 0.0
    pool: str = ""
    priority: int = 3
    requires_approval: bool = False
    approval_timeout_s: float = 0.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    estimated_tokens: int = 0
    exclude_dependency_outputs: bool = False
    raw: bytes = b""  # the serialized are.v1.TaskSpec, opaque to the engine
    intent: str = ""  # routed to a capability when scheduled, again while it waits (capability is then "")
    output_state_pointer: str = ""  # where the output goes in the state document
    cache_key: CacheKey | None = None
    # A blob input (``input`` is then empty): its SHA-256 (hex) and size; "" for inline.
    input_blob_sha256: str = ""
    input_blob_size: int = 0


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    """Per-workflow bounds (defaults filled in)."""

    max_tasks: int = 10_000
    max_cost_micro_usd: int = 0
    max_duration_s: float = 7 * 86_400.0
    max_tokens: int = 0
    max_attempts: int = 0  # 0: 10 x max_tasks
    max_spawn_depth: int = 8


class WorkflowSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow to submit, as the engine needs it."""

    workflow_id: str = ""
    name: str = ""
    tasks: tuple[TaskSpec, ...] = ()
    budget: Budget = msgspec.field(default_factory=Budget)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    default_retry_policy: RetryPolicy | None = None
    default_pool: str = ""
    result_task_id: str = ""
    traceparent: str = ""
    tracestate: str = ""  # W3C tracestate: kept with a valid traceparent only, handed to workers


class Failure(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Why an attempt, a task or a workflow failed (mirrors ``are.v1.Failure``)."""

    message: str
    type: str = ""
    non_retryable: bool = False
    kind: str = "APPLICATION"
    timeout_type: str = ""
    stack_trace: str = ""
    details: bytes = b""
    details_content_type: str = ""
    cause: Failure | None = None
    """The failure that caused this one (a worker's report keeps at most 8 levels)."""


class Usage(msgspec.Struct, kw_only=True, gc=False):
    """Tokens, cost and calls, summed."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    llm_calls: int = 0
    tool_calls: int = 0

    def add(self, other: Usage) -> None:
        """Adds ``other`` into this usage (each counter saturating at :data:`COUNTER_MAX`)."""
        self.input_tokens = saturating_add(self.input_tokens, other.input_tokens)
        self.output_tokens = saturating_add(self.output_tokens, other.output_tokens)
        self.cost_micro_usd = saturating_add(self.cost_micro_usd, other.cost_micro_usd)
        self.llm_calls = saturating_add(self.llm_calls, other.llm_calls)
        self.tool_calls = saturating_add(self.tool_calls, other.tool_calls)

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class Approval(msgspec.Struct, kw_only=True, gc=False):
    """An approval gate: when it opened and how it was resolved."""

    request_ns: int
    expire_ns: int = 0
    decision: str = ""  # "", "APPROVE" or "REJECT"
    approver: str = ""
    comment: str = ""
    resolve_ns: int = 0


class TaskRecord(msgspec.Struct, kw_only=True, gc=False):
    """The durable, mutable status of one task (its spec is stored apart, once)."""

    task_id: str
    index: int
    state: str = "PENDING"
    state_reason: str = ""
    attempt: int = 0
    free_attempts: int = 0  # attempts lost to sidecar restarts, not charged to the policy
    outcome_attempt: int = 0  # the attempt whose outcome was recorded last
    worker_id: str = ""
    capability: str = ""
    output: bytes | None = None
    output_content_type: str = ""
    failure: Failure | None = None
    parent_task_id: str = ""
    spawn_depth: int = 0
    approval: Approval | None = None
    create_ns: int = 0
    schedule_ns: int = 0
    first_schedule_ns: int = 0  # its first scheduling: schedule_to_close_timeout counts from it
    start_ns: int = 0
    close_ns: int = 0
    heartbeat_ns: int = 0
    next_attempt_ns: int = 0
    span_id: str = ""
    heartbeat_details: bytes | None = None
    heartbeat_content_type: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    retries: int = 0
    cache_entry_id: str = ""  # the cache entry that answered the task, if it did
    cache_saved_tokens: int = 0  # what that answer cost when first made
    cache_saved_cost_micro_usd: int = 0
    extra_depends_on: tuple[str, ...] = ()  # added by SpawnTasks(dependents_wait)
    # A blob output (``output`` is then empty): its SHA-256 (hex) and size; "" for inline.
    output_blob_sha256: str = ""
    output_blob_size: int = 0


class WorkflowRecord(msgspec.Struct, kw_only=True):
    """The durable, mutable status of one workflow."""

    workflow_id: str
    name: str = ""
    state: str = "RUNNING"
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    budget: Budget = msgspec.field(default_factory=Budget)
    create_ns: int = 0
    close_ns: int = 0
    deadline_ns: int = 0
    trace_id: str = ""
    parent_span_id: str = ""
    tracestate: str = ""  # the submitter's W3C tracestate (its traceparent was valid), for workers
    result_task_id: str = ""
    failure: Failure | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    task_attempts: int = 0
    uncharged_attempts: int = 0  # of task_attempts, those lost through no fault of their worker
    retries: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    cache_hits: int = 0  # tasks answered from the cache without dispatch
    cache_saved_tokens: int = 0  # the tokens those cached answers cost when first made
    cache_saved_cost_micro_usd: int = 0  # and their cost
    request_id: str = ""
    request_hash: str = ""
    task_count: int = 0
    default_pool: str = "default"
    default_retry_policy: RetryPolicy | None = None
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    forked_from: str = ""  # the source workflow of a ForkWorkflow
    forked_version: int = 0  # the source's state version the fork started from
    # A DeleteWorkflow began (its first commit): reads answer NOT_FOUND, and a delete again
    # finishes it (a crash may have cut it short between its commits).
    deleting: bool = False


class PoolLimits(msgspec.Struct, frozen=True, kw_only=True):
    """A resource pool's limits (0 means unlimited except max_queue_length: 0 means 100,000)."""

    name: str
    max_concurrency: int = 0
    requests_per_second: float = 0.0
    burst: int = 0
    llm_tokens_per_minute: int = 0
    max_queue_length: int = 0
    description: str = ""
    create_ns: int = 0
    update_ns: int = 0

    @property
    def queue_limit(self) -> int:
        """The effective maximum queue length."""
        return self.max_queue_length or 100_000

    @property
    def bucket_size(self) -> float:
        """The effective token bucket size for requests_per_second."""
        if self.burst:
            return float(self.burst)
        return float(max(1, -(-self.requests_per_second // 1)))


class DependencyResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a task receives about one dependency."""

    task_id: str
    state: str
    output: bytes | None = None
    content_type: str = ""
    failure: Failure | None = None
    blob_sha256: str = ""  # the output is this blob (``output`` is then empty)
    blob_size: int = 0


class Assignment(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One attempt of one task handed to a worker."""

    workflow_id: str
    task_id: str
    attempt: int
    idempotency_key: str
    capability: str
    input: bytes
    content_type: str
    dependencies: tuple[DependencyResult, ...]
    deadline_ns: int
    heartbeat_timeout_s: float
    traceparent: str
    tracestate: str = ""  # the workflow submitter's, passed on with the attempt's traceparent
    last_failure: Failure | None
    last_heartbeat_details: bytes | None
    last_heartbeat_content_type: str
    labels: dict[str, str]
    maximum_attempts: int
    input_blob_sha256: str = ""  # the input is this blob (``input`` is then empty)
    input_blob_size: int = 0
