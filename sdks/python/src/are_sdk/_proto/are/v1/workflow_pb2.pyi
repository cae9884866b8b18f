import datetime

from are_sdk._proto.are.v1 import common_pb2 as _common_pb2
from are_sdk._proto.are.v1 import task_pb2 as _task_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STATE_UNSPECIFIED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_RUNNING: _ClassVar[WorkflowState]
    WORKFLOW_STATE_CANCELLING: _ClassVar[WorkflowState]
    WORKFLOW_STATE_COMPLETED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_FAILED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_CANCELLED: _ClassVar[WorkflowState]
WORKFLOW_STATE_UNSPECIFIED: WorkflowState
WORKFLOW_STATE_RUNNING: WorkflowState
WORKFLOW_STATE_CANCELLING: WorkflowState
WORKFLOW_STATE_COMPLETED: WorkflowState
WORKFLOW_STATE_FAILED: WorkflowState
WORKFLOW_STATE_CANCELLED: WorkflowState

class WorkflowBudget(_message.Message):
    __slots__ = ("max_tasks", "max_cost_micro_usd", "max_duration", "max_tokens", "max_attempts", "max_spawn_depth")
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SPAWN_DEPTH_FIELD_NUMBER: _ClassVar[int]
    max_tasks: int
    max_cost_micro_usd: int
    max_duration: _duration_pb2.Duration
    max_tokens: int
    max_attempts: int
    max_spawn_depth: int
    def __init__(self, max_tasks: _Optional[int] = ..., max_cost_micro_usd: _Optional[int] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_tokens: _Optional[int] = ..., max_attempts: _Optional[int] = ..., max_spawn_depth: _Optional[int] = ...) -> None: ...

class StateRetention(_message.Message):
    __slots__ = ("keep_versions", "keep_duration")
    KEEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KEEP_DURATION_FIELD_NUMBER: _ClassVar[int]
    keep_versions: int
    keep_duration: _duration_pb2.Duration
    def __init__(self, keep_versions: _Optional[int] = ..., keep_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WorkflowSpec(_message.Message):
    __slots__ = ("workflow_id", "name", "tasks", "initial_state", "budget", "labels", "default_retry_policy", "default_pool", "result_task_id", "trace_context", "state_retention")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POOL_FIELD_NUMBER: _ClassVar[int]
    RESULT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STATE_RETENTION_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.TaskSpec]
    initial_state: _common_pb2.Payload
    budget: WorkflowBudget
    labels: _containers.ScalarMap[str, str]
    default_retry_policy: _common_pb2.RetryPolicy
    default_pool: str
    result_task_id: str
    trace_context: _common_pb2.TraceContext
    state_retention: StateRetention
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[_task_pb2.TaskSpec, _Mapping]]] = ..., initial_state: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., budget: _Optional[_Union[WorkflowBudget, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., default_retry_policy: _Optional[_Union[_common_pb2.RetryPolicy, _Mapping]] = ..., default_pool: _Optional[str] = ..., result_task_id: _Optional[str] = ..., trace_context: _Optional[_Union[_common_pb2.TraceContext, _Mapping]] = ..., state_retention: _Optional[_Union[StateRetention, _Mapping]] = ...) -> None: ...

class TaskCounts(_message.Message):
    __slots__ = ("pending", "scheduled", "awaiting_approval", "running", "backing_off", "completed", "failed", "skipped", "rejected", "cancelled", "total")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    AWAITING_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    BACKING_OFF_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    pending: int
    scheduled: int
    awaiting_approval: int
    running: int
    backing_off: int
    completed: int
    failed: int
    skipped: int
    rejected: int
    cancelled: int
    total: int
    def __init__(self, pending: _Optional[int] = ..., scheduled: _Optional[int] = ..., awaiting_approval: _Optional[int] = ..., running: _Optional[int] = ..., backing_off: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., skipped: _Optional[int] = ..., rejected: _Optional[int] = ..., cancelled: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class ForkOrigin(_message.Message):
    __slots__ = ("workflow_id", "state_version")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    state_version: int
    def __init__(self, workflow_id: _Optional[str] = ..., state_version: _Optional[int] = ...) -> None: ...

class Workflow(_message.Message):
    __slots__ = ("workflow_id", "name", "state", "labels", "budget", "task_counts", "usage", "result", "failure", "state_version", "forked_from", "trace_id", "create_time", "close_time", "deadline_time", "result_task_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORKED_FROM_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    state: WorkflowState
    labels: _containers.ScalarMap[str, str]
    budget: WorkflowBudget
    task_counts: TaskCounts
    usage: _common_pb2.UsageSummary
    result: _common_pb2.Payload
    failure: _common_pb2.Failure
    state_version: int
    forked_from: ForkOrigin
    trace_id: str
    create_time: _timestamp_pb2.Timestamp
    close_time: _timestamp_pb2.Timestamp
    deadline_time: _timestamp_pb2.Timestamp
    result_task_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[WorkflowState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., budget: _Optional[_Union[WorkflowBudget, _Mapping]] = ..., task_counts: _Optional[_Union[TaskCounts, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.UsageSummary, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., state_version: _Optional[int] = ..., forked_from: _Optional[_Union[ForkOrigin, _Mapping]] = ..., trace_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., close_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result_task_id: _Optional[str] = ...) -> None: ...
