import datetime

from are_sdk._proto.are.v1 import common_pb2 as _common_pb2
from are_sdk._proto.are.v1 import state_pb2 as _state_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateValue(_message.Message):
    __slots__ = ("path", "value_json")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    path: str
    value_json: bytes
    def __init__(self, path: _Optional[str] = ..., value_json: _Optional[bytes] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("workflow_id", "paths", "version")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    version: int
    def __init__(self, workflow_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ...) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("version", "values", "missing_paths", "update_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MISSING_PATHS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    values: _containers.RepeatedCompositeFieldContainer[StateValue]
    missing_paths: _containers.RepeatedScalarFieldContainer[str]
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., values: _Optional[_Iterable[_Union[StateValue, _Mapping]]] = ..., missing_paths: _Optional[_Iterable[str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PatchStateRequest(_message.Message):
    __slots__ = ("workflow_id", "patch", "expected_version", "task_id", "attempt", "writer")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    patch: _state_pb2.StatePatch
    expected_version: int
    task_id: str
    attempt: int
    writer: str
    def __init__(self, workflow_id: _Optional[str] = ..., patch: _Optional[_Union[_state_pb2.StatePatch, _Mapping]] = ..., expected_version: _Optional[int] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., writer: _Optional[str] = ...) -> None: ...

class PatchStateResponse(_message.Message):
    __slots__ = ("version", "update_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("version", "create_time", "task_id", "attempt", "writer", "size_bytes", "event_sequence")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    version: int
    create_time: _timestamp_pb2.Timestamp
    task_id: str
    attempt: int
    writer: str
    size_bytes: int
    event_sequence: int
    def __init__(self, version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., writer: _Optional[str] = ..., size_bytes: _Optional[int] = ..., event_sequence: _Optional[int] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("workflow_id", "page_size", "page_token")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    page_size: int
    page_token: str
    def __init__(self, workflow_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints", "next_page_token", "oldest_version", "latest_version")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OLDEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    next_page_token: str
    oldest_version: int
    latest_version: int
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., oldest_version: _Optional[int] = ..., latest_version: _Optional[int] = ...) -> None: ...

class ForkWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "version", "new_workflow_id", "rerun_task_ids", "labels", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RERUN_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    version: int
    new_workflow_id: str
    rerun_task_ids: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., version: _Optional[int] = ..., new_workflow_id: _Optional[str] = ..., rerun_task_ids: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ForkWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "source_version")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    source_version: int
    def __init__(self, workflow_id: _Optional[str] = ..., source_version: _Optional[int] = ...) -> None: ...

class MemoryEntry(_message.Message):
    __slots__ = ("memory_id", "text", "vector", "metadata", "content", "create_time")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MEMORY_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    memory_id: str
    text: str
    vector: _common_pb2.Vector
    metadata: _containers.ScalarMap[str, str]
    content: _common_pb2.Payload
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, memory_id: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., content: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddMemoryRequest(_message.Message):
    __slots__ = ("workflow_id", "entries")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    entries: _containers.RepeatedCompositeFieldContainer[MemoryEntry]
    def __init__(self, workflow_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[MemoryEntry, _Mapping]]] = ...) -> None: ...

class AddMemoryResponse(_message.Message):
    __slots__ = ("memory_ids",)
    MEMORY_IDS_FIELD_NUMBER: _ClassVar[int]
    memory_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, memory_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HydrateMemoryRequest(_message.Message):
    __slots__ = ("workflow_id", "text", "vector", "top_k", "metadata_match", "max_bytes", "min_similarity", "include_vectors")
    class MetadataMatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    METADATA_MATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    text: str
    vector: _common_pb2.Vector
    top_k: int
    metadata_match: _containers.ScalarMap[str, str]
    max_bytes: int
    min_similarity: float
    include_vectors: bool
    def __init__(self, workflow_id: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., top_k: _Optional[int] = ..., metadata_match: _Optional[_Mapping[str, str]] = ..., max_bytes: _Optional[int] = ..., min_similarity: _Optional[float] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class MemoryHit(_message.Message):
    __slots__ = ("entry", "similarity")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    entry: MemoryEntry
    similarity: float
    def __init__(self, entry: _Optional[_Union[MemoryEntry, _Mapping]] = ..., similarity: _Optional[float] = ...) -> None: ...

class HydrateMemoryResponse(_message.Message):
    __slots__ = ("hits", "total_bytes", "truncated")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[MemoryHit]
    total_bytes: int
    truncated: bool
    def __init__(self, hits: _Optional[_Iterable[_Union[MemoryHit, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class BlobHeader(_message.Message):
    __slots__ = ("content_type", "size_bytes", "sha256", "workflow_id")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    size_bytes: int
    sha256: str
    workflow_id: str
    def __init__(self, content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., workflow_id: _Optional[str] = ...) -> None: ...

class PutBlobRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BlobHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[BlobHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PutBlobResponse(_message.Message):
    __slots__ = ("blob", "deduplicated")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    blob: _common_pb2.BlobRef
    deduplicated: bool
    def __init__(self, blob: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class GetBlobRequest(_message.Message):
    __slots__ = ("sha256", "offset", "length")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    length: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class GetBlobResponse(_message.Message):
    __slots__ = ("blob", "offset", "chunk")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    blob: _common_pb2.BlobRef
    offset: int
    chunk: bytes
    def __init__(self, blob: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., offset: _Optional[int] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class CheckBlobsRequest(_message.Message):
    __slots__ = ("sha256s", "refresh_found")
    SHA256S_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FOUND_FIELD_NUMBER: _ClassVar[int]
    sha256s: _containers.RepeatedScalarFieldContainer[str]
    refresh_found: bool
    def __init__(self, sha256s: _Optional[_Iterable[str]] = ..., refresh_found: _Optional[bool] = ...) -> None: ...

class CheckBlobsResponse(_message.Message):
    __slots__ = ("found", "missing")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    found: _containers.RepeatedCompositeFieldContainer[_common_pb2.BlobRef]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, found: _Optional[_Iterable[_Union[_common_pb2.BlobRef, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...
