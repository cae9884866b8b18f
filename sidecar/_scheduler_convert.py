"""Protobuf <-> scheduler core translation, input validation and status mapping.

Every bad input becomes a :class:`~are_core.scheduler.SpecError` naming the
exact field path (``spec.tasks[3].depends_on[0]``); :func:`abort_for` maps
the scheduler's exceptions to rich gRPC statuses in one place.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import timedelta
from typing import Any, NoReturn

import grpc
import msgspec
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from are_core.scheduler import (
    Assignment,
    BlobNotFoundError,
    Budget,
    BudgetExceededError,
    CacheKey,
    Condition,
    Failure,
    NotAwaitingApprovalError,
    NotImplementedFieldError,
    OpenWorkLimitError,
    PoolLimits,
    PoolNotFoundError,
    PoolQueueFullError,
    PoolStatus,
    RequestIdConflictError,
    RetryPolicy,
    SchedulerError,
    SpecError,
    TaskAlreadyCompletedError,
    TaskExistsError,
    TaskNotFoundError,
    TaskNotHeldError,
    TaskSpec,
    TaskView,
    Usage,
    UsageTotal,
    WorkflowClosedError,
    WorkflowExistsError,
    WorkflowNotClosedError,
    WorkflowNotFoundError,
    WorkflowSpec,
    WorkflowView,
    check_pointer,
    is_json_content_type,
)
from are_core.state import MAX_JSON_DEPTH, json_depth
from are_core.storage import StorageError
from are_sdk._proto.are.v1 import (
    common_pb2,
    errors_pb2,
    scheduler_service_pb2,
    task_pb2,
    worker_service_pb2,
    workflow_pb2,
)
from sidecar import _conventions as conventions
from sidecar._status import abort, abort_storage

__all__ = [
    "BlobPayload",
    "abort_for",
    "assignment_to_proto",
    "blob_from_proto",
    "enum_name",
    "failure_from_proto",
    "failure_to_proto",
    "failure_wire_bytes",
    "is_json_content_type",
    "payload_to_proto",
    "pool_from_proto",
    "pool_to_proto",
    "request_hash",
    "spec_from_proto",
    "task_specs_from_proto",
    "task_to_proto",
    "task_wire_bytes",
    "timestamp",
    "usage_from_proto",
    "usage_summary_to_proto",
    "workflow_to_proto",
]

_ID = conventions.ID
_LABEL_KEY = conventions.KEY
_MiB = 1 << 20
_DAY = 86_400.0
_MAX_TRACESTATE = 512  # characters of a W3C tracestate (common.proto TraceContext)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OPERATORS_WITHOUT_VALUE = frozenset({"EXISTS", "NOT_EXISTS", "TRUTHY"})
# The integers msgpack encodes (int64 and uint64): a condition value is stored in its task's spec.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
# TriggerRule number -> the engine's rule name (UNSPECIFIED means the default, ALL_SUCCESS).
_TRIGGER_RULES = {
    value.number: value.name.removeprefix("TRIGGER_RULE_") if value.number else "ALL_SUCCESS"
    for value in task_pb2.TriggerRule.DESCRIPTOR.values
}

FEATURES_NONE: frozenset[str] = frozenset()
"""Which wired features a spec may use: "intent" (router), "cache" (cache), "state" (state), "blobs"."""


def _bad(reason: str, field: str, message: str, *, limit: int | None = None) -> NoReturn:
    raise SpecError(reason, field, message, limit=limit)


def check_id(value: str, field: str, what: str = "an id") -> None:
    """Refuses ``value`` unless it is 1 to 128 characters of ``[A-Za-z0-9._:-]``."""
    if not _ID.fullmatch(value):
        _bad(
            "INVALID_ARGUMENT",
            field,
            f"{what} must be 1 to 128 characters of [A-Za-z0-9._:-], got {value[:140]!r}",
        )


def enum_name(enum: Any, value: int, field: str, prefix: str) -> str:
    """The name of an enum number without ``prefix``; an unknown number is refused naming ``field``."""
    problem = conventions.enum_problem(enum, value)
    if problem is not None:
        _bad("INVALID_ARGUMENT", field, problem)
    return str(enum.Name(value)).removeprefix(prefix)


def check_labels(labels: Any, field: str) -> dict[str, str]:
    """Checks a labels map against the package bounds; returns it as a dict."""
    out = dict(labels)
    if len(out) > 32:
        _bad("LIMIT_EXCEEDED", field, f"at most 32 labels, got {len(out)}", limit=32)
    for key, value in out.items():
        if not _LABEL_KEY.fullmatch(key):
            _bad(
                "INVALID_ARGUMENT",
                f"{field}[{key[:40]!r}]",
                "label keys are 1 to 128 characters of [A-Za-z0-9._:/-]",
            )
        if len(value.encode()) > 256:
            _bad("LIMIT_EXCEEDED", f"{field}[{key!r}]", "label values are at most 256 bytes", limit=256)
    return out


def seconds(message: Message, name: str) -> float | None:
    """The Duration field ``name`` of ``message`` in seconds, or None when unset."""
    if not message.HasField(name):
        return None
    value: duration_pb2.Duration = getattr(message, name)
    return value.seconds + value.nanos / 1e9


def _duration(message: Message, name: str, field: str, *, low: float, high: float) -> float | None:
    """The Duration ``name`` in seconds (None when unset); refused naming ``field`` if bad or out of range.

    A malformed Duration (nanos out of range, or of the other sign than seconds) is refused as the
    router and worker paths refuse it (``conventions.duration_problem``), never read as a number.
    """
    if not message.HasField(name):
        return None
    problem = conventions.duration_problem(getattr(message, name))
    if problem is not None:
        _bad("INVALID_ARGUMENT", field, problem)
    value = seconds(message, name)
    if value is not None and not low <= value <= high:
        _bad("INVALID_ARGUMENT", field, f"must be between {low:g}s and {high:g}s, got {value:g}s")
    return value


def _timeout(spec: Message, name: str, prefix: str, *, low: float, high: float) -> float | None:
    """``_duration`` of ``spec.<name>`` whose error path ``<prefix>.<name>`` is built only when needed."""
    if not spec.HasField(name):
        return None
    return _duration(spec, name, f"{prefix}.{name}", low=low, high=high)


def retry_from_proto(policy: common_pb2.RetryPolicy, field: str) -> RetryPolicy:
    """Validates a RetryPolicy and fills in its defaults."""
    initial = _duration(policy, "initial_interval", f"{field}.initial_interval", low=0.01, high=_DAY) or 1.0
    coefficient = policy.backoff_coefficient or 2.0
    if not 1.0 <= coefficient <= 100.0:
        _bad(
            "INVALID_ARGUMENT",
            f"{field}.backoff_coefficient",
            f"must be between 1.0 and 100.0, got {coefficient}",
        )
    maximum = _duration(policy, "maximum_interval", f"{field}.maximum_interval", low=initial, high=_DAY)
    attempts = policy.maximum_attempts or 3
    if not 1 <= attempts <= 100:
        _bad("INVALID_ARGUMENT", f"{field}.maximum_attempts", f"must be between 0 and 100, got {attempts}")
    if len(policy.non_retryable_failure_types) > 64:
        _bad("LIMIT_EXCEEDED", f"{field}.non_retryable_failure_types", "at most 64 entries", limit=64)
    for i, failure_type in enumerate(policy.non_retryable_failure_types):
        if len(failure_type) > _TYPE_CHARS:  # common.proto: as long as a Failure.type may be
            _bad(
                "LIMIT_EXCEEDED",
                f"{field}.non_retryable_failure_types[{i}]",
                f"at most {_TYPE_CHARS} characters, got {len(failure_type):,}",
                limit=_TYPE_CHARS,
            )
    return RetryPolicy(
        initial_interval_s=initial,
        backoff_coefficient=coefficient,
        maximum_interval_s=maximum or 100.0 * initial,
        maximum_attempts=attempts,
        non_retryable_types=tuple(policy.non_retryable_failure_types),
    )


class BlobPayload(msgspec.Struct, frozen=True, kw_only=True):
    """A payload's blob reference as submitted: checked for shape, not yet for existence."""

    sha256: str
    size_bytes: int  # 0: not given (the stored size is used)
    content_type: str  # the payload's, else the reference's; "" means the blob's


def blob_from_proto(payload: common_pb2.Payload, field: str) -> BlobPayload:
    """The shape-checked blob reference of a ``blob`` payload (``field`` names the payload)."""
    ref = payload.blob
    if not _SHA256.fullmatch(ref.sha256):
        _bad(
            "INVALID_ARGUMENT",
            f"{field}.blob.sha256",
            f"must be 64 lowercase hexadecimal characters (a SHA-256 digest), got {ref.sha256[:80]!r}",
        )
    if ref.size_bytes < 0:
        _bad("INVALID_ARGUMENT", f"{field}.blob.size_bytes", "must not be negative")
    for name, value in (("content_type", payload.content_type), ("blob.content_type", ref.content_type)):
        problem = conventions.content_type_problem(value)
        if problem is not None:
            _bad("LIMIT_EXCEEDED", f"{field}.{name}", problem, limit=conventions.CONTENT_TYPE_CHARS)
    content_type = payload.content_type or ref.content_type
    return BlobPayload(sha256=ref.sha256, size_bytes=ref.size_bytes, content_type=content_type)


def _input_blob(payload: common_pb2.Payload, field: str, features: frozenset[str]) -> BlobPayload:
    """A task input's blob reference; refuses an inline input over 4 MiB."""
    if payload.WhichOneof("content") != "blob":
        _bad(
            "LIMIT_EXCEEDED",
            f"{field}.data",
            f"at most 4 MiB inline, got {len(payload.data)} bytes",
            limit=4 * 1024 * 1024,
        )
    if "blobs" not in features:
        raise NotImplementedFieldError(f"{field}.blob", f"{field}.blob: this sidecar has no blob store")
    return blob_from_proto(payload, field)


def payload_to_proto(
    out: common_pb2.Payload, data: bytes, content_type: str, blob_sha256: str, blob_size: int
) -> None:
    """Fills ``out`` with inline ``data``, or with the blob reference when ``blob_sha256`` is set."""
    if blob_sha256:
        out.blob.sha256 = blob_sha256
        out.blob.size_bytes = blob_size
        out.blob.content_type = content_type
    else:
        out.data = data
    out.content_type = content_type


class _IntOutOfRangeError(ValueError):
    """A condition value's integer that the task's stored spec (msgpack) cannot hold."""


def _json_int(text: str) -> int:
    """A JSON integer of a condition value, refused beyond what msgpack stores: -2**63 to 2**64-1."""
    # 20 characters (sign included) hold the range: a longer text is out of it, never converted.
    number = int(text) if len(text) <= 20 else None
    if number is None or not _INT_MIN <= number <= _INT_MAX:
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"
        raise _IntOutOfRangeError(
            f"integers must fit in 64 bits (from -2**63 to 2**64-1, as the task is stored), got {shown}"
        )
    return number


def _json_float(text: str) -> float:
    """A JSON number with a fraction or exponent; refused when beyond a double (1e400)."""
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text[:40]} is beyond the range of a 64-bit float")
    return number


def _json_constant(text: str) -> object:
    raise ValueError(f"{text} is not JSON (RFC 8259 has no NaN or Infinity)")


def _condition_value(text: str, field: str) -> object:
    """A condition's value, decoded from JSON text: only what the task's stored spec can hold."""
    if len(text) > 64 * 1024:
        _bad("LIMIT_EXCEEDED", field, "at most 64 KiB", limit=64 * 1024)
    try:
        value = json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except _IntOutOfRangeError as error:
        _bad("INVALID_ARGUMENT", field, str(error))
    except ValueError as error:
        _bad("INVALID_JSON", field, f"not JSON text: {error}")
    except RecursionError:  # nested deeper than the decoder goes, far past the bound
        _bad("INVALID_JSON", field, f"nests arrays and objects more than {MAX_JSON_DEPTH} deep")
    # Counting brackets (in C) spares the walk to nearly every value.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
        _bad("INVALID_JSON", field, f"nests arrays and objects more than {MAX_JSON_DEPTH} deep")
    if "\\u" in text:  # protobuf strings are UTF-8: only an escape makes a lone surrogate
        try:
            msgspec.msgpack.encode(value)  # as the task's spec is stored
        except UnicodeEncodeError:
            _bad(
                "INVALID_JSON",
                field,
                "a \\ud800 to \\udfff escape without its pair is a lone surrogate, not Unicode",
            )
    return value


def _condition(condition: task_pb2.Condition, field: str) -> Condition:
    operator = enum_name(
        task_pb2.ComparisonOperator, condition.operator, f"{field}.operator", "COMPARISON_OPERATOR_"
    )
    if operator == "UNSPECIFIED":
        _bad("INVALID_ARGUMENT", f"{field}.operator", "a condition must name an operator")
    value: object = None
    if operator not in _OPERATORS_WITHOUT_VALUE:
        value = _condition_value(condition.value_json, f"{field}.value_json")
    return Condition(task_id=condition.task_id, pointer=condition.pointer, operator=operator, value=value)


def task_spec_from_proto(  # noqa: C901, PLR0912, PLR0915 - one check per field
    spec: task_pb2.TaskSpec, field: str, features: frozenset[str] = FEATURES_NONE
) -> TaskSpec:
    """Validates one TaskSpec (everything but the graph) and translates it.

    ``features`` names the wired integrations; a field whose integration is
    absent is refused with UNIMPLEMENTED, reason NOT_IMPLEMENTED.
    """
    check_id(spec.task_id, f"{field}.task_id", "a task id")
    target = spec.WhichOneof("target")
    if target is None:
        _bad("INVALID_ARGUMENT", f"{field}.target", "set exactly one of capability or intent")
    if target == "intent":
        if "intent" not in features:
            raise NotImplementedFieldError(
                f"{field}.intent", f"{field}.intent: this sidecar has no router to route intents"
            )
        if not spec.intent.strip():
            _bad("INVALID_ARGUMENT", f"{field}.intent", "an intent must not be empty")
        if len(spec.intent.encode()) > 8 * 1024:
            _bad("LIMIT_EXCEEDED", f"{field}.intent", "at most 8 KiB", limit=8 * 1024)
    else:
        check_id(spec.capability, f"{field}.capability", "a capability")
    # Field paths are formatted only on the error path: this runs once per task of every submit.
    payload = spec.input
    blob: BlobPayload | None = None
    if payload.WhichOneof("content") == "blob" or len(payload.data) > 4 * _MiB:
        blob = _input_blob(payload, f"{field}.input", features)  # raises with the exact field
    data, content_type = payload.data, blob.content_type if blob is not None else payload.content_type
    if len(payload.content_type) > conventions.CONTENT_TYPE_CHARS:  # a blob's was checked above
        _bad(
            "LIMIT_EXCEEDED",
            f"{field}.input.content_type",
            conventions.content_type_problem(payload.content_type) or "",
            limit=conventions.CONTENT_TYPE_CHARS,
        )
    if len(spec.depends_on) > 10_000:
        _bad("LIMIT_EXCEEDED", f"{field}.depends_on", "at most 10,000 dependencies per task", limit=10_000)
    rule = _TRIGGER_RULES.get(spec.trigger_rule) or enum_name(
        task_pb2.TriggerRule, spec.trigger_rule, f"{field}.trigger_rule", "TRIGGER_RULE_"
    )
    conditions: tuple[Condition, ...] = ()
    if spec.conditions:
        if len(spec.conditions) > 16:
            _bad("LIMIT_EXCEEDED", f"{field}.conditions", "at most 16 conditions", limit=16)
        conditions = tuple(_condition(c, f"{field}.conditions[{j}]") for j, c in enumerate(spec.conditions))
    retry = (
        retry_from_proto(spec.retry_policy, f"{field}.retry_policy")
        if spec.HasField("retry_policy")
        else None
    )
    s2s = _timeout(spec, "schedule_to_start_timeout", field, low=0.001, high=30 * _DAY)
    s2c = _timeout(spec, "start_to_close_timeout", field, low=1.0, high=7 * _DAY) or 600.0
    heartbeat = _timeout(spec, "heartbeat_timeout", field, low=0.001, high=s2c)
    s2close = _timeout(spec, "schedule_to_close_timeout", field, low=0.001, high=30 * _DAY)
    approval = _timeout(spec, "approval_timeout", field, low=0.001, high=366 * _DAY)
    if spec.pool:
        check_id(spec.pool, f"{field}.pool", "a pool name")
    if not 0 <= spec.priority <= 5:
        _bad(
            "INVALID_ARGUMENT",
            f"{field}.priority",
            f"must be 1 (most urgent) to 5, or 0 for 3; got {spec.priority}",
        )
    labels = check_labels(spec.labels, f"{field}.labels") if spec.labels else {}
    cache_key = _cache_key(spec, f"{field}.cache_key", features) if spec.HasField("cache_key") else None
    if spec.output_state_pointer:
        if "state" not in features:
            raise NotImplementedFieldError(
                f"{field}.output_state_pointer",
                f"{field}.output_state_pointer: this sidecar has no state service",
            )
        problem = check_pointer(spec.output_state_pointer)
        if problem:
            _bad("INVALID_JSON_POINTER", f"{field}.output_state_pointer", problem)
    if not 0 <= spec.estimated_tokens <= 10_000_000:
        _bad("INVALID_ARGUMENT", f"{field}.estimated_tokens", "must be between 0 and 10,000,000")
    if len(spec.display_name) > 256:
        _bad("LIMIT_EXCEEDED", f"{field}.display_name", "at most 256 characters", limit=256)
    # The input and the cache key's prompt (4 MiB and 1 MiB at most) are kept once, in
    # TaskSpec.input and TaskSpec.cache_key; task_to_proto puts them back (the request is ours to change).
    spec.ClearField("input")
    if cache_key is not None:
        spec.cache_key.ClearField("prompt")
    return TaskSpec(
        task_id=spec.task_id,
        capability=spec.capability,
        input=data,
        content_type=content_type,
        depends_on=tuple(spec.depends_on),
        trigger_rule=rule,
        conditions=conditions,
        retry_policy=retry,
        schedule_to_start_s=s2s or 0.0,
        start_to_close_s=s2c,
        heartbeat_s=heartbeat or 0.0,
        schedule_to_close_s=s2close or 0.0,
        pool=spec.pool,
        priority=spec.priority or 3,
        requires_approval=spec.requires_approval,
        approval_timeout_s=approval or 0.0,
        labels=labels,
        estimated_tokens=spec.estimated_tokens,
        exclude_dependency_outputs=spec.exclude_dependency_outputs,
        raw=spec.SerializeToString(deterministic=True),
        intent=spec.intent,
        output_state_pointer=spec.output_state_pointer,
        cache_key=cache_key,
        input_blob_sha256=blob.sha256 if blob is not None else "",
        input_blob_size=blob.size_bytes if blob is not None else 0,
    )


def _cache_key(spec: task_pb2.TaskSpec, field: str, features: frozenset[str]) -> CacheKey:
    if "cache" not in features:
        raise NotImplementedFieldError(field, f"{field}: this sidecar has no cache to answer tasks from")
    key = spec.cache_key
    check_id(key.namespace, f"{field}.namespace", "a cache namespace")
    if not key.prompt:
        _bad("INVALID_ARGUMENT", f"{field}.prompt", "a cache key needs a prompt")
    if len(key.prompt.encode()) > _MiB:
        _bad("LIMIT_EXCEEDED", f"{field}.prompt", "at most 1 MiB", limit=1024 * 1024)
    ttl = _duration(key, "ttl", f"{field}.ttl", low=0.001, high=366 * _DAY)
    return CacheKey(
        namespace=key.namespace,
        prompt=key.prompt,
        exact_only=key.exact_only,
        read_only=key.read_only,
        ttl_s=ttl or 0.0,
    )


def task_specs_from_proto(
    tasks: Any, field: str, *, max_tasks: int, features: frozenset[str] = FEATURES_NONE
) -> tuple[TaskSpec, ...]:
    """Validates a repeated TaskSpec field (1 to ``max_tasks`` entries)."""
    if not tasks:
        _bad("INVALID_ARGUMENT", field, "at least one task is required")
    if len(tasks) > max_tasks:
        _bad("LIMIT_EXCEEDED", field, f"{len(tasks)} tasks exceed max_tasks {max_tasks}", limit=max_tasks)
    return tuple(task_spec_from_proto(t, f"{field}[{i}]", features) for i, t in enumerate(tasks))


def spec_from_proto(
    spec: workflow_pb2.WorkflowSpec, features: frozenset[str] = FEATURES_NONE
) -> WorkflowSpec:
    """Validates a WorkflowSpec field by field (the graph is checked by the engine)."""
    if spec.workflow_id:
        check_id(spec.workflow_id, "spec.workflow_id", "a workflow id")
    if len(spec.name) > 256:
        _bad("LIMIT_EXCEEDED", "spec.name", "at most 256 characters", limit=256)
    if len(spec.trace_context.tracestate) > _MAX_TRACESTATE:
        _bad(
            "LIMIT_EXCEEDED",
            "spec.trace_context.tracestate",
            f"at most {_MAX_TRACESTATE} characters",
            limit=_MAX_TRACESTATE,
        )
    budget = budget_from_proto(spec.budget)
    labels = check_labels(spec.labels, "spec.labels")
    if spec.default_pool:
        check_id(spec.default_pool, "spec.default_pool", "a pool name")
    if spec.result_task_id:
        check_id(spec.result_task_id, "spec.result_task_id", "a task id")
    default_retry = (
        retry_from_proto(spec.default_retry_policy, "spec.default_retry_policy")
        if spec.HasField("default_retry_policy")
        else None
    )
    tasks = task_specs_from_proto(spec.tasks, "spec.tasks", max_tasks=budget.max_tasks, features=features)
    # initial_state and state_retention belong to the state engine (sidecar/_scheduler.py).
    return WorkflowSpec(
        workflow_id=spec.workflow_id,
        name=spec.name,
        tasks=tasks,
        budget=budget,
        labels=labels,
        default_retry_policy=default_retry,
        default_pool=spec.default_pool,
        result_task_id=spec.result_task_id,
        traceparent=spec.trace_context.traceparent,
        tracestate=spec.trace_context.tracestate,
    )


def budget_from_proto(budget: workflow_pb2.WorkflowBudget) -> Budget:
    """Validates a WorkflowBudget and fills in its defaults."""
    if not 0 <= budget.max_tasks <= 100_000:
        _bad("INVALID_ARGUMENT", "spec.budget.max_tasks", "must be between 0 and 100,000")
    if budget.max_cost_micro_usd < 0:
        _bad("INVALID_ARGUMENT", "spec.budget.max_cost_micro_usd", "must not be negative")
    if budget.max_tokens < 0:
        _bad("INVALID_ARGUMENT", "spec.budget.max_tokens", "must not be negative")
    if budget.max_attempts < 0:
        _bad("INVALID_ARGUMENT", "spec.budget.max_attempts", "must not be negative")
    if not 0 <= budget.max_spawn_depth <= 64:
        _bad("INVALID_ARGUMENT", "spec.budget.max_spawn_depth", "must be between 0 and 64")
    duration = _duration(budget, "max_duration", "spec.budget.max_duration", low=0.001, high=366 * _DAY)
    return Budget(
        max_tasks=budget.max_tasks or 10_000,
        max_cost_micro_usd=budget.max_cost_micro_usd,
        max_duration_s=duration or 7 * _DAY,
        max_tokens=budget.max_tokens,
        max_attempts=budget.max_attempts,
        max_spawn_depth=budget.max_spawn_depth or 8,
    )


def request_hash(request: Message) -> str:
    """A digest of a request, to tell a retry from a different request with the same request_id."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


# --------------------------------------------------------------------- output


def timestamp(ns: int) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for wall-clock nanoseconds, or None for 0 (unset)."""
    if not ns:
        return None
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(ns)
    return value


def _duration_pb(value_s: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(value_s * 1e9))
    return value


def failure_to_proto(failure: Failure) -> common_pb2.Failure:
    """The are.v1.Failure of a core failure, with its causes."""
    out = common_pb2.Failure(
        message=failure.message,
        type=failure.type,
        non_retryable=failure.non_retryable,
        kind="FAILURE_KIND_" + (failure.kind or "UNSPECIFIED"),
        timeout_type="TIMEOUT_TYPE_" + (failure.timeout_type or "UNSPECIFIED"),
        stack_trace=failure.stack_trace,
    )
    if failure.details:
        out.details.data = failure.details
        out.details.content_type = failure.details_content_type
    if failure.cause is not None:
        out.cause.CopyFrom(failure_to_proto(failure.cause))
    return out


_FAILURE_CAUSES = 8
"""Causes a reported Failure keeps at most (common.proto): deeper ones are dropped."""
_FAILURE_BYTES = _MiB
"""What a reported Failure with causes keeps at most, encoded: its deepest causes are dropped to fit."""
_TYPE_CHARS = 256
_STACK_TRACE_BYTES = 64 * 1024
_MESSAGE_BYTES = 32 * 1024


def failure_from_proto(failure: common_pb2.Failure, field: str) -> Failure:
    """A worker-reported Failure and its causes as a core Failure, fitted to common.proto's bounds.

    A failure report is never refused for its size or shape: its attempt would
    stay held, the worker's report lost. What is over a bound is cut or dropped
    as the SDKs do before sending (:func:`_fit_chain`), and each level's message
    says what was dropped. A malformed field (an unknown ``kind`` or
    ``timeout_type``, at any depth) is still refused, naming it.
    """
    chain = [failure]
    while chain[-1].HasField("cause"):
        chain.append(chain[-1].cause)
    names = [_failure_enums(one, field + ".cause" * depth) for depth, one in enumerate(chain)]
    out: Failure | None = None
    levels = _fit_chain(chain)
    for depth in range(len(levels) - 1, -1, -1):  # the deepest cause first: each wraps the one below
        out = _one_failure(levels[depth], *names[depth], out)
    assert out is not None
    return out


def _failure_enums(failure: common_pb2.Failure, field: str) -> tuple[str, str]:
    """The core kind and timeout type of one Failure; an unknown number is refused naming it."""
    kind = enum_name(common_pb2.FailureKind, failure.kind, f"{field}.kind", "FAILURE_KIND_")
    timeout_type = enum_name(
        common_pb2.TimeoutType, failure.timeout_type, f"{field}.timeout_type", "TIMEOUT_TYPE_"
    )
    return ("APPLICATION" if kind == "UNSPECIFIED" else kind), timeout_type.replace("UNSPECIFIED", "")


def _fit_chain(chain: list[common_pb2.Failure]) -> list[common_pb2.Failure]:
    """The levels of a Failure (outermost first) to keep, fitted to the bounds; causes are not linked.

    Within bounds, the levels themselves (nothing copied). Otherwise copies: a
    type over 256 characters is cut to 256; details by blob reference, over 1
    MiB or with a content type over 128 characters are dropped; causes below
    the eighth are dropped, then the deepest causes while the whole is over 1
    MiB (a failure without causes has no bound as a whole). Each drop is noted
    at the end of its level's message (dropped causes: the deepest kept one's),
    the message cut to leave room, so that nothing is lost without a word.
    """
    kept = chain[: _FAILURE_CAUSES + 1]
    too_deep = len(chain) - len(kept)
    if (
        not too_deep
        and not any(_level_needs_fit(one) for one in kept)
        and (len(kept) == 1 or chain[0].ByteSize() <= _FAILURE_BYTES)
    ):
        return kept
    levels: list[common_pb2.Failure] = []
    messages: list[str] = []
    notes: list[list[str]] = []
    for one in kept:
        level, level_notes = _fit_level(one)
        levels.append(level)
        messages.append(_head(one.message, _MESSAGE_BYTES))
        notes.append(level_notes)
    too_big = 0
    while True:
        deepest = len(levels) - 1
        for depth, level in enumerate(levels):
            causes = [_causes_note(too_deep, too_big)] if depth == deepest and too_deep + too_big else []
            level.message = _noted(messages[depth], notes[depth] + causes)
        if deepest == 0 or _chain_bytes(levels) <= _FAILURE_BYTES:
            return levels
        levels.pop()
        too_big += 1


def _level_needs_fit(failure: common_pb2.Failure) -> bool:
    """Whether one Failure (not its causes) is over a bound that :func:`_fit_level` fits."""
    if len(failure.type) > _TYPE_CHARS:
        return True
    if not failure.HasField("details"):
        return False
    details = failure.details
    return (
        details.WhichOneof("content") == "blob"
        or len(details.data) > _MiB
        or conventions.content_type_problem(details.content_type) is not None
    )


def _fit_level(failure: common_pb2.Failure) -> tuple[common_pb2.Failure, list[str]]:
    """A copy of one Failure without its cause, fitted, and notes saying what was cut or dropped.

    Its message is left empty (the caller sets it with the notes) and its stack
    trace cut to its last 64 KiB, so that the copy's size is what is kept.
    """
    notes: list[str] = []
    fitted = common_pb2.Failure(
        type=failure.type[:_TYPE_CHARS],
        non_retryable=failure.non_retryable,
        kind=failure.kind,
        timeout_type=failure.timeout_type,
        stack_trace=_tail(failure.stack_trace, _STACK_TRACE_BYTES),
    )
    if len(failure.type) > _TYPE_CHARS:
        notes.append(f"[type cut to its first {_TYPE_CHARS} of {len(failure.type):,} characters]")
    details = failure.details
    if details.WhichOneof("content") == "blob":
        size = details.blob.size_bytes
        notes.append(f"[details dropped: a blob reference ({size:,} bytes); failure details are inline only]")
    elif len(details.data) > _MiB:
        notes.append(f"[details dropped: {len(details.data):,} bytes, over the 1 MiB bound]")
    elif conventions.content_type_problem(details.content_type) is not None:
        chars = len(details.content_type)
        notes.append(
            f"[details dropped: a content type of {chars:,} characters,"
            f" over the {conventions.CONTENT_TYPE_CHARS} bound]"
        )
    elif failure.HasField("details"):
        fitted.details.CopyFrom(details)
    return fitted, notes


def _causes_note(too_deep: int, too_big: int) -> str:
    """Says how many causes below the deepest kept one were dropped, and why."""
    why = []
    if too_deep:
        why.append(f"causes nest at most {_FAILURE_CAUSES} deep")
    if too_big:
        why.append("a failure with its causes is at most 1 MiB")
    count = too_deep + too_big
    return f"[{count} deeper cause{'s' if count > 1 else ''} dropped: {'; '.join(why)}]"


def _noted(message: str, notes: list[str]) -> str:
    """``message`` with ``notes`` appended, cut (whole characters) so that both fit in 32 KiB of UTF-8."""
    if not notes:
        return message
    suffix = " ".join(notes)
    if not message:
        return suffix
    return _head(message, _MESSAGE_BYTES - len(suffix.encode()) - 1) + " " + suffix


def _chain_bytes(levels: list[common_pb2.Failure]) -> int:
    """The encoded size of ``levels`` (none with a cause set) nested each in the one above as its cause."""
    size = levels[-1].ByteSize()
    for level in reversed(levels[:-1]):
        size += level.ByteSize() + 1 + _varint_bytes(size)  # field 5's tag, the length, the cause
    return size


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _head(text: str, limit: int) -> str:
    """``text``'s first ``limit`` bytes of UTF-8, whole characters (``text`` itself when it fits)."""
    if len(text) <= limit // 4:  # at most 4 bytes a character: it fits
        return text
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")


def _tail(text: str, limit: int) -> str:
    """``text``'s last ``limit`` bytes of UTF-8, whole characters (``text`` itself when it fits)."""
    if len(text) <= limit // 4:
        return text
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[-limit:].decode(errors="ignore")


def _one_failure(failure: common_pb2.Failure, kind: str, timeout_type: str, cause: Failure | None) -> Failure:
    """One fitted level (its cause ignored) as a core Failure wrapping ``cause``.

    Its message keeps its first 32 KiB and its stack trace its last 64 KiB (the
    frames nearest the error): an SDK cutting them by characters can pass the
    bounds in bytes, and a failure is never refused for them.
    """
    has_details = failure.HasField("details")
    return Failure(
        message=_head(failure.message, _MESSAGE_BYTES),
        type=failure.type,
        non_retryable=failure.non_retryable,
        kind=kind,
        timeout_type=timeout_type,
        stack_trace=_tail(failure.stack_trace, _STACK_TRACE_BYTES),
        details=failure.details.data if has_details else b"",
        details_content_type=failure.details.content_type,
        cause=cause,
    )


def usage_from_proto(usage: common_pb2.Usage, field: str) -> Usage | None:
    """A worker-reported Usage as a core Usage, or None when nothing was reported.

    A negative counter is refused naming it (``<field>.cost_micro_usd``),
    never clamped. Counters up to the largest int64 are taken as sent; sums
    of them saturate in the engine.
    """
    tokens_in, tokens_out, cost = usage.input_tokens, usage.output_tokens, usage.cost_micro_usd
    llm_calls, tool_calls = usage.llm_calls, usage.tool_calls
    # One test per completion: the OR of ints is 0 only when all are, negative when one is.
    combined = tokens_in | tokens_out | cost | llm_calls | tool_calls
    if combined == 0:
        return None
    if combined < 0:
        name, problem = conventions.usage_problem(usage) or ("", "")
        _bad("INVALID_ARGUMENT", f"{field}.{name}", problem)
    return Usage(
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_micro_usd=cost,
        llm_calls=llm_calls,
        tool_calls=tool_calls,
    )


def _usage_pb(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_micro_usd=usage.cost_micro_usd,
        llm_calls=usage.llm_calls,
        tool_calls=usage.tool_calls,
    )


def usage_summary_to_proto(total: UsageTotal) -> common_pb2.UsageSummary:
    """The UsageSummary of summed workflows."""
    return common_pb2.UsageSummary(
        usage=_usage_pb(total.usage),
        task_attempts=total.task_attempts,
        retries=total.retries,
        tasks_completed=total.tasks_completed,
        tasks_failed=total.tasks_failed,
        cache_hits=total.cache_hits,
        cache_saved_tokens=total.cache_saved_tokens,
        cache_saved_cost_micro_usd=total.cache_saved_cost_micro_usd,
    )


def _set_ts(message: Message, name: str, ns: int) -> None:
    value = timestamp(ns)
    if value is not None:
        getattr(message, name).CopyFrom(value)


def workflow_to_proto(view: WorkflowView, state_version: int = 0) -> workflow_pb2.Workflow:
    """The are.v1.Workflow status of a workflow (``state_version``: its state document's latest)."""
    rec = view.record
    budget = rec.budget
    counts = rec.counts
    out = workflow_pb2.Workflow(
        workflow_id=rec.workflow_id,
        name=rec.name,
        state="WORKFLOW_STATE_" + rec.state,
        labels=rec.labels,
        budget=workflow_pb2.WorkflowBudget(
            max_tasks=budget.max_tasks,
            max_cost_micro_usd=budget.max_cost_micro_usd,
            max_duration=_duration_pb(budget.max_duration_s),
            max_tokens=budget.max_tokens,
            max_attempts=budget.max_attempts or 10 * budget.max_tasks,
            max_spawn_depth=budget.max_spawn_depth,
        ),
        task_counts=workflow_pb2.TaskCounts(
            pending=counts.get("PENDING", 0),
            scheduled=counts.get("SCHEDULED", 0),
            awaiting_approval=counts.get("AWAITING_APPROVAL", 0),
            running=counts.get("RUNNING", 0),
            backing_off=counts.get("BACKING_OFF", 0),
            completed=counts.get("COMPLETED", 0),
            failed=counts.get("FAILED", 0),
            skipped=counts.get("SKIPPED", 0),
            rejected=counts.get("REJECTED", 0),
            cancelled=counts.get("CANCELLED", 0),
            total=rec.task_count,
        ),
        usage=common_pb2.UsageSummary(
            usage=_usage_pb(rec.usage),
            task_attempts=rec.task_attempts,
            retries=rec.retries,
            tasks_completed=rec.tasks_completed,
            tasks_failed=rec.tasks_failed,
            cache_hits=rec.cache_hits,
            cache_saved_tokens=rec.cache_saved_tokens,
            cache_saved_cost_micro_usd=rec.cache_saved_cost_micro_usd,
        ),
        trace_id=rec.trace_id,
        result_task_id=rec.result_task_id,
        state_version=state_version,
    )
    if rec.forked_from:
        out.forked_from.workflow_id = rec.forked_from
        out.forked_from.state_version = rec.forked_version
    if view.result is not None:
        payload_to_proto(
            out.result, view.result, view.result_content_type, view.result_blob_sha256, view.result_blob_size
        )
    if rec.failure is not None and rec.state in ("FAILED", "CANCELLED", "CANCELLING"):
        out.failure.CopyFrom(failure_to_proto(rec.failure))
    _set_ts(out, "create_time", rec.create_ns)
    _set_ts(out, "close_time", rec.close_ns)
    _set_ts(out, "deadline_time", rec.deadline_ns)
    return out


def failure_wire_bytes(failure: Failure | None) -> int:
    """A failure's size on the wire with its causes, estimated (characters taken for bytes)."""
    size = 0
    while failure is not None:
        size += 32 + len(failure.message) + len(failure.type) + len(failure.stack_trace)
        size += len(failure.details) + len(failure.details_content_type) + len(failure.timeout_type)
        failure = failure.cause
    return size


def task_wire_bytes(view: TaskView, *, include_payloads: bool) -> int:
    """A Task's size on the wire as :func:`task_to_proto` makes it, estimated (1 KiB for ids and such)."""
    size = 1024 + failure_wire_bytes(view.record.failure)
    if include_payloads:
        size += len(view.spec.input) + len(view.record.output or b"")
    return size


def task_to_proto(view: TaskView, *, include_payloads: bool = True) -> task_pb2.Task:
    """The are.v1.Task status of a task."""
    rec = view.record
    spec = task_pb2.TaskSpec.FromString(view.spec.raw)
    task_spec = view.spec
    if task_spec.cache_key is not None and spec.HasField("cache_key"):
        spec.cache_key.prompt = task_spec.cache_key.prompt  # kept once, out of raw
    if include_payloads and (task_spec.input or task_spec.content_type or task_spec.input_blob_sha256):
        payload_to_proto(
            spec.input,
            task_spec.input,
            task_spec.content_type,
            task_spec.input_blob_sha256,
            task_spec.input_blob_size,
        )
    out = task_pb2.Task(
        workflow_id=view.workflow_id,
        task_id=rec.task_id,
        spec=spec,
        state="TASK_STATE_" + rec.state,
        state_reason=rec.state_reason[:1024],
        attempt=rec.attempt,
        capability=rec.capability,
        worker_id=rec.worker_id,
        parent_task_id=rec.parent_task_id,
        idempotency_key=f"{view.workflow_id}/{rec.task_id}",
        usage=common_pb2.UsageSummary(
            usage=_usage_pb(rec.usage),
            task_attempts=rec.attempt,
            retries=rec.retries,
            cache_hits=1 if rec.cache_entry_id else 0,
            cache_saved_tokens=rec.cache_saved_tokens,
            cache_saved_cost_micro_usd=rec.cache_saved_cost_micro_usd,
        ),
        cache_entry_id=rec.cache_entry_id,
    )
    if include_payloads and rec.output is not None:
        payload_to_proto(
            out.output, rec.output, rec.output_content_type, rec.output_blob_sha256, rec.output_blob_size
        )
    if rec.failure is not None:
        out.failure.CopyFrom(failure_to_proto(rec.failure))
    approval = rec.approval
    if approval is not None:
        # protoc's stubs type EnumTypeWrapper.Value() as int, not as the enum.
        out.approval.decision = task_pb2.ApprovalDecision.Value(  # type: ignore[assignment]
            "APPROVAL_DECISION_" + (approval.decision or "UNSPECIFIED")
        )
        out.approval.approver = approval.approver
        out.approval.comment = approval.comment
        _set_ts(out.approval, "request_time", approval.request_ns)
        _set_ts(out.approval, "expire_time", approval.expire_ns)
        _set_ts(out.approval, "resolve_time", approval.resolve_ns)
    _set_ts(out, "create_time", rec.create_ns)
    _set_ts(out, "schedule_time", rec.schedule_ns)
    _set_ts(out, "start_time", rec.start_ns)
    _set_ts(out, "close_time", rec.close_ns)
    if rec.state == "RUNNING":
        _set_ts(out, "last_heartbeat_time", rec.heartbeat_ns)
    if rec.state == "BACKING_OFF":
        _set_ts(out, "next_attempt_time", rec.next_attempt_ns)
    return out


def assignment_to_proto(a: Assignment) -> worker_service_pb2.TaskAssignment:
    """The TaskAssignment a worker receives."""
    deadline = a.deadline_ns
    out = worker_service_pb2.TaskAssignment(
        workflow_id=a.workflow_id,
        task_id=a.task_id,
        attempt=a.attempt,
        idempotency_key=a.idempotency_key,
        capability=a.capability,
        input=common_pb2.Payload(
            blob=common_pb2.BlobRef(
                sha256=a.input_blob_sha256, size_bytes=a.input_blob_size, content_type=a.content_type
            ),
            content_type=a.content_type,
        )
        if a.input_blob_sha256
        else common_pb2.Payload(data=a.input, content_type=a.content_type),
        trace_context=common_pb2.TraceContext(traceparent=a.traceparent, tracestate=a.tracestate),
        labels=a.labels,
        maximum_attempts=a.maximum_attempts,
        # = Timestamp.FromNanoseconds(deadline), without its per-call overhead
        deadline_time=timestamp_pb2.Timestamp(
            seconds=deadline // 1_000_000_000, nanos=deadline % 1_000_000_000
        )
        if deadline
        else None,
    )
    for dep in a.dependencies:
        result = out.dependencies.add(
            task_id=dep.task_id, state=task_pb2.TaskState.Value("TASK_STATE_" + dep.state)
        )
        if dep.output is not None:
            payload_to_proto(result.output, dep.output, dep.content_type, dep.blob_sha256, dep.blob_size)
        if dep.failure is not None:
            result.failure.CopyFrom(failure_to_proto(dep.failure))
    if a.heartbeat_timeout_s:
        out.heartbeat_timeout.CopyFrom(_duration_pb(a.heartbeat_timeout_s))
    if a.last_failure is not None:
        out.last_failure.CopyFrom(failure_to_proto(a.last_failure))
    if a.last_heartbeat_details is not None:
        out.last_heartbeat_details.data = a.last_heartbeat_details
        out.last_heartbeat_details.content_type = a.last_heartbeat_content_type
    return out


def pool_from_proto(pool: scheduler_service_pb2.Pool) -> PoolLimits:
    """Validates a Pool's limits."""
    check_id(pool.name, "pool.name", "a pool name")
    if not 0 <= pool.max_concurrency <= 100_000:
        _bad("INVALID_ARGUMENT", "pool.max_concurrency", "must be between 0 and 100,000")
    if not 0 <= pool.requests_per_second <= 100_000:
        _bad("INVALID_ARGUMENT", "pool.requests_per_second", "must be between 0 and 100,000")
    if not 0 <= pool.burst <= 100_000:
        _bad("INVALID_ARGUMENT", "pool.burst", "must be between 0 and 100,000")
    if pool.llm_tokens_per_minute < 0:
        _bad("INVALID_ARGUMENT", "pool.llm_tokens_per_minute", "must not be negative")
    if not 0 <= pool.max_queue_length <= 1_000_000:
        _bad("INVALID_ARGUMENT", "pool.max_queue_length", "must be between 0 and 1,000,000")
    if len(pool.description.encode()) > 1024:
        _bad("LIMIT_EXCEEDED", "pool.description", "at most 1 KiB", limit=1024)
    return PoolLimits(
        name=pool.name,
        max_concurrency=pool.max_concurrency,
        requests_per_second=pool.requests_per_second,
        burst=pool.burst,
        llm_tokens_per_minute=pool.llm_tokens_per_minute,
        max_queue_length=pool.max_queue_length,
        description=pool.description,
    )


def pool_to_proto(limits: PoolLimits) -> scheduler_service_pb2.Pool:
    """The are.v1.Pool of stored limits, defaults filled in."""
    out = scheduler_service_pb2.Pool(
        name=limits.name,
        max_concurrency=limits.max_concurrency,
        requests_per_second=limits.requests_per_second,
        burst=int(limits.bucket_size) if limits.requests_per_second else limits.burst,
        llm_tokens_per_minute=limits.llm_tokens_per_minute,
        max_queue_length=limits.queue_limit,
        description=limits.description,
    )
    _set_ts(out, "create_time", limits.create_ns)
    _set_ts(out, "update_time", limits.update_ns)
    return out


def pool_status_to_proto(status: PoolStatus) -> scheduler_service_pb2.PoolStatus:
    """The live counters of a pool."""
    return scheduler_service_pb2.PoolStatus(
        running=status.running,
        queued=status.queued,
        backlog=status.backlog,
        available_requests=status.available_requests,
        llm_tokens_last_minute=status.llm_tokens_last_minute,
        dispatched_total=status.dispatched_total,
        rejected_total=status.rejected_total,
        oldest_queued_age_ms=status.oldest_queued_age_ms,
    )


# ------------------------------------------------------------------- statuses

_CODES: tuple[tuple[type[SchedulerError], grpc.StatusCode], ...] = (
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotImplementedFieldError, grpc.StatusCode.UNIMPLEMENTED),
    (BlobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (WorkflowNotFoundError, grpc.StatusCode.NOT_FOUND),
    (TaskNotFoundError, grpc.StatusCode.NOT_FOUND),
    (PoolNotFoundError, grpc.StatusCode.NOT_FOUND),
    (WorkflowExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (TaskExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (RequestIdConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (TaskNotHeldError, grpc.StatusCode.FAILED_PRECONDITION),
    (TaskAlreadyCompletedError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotAwaitingApprovalError, grpc.StatusCode.FAILED_PRECONDITION),
    (WorkflowClosedError, grpc.StatusCode.FAILED_PRECONDITION),
    (WorkflowNotClosedError, grpc.StatusCode.FAILED_PRECONDITION),
    (PoolQueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OpenWorkLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BudgetExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    """Ends the call with the status that ``error`` (a scheduler or storage error) maps to."""
    if isinstance(error, StorageError):
        await abort_storage(context, error)
    if not isinstance(error, SchedulerError):
        raise error
    code = next((c for kind, c in _CODES if isinstance(error, kind)), grpc.StatusCode.INVALID_ARGUMENT)
    if error.reason == "PATCH_NOT_APPLICABLE":  # a completion's state write that cannot apply
        code = grpc.StatusCode.FAILED_PRECONDITION
    violations: list[tuple[str, str]] = []
    metadata = dict(error.metadata)  # the identifiers to act on the error
    message = str(error)
    if isinstance(error, SpecError):
        violations = [(error.field, error.message)]
        if error.limit is not None:
            metadata.update(field=error.field, limit=str(error.limit))
    elif isinstance(error, NotImplementedFieldError | TaskExistsError | BlobNotFoundError):
        violations = [(error.field, message)]
    retry_after = (
        timedelta(seconds=error.retry_after_s)
        if isinstance(error, PoolQueueFullError | OpenWorkLimitError)
        else None
    )
    await abort(
        context,
        code,
        message,
        reason=error.reason,
        metadata=metadata,
        field_violations=violations,
        retry_after=retry_after,
    )


def error_reason_value(reason: str) -> int:
    """The ErrorReason number of a reason name (for TaskAck.reason)."""
    return errors_pb2.ErrorReason.Value("ERROR_REASON_" + reason)
