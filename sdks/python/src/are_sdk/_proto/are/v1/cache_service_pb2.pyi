import datetime

from are_sdk._proto.are.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheTier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_TIER_UNSPECIFIED: _ClassVar[CacheTier]
    CACHE_TIER_EXACT: _ClassVar[CacheTier]
    CACHE_TIER_SEMANTIC: _ClassVar[CacheTier]

class VectorDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_DTYPE_UNSPECIFIED: _ClassVar[VectorDtype]
    VECTOR_DTYPE_F32: _ClassVar[VectorDtype]
    VECTOR_DTYPE_F16: _ClassVar[VectorDtype]
    VECTOR_DTYPE_I8: _ClassVar[VectorDtype]
CACHE_TIER_UNSPECIFIED: CacheTier
CACHE_TIER_EXACT: CacheTier
CACHE_TIER_SEMANTIC: CacheTier
VECTOR_DTYPE_UNSPECIFIED: VectorDtype
VECTOR_DTYPE_F32: VectorDtype
VECTOR_DTYPE_F16: VectorDtype
VECTOR_DTYPE_I8: VectorDtype

class CacheNamespace(_message.Message):
    __slots__ = ("name", "embedder", "dimension", "similarity_threshold", "default_ttl", "max_entries", "max_bytes", "vector_dtype", "description", "create_time", "update_time", "search_expansion", "recall_target", "search_expansion_fixed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DTYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEARCH_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    RECALL_TARGET_FIELD_NUMBER: _ClassVar[int]
    SEARCH_EXPANSION_FIXED_FIELD_NUMBER: _ClassVar[int]
    name: str
    embedder: str
    dimension: int
    similarity_threshold: float
    default_ttl: _duration_pb2.Duration
    max_entries: int
    max_bytes: int
    vector_dtype: VectorDtype
    description: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    search_expansion: int
    recall_target: float
    search_expansion_fixed: bool
    def __init__(self, name: _Optional[str] = ..., embedder: _Optional[str] = ..., dimension: _Optional[int] = ..., similarity_threshold: _Optional[float] = ..., default_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_entries: _Optional[int] = ..., max_bytes: _Optional[int] = ..., vector_dtype: _Optional[_Union[VectorDtype, str]] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., search_expansion: _Optional[int] = ..., recall_target: _Optional[float] = ..., search_expansion_fixed: _Optional[bool] = ...) -> None: ...

class LookupCacheRequest(_message.Message):
    __slots__ = ("namespace", "prompt", "vector", "threshold", "max_age", "exact_only")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    EXACT_ONLY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prompt: str
    vector: _common_pb2.Vector
    threshold: float
    max_age: _duration_pb2.Duration
    exact_only: bool
    def __init__(self, namespace: _Optional[str] = ..., prompt: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., threshold: _Optional[float] = ..., max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., exact_only: _Optional[bool] = ...) -> None: ...

class LookupCacheResponse(_message.Message):
    __slots__ = ("hit", "tier", "entry_id", "response", "similarity", "usage", "metadata", "matched_prompt", "create_time", "best_similarity")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HIT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MATCHED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    BEST_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    hit: bool
    tier: CacheTier
    entry_id: str
    response: _common_pb2.Payload
    similarity: float
    usage: _common_pb2.Usage
    metadata: _containers.ScalarMap[str, str]
    matched_prompt: str
    create_time: _timestamp_pb2.Timestamp
    best_similarity: float
    def __init__(self, hit: _Optional[bool] = ..., tier: _Optional[_Union[CacheTier, str]] = ..., entry_id: _Optional[str] = ..., response: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., similarity: _Optional[float] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., matched_prompt: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., best_similarity: _Optional[float] = ...) -> None: ...

class StoreCacheRequest(_message.Message):
    __slots__ = ("namespace", "prompt", "vector", "response", "ttl", "metadata", "usage")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prompt: str
    vector: _common_pb2.Vector
    response: _common_pb2.Payload
    ttl: _duration_pb2.Duration
    metadata: _containers.ScalarMap[str, str]
    usage: _common_pb2.Usage
    def __init__(self, namespace: _Optional[str] = ..., prompt: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., response: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class StoreCacheResponse(_message.Message):
    __slots__ = ("entry_id", "replaced", "expire_time")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    replaced: bool
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, entry_id: _Optional[str] = ..., replaced: _Optional[bool] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InvalidateCacheRequest(_message.Message):
    __slots__ = ("namespace", "entry_ids", "metadata_match", "all")
    class MetadataMatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_IDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_MATCH_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    entry_ids: _containers.RepeatedScalarFieldContainer[str]
    metadata_match: _containers.ScalarMap[str, str]
    all: bool
    def __init__(self, namespace: _Optional[str] = ..., entry_ids: _Optional[_Iterable[str]] = ..., metadata_match: _Optional[_Mapping[str, str]] = ..., all: _Optional[bool] = ...) -> None: ...

class InvalidateCacheResponse(_message.Message):
    __slots__ = ("removed_count",)
    REMOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    removed_count: int
    def __init__(self, removed_count: _Optional[int] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("namespace", "lookups", "exact_hits", "semantic_hits", "misses", "hit_rate", "entries", "size_bytes", "expirations", "evictions", "saved_tokens", "saved_cost_micro_usd", "unindexed_entries", "search_expansion", "measured_recall", "recall_samples", "calibrate_time", "calibrating", "repaired_entries")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRATIONS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    SAVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAVED_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    UNINDEXED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SEARCH_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    MEASURED_RECALL_FIELD_NUMBER: _ClassVar[int]
    RECALL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CALIBRATING_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    lookups: int
    exact_hits: int
    semantic_hits: int
    misses: int
    hit_rate: float
    entries: int
    size_bytes: int
    expirations: int
    evictions: int
    saved_tokens: int
    saved_cost_micro_usd: int
    unindexed_entries: int
    search_expansion: int
    measured_recall: float
    recall_samples: int
    calibrate_time: _timestamp_pb2.Timestamp
    calibrating: bool
    repaired_entries: int
    def __init__(self, namespace: _Optional[str] = ..., lookups: _Optional[int] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., misses: _Optional[int] = ..., hit_rate: _Optional[float] = ..., entries: _Optional[int] = ..., size_bytes: _Optional[int] = ..., expirations: _Optional[int] = ..., evictions: _Optional[int] = ..., saved_tokens: _Optional[int] = ..., saved_cost_micro_usd: _Optional[int] = ..., unindexed_entries: _Optional[int] = ..., search_expansion: _Optional[int] = ..., measured_recall: _Optional[float] = ..., recall_samples: _Optional[int] = ..., calibrate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., calibrating: _Optional[bool] = ..., repaired_entries: _Optional[int] = ...) -> None: ...

class GetCacheStatsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class GetCacheStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[CacheStats]
    def __init__(self, stats: _Optional[_Iterable[_Union[CacheStats, _Mapping]]] = ...) -> None: ...

class PutNamespaceRequest(_message.Message):
    __slots__ = ("namespace", "update_mask")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    namespace: CacheNamespace
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, namespace: _Optional[_Union[CacheNamespace, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class PutNamespaceResponse(_message.Message):
    __slots__ = ("namespace", "created")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    namespace: CacheNamespace
    created: bool
    def __init__(self, namespace: _Optional[_Union[CacheNamespace, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListNamespacesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNamespacesResponse(_message.Message):
    __slots__ = ("namespaces", "next_page_token")
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[CacheNamespace]
    next_page_token: str
    def __init__(self, namespaces: _Optional[_Iterable[_Union[CacheNamespace, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteNamespaceRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class DeleteNamespaceResponse(_message.Message):
    __slots__ = ("removed_count",)
    REMOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    removed_count: int
    def __init__(self, removed_count: _Optional[int] = ...) -> None: ...
