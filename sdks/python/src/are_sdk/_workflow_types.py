"""Typed views of the scheduler's messages: workflows, tasks, failures, pools.

These are plain frozen dataclasses built from the ``are.v1`` messages, with
payloads decoded (:func:`~are_sdk._payload.decode_payload`), enums as Python
enums, and timestamps as aware ``datetime`` objects. Each keeps the message
it came from in ``raw`` for fields the SDK does not surface.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from are_sdk._errors import AreError
from are_sdk._payload import decode_payload
from are_sdk._proto.are.v1 import common_pb2, event_pb2, task_pb2

__all__ = [
    "ApprovalInfo",
    "FailureInfo",
    "PoolInfo",
    "PoolStatus",
    "SpawnedTasks",
    "TaskCounts",
    "TaskInfo",
    "TaskState",
    "UsageInfo",
    "WaitTimeoutError",
    "WorkflowDescription",
    "WorkflowFailedError",
    "WorkflowState",
    "WorkflowUpdate",
]


class WorkflowState(enum.IntEnum):
    """A workflow's lifecycle (``are.v1.WorkflowState``)."""

    UNSPECIFIED = 0
    RUNNING = 1
    CANCELLING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def closed(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED."""
        return self in _CLOSED_WORKFLOW


_CLOSED_WORKFLOW = frozenset({WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.CANCELLED})


class TaskState(enum.IntEnum):
    """A task's lifecycle (``are.v1.TaskState``)."""

    UNSPECIFIED = 0
    PENDING = 1
    SCHEDULED = 2
    AWAITING_APPROVAL = 3
    RUNNING = 4
    BACKING_OFF = 5
    COMPLETED = 6
    FAILED = 7
    SKIPPED = 8
    REJECTED = 9
    CANCELLED = 10

    @property
    def terminal(self) -> bool:
        """True for COMPLETED, FAILED, SKIPPED, REJECTED and CANCELLED."""
        return self >= TaskState.COMPLETED


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(kind: type[_E], value: int) -> _E:
    try:
        return kind(value)
    except ValueError:
        # A newer sidecar may send a value this SDK does not know.
        return kind(0)


def aware(value: datetime) -> datetime:
    """``value`` with its time zone; a naive one is local time, as ``datetime.timestamp()`` reads it.

    protobuf's ``FromDatetime`` reads a naive datetime as UTC: a filter of
    ``datetime.now() - timedelta(minutes=1)`` then missed the last minute
    everywhere but in UTC.
    """
    return value if value.tzinfo is not None else value.astimezone()


def timestamp(message: Any, name: str) -> datetime | None:
    """The Timestamp field ``name`` of ``message`` as an aware datetime, or None if unset."""
    if not message.HasField(name):
        return None
    value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return value


def _name(enum: Any, value: int, prefix: str) -> str:
    """The name of a proto enum value without its prefix; ``UNKNOWN_<n>`` for one this SDK does not know.

    A newer sidecar may send a value added after this SDK was built: decoding
    must not fail on it (a failed workflow's status, a watch's every update).
    """
    try:
        name: str = enum.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name.removeprefix(prefix)


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """Why a task attempt or a workflow failed (``are.v1.Failure``).

    Attributes:
        message: The human-readable explanation.
        type: The machine-readable type (an exception class name, or an
            ErrorReason name such as ``BUDGET_EXCEEDED`` for runtime failures).
        kind: Where it came from: ``APPLICATION``, ``TIMEOUT``, ``CANCELLED``,
            ``BUDGET_EXCEEDED``, ``APPROVAL_REJECTED``, ``WORKER_LOST``, ...
        non_retryable: Whether the reporter forbade retries.
        timeout_type: Which timeout fired, for ``TIMEOUT`` failures.
        details: The decoded details payload.
        stack_trace: The reporter's stack trace, if any.
        cause: The failure that caused this one.
    """

    message: str
    type: str
    kind: str
    non_retryable: bool = False
    timeout_type: str = ""
    details: Any = None
    stack_trace: str = ""
    cause: FailureInfo | None = None

    @classmethod
    def from_proto(cls, message: Any) -> FailureInfo:
        """Builds it from an ``are.v1.Failure``."""
        kind = _name(common_pb2.FailureKind, message.kind, "FAILURE_KIND_")
        timeout = _name(common_pb2.TimeoutType, message.timeout_type, "TIMEOUT_TYPE_")
        return cls(
            message=message.message,
            type=message.type,
            kind="APPLICATION" if kind == "UNSPECIFIED" else kind,
            non_retryable=message.non_retryable,
            timeout_type="" if timeout == "UNSPECIFIED" else timeout,
            details=decode_payload(message.details) if message.HasField("details") else None,
            stack_trace=message.stack_trace,
            cause=cls.from_proto(message.cause) if message.HasField("cause") else None,
        )

    def __str__(self) -> str:
        label = self.type or self.kind
        return f"{label}: {self.message}" if self.message else label


def _failure(message: Any) -> FailureInfo | None:
    return FailureInfo.from_proto(message.failure) if message.HasField("failure") else None


@dataclass(frozen=True, slots=True)
class UsageInfo:
    """Tokens, cost and counters summed over a task or workflow (``are.v1.UsageSummary``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    task_attempts: int = 0
    retries: int = 0
    cache_hits: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    cache_saved_tokens: int = 0
    """Tokens not spent thanks to cache hits (input plus output, as recorded with the entries)."""
    cache_saved_cost_micro_usd: int = 0
    """Cost not spent thanks to cache hits, in micro-US-dollars."""

    @classmethod
    def from_proto(cls, summary: Any) -> UsageInfo:
        """Builds it from an ``are.v1.UsageSummary``."""
        usage = summary.usage
        return cls(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_micro_usd=usage.cost_micro_usd,
            llm_calls=usage.llm_calls,
            tool_calls=usage.tool_calls,
            task_attempts=summary.task_attempts,
            retries=summary.retries,
            cache_hits=summary.cache_hits,
            tasks_completed=summary.tasks_completed,
            tasks_failed=summary.tasks_failed,
            cache_saved_tokens=summary.cache_saved_tokens,
            cache_saved_cost_micro_usd=summary.cache_saved_cost_micro_usd,
        )


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """A workflow's tasks counted by state."""

    pending: int = 0
    scheduled: int = 0
    awaiting_approval: int = 0
    running: int = 0
    backing_off: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    rejected: int = 0
    cancelled: int = 0
    total: int = 0

    @classmethod
    def from_proto(cls, counts: Any) -> TaskCounts:
        """Builds it from an ``are.v1.TaskCounts``."""
        return cls(
            pending=counts.pending,
            scheduled=counts.scheduled,
            awaiting_approval=counts.awaiting_approval,
            running=counts.running,
            backing_off=counts.backing_off,
            completed=counts.completed,
            failed=counts.failed,
            skipped=counts.skipped,
            rejected=counts.rejected,
            cancelled=counts.cancelled,
            total=counts.total,
        )


@dataclass(frozen=True, slots=True)
class WorkflowDescription:
    """A workflow's status (``are.v1.Workflow``), with its result decoded.

    Attributes:
        workflow_id: The workflow's id.
        name: The name given in the spec.
        state: Its :class:`WorkflowState`.
        labels: The labels given in the spec.
        task_counts: Tasks by state.
        usage: Tokens, cost and counters so far.
        result: The decoded output of the result task, once COMPLETED.
        failure: Why it FAILED or was CANCELLED.
        state_version: The latest version of its state document.
        trace_id: Its OpenTelemetry trace id.
        result_task_id: The task whose output is the result ("" if none).
        create_time: When it was submitted.
        close_time: When it closed.
        deadline_time: When its max_duration budget runs out.
        raw: The ``are.v1.Workflow`` message.
    """

    workflow_id: str
    name: str
    state: WorkflowState
    labels: Mapping[str, str]
    task_counts: TaskCounts
    usage: UsageInfo
    result: Any
    failure: FailureInfo | None
    state_version: int
    trace_id: str
    result_task_id: str
    create_time: datetime | None
    close_time: datetime | None
    deadline_time: datetime | None
    raw: Any = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, workflow: Any) -> WorkflowDescription:
        """Builds it from an ``are.v1.Workflow``."""
        return cls(
            workflow_id=workflow.workflow_id,
            name=workflow.name,
            state=_enum(WorkflowState, workflow.state),
            labels=dict(workflow.labels),
            task_counts=TaskCounts.from_proto(workflow.task_counts),
            usage=UsageInfo.from_proto(workflow.usage),
            result=decode_payload(workflow.result) if workflow.HasField("result") else None,
            failure=_failure(workflow),
            state_version=workflow.state_version,
            trace_id=workflow.trace_id,
            result_task_id=workflow.result_task_id,
            create_time=timestamp(workflow, "create_time"),
            close_time=timestamp(workflow, "close_time"),
            deadline_time=timestamp(workflow, "deadline_time"),
            raw=workflow,
        )

    @property
    def closed(self) -> bool:
        """True once the workflow is COMPLETED, FAILED or CANCELLED."""
        return self.state.closed


@dataclass(frozen=True, slots=True)
class ApprovalInfo:
    """A task's approval gate: when it opened and how it was resolved."""

    request_time: datetime | None
    expire_time: datetime | None
    decision: str
    approver: str
    comment: str
    resolve_time: datetime | None

    @classmethod
    def from_proto(cls, approval: Any) -> ApprovalInfo:
        """Builds it from an ``are.v1.Approval``."""
        decision = _name(task_pb2.ApprovalDecision, approval.decision, "APPROVAL_DECISION_")
        return cls(
            request_time=timestamp(approval, "request_time"),
            expire_time=timestamp(approval, "expire_time"),
            decision="" if decision == "UNSPECIFIED" else decision,
            approver=approval.approver,
            comment=approval.comment,
            resolve_time=timestamp(approval, "resolve_time"),
        )


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task's status (``are.v1.Task``), with its input and output decoded.

    Listings without payloads leave ``input`` and ``output`` None.

    Attributes:
        workflow_id: The task's workflow.
        task_id: Its id.
        state: Its :class:`TaskState`.
        state_reason: Why it is in that state, for humans.
        attempt: The current or last attempt (0 before the first dispatch).
        capability: The capability it was dispatched to.
        input: The decoded input.
        output: The decoded output, once COMPLETED.
        failure: The last failure, if any.
        usage: Usage summed over its attempts.
        worker_id: The worker holding (or that last held) it.
        parent_task_id: The task that spawned it, if any.
        approval: Its approval gate, if it has one.
        labels: Its labels.
        depends_on: Its dependencies.
        idempotency_key: The key shared by every attempt.
        create_time: When it was created.
        close_time: When it reached a terminal state.
        cache_entry_id: The cache entry that answered it, when it completed
            from the cache without being dispatched ("" otherwise).
        raw: The ``are.v1.Task`` message.
    """

    workflow_id: str
    task_id: str
    state: TaskState
    state_reason: str
    attempt: int
    capability: str
    input: Any
    output: Any
    failure: FailureInfo | None
    usage: UsageInfo
    worker_id: str
    parent_task_id: str
    approval: ApprovalInfo | None
    labels: Mapping[str, str]
    depends_on: tuple[str, ...]
    idempotency_key: str
    create_time: datetime | None
    close_time: datetime | None
    cache_entry_id: str
    raw: Any = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, task: Any) -> TaskInfo:
        """Builds it from an ``are.v1.Task``."""
        spec = task.spec
        return cls(
            workflow_id=task.workflow_id,
            task_id=task.task_id,
            state=_enum(TaskState, task.state),
            state_reason=task.state_reason,
            attempt=task.attempt,
            capability=task.capability or spec.capability,
            input=decode_payload(spec.input) if spec.HasField("input") else None,
            output=decode_payload(task.output) if task.HasField("output") else None,
            failure=_failure(task),
            usage=UsageInfo.from_proto(task.usage),
            worker_id=task.worker_id,
            parent_task_id=task.parent_task_id,
            approval=ApprovalInfo.from_proto(task.approval) if task.HasField("approval") else None,
            labels=dict(spec.labels),
            depends_on=tuple(spec.depends_on),
            idempotency_key=task.idempotency_key,
            create_time=timestamp(task, "create_time"),
            close_time=timestamp(task, "close_time"),
            cache_entry_id=task.cache_entry_id,
            raw=task,
        )


@dataclass(frozen=True, slots=True)
class WorkflowUpdate:
    """One message of :meth:`WorkflowHandle.watch`: the workflow after a change.

    Attributes:
        workflow: The workflow's status when the update was sent: after the
            change, possibly after later ones whose updates follow.
        task: The task that changed (without payloads), when tasks are
            watched, as it was when the update was sent.
        event_type: The recorded event's type without its prefix
            (``TASK_COMPLETED``), or "" for the initial status.
        sequence: The cursor to resume from.
    """

    workflow: WorkflowDescription
    task: TaskInfo | None
    event_type: str
    sequence: int

    @classmethod
    def from_proto(cls, response: Any) -> WorkflowUpdate:
        """Builds it from an ``are.v1.WatchWorkflowResponse``."""
        event_type = ""
        if response.HasField("event"):
            event_type = _name(event_pb2.EventType, response.event.event_type, "EVENT_TYPE_")
        return cls(
            workflow=WorkflowDescription.from_proto(response.workflow),
            task=TaskInfo.from_proto(response.task) if response.HasField("task") else None,
            event_type=event_type,
            sequence=response.sequence,
        )


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A pool's live counters (``are.v1.PoolStatus``)."""

    running: int
    queued: int
    backlog: int
    available_requests: float
    llm_tokens_last_minute: int
    dispatched_total: int
    rejected_total: int
    oldest_queued_age: timedelta

    @classmethod
    def from_proto(cls, status: Any) -> PoolStatus:
        """Builds it from an ``are.v1.PoolStatus``."""
        return cls(
            running=status.running,
            queued=status.queued,
            backlog=status.backlog,
            available_requests=status.available_requests,
            llm_tokens_last_minute=status.llm_tokens_last_minute,
            dispatched_total=status.dispatched_total,
            rejected_total=status.rejected_total,
            oldest_queued_age=timedelta(milliseconds=status.oldest_queued_age_ms),
        )


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A resource pool's limits (``are.v1.Pool``) and, when read, its live counts.

    Zero limits mean "no limit" (``max_queue_length`` 0 means 100,000).
    ``created`` is set by :meth:`Pools.put <are_sdk.Pools.put>`: True when the
    pool did not exist before (False for a pool read with get or list).
    """

    name: str
    max_concurrency: int
    requests_per_second: float
    burst: int
    llm_tokens_per_minute: int
    max_queue_length: int
    description: str
    create_time: datetime | None
    update_time: datetime | None
    status: PoolStatus | None = None
    created: bool = False

    @classmethod
    def from_proto(cls, pool: Any, status: Any = None, *, created: bool = False) -> PoolInfo:
        """Builds it from an ``are.v1.Pool``, an optional ``are.v1.PoolStatus`` and PutPool's ``created``."""
        return cls(
            name=pool.name,
            max_concurrency=pool.max_concurrency,
            requests_per_second=pool.requests_per_second,
            burst=pool.burst,
            llm_tokens_per_minute=pool.llm_tokens_per_minute,
            max_queue_length=pool.max_queue_length,
            description=pool.description,
            create_time=timestamp(pool, "create_time"),
            update_time=timestamp(pool, "update_time"),
            status=PoolStatus.from_proto(status) if status is not None else None,
            created=created,
        )


class SpawnedTasks(list[str]):
    """The ids of the tasks a spawn added, in request order: a ``list`` of ``str``.

    It is the list the spawn calls always returned, with the response's flag
    beside it (as :attr:`WorkflowHandle.deduplicated <are_sdk.WorkflowHandle>`
    is beside a submit's id).

    Attributes:
        deduplicated: True when the spawn's ``request_id`` matched an earlier
            spawn: nothing new was added and the ids are that spawn's.
    """

    __slots__ = ("deduplicated",)

    def __init__(self, task_ids: Iterable[str] = (), *, deduplicated: bool = False) -> None:
        super().__init__(task_ids)
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"SpawnedTasks({list(self)!r}, deduplicated={self.deduplicated!r})"


class WorkflowFailedError(AreError):
    """A workflow closed FAILED or CANCELLED while its result was awaited.

    Attributes:
        workflow_id: The workflow's id.
        state: ``WorkflowState.FAILED`` or ``WorkflowState.CANCELLED``.
        failure: Why, as the sidecar recorded it (None if it recorded nothing).
        workflow: The workflow's final status.
    """

    def __init__(self, workflow: WorkflowDescription) -> None:
        self.workflow_id = workflow.workflow_id
        self.state = workflow.state
        self.failure = workflow.failure
        self.workflow = workflow
        why = f": {workflow.failure}" if workflow.failure else ""
        super().__init__(f"workflow {workflow.workflow_id} {workflow.state.name}{why}")


class WaitTimeoutError(AreError, TimeoutError):
    """Waiting for a workflow ran out of time; the workflow itself goes on."""
