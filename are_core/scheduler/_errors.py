"""The scheduler's exceptions; the sidecar maps each to one gRPC status.

Exceptions::

    SchedulerError
    ├── SpecError                 a bad spec: reason + field path (INVALID_ARGUMENT)
    ├── NotImplementedFieldError  a field the engine does not serve yet (UNIMPLEMENTED)
    ├── BlobNotFoundError         a payload's blob reference names no stored blob
    ├── WorkflowNotFoundError
    ├── TaskNotFoundError
    ├── PoolNotFoundError
    ├── WorkflowExistsError       a taken workflow id
    ├── TaskExistsError           a spawned task id already in the workflow
    ├── RequestIdConflictError    the same request_id with another request
    ├── TaskNotHeldError          the attempt is not running (any more)
    ├── TaskAlreadyCompletedError the attempt already reported its outcome
    ├── NotAwaitingApprovalError
    ├── WorkflowClosedError
    ├── WorkflowNotClosedError    DeleteWorkflow of an open workflow
    ├── RoutingError              a route hook found no worker class for an intent
    ├── PoolQueueFullError        backpressure, with a retry hint
    ├── OpenWorkLimitError        a bound on what open workflows hold in memory, with a retry hint
    │   ├── TooManyOpenTasksError   their tasks (``max_open_tasks``)
    │   └── TooManyOpenBytesError   their inline payload bytes (``max_open_bytes``)
    └── BudgetExceededError       a spawn past max_tasks or max_spawn_depth
"""

from __future__ import annotations

__all__ = [
    "BlobNotFoundError",
    "BudgetExceededError",
    "NotAwaitingApprovalError",
    "NotImplementedFieldError",
    "OpenWorkLimitError",
    "PoolNotFoundError",
    "PoolQueueFullError",
    "RequestIdConflictError",
    "RoutingError",
    "SchedulerError",
    "SpecError",
    "TaskAlreadyCompletedError",
    "TaskExistsError",
    "TaskNotFoundError",
    "TaskNotHeldError",
    "TooManyOpenBytesError",
    "TooManyOpenTasksError",
    "WorkflowClosedError",
    "WorkflowExistsError",
    "WorkflowNotClosedError",
    "WorkflowNotFoundError",
]


class SchedulerError(Exception):
    """Base of the scheduler's exceptions.

    ``identifiers`` (``workflow_id``, ``task_id``, ``attempt``, ``pool``)
    become ``metadata``: what a caller needs to act on the error, sent as
    ErrorInfo metadata.
    """

    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str = "", **identifiers: object) -> None:
        self.metadata: dict[str, str] = {k: str(v) for k, v in identifiers.items() if v not in ("", None)}
        super().__init__(message)


class SpecError(SchedulerError):
    """A spec is invalid; ``field`` is the exact path, ``reason`` an ErrorReason name.

    ``limit`` is the bound a LIMIT_EXCEEDED refusal names (ErrorInfo metadata "limit").
    """

    def __init__(self, reason: str, field: str, message: str, *, limit: int | None = None) -> None:
        self.reason = reason
        self.field = field
        self.message = message
        self.limit = limit
        super().__init__(f"{field}: {message}")


class NotImplementedFieldError(SchedulerError):
    """A field whose feature is not wired into the scheduler yet."""

    reason = "NOT_IMPLEMENTED"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class BlobNotFoundError(SchedulerError):
    """A payload references a blob that is not in the blob store; ``field`` names the reference."""

    reason = "BLOB_NOT_FOUND"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class WorkflowNotFoundError(SchedulerError):
    """No workflow has this id."""

    reason = "WORKFLOW_NOT_FOUND"


class TaskNotFoundError(SchedulerError):
    """The workflow has no task with this id."""

    reason = "TASK_NOT_FOUND"


class PoolNotFoundError(SchedulerError):
    """No pool has this name."""

    reason = "POOL_NOT_FOUND"


class WorkflowExistsError(SchedulerError):
    """The workflow id is taken."""

    reason = "WORKFLOW_ALREADY_EXISTS"


class TaskExistsError(SchedulerError):
    """A spawned task's id is already in the workflow."""

    reason = "TASK_ALREADY_EXISTS"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class RequestIdConflictError(SchedulerError):
    """The request_id was used before with a different request."""

    reason = "REQUEST_ID_CONFLICT"


class TaskNotHeldError(SchedulerError):
    """The attempt is not running: it timed out, was lost, cancelled or never existed."""

    reason = "TASK_NOT_HELD"


class TaskAlreadyCompletedError(SchedulerError):
    """The attempt (or the task) already has its outcome recorded."""

    reason = "TASK_ALREADY_COMPLETED"


class NotAwaitingApprovalError(SchedulerError):
    """The task is not waiting at an approval gate; ``task_state`` is the state it is in."""

    reason = "TASK_NOT_AWAITING_APPROVAL"

    def __init__(self, message: str, *, task_state: str) -> None:
        super().__init__(message)
        self.metadata = {"task_state": task_state}


class WorkflowClosedError(SchedulerError):
    """The workflow is closed (or closing) and takes no new work."""

    reason = "WORKFLOW_CLOSED"


class PoolQueueFullError(SchedulerError):
    """Admitting the tasks would overflow a pool's queue; retry after ``retry_after_s``."""

    reason = "POOL_QUEUE_FULL"

    def __init__(self, pool: str, queued: int, incoming: int, limit: int, retry_after_s: float) -> None:
        self.pool = pool
        self.retry_after_s = retry_after_s
        super().__init__(
            f"pool {pool!r} queue is full: {queued} queued + {incoming} incoming > max_queue_length {limit}",
            pool=pool,
            limit=limit,
        )


class OpenWorkLimitError(SchedulerError):
    """Admitting the work would take what open workflows hold in memory over one of the sidecar's bounds.

    Open workflows hold their tasks, and their inline inputs and outputs, in
    memory until they close, so room comes back as they finish: retry after
    ``retry_after_s``. ``metadata`` names the limit with the bound, the count
    held and the incoming, and the share of the bound the work was refused
    at: ``share`` is ``new_work`` for a new workflow (a submit or fork,
    admitted within ``share_limit``, a part of the bound: the rest is kept for
    spawns into running workflows) or ``all`` for a spawn (``share_limit`` is
    then the whole bound). The subclasses say which bound.
    """

    reason = "RESOURCE_LIMIT"
    _what = ("", "", "")  # the limit's name, the unit counted, what the count holds

    def __init__(
        self, count: int, incoming: int, limit: int, retry_after_s: float, *, share_limit: int | None = None
    ) -> None:
        name, unit, held = self._what
        self.count = count
        self.incoming = incoming
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.new_work = share_limit is not None
        self.share_limit = limit if share_limit is None else share_limit
        if self.new_work:
            over = (
                f"{self.share_limit:,}, the share of {name} {limit:,} that new workflows may take "
                "(the rest is kept for spawns into running workflows)"
            )
        else:
            over = f"{name} {limit:,}"
        super().__init__(
            f"the sidecar holds {count:,} {held}; {incoming:,} more would exceed {over}: "
            "retry once workflows finish",
            limit=name,
            **{name: limit, f"open_{unit}": count, f"incoming_{unit}": incoming},
            share="new_work" if self.new_work else "all",
            share_limit=self.share_limit,
        )


class TooManyOpenTasksError(OpenWorkLimitError):
    """The tasks of open workflows (``max_open_tasks``); ``count`` and ``incoming`` are tasks."""

    _what = ("max_open_tasks", "tasks", "tasks of open workflows")


class TooManyOpenBytesError(OpenWorkLimitError):
    """Their inline payload bytes (``max_open_bytes``); ``count`` and ``incoming`` are bytes."""

    _what = ("max_open_bytes", "bytes", "bytes of inline payloads in open workflows")


class BudgetExceededError(SchedulerError):
    """A spawn would exceed the workflow's budget; the workflow has failed. ``budget`` names it."""

    reason = "BUDGET_EXCEEDED"

    def __init__(self, message: str, *, budget: str, limit: int) -> None:
        super().__init__(message)
        self.metadata = {"budget": budget, "limit": str(limit)}


class WorkflowNotClosedError(SchedulerError):
    """The workflow is still open (DeleteWorkflow takes closed workflows only)."""

    reason = "WORKFLOW_NOT_CLOSED"


class RoutingError(SchedulerError):
    """The route hook found no worker class for a task's intent (the attempt fails with ROUTING)."""

    reason = "NO_ROUTE_ABOVE_THRESHOLD"
