import datetime

from are_sdk._proto.are.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_SCHEDULED: _ClassVar[TaskState]
    TASK_STATE_AWAITING_APPROVAL: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_BACKING_OFF: _ClassVar[TaskState]
    TASK_STATE_COMPLETED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_SKIPPED: _ClassVar[TaskState]
    TASK_STATE_REJECTED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]

class TriggerRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIGGER_RULE_UNSPECIFIED: _ClassVar[TriggerRule]
    TRIGGER_RULE_ALL_SUCCESS: _ClassVar[TriggerRule]
    TRIGGER_RULE_ALL_DONE: _ClassVar[TriggerRule]
    TRIGGER_RULE_ONE_FAILED: _ClassVar[TriggerRule]
    TRIGGER_RULE_ONE_SUCCESS: _ClassVar[TriggerRule]
    TRIGGER_RULE_NONE_FAILED: _ClassVar[TriggerRule]

class ComparisonOperator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_OPERATOR_UNSPECIFIED: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_EQUAL: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_NOT_EQUAL: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_LESS_THAN: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_LESS_THAN_OR_EQUAL: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_GREATER_THAN: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_GREATER_THAN_OR_EQUAL: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_EXISTS: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_NOT_EXISTS: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_CONTAINS: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_IN: _ClassVar[ComparisonOperator]
    COMPARISON_OPERATOR_TRUTHY: _ClassVar[ComparisonOperator]

class ApprovalDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_DECISION_UNSPECIFIED: _ClassVar[ApprovalDecision]
    APPROVAL_DECISION_APPROVE: _ClassVar[ApprovalDecision]
    APPROVAL_DECISION_REJECT: _ClassVar[ApprovalDecision]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_SCHEDULED: TaskState
TASK_STATE_AWAITING_APPROVAL: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_BACKING_OFF: TaskState
TASK_STATE_COMPLETED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_SKIPPED: TaskState
TASK_STATE_REJECTED: TaskState
TASK_STATE_CANCELLED: TaskState
TRIGGER_RULE_UNSPECIFIED: TriggerRule
TRIGGER_RULE_ALL_SUCCESS: TriggerRule
TRIGGER_RULE_ALL_DONE: TriggerRule
TRIGGER_RULE_ONE_FAILED: TriggerRule
TRIGGER_RULE_ONE_SUCCESS: TriggerRule
TRIGGER_RULE_NONE_FAILED: TriggerRule
COMPARISON_OPERATOR_UNSPECIFIED: ComparisonOperator
COMPARISON_OPERATOR_EQUAL: ComparisonOperator
COMPARISON_OPERATOR_NOT_EQUAL: ComparisonOperator
COMPARISON_OPERATOR_LESS_THAN: ComparisonOperator
COMPARISON_OPERATOR_LESS_THAN_OR_EQUAL: ComparisonOperator
COMPARISON_OPERATOR_GREATER_THAN: ComparisonOperator
COMPARISON_OPERATOR_GREATER_THAN_OR_EQUAL: ComparisonOperator
COMPARISON_OPERATOR_EXISTS: ComparisonOperator
COMPARISON_OPERATOR_NOT_EXISTS: ComparisonOperator
COMPARISON_OPERATOR_CONTAINS: ComparisonOperator
COMPARISON_OPERATOR_IN: ComparisonOperator
COMPARISON_OPERATOR_TRUTHY: ComparisonOperator
APPROVAL_DECISION_UNSPECIFIED: ApprovalDecision
APPROVAL_DECISION_APPROVE: ApprovalDecision
APPROVAL_DECISION_REJECT: ApprovalDecision

class Condition(_message.Message):
    __slots__ = ("task_id", "pointer", "operator", "value_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    POINTER_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    pointer: str
    operator: ComparisonOperator
    value_json: str
    def __init__(self, task_id: _Optional[str] = ..., pointer: _Optional[str] = ..., operator: _Optional[_Union[ComparisonOperator, str]] = ..., value_json: _Optional[str] = ...) -> None: ...

class TaskCacheKey(_message.Message):
    __slots__ = ("namespace", "prompt", "exact_only", "read_only", "ttl")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    EXACT_ONLY_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prompt: str
    exact_only: bool
    read_only: bool
    ttl: _duration_pb2.Duration
    def __init__(self, namespace: _Optional[str] = ..., prompt: _Optional[str] = ..., exact_only: _Optional[bool] = ..., read_only: _Optional[bool] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "capability", "intent", "input", "depends_on", "trigger_rule", "conditions", "retry_policy", "schedule_to_start_timeout", "start_to_close_timeout", "heartbeat_timeout", "schedule_to_close_timeout", "pool", "priority", "requires_approval", "approval_timeout", "labels", "cache_key", "estimated_tokens", "output_state_pointer", "exclude_dependency_outputs", "display_name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_RULE_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TO_START_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    START_TO_CLOSE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TO_CLOSE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_STATE_POINTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_DEPENDENCY_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    capability: str
    intent: str
    input: _common_pb2.Payload
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    trigger_rule: TriggerRule
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    retry_policy: _common_pb2.RetryPolicy
    schedule_to_start_timeout: _duration_pb2.Duration
    start_to_close_timeout: _duration_pb2.Duration
    heartbeat_timeout: _duration_pb2.Duration
    schedule_to_close_timeout: _duration_pb2.Duration
    pool: str
    priority: int
    requires_approval: bool
    approval_timeout: _duration_pb2.Duration
    labels: _containers.ScalarMap[str, str]
    cache_key: TaskCacheKey
    estimated_tokens: int
    output_state_pointer: str
    exclude_dependency_outputs: bool
    display_name: str
    def __init__(self, task_id: _Optional[str] = ..., capability: _Optional[str] = ..., intent: _Optional[str] = ..., input: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., depends_on: _Optional[_Iterable[str]] = ..., trigger_rule: _Optional[_Union[TriggerRule, str]] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., retry_policy: _Optional[_Union[_common_pb2.RetryPolicy, _Mapping]] = ..., schedule_to_start_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_to_close_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., schedule_to_close_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pool: _Optional[str] = ..., priority: _Optional[int] = ..., requires_approval: _Optional[bool] = ..., approval_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., cache_key: _Optional[_Union[TaskCacheKey, _Mapping]] = ..., estimated_tokens: _Optional[int] = ..., output_state_pointer: _Optional[str] = ..., exclude_dependency_outputs: _Optional[bool] = ..., display_name: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("request_time", "expire_time", "decision", "approver", "comment", "resolve_time")
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_FIELD_NUMBER: _ClassVar[int]
    request_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    decision: ApprovalDecision
    approver: str
    comment: str
    resolve_time: _timestamp_pb2.Timestamp
    def __init__(self, request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision: _Optional[_Union[ApprovalDecision, str]] = ..., approver: _Optional[str] = ..., comment: _Optional[str] = ..., resolve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DependencyResult(_message.Message):
    __slots__ = ("task_id", "state", "output", "failure")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    output: _common_pb2.Payload
    failure: _common_pb2.Failure
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., output: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("workflow_id", "task_id", "spec", "state", "state_reason", "attempt", "output", "failure", "usage", "capability", "worker_id", "parent_task_id", "approval", "cache_entry_id", "create_time", "schedule_time", "start_time", "close_time", "last_heartbeat_time", "next_attempt_time", "idempotency_key")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    spec: TaskSpec
    state: TaskState
    state_reason: str
    attempt: int
    output: _common_pb2.Payload
    failure: _common_pb2.Failure
    usage: _common_pb2.UsageSummary
    capability: str
    worker_id: str
    parent_task_id: str
    approval: Approval
    cache_entry_id: str
    create_time: _timestamp_pb2.Timestamp
    schedule_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    close_time: _timestamp_pb2.Timestamp
    last_heartbeat_time: _timestamp_pb2.Timestamp
    next_attempt_time: _timestamp_pb2.Timestamp
    idempotency_key: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., state_reason: _Optional[str] = ..., attempt: _Optional[int] = ..., output: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.UsageSummary, _Mapping]] = ..., capability: _Optional[str] = ..., worker_id: _Optional[str] = ..., parent_task_id: _Optional[str] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ..., cache_entry_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schedule_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., close_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...
