"""A small builder for workflow specs: DAGs of tasks, JSON payloads by default.

::

    spec = (
        WorkflowSpec("research-pipeline")
        .task("research", capability="research", input={"topic": "tides"})
        .task("write", capability="write", depends_on=["research"])
        .task("design", capability="design", depends_on=["research"])
        .task("review", capability="review", depends_on=["write", "design"], requires_approval=True)
    )
    handle = await client.submit_workflow(spec)

A task with a :class:`CacheKey` is answered from the semantic cache when it
can be, without being dispatched (``cache_key=CacheKey("gpt-4o:sys1", prompt)``).

The builder checks the mistakes that are cheap to see on the client (task ids,
duplicates, unknown dependencies, cycles, a task's target) and raises
:class:`WorkflowSpecError` naming the field as the sidecar would
(``spec.tasks[3].depends_on[0]``). The sidecar remains the authority: every
other bound is checked there and comes back as
:class:`~are_sdk.InvalidArgumentError`.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Self

from google.protobuf import duration_pb2

from are_sdk._errors import AreError, FieldViolation
from are_sdk._payload import encode_payload
from are_sdk._proto.are.v1 import common_pb2, task_pb2, workflow_pb2

__all__ = [
    "Budget",
    "CacheKey",
    "ComparisonOperator",
    "Condition",
    "Duration",
    "RetryPolicy",
    "TaskSpec",
    "TriggerRule",
    "WorkflowSpec",
    "WorkflowSpecError",
    "to_duration",
]

#: A span of time: seconds as a number, or a ``timedelta``.
Duration = float | int | timedelta

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# W3C Trace Context, `tracestate` (https://www.w3.org/TR/trace-context/#tracestate-header):
# list-members `key=value`, a simple key or `tenant@system`, a value of printable ASCII
# without "," or "=" (spaces inside, not at its end); at most 32 members, 512 characters
# in all (the contract's bound, are.v1.TraceContext).
_TRACESTATE_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_TRACESTATE_MAX_CHARS = 512
_TRACESTATE_MAX_MEMBERS = 32


class WorkflowSpecError(AreError, ValueError):
    """A workflow spec is invalid before it is even sent.

    Attributes:
        field_violations: Each invalid field, named as the sidecar names it
            (``spec.tasks[3].depends_on[0]``), and why.
    """

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.field_violations: tuple[FieldViolation, ...] = tuple(violations)
        text = "invalid workflow spec:" + "".join(f"\n  {v.field}: {v.description}" for v in violations)
        super().__init__(text)


class TriggerRule(enum.IntEnum):
    """Which outcomes of a task's dependencies let it run (``are.v1.TriggerRule``)."""

    ALL_SUCCESS = 1
    ALL_DONE = 2
    ONE_FAILED = 3
    ONE_SUCCESS = 4
    NONE_FAILED = 5


class ComparisonOperator(enum.IntEnum):
    """How a :class:`Condition` compares an upstream value (``are.v1.ComparisonOperator``)."""

    EQUAL = 1
    NOT_EQUAL = 2
    LESS_THAN = 3
    LESS_THAN_OR_EQUAL = 4
    GREATER_THAN = 5
    GREATER_THAN_OR_EQUAL = 6
    EXISTS = 7
    NOT_EXISTS = 8
    CONTAINS = 9
    IN = 10
    TRUTHY = 11


_OPERATOR_SYMBOLS = {
    "==": ComparisonOperator.EQUAL,
    "!=": ComparisonOperator.NOT_EQUAL,
    "<": ComparisonOperator.LESS_THAN,
    "<=": ComparisonOperator.LESS_THAN_OR_EQUAL,
    ">": ComparisonOperator.GREATER_THAN,
    ">=": ComparisonOperator.GREATER_THAN_OR_EQUAL,
}


def _any(value: object) -> Any:
    """Passes an enum number where the generated stubs expect their enum type."""
    return value


def _trigger_rule(value: TriggerRule | str | None) -> int:
    if value is None:
        return 0
    if isinstance(value, TriggerRule):
        return int(value)
    try:
        return int(TriggerRule[value.upper()])
    except KeyError:
        names = ", ".join(r.name.lower() for r in TriggerRule)
        raise ValueError(f"unknown trigger rule {value!r}; expected one of {names}") from None


def _operator(value: ComparisonOperator | str) -> ComparisonOperator:
    if isinstance(value, ComparisonOperator):
        return value
    symbol = _OPERATOR_SYMBOLS.get(value)
    if symbol is not None:
        return symbol
    try:
        return ComparisonOperator[value.upper()]
    except KeyError:
        names = ", ".join([*_OPERATOR_SYMBOLS, *(o.name.lower() for o in ComparisonOperator)])
        raise ValueError(f"unknown comparison operator {value!r}; expected one of {names}") from None


def to_duration(value: Duration | None) -> Any:
    """Converts seconds or a ``timedelta`` to a ``google.protobuf.Duration`` (None stays None)."""
    if value is None:
        return None
    delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    message = duration_pb2.Duration()
    message.FromTimedelta(delta)
    return message


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed attempts are retried: exponential backoff with full jitter.

    Zero or None fields take the sidecar's defaults (3 attempts, 1 s initial
    interval, coefficient 2.0, maximum 100 times the initial interval).
    """

    maximum_attempts: int = 0
    initial_interval: Duration | None = None
    backoff_coefficient: float = 0.0
    maximum_interval: Duration | None = None
    non_retryable_failure_types: tuple[str, ...] = ()

    def to_proto(self) -> Any:
        """The ``are.v1.RetryPolicy`` message."""
        return common_pb2.RetryPolicy(
            maximum_attempts=self.maximum_attempts,
            initial_interval=to_duration(self.initial_interval),
            backoff_coefficient=self.backoff_coefficient,
            maximum_interval=to_duration(self.maximum_interval),
            non_retryable_failure_types=list(self.non_retryable_failure_types),
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """A workflow's budgets, its loop guard; zero or None means the sidecar default."""

    max_tasks: int = 0
    max_cost_micro_usd: int = 0
    max_duration: Duration | None = None
    max_tokens: int = 0
    max_attempts: int = 0
    max_spawn_depth: int = 0

    def to_proto(self) -> Any:
        """The ``are.v1.WorkflowBudget`` message."""
        return workflow_pb2.WorkflowBudget(
            max_tasks=self.max_tasks,
            max_cost_micro_usd=self.max_cost_micro_usd,
            max_duration=to_duration(self.max_duration),
            max_tokens=self.max_tokens,
            max_attempts=self.max_attempts,
            max_spawn_depth=self.max_spawn_depth,
        )


@dataclass(frozen=True, slots=True)
class StateRetention:
    """How many versions of the workflow's state are kept; zero or None means the sidecar default.

    Attributes:
        keep_versions: Keep at least this many most recent versions (default 1,000).
        keep_duration: Keep every version younger than this, seconds or a
            timedelta (default 7 days).
    """

    keep_versions: int = 0
    keep_duration: Duration | None = None

    def to_proto(self) -> Any:
        """The ``are.v1.StateRetention`` message."""
        return workflow_pb2.StateRetention(
            keep_versions=self.keep_versions, keep_duration=to_duration(self.keep_duration)
        )


@dataclass(frozen=True, slots=True)
class Condition:
    """Runs a task only if a dependency's JSON output satisfies a comparison.

    ``Condition("research", "/score", ">=", 0.7)``: the task runs when the
    research task's output has ``score >= 0.7``, and is skipped otherwise.

    Attributes:
        task_id: The dependency whose output is inspected (must be in depends_on).
        pointer: A JSON Pointer into that output; "" is the whole output.
        operator: A :class:`ComparisonOperator`, its name (``"contains"``) or a
            symbol (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``).
        value: The JSON value to compare with (ignored by exists, not_exists
            and truthy).
    """

    task_id: str
    pointer: str
    operator: ComparisonOperator | str
    value: Any = None

    def to_proto(self) -> Any:
        """The ``are.v1.Condition`` message."""
        return task_pb2.Condition(
            task_id=self.task_id,
            pointer=self.pointer,
            operator=_any(int(_operator(self.operator))),
            value_json=json.dumps(self.value, separators=(",", ":")),
        )


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Lets the scheduler answer a task from the semantic cache (``are.v1.TaskCacheKey``).

    When the task becomes ready the scheduler looks ``prompt`` up in
    ``namespace``: on a hit the task completes with the cached response as
    its output without being dispatched (its :class:`~are_sdk.TaskInfo` names
    the entry in ``cache_entry_id`` and its usage counts the savings); on a
    miss it is dispatched and, unless ``read_only``, its successful output is
    stored under the prompt with the usage its worker reported as the
    entry's cost.

    Attributes:
        namespace: The cache namespace; it must exist when the workflow is submitted.
        prompt: The prompt text that identifies the answer, at most 1 MiB.
        exact_only: Consult the exact tier only (no semantic near-matches).
        read_only: Do not store the task's output after a miss.
        ttl: The time to live of a stored entry; None means the namespace's default.
    """

    namespace: str
    prompt: str
    exact_only: bool = False
    read_only: bool = False
    ttl: Duration | None = None

    def to_proto(self) -> Any:
        """The ``are.v1.TaskCacheKey`` message."""
        return task_pb2.TaskCacheKey(
            namespace=self.namespace,
            prompt=self.prompt,
            exact_only=self.exact_only,
            read_only=self.read_only,
            ttl=to_duration(self.ttl),
        )


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a workflow: what runs, on what input, after what, under which limits.

    Exactly one of ``capability`` (a worker capability) and ``intent`` (free
    text the router maps to a capability) must be given. ``input`` is sent as
    JSON unless it is ``bytes`` or a :class:`~are_sdk.RawPayload`, or
    ``content_type`` says otherwise. Durations are seconds or ``timedelta``.
    See ``are.v1.TaskSpec`` for every field's bounds and defaults.
    """

    task_id: str
    capability: str | None = None
    intent: str | None = None
    input: Any = None
    content_type: str | None = None
    depends_on: tuple[str, ...] = ()
    trigger_rule: TriggerRule | str | None = None
    conditions: tuple[Condition, ...] = ()
    retry_policy: RetryPolicy | None = None
    schedule_to_start_timeout: Duration | None = None
    start_to_close_timeout: Duration | None = None
    heartbeat_timeout: Duration | None = None
    schedule_to_close_timeout: Duration | None = None
    pool: str = ""
    priority: int = 0
    requires_approval: bool = False
    approval_timeout: Duration | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    estimated_tokens: int = 0
    output_state_pointer: str = ""
    exclude_dependency_outputs: bool = False
    display_name: str = ""
    cache_key: CacheKey | None = None

    def to_proto(self) -> Any:
        """The ``are.v1.TaskSpec`` message (without validation; see :meth:`WorkflowSpec.validate`)."""
        message = task_pb2.TaskSpec(
            task_id=self.task_id,
            depends_on=list(self.depends_on),
            trigger_rule=_any(_trigger_rule(self.trigger_rule)),
            conditions=[c.to_proto() for c in self.conditions],
            retry_policy=self.retry_policy.to_proto() if self.retry_policy else None,
            schedule_to_start_timeout=to_duration(self.schedule_to_start_timeout),
            start_to_close_timeout=to_duration(self.start_to_close_timeout),
            heartbeat_timeout=to_duration(self.heartbeat_timeout),
            schedule_to_close_timeout=to_duration(self.schedule_to_close_timeout),
            pool=self.pool,
            priority=self.priority,
            requires_approval=self.requires_approval,
            approval_timeout=to_duration(self.approval_timeout),
            labels=dict(self.labels),
            estimated_tokens=self.estimated_tokens,
            output_state_pointer=self.output_state_pointer,
            exclude_dependency_outputs=self.exclude_dependency_outputs,
            display_name=self.display_name,
            cache_key=self.cache_key.to_proto() if self.cache_key is not None else None,
        )
        if self.capability is not None:
            message.capability = self.capability
        if self.intent is not None:
            message.intent = self.intent
        if self.input is not None or self.content_type is not None:
            message.input.CopyFrom(encode_payload(self.input, self.content_type))
        return message


def task_violations(
    tasks: Sequence[TaskSpec], known: Iterable[str] | None = (), *, prefix: str
) -> list[FieldViolation]:
    """The client-side checks of a list of tasks: ids, targets, dependencies, cycles.

    Args:
        tasks: The tasks, in submission order.
        known: Ids that exist already; None when they are not known here (a
            spawn: its tasks may depend on any of the workflow's, which the
            sidecar checks), so that no dependency outside ``tasks`` is refused.
        prefix: The field path of the list (``spec.tasks`` or ``tasks``).
    """
    violations: list[FieldViolation] = []
    existing = set(known or ())
    seen: dict[str, int] = {}
    for index, task in enumerate(tasks):
        violations += _task_fields(task, f"{prefix}[{index}]")
        if not _ID.fullmatch(task.task_id):
            continue
        if task.task_id in seen or task.task_id in existing:
            violations.append(
                FieldViolation(f"{prefix}[{index}].task_id", f"duplicate task id {task.task_id!r}")
            )
        else:
            seen[task.task_id] = index
    ids = None if known is None else set(seen) | existing
    for index, task in enumerate(tasks):
        violations += _task_edges(task, ids, f"{prefix}[{index}]")
    if not violations:
        cycle = find_cycle(tasks)
        if cycle:
            violations.append(
                FieldViolation(
                    f"{prefix}[{seen[cycle[0]]}].depends_on", "dependency cycle: " + " -> ".join(cycle)
                )
            )
    return violations


def _task_fields(task: TaskSpec, path: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if not _ID.fullmatch(task.task_id):
        violations.append(FieldViolation(f"{path}.task_id", "must be 1 to 128 characters of [A-Za-z0-9._:-]"))
    if (task.capability is None) == (task.intent is None):
        violations.append(FieldViolation(f"{path}.target", "set exactly one of capability and intent"))
    if not 0 <= task.priority <= 5:
        violations.append(FieldViolation(f"{path}.priority", "must be 0 (default) or 1 to 5"))
    try:
        _trigger_rule(task.trigger_rule)
    except ValueError as error:
        violations.append(FieldViolation(f"{path}.trigger_rule", str(error)))
    violations += _duration_violations(task, path)
    if task.cache_key is not None:
        if not task.cache_key.namespace:
            violations.append(FieldViolation(f"{path}.cache_key.namespace", "a cache key needs a namespace"))
        if not task.cache_key.prompt.strip():
            violations.append(FieldViolation(f"{path}.cache_key.prompt", "a cache key needs a prompt"))
    return violations


_TASK_DURATIONS = (
    "schedule_to_start_timeout",
    "start_to_close_timeout",
    "heartbeat_timeout",
    "schedule_to_close_timeout",
    "approval_timeout",
)


def _duration_violations(task: TaskSpec, path: str) -> list[FieldViolation]:
    """The task's durations that cannot be sent (infinite or NaN seconds), named by field."""
    fields = [(f"{path}.{name}", getattr(task, name)) for name in _TASK_DURATIONS]
    if task.retry_policy is not None:
        policy = task.retry_policy
        fields += [
            (f"{path}.retry_policy.initial_interval", policy.initial_interval),
            (f"{path}.retry_policy.maximum_interval", policy.maximum_interval),
        ]
    return [
        FieldViolation(field, problem)
        for field, value in fields
        if (problem := _duration_problem(value)) is not None
    ]


def _duration_problem(value: Duration | None) -> str | None:
    """Why a duration in seconds cannot be sent (infinite or NaN: no Duration holds it), or None."""
    if isinstance(value, int | float) and not math.isfinite(value):
        return f"must be a finite number of seconds, got {value}"
    return None


def _task_edges(task: TaskSpec, ids: set[str] | None, path: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    for position, dependency in enumerate(task.depends_on):
        if dependency == task.task_id:
            violations.append(
                FieldViolation(f"{path}.depends_on[{position}]", "a task cannot depend on itself")
            )
        elif ids is not None and dependency not in ids:
            violations.append(
                FieldViolation(f"{path}.depends_on[{position}]", f"unknown dependency {dependency!r}")
            )
    for position, condition in enumerate(task.conditions):
        if condition.task_id not in task.depends_on:
            violations.append(
                FieldViolation(
                    f"{path}.conditions[{position}].task_id",
                    f"{condition.task_id!r} is not in this task's depends_on",
                )
            )
        try:
            _operator(condition.operator)
        except ValueError as error:
            violations.append(FieldViolation(f"{path}.conditions[{position}].operator", str(error)))
    return violations


def find_cycle(tasks: Sequence[TaskSpec]) -> list[str]:
    """Returns one dependency cycle as task ids (first id repeated last), or [] for a DAG."""
    graph = {task.task_id: task.depends_on for task in tasks}
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for root in graph:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = grey
        while stack:
            node, position = stack[-1]
            edges = graph.get(node, ())
            if position == len(edges):
                stack.pop()
                path.pop()
                color[node] = black
                continue
            stack[-1] = (node, position + 1)
            nxt = edges[position]
            if nxt not in color:
                continue
            if color[nxt] == grey:
                # A path root -> ... -> node depends on nxt: report it in dependency order.
                return [*path[path.index(nxt) :], nxt]
            if color[nxt] == white:
                color[nxt] = grey
                stack.append((nxt, 0))
                path.append(nxt)
    return []


class WorkflowSpec:
    """Builds a workflow spec: name, tasks, budgets, defaults. Methods chain.

    Args:
        name: A human-readable name or type (at most 256 characters).
        workflow_id: A client-chosen id; empty lets the sidecar generate one.
        labels: Free labels for filtering and cost reports.
        budget: The workflow's budgets (:class:`Budget`).
        default_retry_policy: The retry policy of tasks that declare none.
        default_pool: The pool of tasks that name none.
        result_task_id: The task whose output is the workflow's result; by
            default the only task nothing depends on, if there is one.
        initial_state: The state document's first version, a JSON object.
        traceparent: A W3C ``traceparent`` the workflow's trace continues.
        tracestate: The W3C ``tracestate`` that goes with ``traceparent``
            (vendor entries such as ``"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"``):
            at most 32 ``key=value`` members and 512 characters, and only
            beside a ``traceparent``; :meth:`validate` checks it.
        state_retention: How many versions of its state are kept
            (:class:`StateRetention`); None means the sidecar's defaults.
    """

    def __init__(
        self,
        name: str = "",
        *,
        workflow_id: str = "",
        labels: Mapping[str, str] | None = None,
        budget: Budget | None = None,
        default_retry_policy: RetryPolicy | None = None,
        default_pool: str = "",
        result_task_id: str = "",
        initial_state: Mapping[str, Any] | None = None,
        traceparent: str = "",
        tracestate: str = "",
        state_retention: StateRetention | None = None,
    ) -> None:
        self.name = name
        self.workflow_id = workflow_id
        self.labels = dict(labels or {})
        self.budget = budget
        self.default_retry_policy = default_retry_policy
        self.default_pool = default_pool
        self.result_task_id = result_task_id
        self.initial_state = dict(initial_state) if initial_state is not None else None
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.state_retention = state_retention
        self._tasks: list[TaskSpec] = []

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks added so far, in order."""
        return tuple(self._tasks)

    def task(
        self,
        task_id: str,
        *,
        capability: str | None = None,
        intent: str | None = None,
        input: Any = None,  # noqa: A002 - the contract's name
        content_type: str | None = None,
        depends_on: Sequence[str] = (),
        trigger_rule: TriggerRule | str | None = None,
        conditions: Sequence[Condition] = (),
        retry_policy: RetryPolicy | None = None,
        schedule_to_start_timeout: Duration | None = None,
        start_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        pool: str = "",
        priority: int = 0,
        requires_approval: bool = False,
        approval_timeout: Duration | None = None,
        labels: Mapping[str, str] | None = None,
        estimated_tokens: int = 0,
        output_state_pointer: str = "",
        exclude_dependency_outputs: bool = False,
        display_name: str = "",
        cache_key: CacheKey | None = None,
    ) -> Self:
        """Adds one task (see :class:`TaskSpec` for the fields) and returns the builder."""
        return self.add(
            TaskSpec(
                task_id=task_id,
                capability=capability,
                intent=intent,
                input=input,
                content_type=content_type,
                depends_on=tuple(depends_on),
                trigger_rule=trigger_rule,
                conditions=tuple(conditions),
                retry_policy=retry_policy,
                schedule_to_start_timeout=schedule_to_start_timeout,
                start_to_close_timeout=start_to_close_timeout,
                heartbeat_timeout=heartbeat_timeout,
                schedule_to_close_timeout=schedule_to_close_timeout,
                pool=pool,
                priority=priority,
                requires_approval=requires_approval,
                approval_timeout=approval_timeout,
                labels=dict(labels or {}),
                estimated_tokens=estimated_tokens,
                output_state_pointer=output_state_pointer,
                exclude_dependency_outputs=exclude_dependency_outputs,
                display_name=display_name,
                cache_key=cache_key,
            )
        )

    def add(self, *tasks: TaskSpec) -> Self:
        """Adds ready-made :class:`TaskSpec` objects and returns the builder."""
        self._tasks.extend(tasks)
        return self

    def validate(self) -> None:
        """Checks what the client can check cheaply.

        Raises:
            WorkflowSpecError: With a field violation per mistake.
        """
        violations: list[FieldViolation] = []
        if self.workflow_id and not _ID.fullmatch(self.workflow_id):
            violations.append(
                FieldViolation("spec.workflow_id", "must be 1 to 128 characters of [A-Za-z0-9._:-]")
            )
        if not self._tasks:
            violations.append(FieldViolation("spec.tasks", "a workflow needs at least one task"))
        violations += task_violations(self._tasks, prefix="spec.tasks")
        if self.tracestate:
            malformed = _tracestate_problem(self.tracestate) or (
                "" if self.traceparent else "needs a traceparent: a tracestate alone continues no trace"
            )
            if malformed:
                violations.append(FieldViolation("spec.trace_context.tracestate", malformed))
        if self.state_retention is not None:
            problem = _duration_problem(self.state_retention.keep_duration)
            if problem:
                violations.append(FieldViolation("spec.state_retention.keep_duration", problem))
        if self.result_task_id and self.result_task_id not in {t.task_id for t in self._tasks}:
            violations.append(FieldViolation("spec.result_task_id", f"unknown task {self.result_task_id!r}"))
        if violations:
            raise WorkflowSpecError(violations)

    def to_proto(self, *, validate: bool = True) -> Any:
        """The ``are.v1.WorkflowSpec`` message.

        Raises:
            WorkflowSpecError: The spec is invalid (unless ``validate`` is False).
        """
        if validate:
            self.validate()
        message = workflow_pb2.WorkflowSpec(
            workflow_id=self.workflow_id,
            name=self.name,
            tasks=[t.to_proto() for t in self._tasks],
            labels=self.labels,
            default_pool=self.default_pool,
            result_task_id=self.result_task_id,
        )
        if self.budget is not None:
            message.budget.CopyFrom(self.budget.to_proto())
        if self.default_retry_policy is not None:
            message.default_retry_policy.CopyFrom(self.default_retry_policy.to_proto())
        if self.initial_state is not None:
            message.initial_state.CopyFrom(encode_payload(self.initial_state))
        if self.traceparent:
            message.trace_context.traceparent = self.traceparent
        if self.tracestate:
            message.trace_context.tracestate = self.tracestate
        if self.state_retention is not None:
            message.state_retention.CopyFrom(self.state_retention.to_proto())
        return message

    def __repr__(self) -> str:
        return f"WorkflowSpec(name={self.name!r}, tasks={len(self._tasks)})"


def _tracestate_problem(tracestate: str) -> str:
    """Why a W3C ``tracestate`` is malformed ("" if it is well formed).

    A consumer that follows the W3C rules discards a malformed tracestate
    whole, so the builder refuses it rather than let the vendors' entries
    vanish downstream.
    """
    if len(tracestate) > _TRACESTATE_MAX_CHARS:
        return f"must be at most {_TRACESTATE_MAX_CHARS} characters, not {len(tracestate)}"
    keys: set[str] = set()
    for index, raw in enumerate(tracestate.split(",")):
        member = raw.strip(" \t")
        if not member:
            continue  # empty list-members are allowed (and skipped)
        key, equals, value = member.partition("=")
        if not equals or not _TRACESTATE_KEY.fullmatch(key):
            return (
                f"member {index} ({member!r}) must be key=value with a lowercase key of "
                "[a-z0-9_-*/] (or tenant@system)"
            )
        if not _TRACESTATE_VALUE.fullmatch(value):
            return (
                f"member {index} ({member!r}) must have a value of 1 to 256 printable ASCII "
                "characters without ',' or '=', not ending in a space"
            )
        if key in keys:
            return f"member {index} repeats the key {key!r}"
        keys.add(key)
    if len(keys) > _TRACESTATE_MAX_MEMBERS:
        return f"must have at most {_TRACESTATE_MAX_MEMBERS} members, not {len(keys)}"
    return ""
