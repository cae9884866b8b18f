import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_KIND_UNSPECIFIED: _ClassVar[FailureKind]
    FAILURE_KIND_APPLICATION: _ClassVar[FailureKind]
    FAILURE_KIND_TIMEOUT: _ClassVar[FailureKind]
    FAILURE_KIND_CANCELLED: _ClassVar[FailureKind]
    FAILURE_KIND_BUDGET_EXCEEDED: _ClassVar[FailureKind]
    FAILURE_KIND_APPROVAL_REJECTED: _ClassVar[FailureKind]
    FAILURE_KIND_WORKER_LOST: _ClassVar[FailureKind]
    FAILURE_KIND_ROUTING: _ClassVar[FailureKind]
    FAILURE_KIND_RUNTIME: _ClassVar[FailureKind]

class TimeoutType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIMEOUT_TYPE_UNSPECIFIED: _ClassVar[TimeoutType]
    TIMEOUT_TYPE_SCHEDULE_TO_START: _ClassVar[TimeoutType]
    TIMEOUT_TYPE_START_TO_CLOSE: _ClassVar[TimeoutType]
    TIMEOUT_TYPE_HEARTBEAT: _ClassVar[TimeoutType]
    TIMEOUT_TYPE_SCHEDULE_TO_CLOSE: _ClassVar[TimeoutType]
    TIMEOUT_TYPE_APPROVAL: _ClassVar[TimeoutType]
    TIMEOUT_TYPE_WORKFLOW: _ClassVar[TimeoutType]
FAILURE_KIND_UNSPECIFIED: FailureKind
FAILURE_KIND_APPLICATION: FailureKind
FAILURE_KIND_TIMEOUT: FailureKind
FAILURE_KIND_CANCELLED: FailureKind
FAILURE_KIND_BUDGET_EXCEEDED: FailureKind
FAILURE_KIND_APPROVAL_REJECTED: FailureKind
FAILURE_KIND_WORKER_LOST: FailureKind
FAILURE_KIND_ROUTING: FailureKind
FAILURE_KIND_RUNTIME: FailureKind
TIMEOUT_TYPE_UNSPECIFIED: TimeoutType
TIMEOUT_TYPE_SCHEDULE_TO_START: TimeoutType
TIMEOUT_TYPE_START_TO_CLOSE: TimeoutType
TIMEOUT_TYPE_HEARTBEAT: TimeoutType
TIMEOUT_TYPE_SCHEDULE_TO_CLOSE: TimeoutType
TIMEOUT_TYPE_APPROVAL: TimeoutType
TIMEOUT_TYPE_WORKFLOW: TimeoutType

class Payload(_message.Message):
    __slots__ = ("data", "blob", "content_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    blob: BlobRef
    content_type: str
    def __init__(self, data: _Optional[bytes] = ..., blob: _Optional[_Union[BlobRef, _Mapping]] = ..., content_type: _Optional[str] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("sha256", "size_bytes", "content_type")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    content_type: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., content_type: _Optional[str] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("initial_interval", "backoff_coefficient", "maximum_interval", "maximum_attempts", "non_retryable_failure_types")
    INITIAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_FAILURE_TYPES_FIELD_NUMBER: _ClassVar[int]
    initial_interval: _duration_pb2.Duration
    backoff_coefficient: float
    maximum_interval: _duration_pb2.Duration
    maximum_attempts: int
    non_retryable_failure_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, initial_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_coefficient: _Optional[float] = ..., maximum_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., maximum_attempts: _Optional[int] = ..., non_retryable_failure_types: _Optional[_Iterable[str]] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("message", "type", "non_retryable", "details", "cause", "kind", "timeout_type", "stack_trace")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STACK_TRACE_FIELD_NUMBER: _ClassVar[int]
    message: str
    type: str
    non_retryable: bool
    details: Payload
    cause: Failure
    kind: FailureKind
    timeout_type: TimeoutType
    stack_trace: str
    def __init__(self, message: _Optional[str] = ..., type: _Optional[str] = ..., non_retryable: _Optional[bool] = ..., details: _Optional[_Union[Payload, _Mapping]] = ..., cause: _Optional[_Union[Failure, _Mapping]] = ..., kind: _Optional[_Union[FailureKind, str]] = ..., timeout_type: _Optional[_Union[TimeoutType, str]] = ..., stack_trace: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "cost_micro_usd", "llm_calls", "tool_calls")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    llm_calls: int
    tool_calls: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_micro_usd: _Optional[int] = ..., llm_calls: _Optional[int] = ..., tool_calls: _Optional[int] = ...) -> None: ...

class UsageSummary(_message.Message):
    __slots__ = ("usage", "task_attempts", "retries", "cache_hits", "cache_saved_tokens", "cache_saved_cost_micro_usd", "tasks_completed", "tasks_failed")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    TASKS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    task_attempts: int
    retries: int
    cache_hits: int
    cache_saved_tokens: int
    cache_saved_cost_micro_usd: int
    tasks_completed: int
    tasks_failed: int
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., task_attempts: _Optional[int] = ..., retries: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_saved_tokens: _Optional[int] = ..., cache_saved_cost_micro_usd: _Optional[int] = ..., tasks_completed: _Optional[int] = ..., tasks_failed: _Optional[int] = ...) -> None: ...

class TraceContext(_message.Message):
    __slots__ = ("traceparent", "tracestate")
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    traceparent: str
    tracestate: str
    def __init__(self, traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...
