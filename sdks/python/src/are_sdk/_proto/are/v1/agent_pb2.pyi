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

class AgentSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_SOURCE_UNSPECIFIED: _ClassVar[AgentSource]
    AGENT_SOURCE_REGISTERED: _ClassVar[AgentSource]
    AGENT_SOURCE_WORKER: _ClassVar[AgentSource]
AGENT_SOURCE_UNSPECIFIED: AgentSource
AGENT_SOURCE_REGISTERED: AgentSource
AGENT_SOURCE_WORKER: AgentSource

class AgentCard(_message.Message):
    __slots__ = ("agent_id", "display_name", "description", "capabilities", "vector", "cost_per_call_micro_usd", "typical_latency", "capacity", "labels", "source", "available", "running", "worker_ids", "create_time", "update_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    COST_PER_CALL_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_LATENCY_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    display_name: str
    description: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    vector: _common_pb2.Vector
    cost_per_call_micro_usd: int
    typical_latency: _duration_pb2.Duration
    capacity: int
    labels: _containers.ScalarMap[str, str]
    source: AgentSource
    available: bool
    running: int
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, agent_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., cost_per_call_micro_usd: _Optional[int] = ..., typical_latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., capacity: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., source: _Optional[_Union[AgentSource, str]] = ..., available: _Optional[bool] = ..., running: _Optional[int] = ..., worker_ids: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
