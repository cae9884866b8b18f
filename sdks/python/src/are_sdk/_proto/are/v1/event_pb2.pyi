import datetime

from are_sdk._proto.are.v1 import common_pb2 as _common_pb2
from are_sdk._proto.are.v1 import task_pb2 as _task_pb2
from are_sdk._proto.are.v1 import workflow_pb2 as _workflow_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_SUBMITTED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_COMPLETED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_FAILED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_CANCEL_REQUESTED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_CANCELLED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_BUDGET_EXCEEDED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_FORKED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_DELETED: _ClassVar[EventType]
    EVENT_TYPE_TASKS_SPAWNED: _ClassVar[EventType]
    EVENT_TYPE_TASK_SCHEDULED: _ClassVar[EventType]
    EVENT_TYPE_TASK_SKIPPED: _ClassVar[EventType]
    EVENT_TYPE_TASK_AWAITING_APPROVAL: _ClassVar[EventType]
    EVENT_TYPE_TASK_APPROVED: _ClassVar[EventType]
    EVENT_TYPE_TASK_REJECTED: _ClassVar[EventType]
    EVENT_TYPE_TASK_DISPATCHED: _ClassVar[EventType]
    EVENT_TYPE_TASK_COMPLETED: _ClassVar[EventType]
    EVENT_TYPE_TASK_ATTEMPT_FAILED: _ClassVar[EventType]
    EVENT_TYPE_TASK_RETRY_SCHEDULED: _ClassVar[EventType]
    EVENT_TYPE_TASK_TIMED_OUT: _ClassVar[EventType]
    EVENT_TYPE_TASK_LEASE_EXPIRED: _ClassVar[EventType]
    EVENT_TYPE_TASK_CANCELLED: _ClassVar[EventType]
    EVENT_TYPE_TASK_CACHE_HIT: _ClassVar[EventType]
    EVENT_TYPE_TASK_CACHE_MISS: _ClassVar[EventType]
    EVENT_TYPE_TASK_ROUTED: _ClassVar[EventType]
    EVENT_TYPE_POOL_QUEUE_FULL: _ClassVar[EventType]
    EVENT_TYPE_STATE_PATCHED: _ClassVar[EventType]
    EVENT_TYPE_MEMORY_ADDED: _ClassVar[EventType]
    EVENT_TYPE_CACHE_HIT: _ClassVar[EventType]
    EVENT_TYPE_CACHE_MISS: _ClassVar[EventType]
    EVENT_TYPE_CACHE_STORED: _ClassVar[EventType]
    EVENT_TYPE_CACHE_INVALIDATED: _ClassVar[EventType]
    EVENT_TYPE_CACHE_INDEXING: _ClassVar[EventType]
    EVENT_TYPE_CACHE_CALIBRATED: _ClassVar[EventType]
    EVENT_TYPE_CACHE_NAMESPACE_DELETED: _ClassVar[EventType]
    EVENT_TYPE_ROUTE_DECIDED: _ClassVar[EventType]
    EVENT_TYPE_MODEL_ROUTED: _ClassVar[EventType]
    EVENT_TYPE_ROUTE_OUTCOME_REPORTED: _ClassVar[EventType]
    EVENT_TYPE_AGENT_REGISTERED: _ClassVar[EventType]
    EVENT_TYPE_AGENT_DEREGISTERED: _ClassVar[EventType]
    EVENT_TYPE_WORKER_CONNECTED: _ClassVar[EventType]
    EVENT_TYPE_WORKER_DISCONNECTED: _ClassVar[EventType]
    EVENT_TYPE_LLM_CALL: _ClassVar[EventType]
    EVENT_TYPE_TOOL_CALL: _ClassVar[EventType]
    EVENT_TYPE_WORKER_CUSTOM: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_WORKFLOW_SUBMITTED: EventType
EVENT_TYPE_WORKFLOW_COMPLETED: EventType
EVENT_TYPE_WORKFLOW_FAILED: EventType
EVENT_TYPE_WORKFLOW_CANCEL_REQUESTED: EventType
EVENT_TYPE_WORKFLOW_CANCELLED: EventType
EVENT_TYPE_WORKFLOW_BUDGET_EXCEEDED: EventType
EVENT_TYPE_WORKFLOW_FORKED: EventType
EVENT_TYPE_WORKFLOW_DELETED: EventType
EVENT_TYPE_TASKS_SPAWNED: EventType
EVENT_TYPE_TASK_SCHEDULED: EventType
EVENT_TYPE_TASK_SKIPPED: EventType
EVENT_TYPE_TASK_AWAITING_APPROVAL: EventType
EVENT_TYPE_TASK_APPROVED: EventType
EVENT_TYPE_TASK_REJECTED: EventType
EVENT_TYPE_TASK_DISPATCHED: EventType
EVENT_TYPE_TASK_COMPLETED: EventType
EVENT_TYPE_TASK_ATTEMPT_FAILED: EventType
EVENT_TYPE_TASK_RETRY_SCHEDULED: EventType
EVENT_TYPE_TASK_TIMED_OUT: EventType
EVENT_TYPE_TASK_LEASE_EXPIRED: EventType
EVENT_TYPE_TASK_CANCELLED: EventType
EVENT_TYPE_TASK_CACHE_HIT: EventType
EVENT_TYPE_TASK_CACHE_MISS: EventType
EVENT_TYPE_TASK_ROUTED: EventType
EVENT_TYPE_POOL_QUEUE_FULL: EventType
EVENT_TYPE_STATE_PATCHED: EventType
EVENT_TYPE_MEMORY_ADDED: EventType
EVENT_TYPE_CACHE_HIT: EventType
EVENT_TYPE_CACHE_MISS: EventType
EVENT_TYPE_CACHE_STORED: EventType
EVENT_TYPE_CACHE_INVALIDATED: EventType
EVENT_TYPE_CACHE_INDEXING: EventType
EVENT_TYPE_CACHE_CALIBRATED: EventType
EVENT_TYPE_CACHE_NAMESPACE_DELETED: EventType
EVENT_TYPE_ROUTE_DECIDED: EventType
EVENT_TYPE_MODEL_ROUTED: EventType
EVENT_TYPE_ROUTE_OUTCOME_REPORTED: EventType
EVENT_TYPE_AGENT_REGISTERED: EventType
EVENT_TYPE_AGENT_DEREGISTERED: EventType
EVENT_TYPE_WORKER_CONNECTED: EventType
EVENT_TYPE_WORKER_DISCONNECTED: EventType
EVENT_TYPE_LLM_CALL: EventType
EVENT_TYPE_TOOL_CALL: EventType
EVENT_TYPE_WORKER_CUSTOM: EventType

class AttributeValue(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "event_time", "event_type", "workflow_id", "task_id", "attempt", "worker_id", "task_state", "workflow_state", "failure", "usage", "duration", "name", "attributes", "span_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttributeValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttributeValue, _Mapping]] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    event_time: _timestamp_pb2.Timestamp
    event_type: EventType
    workflow_id: str
    task_id: str
    attempt: int
    worker_id: str
    task_state: _task_pb2.TaskState
    workflow_state: _workflow_pb2.WorkflowState
    failure: _common_pb2.Failure
    usage: _common_pb2.Usage
    duration: _duration_pb2.Duration
    name: str
    attributes: _containers.MessageMap[str, AttributeValue]
    span_id: str
    def __init__(self, sequence: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_type: _Optional[_Union[EventType, str]] = ..., workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., task_state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., workflow_state: _Optional[_Union[_workflow_pb2.WorkflowState, str]] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, AttributeValue]] = ..., span_id: _Optional[str] = ...) -> None: ...

class ReportedEvent(_message.Message):
    __slots__ = ("workflow_id", "task_id", "attempt", "event_type", "event_time", "name", "duration", "usage", "failure", "attributes", "span_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttributeValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttributeValue, _Mapping]] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    attempt: int
    event_type: EventType
    event_time: _timestamp_pb2.Timestamp
    name: str
    duration: _duration_pb2.Duration
    usage: _common_pb2.Usage
    failure: _common_pb2.Failure
    attributes: _containers.MessageMap[str, AttributeValue]
    span_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., event_type: _Optional[_Union[EventType, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., name: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., attributes: _Optional[_Mapping[str, AttributeValue]] = ..., span_id: _Optional[str] = ...) -> None: ...

class EventFilter(_message.Message):
    __slots__ = ("workflow_ids", "task_ids", "event_types", "start_time", "end_time", "worker_id")
    WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_ids: _containers.RepeatedScalarFieldContainer[str]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    event_types: _containers.RepeatedScalarFieldContainer[EventType]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    worker_id: str
    def __init__(self, workflow_ids: _Optional[_Iterable[str]] = ..., task_ids: _Optional[_Iterable[str]] = ..., event_types: _Optional[_Iterable[_Union[EventType, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...
