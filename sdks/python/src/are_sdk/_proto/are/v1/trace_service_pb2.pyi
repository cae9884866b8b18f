from are_sdk._proto.are.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MissedReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSED_REASON_UNSPECIFIED: _ClassVar[MissedReason]
    MISSED_REASON_SLOW_SUBSCRIBER: _ClassVar[MissedReason]
    MISSED_REASON_RETENTION: _ClassVar[MissedReason]
MISSED_REASON_UNSPECIFIED: MissedReason
MISSED_REASON_SLOW_SUBSCRIBER: MissedReason
MISSED_REASON_RETENTION: MissedReason

class ListEventsRequest(_message.Message):
    __slots__ = ("filter", "after_sequence", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: _event_pb2.EventFilter
    after_sequence: int
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[_event_pb2.EventFilter, _Mapping]] = ..., after_sequence: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token", "last_sequence", "oldest_retained_sequence", "end_sequence")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OLDEST_RETAINED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    END_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.Event]
    next_page_token: str
    last_sequence: int
    oldest_retained_sequence: int
    end_sequence: int
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.Event, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., last_sequence: _Optional[int] = ..., oldest_retained_sequence: _Optional[int] = ..., end_sequence: _Optional[int] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("filter", "after_sequence", "max_batch")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    filter: _event_pb2.EventFilter
    after_sequence: int
    max_batch: int
    def __init__(self, filter: _Optional[_Union[_event_pb2.EventFilter, _Mapping]] = ..., after_sequence: _Optional[int] = ..., max_batch: _Optional[int] = ...) -> None: ...

class EventsMissed(_message.Message):
    __slots__ = ("reason", "missed_count", "first_missed_sequence", "last_missed_sequence", "resume_after_sequence")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MISSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_MISSED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_MISSED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    reason: MissedReason
    missed_count: int
    first_missed_sequence: int
    last_missed_sequence: int
    resume_after_sequence: int
    def __init__(self, reason: _Optional[_Union[MissedReason, str]] = ..., missed_count: _Optional[int] = ..., first_missed_sequence: _Optional[int] = ..., last_missed_sequence: _Optional[int] = ..., resume_after_sequence: _Optional[int] = ...) -> None: ...

class CaughtUp(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class StreamedEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.Event, _Mapping]]] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("event", "missed", "caught_up", "batch")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.Event
    missed: EventsMissed
    caught_up: CaughtUp
    batch: StreamedEventBatch
    def __init__(self, event: _Optional[_Union[_event_pb2.Event, _Mapping]] = ..., missed: _Optional[_Union[EventsMissed, _Mapping]] = ..., caught_up: _Optional[_Union[CaughtUp, _Mapping]] = ..., batch: _Optional[_Union[StreamedEventBatch, _Mapping]] = ...) -> None: ...
