import datetime

from are_sdk._proto.are.v1 import agent_pb2 as _agent_pb2
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

class RouteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_MODE_UNSPECIFIED: _ClassVar[RouteMode]
    ROUTE_MODE_BEST_MATCH: _ClassVar[RouteMode]
    ROUTE_MODE_COST_BIASED: _ClassVar[RouteMode]
ROUTE_MODE_UNSPECIFIED: RouteMode
ROUTE_MODE_BEST_MATCH: RouteMode
ROUTE_MODE_COST_BIASED: RouteMode

class RegisterAgentRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.AgentCard
    def __init__(self, agent: _Optional[_Union[_agent_pb2.AgentCard, _Mapping]] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent", "created")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.AgentCard
    created: bool
    def __init__(self, agent: _Optional[_Union[_agent_pb2.AgentCard, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeregisterAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DeregisterAgentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "capability", "labels", "available_only")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_ONLY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    capability: str
    labels: _containers.ScalarMap[str, str]
    available_only: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., capability: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., available_only: _Optional[bool] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_agent_pb2.AgentCard]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[_agent_pb2.AgentCard, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RouteTaskRequest(_message.Message):
    __slots__ = ("text", "vector", "top_k", "mode", "threshold", "cost_weight", "exclude_agent_ids", "required_capabilities", "labels", "include_unavailable", "include_below_threshold")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BELOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    text: str
    vector: _common_pb2.Vector
    top_k: int
    mode: RouteMode
    threshold: float
    cost_weight: float
    exclude_agent_ids: _containers.RepeatedScalarFieldContainer[str]
    required_capabilities: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    include_unavailable: bool
    include_below_threshold: bool
    def __init__(self, text: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., top_k: _Optional[int] = ..., mode: _Optional[_Union[RouteMode, str]] = ..., threshold: _Optional[float] = ..., cost_weight: _Optional[float] = ..., exclude_agent_ids: _Optional[_Iterable[str]] = ..., required_capabilities: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., include_unavailable: _Optional[bool] = ..., include_below_threshold: _Optional[bool] = ...) -> None: ...

class RouteCandidate(_message.Message):
    __slots__ = ("agent_id", "capability", "similarity", "score", "cost_per_call_micro_usd", "load", "available", "above_threshold", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COST_PER_CALL_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ABOVE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    capability: str
    similarity: float
    score: float
    cost_per_call_micro_usd: int
    load: float
    available: bool
    above_threshold: bool
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., capability: _Optional[str] = ..., similarity: _Optional[float] = ..., score: _Optional[float] = ..., cost_per_call_micro_usd: _Optional[int] = ..., load: _Optional[float] = ..., available: _Optional[bool] = ..., above_threshold: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RouteTaskResponse(_message.Message):
    __slots__ = ("candidates", "mode", "threshold")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[RouteCandidate]
    mode: RouteMode
    threshold: float
    def __init__(self, candidates: _Optional[_Iterable[_Union[RouteCandidate, _Mapping]]] = ..., mode: _Optional[_Union[RouteMode, str]] = ..., threshold: _Optional[float] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("model_id", "tier", "input_cost_per_million_tokens_micro_usd", "output_cost_per_million_tokens_micro_usd", "prior_success_rate", "context_window_tokens", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    INPUT_COST_PER_MILLION_TOKENS_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COST_PER_MILLION_TOKENS_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    PRIOR_SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    tier: int
    input_cost_per_million_tokens_micro_usd: int
    output_cost_per_million_tokens_micro_usd: int
    prior_success_rate: float
    context_window_tokens: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, model_id: _Optional[str] = ..., tier: _Optional[int] = ..., input_cost_per_million_tokens_micro_usd: _Optional[int] = ..., output_cost_per_million_tokens_micro_usd: _Optional[int] = ..., prior_success_rate: _Optional[float] = ..., context_window_tokens: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelCatalog(_message.Message):
    __slots__ = ("models", "update_time")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSpec]
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSpec, _Mapping]]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PutModelCatalogRequest(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: ModelCatalog
    def __init__(self, catalog: _Optional[_Union[ModelCatalog, _Mapping]] = ...) -> None: ...

class PutModelCatalogResponse(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: ModelCatalog
    def __init__(self, catalog: _Optional[_Union[ModelCatalog, _Mapping]] = ...) -> None: ...

class GetModelCatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelCatalogResponse(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: ModelCatalog
    def __init__(self, catalog: _Optional[_Union[ModelCatalog, _Mapping]] = ...) -> None: ...

class RouteModelRequest(_message.Message):
    __slots__ = ("prompt", "vector", "quality_target", "exclude_model_ids", "estimated_input_tokens", "estimated_output_tokens")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    vector: _common_pb2.Vector
    quality_target: float
    exclude_model_ids: _containers.RepeatedScalarFieldContainer[str]
    estimated_input_tokens: int
    estimated_output_tokens: int
    def __init__(self, prompt: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., quality_target: _Optional[float] = ..., exclude_model_ids: _Optional[_Iterable[str]] = ..., estimated_input_tokens: _Optional[int] = ..., estimated_output_tokens: _Optional[int] = ...) -> None: ...

class ModelEstimate(_message.Message):
    __slots__ = ("model_id", "expected_quality", "expected_cost_micro_usd", "samples")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    expected_quality: float
    expected_cost_micro_usd: int
    samples: int
    def __init__(self, model_id: _Optional[str] = ..., expected_quality: _Optional[float] = ..., expected_cost_micro_usd: _Optional[int] = ..., samples: _Optional[int] = ...) -> None: ...

class RouteModelResponse(_message.Message):
    __slots__ = ("route_id", "model_id", "expected_quality", "expected_cost_micro_usd", "target_met", "estimates", "reason")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    TARGET_MET_FIELD_NUMBER: _ClassVar[int]
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    model_id: str
    expected_quality: float
    expected_cost_micro_usd: int
    target_met: bool
    estimates: _containers.RepeatedCompositeFieldContainer[ModelEstimate]
    reason: str
    def __init__(self, route_id: _Optional[str] = ..., model_id: _Optional[str] = ..., expected_quality: _Optional[float] = ..., expected_cost_micro_usd: _Optional[int] = ..., target_met: _Optional[bool] = ..., estimates: _Optional[_Iterable[_Union[ModelEstimate, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("route_id", "model_id", "success", "score", "usage", "latency")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    model_id: str
    success: bool
    score: float
    usage: _common_pb2.Usage
    latency: _duration_pb2.Duration
    def __init__(self, route_id: _Optional[str] = ..., model_id: _Optional[str] = ..., success: _Optional[bool] = ..., score: _Optional[float] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
