"""RouterService: agent cards, RouteTask, the model catalog and RouteModel.

:class:`RouterCapability` builds the engine (:class:`are_core.router.Router`)
from the configuration (embedder, defaults) and serves
``are.v1.RouterService``. :class:`RouterServicer` only translates: it
validates each request (every bad field is INVALID_ARGUMENT naming its exact
path, and changes nothing), converts protobuf to engine types and back, and
maps engine exceptions to rich statuses.

For the scheduler (intent routing and re-routing, live worker load) the
engine is ``RouterCapability.engine``: ``route_for_intent``, ``serves``,
``update_worker`` and ``remove_worker`` (see :class:`are_core.router.Router`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import grpc
import msgspec
import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from are_core.embed import EmbedderError, load_embedder
from are_core.router import (
    TABLES,
    AgentNotFoundError,
    AgentSource,
    AgentSpec,
    AgentView,
    DimensionMismatchError,
    EmbedderLike,
    EmbedderUnavailableError,
    ModelCatalogEmptyError,
    ModelNotInCatalogError,
    ModelSpec,
    NoEligibleModelError,
    NoRouteError,
    OutcomeAlreadyReportedError,
    RouteMode,
    RouteNotFoundError,
    RouteQuery,
    Router,
    RouterError,
    RouterLimitError,
    RouterSettings,
    StoredCatalog,
)
from are_core.storage import StorageError
from are_core.vector import VectorError, VectorIndex
from are_sdk._proto.are.v1 import agent_pb2, common_pb2, router_service_pb2, router_service_pb2_grpc
from sidecar import _conventions as conventions
from sidecar._capability import Capability, Runtime
from sidecar._config import ConfigError
from sidecar._status import abort, storage_status

__all__ = [
    "InvalidFieldError",
    "RouterCapability",
    "RouterServicer",
    "agent_spec_from_card",
    "new_router_index",
]

_log = logging.getLogger("are.router")

SERVICE = "are.v1.RouterService"
_ID = conventions.ID
_LABEL_KEY = conventions.KEY
_MAX_LABELS = 32
_MAX_FILTER_LABELS = 8
_MAX_LABEL_VALUE_BYTES = 256
_MAX_DISPLAY_NAME = 256
_MAX_DESCRIPTION_BYTES = 8 * 1024
_MAX_CAPABILITIES = 256
_MAX_CAPACITY = 100_000
_MAX_TEXT_BYTES = 8 * 1024
_MAX_PROMPT_BYTES = 1024 * 1024
_MAX_TOP_K = 100
_DEFAULT_TOP_K = 5
_MAX_EXCLUDED_AGENTS = 1000
_MAX_REQUIRED_CAPABILITIES = 16
_MAX_MODELS = 256
_MAX_TIER = 10
# Expected costs are price x tokens / 1e6 in int64 micro-USD: at these bounds
# (a billion tokens, $1M per million tokens) the largest is 1e15.
_MAX_TOKENS = 1_000_000_000
_MAX_PRICE = 1_000_000_000_000
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000
_DEFAULT_QUALITY_TARGET = 0.8
_DEFAULT_PRIOR = 0.5
_SWEEP_INTERVAL_S = 3600.0

_MODES = {
    router_service_pb2.ROUTE_MODE_BEST_MATCH: RouteMode.BEST_MATCH,
    router_service_pb2.ROUTE_MODE_COST_BIASED: RouteMode.COST_BIASED,
}
_MODE_NUMBERS = {mode: number for number, mode in _MODES.items()}
_SOURCES = {
    AgentSource.REGISTERED: agent_pb2.AGENT_SOURCE_REGISTERED,
    AgentSource.WORKER: agent_pb2.AGENT_SOURCE_WORKER,
}


class RouterCapability(Capability):
    """Serves ``are.v1.RouterService`` from one :class:`Router` engine.

    Attributes:
        engine: The router engine; the scheduler uses ``route_for_intent``,
            ``serves``, ``update_worker`` and ``remove_worker`` on it.
    """

    tables = TABLES
    services = (SERVICE,)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        config = runtime.config
        embedder = _load_embedder(config.router_embedder)
        dimension = embedder.dimension if embedder is not None else config.router_dimension
        settings = RouterSettings(
            threshold=config.router_threshold,
            cost_weight=config.router_cost_weight,
            mode=RouteMode(config.router_mode.upper()),
            model_exploration=config.router_model_exploration,
        )
        self.engine = Router(
            runtime.storage,
            runtime.committer,
            dimension=dimension,
            embedder=embedder,
            index_factory=new_router_index,
            events=runtime.events,
            settings=settings,
            index_dir=runtime.data_dir / "router",
            restore_index=_restore_index,
        )
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Loads cards, catalog and outcomes and rebuilds the indexes; starts the route sweeper."""
        await self.engine.load()
        _log.info(
            "router ready",
            extra={
                "fields": {
                    "agents": self.engine.agent_count,
                    "dimension": self.engine.dimension,
                    "embedder": self.engine.embedder.name if self.engine.embedder else "off",
                    "restored_indexes": self.engine.restored_indexes,
                }
            },
        )
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the RouterService servicer."""
        router_service_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(self.engine), server)

    async def stop(self) -> None:
        """Stops the sweeper, waits for pending event commits, saves the indexes for a fast start."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.engine.aclose()
        try:
            saved = self.engine.save_indexes()
        except (OSError, StorageError, VectorError):
            _log.exception("could not save the router's indexes; the next start rebuilds them")
        else:
            _log.info("router indexes saved", extra={"fields": {"indexes": saved}})

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            try:
                for _ in range(1000):  # at most a million routes per sweep
                    if not await self.engine.sweep_routes():
                        break
            except Exception:  # noqa: BLE001 - the next sweep retries; one failure must not end them all
                _log.exception("could not delete expired model routes; the next sweep, in an hour, retries")


def _load_embedder(spec: str) -> EmbedderLike | None:
    """The router's embedder (None for ``off``), loaded at start.

    Raises:
        ConfigError: It cannot be loaded. The start fails rather than serve a
            router whose every text query would be FAILED_PRECONDITION: the
            option's parser has checked the spec and the model directory's
            files, so this is a model that looks right but cannot be run.
    """
    if spec == "off":
        return None
    try:
        return load_embedder(spec)
    except EmbedderError as error:
        raise ConfigError(f"invalid value for --router-embedder: {error}") from error


# The router's indexes hold 8-bit vectors compared by cosine: a quarter of
# f32's memory, so a search inside a serving sidecar (its caches cold after
# the gRPC work around it) reads half as much as f16 does. The engine
# rescores the candidates at full precision, so thresholds and reported
# similarities are exact, and deepens a search whose tail lies within the
# index's similarity error of the threshold. On the router benchmark's 2,000
# tasks (10k cards), the top 5 are those of an exact scan in 100% of them at
# threshold 0.5 and 99.95% at 0.4 (f16: 100%).
_INDEX_DTYPE = "i8"
_INDEX_METRIC = "cos"


def new_router_index(dimension: int) -> VectorIndex:
    """An empty index as the router's engine gets it (also used by the benchmarks)."""
    return VectorIndex(dimension=dimension, dtype=_INDEX_DTYPE, metric=_INDEX_METRIC)


def _restore_index(path: Path, dimension: int) -> VectorIndex | None:
    return VectorIndex.restore(path, dimension=dimension, dtype=_INDEX_DTYPE, metric=_INDEX_METRIC)


class InvalidFieldError(Exception):
    """A request field is bad; carries everything the status needs."""

    def __init__(
        self,
        field: str,
        message: str,
        *,
        reason: str = "INVALID_ARGUMENT",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class RouterServicer(router_service_pb2_grpc.RouterServiceServicer):  # type: ignore[misc]  # the generated base class is Any to mypy (are_sdk._proto is not checked)
    """Translates RouterService calls to the engine; validation and error mapping only."""

    def __init__(self, engine: Router) -> None:
        self._engine = engine

    async def RegisterAgent(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.RegisterAgentRequest, context: Context
    ) -> router_service_pb2.RegisterAgentResponse:
        """Validates and stores a card."""
        try:
            spec = _agent_spec(request.agent, "agent", self._engine.dimension)
            view, created = await self._engine.register_agent(spec)
        except (InvalidFieldError, RouterError, StorageError) as error:
            await _fail(context, error, vector_field="agent.vector")
        return router_service_pb2.RegisterAgentResponse(agent=_card(view), created=created)

    async def DeregisterAgent(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.DeregisterAgentRequest, context: Context
    ) -> router_service_pb2.DeregisterAgentResponse:
        """Removes a registered card."""
        try:
            _check_id(request.agent_id, "agent_id")
            await self._engine.deregister_agent(request.agent_id)
        except (InvalidFieldError, RouterError, StorageError) as error:
            await _fail(context, error)
        return router_service_pb2.DeregisterAgentResponse()

    async def ListAgents(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.ListAgentsRequest, context: Context
    ) -> router_service_pb2.ListAgentsResponse:
        """One page of cards by agent_id."""
        try:
            size = _page_size(request.page_size)
            if request.capability:
                _check_id(request.capability, "capability")
            labels = _filter_labels(request.labels, "labels")
            digest = _filter_digest(request.capability, labels, request.available_only)
            after = _decode_token(request.page_token, digest)
        except InvalidFieldError as error:
            await _fail(context, error)
        views, last = self._engine.list_agents(
            after=after,
            limit=size,
            capability=request.capability,
            labels=labels,
            available_only=request.available_only,
        )
        return router_service_pb2.ListAgentsResponse(
            agents=[_card(v) for v in views], next_page_token=_encode_token(last, digest) if last else ""
        )

    async def RouteTask(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.RouteTaskRequest, context: Context
    ) -> router_service_pb2.RouteTaskResponse:
        """Ranks agents for a task."""
        try:
            query = _route_query(request, self._engine.dimension)
            result = await self._engine.route_task(query)
        except (InvalidFieldError, RouterError) as error:
            await _fail(context, error, vector_field="vector")
        return router_service_pb2.RouteTaskResponse(
            candidates=[
                router_service_pb2.RouteCandidate(
                    agent_id=c.agent_id,
                    capability=c.capability,
                    similarity=c.similarity,
                    score=c.score,
                    cost_per_call_micro_usd=c.cost_per_call_micro_usd,
                    load=c.load,
                    available=c.available,
                    above_threshold=c.above_threshold,
                    reason=c.reason,
                )
                for c in result.candidates
            ],
            mode=_MODE_NUMBERS[result.mode],
            threshold=result.threshold,
        )

    async def PutModelCatalog(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.PutModelCatalogRequest, context: Context
    ) -> router_service_pb2.PutModelCatalogResponse:
        """Validates and replaces the catalog."""
        try:
            models = _models(request.catalog.models)
            catalog = await self._engine.put_catalog(models)
        except (InvalidFieldError, RouterError, StorageError) as error:
            await _fail(context, error)
        return router_service_pb2.PutModelCatalogResponse(catalog=_catalog(catalog))

    async def GetModelCatalog(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.GetModelCatalogRequest, context: Context
    ) -> router_service_pb2.GetModelCatalogResponse:
        """The current catalog (empty before the first put)."""
        del request, context
        catalog = self._engine.catalog
        return router_service_pb2.GetModelCatalogResponse(
            catalog=_catalog(catalog) if catalog is not None else router_service_pb2.ModelCatalog()
        )

    async def RouteModel(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.RouteModelRequest, context: Context
    ) -> router_service_pb2.RouteModelResponse:
        """Picks the cheapest model expected to reach the quality target."""
        try:
            prompt, vector, target = _route_model_query(request, self._engine.dimension)
            choice = await self._engine.route_model(
                prompt=prompt,
                vector=vector,
                quality_target=target,
                exclude_model_ids=request.exclude_model_ids,
                input_tokens=request.estimated_input_tokens,
                output_tokens=request.estimated_output_tokens,
            )
        except (InvalidFieldError, RouterError, StorageError) as error:
            await _fail(context, error, vector_field="vector")
        return router_service_pb2.RouteModelResponse(
            route_id=choice.route_id,
            model_id=choice.model_id,
            expected_quality=choice.expected_quality,
            expected_cost_micro_usd=choice.expected_cost_micro_usd,
            target_met=choice.target_met,
            estimates=[
                router_service_pb2.ModelEstimate(
                    model_id=e.model_id,
                    expected_quality=e.expected_quality,
                    expected_cost_micro_usd=e.expected_cost_micro_usd,
                    samples=e.samples,
                )
                for e in choice.estimates
            ],
            reason=choice.reason,
        )

    async def ReportOutcome(  # noqa: N802 - the gRPC method name
        self, request: router_service_pb2.ReportOutcomeRequest, context: Context
    ) -> router_service_pb2.ReportOutcomeResponse:
        """Feeds an outcome to the estimator."""
        try:
            success, score, latency_ns = _outcome(request)
            usage = request.usage
            await self._engine.report_outcome(
                request.route_id,
                model_id=request.model_id,
                success=success,
                score=score,
                cost_micro_usd=usage.cost_micro_usd,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                latency_ns=latency_ns,
            )
        except (InvalidFieldError, RouterError, StorageError) as error:
            await _fail(context, error)
        return router_service_pb2.ReportOutcomeResponse()


# ----------------------------------------------------------------- errors


async def _fail(context: Context, error: Exception, *, vector_field: str = "vector") -> NoReturn:
    code, reason, message, metadata, violations, retry = _status_of(error, vector_field)
    await abort(
        context,
        code,
        message,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        retry_after=retry,
    )


_Status: TypeAlias = tuple[grpc.StatusCode, str, str, dict[str, str], list[tuple[str, str]], timedelta | None]

_SIMPLE: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = (
    (AgentNotFoundError, grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND"),
    (RouteNotFoundError, grpc.StatusCode.NOT_FOUND, "ROUTE_NOT_FOUND"),
    (OutcomeAlreadyReportedError, grpc.StatusCode.ALREADY_EXISTS, "OUTCOME_ALREADY_REPORTED"),
    (EmbedderUnavailableError, grpc.StatusCode.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE"),
    (ModelCatalogEmptyError, grpc.StatusCode.FAILED_PRECONDITION, "MODEL_CATALOG_EMPTY"),
    (NoEligibleModelError, grpc.StatusCode.FAILED_PRECONDITION, "NO_ELIGIBLE_MODEL"),
    (ModelNotInCatalogError, grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_IN_CATALOG"),
)


def _status_of(error: Exception, vector_field: str) -> _Status:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, InvalidFieldError):
        metadata = {"field": error.field, **error.metadata}
        return invalid, error.reason, error.message, metadata, [(error.field, error.message)], None
    if isinstance(error, DimensionMismatchError):
        metadata = {
            "field": vector_field,
            "expected_dimension": str(error.expected),
            "actual_dimension": str(error.actual),
        }
        return invalid, "DIMENSION_MISMATCH", str(error), metadata, [(vector_field, str(error))], None
    if isinstance(error, NoRouteError):
        best_id, best_similarity = error.best_below[0] if error.best_below else ("", 0.0)
        metadata = {
            "best_agent_id": best_id,
            "best_similarity": f"{best_similarity:.6f}",
            "threshold": f"{error.threshold:.6f}",
        }
        return grpc.StatusCode.NOT_FOUND, "NO_ROUTE_ABOVE_THRESHOLD", str(error), metadata, [], None
    for kind, code, reason in _SIMPLE:
        if isinstance(error, kind):
            return code, reason, str(error), _identifiers(error), [], None
    return _storage_status(error)


def _identifiers(error: Exception) -> dict[str, str]:
    if isinstance(error, AgentNotFoundError):
        return {"agent_id": error.agent_id}
    if isinstance(error, RouteNotFoundError | OutcomeAlreadyReportedError):
        return {"route_id": error.route_id}
    if isinstance(error, ModelNotInCatalogError):
        return {"field": "model_id", "model_id": error.model_id}
    return {}


def _storage_status(error: Exception) -> _Status:
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, RouterLimitError):
        metadata = {"limit": error.limit, "bound": str(error.bound)}
        return exhausted, "RESOURCE_LIMIT", str(error), metadata, [], timedelta(seconds=5)
    if isinstance(error, StorageError):
        status = storage_status(error)
        return status.code, status.reason, status.message, status.metadata, [], status.retry_after
    _log.error("router request failed", exc_info=error)
    return grpc.StatusCode.INTERNAL, "INTERNAL", f"the request failed: {error}", {}, [], None


# -------------------------------------------------------------- validation


def _check_id(value: str, field: str) -> None:
    if not _ID.fullmatch(value):
        raise InvalidFieldError(
            field, f"`{field}` must be 1 to 128 characters of [A-Za-z0-9._:-], got {value!r:.140}"
        )


def _check_bytes(value: str, field: str, bound: int) -> None:
    size = len(value.encode())
    if size > bound:
        raise InvalidFieldError(
            field,
            f"`{field}` is {size:,} bytes, over the bound of {bound:,}",
            reason="LIMIT_EXCEEDED",
            metadata={"limit": str(bound)},
        )


def _check_count(values: Sequence[Any] | Mapping[str, str], field: str, bound: int) -> None:
    if len(values) > bound:
        raise InvalidFieldError(
            field,
            f"`{field}` has {len(values):,} entries, over the bound of {bound:,}",
            reason="LIMIT_EXCEEDED",
            metadata={"limit": str(bound)},
        )


def _check_non_negative(value: int, field: str) -> None:
    if value < 0:
        raise InvalidFieldError(field, f"`{field}` must be at least 0, got {value}")


def _check_at_most(value: int, field: str, bound: int) -> None:
    """0 to ``bound`` (a bound keeps expected costs, price x tokens, inside int64)."""
    _check_non_negative(value, field)
    if value > bound:
        raise InvalidFieldError(
            field, f"`{field}` is over {bound:,}", reason="LIMIT_EXCEEDED", metadata={"limit": str(bound)}
        )


def _labels(labels: Mapping[str, str], field: str, bound: int = _MAX_LABELS) -> dict[str, str]:
    _check_count(labels, field, bound)
    for key in sorted(labels):
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidFieldError(
                f"{field}[{key!r}]", f"label key {key!r:.140} must be 1 to 128 characters of [A-Za-z0-9._:/-]"
            )
        _check_bytes(labels[key], f"{field}[{key!r}]", _MAX_LABEL_VALUE_BYTES)
    return dict(labels)


def _filter_labels(labels: Mapping[str, str], field: str) -> dict[str, str]:
    return _labels(labels, field, _MAX_FILTER_LABELS)


def _vector(message: common_pb2.Vector, field: str, dimension: int) -> bytes:
    values = conventions.vector_values(message)
    if values.shape[0] != dimension:
        raise DimensionMismatchError(dimension, int(values.shape[0]))
    finite = np.isfinite(values)
    if not finite.all():
        position = int(np.argmin(finite))
        raise InvalidFieldError(
            f"{field}.values[{position}]", f"`{field}.values[{position}]` is not a finite number"
        )
    if not values.any():
        raise InvalidFieldError(field, f"`{field}` is all zeros: a vector needs a direction to be compared")
    return values.tobytes()


def _duration_ns(duration: duration_pb2.Duration, field: str) -> int:
    nanos = duration.seconds * 1_000_000_000 + duration.nanos
    if nanos < 0:
        raise InvalidFieldError(field, f"`{field}` must not be negative")
    if conventions.duration_problem(duration) or nanos > conventions.INT64_MAX:  # it is stored as int64 ns
        raise InvalidFieldError(field, f"`{field}` must be a valid Duration of at most about 292 years")
    return nanos


def _agent_spec(card: agent_pb2.AgentCard, field: str, dimension: int) -> AgentSpec:
    _check_id(card.agent_id, f"{field}.agent_id")
    if len(card.display_name) > _MAX_DISPLAY_NAME:
        raise InvalidFieldError(
            f"{field}.display_name",
            f"`{field}.display_name` is over {_MAX_DISPLAY_NAME} characters",
            reason="LIMIT_EXCEEDED",
            metadata={"limit": str(_MAX_DISPLAY_NAME)},
        )
    _check_bytes(card.description, f"{field}.description", _MAX_DESCRIPTION_BYTES)
    _check_count(card.capabilities, f"{field}.capabilities", _MAX_CAPABILITIES)
    for i, capability in enumerate(card.capabilities):
        _check_id(capability, f"{field}.capabilities[{i}]")
    vector = _vector(card.vector, f"{field}.vector", dimension) if card.HasField("vector") else None
    _check_non_negative(card.cost_per_call_micro_usd, f"{field}.cost_per_call_micro_usd")
    latency_ns = _duration_ns(card.typical_latency, f"{field}.typical_latency")
    if card.capacity < 0:
        raise InvalidFieldError(
            f"{field}.capacity", f"`{field}.capacity` must be 1 to {_MAX_CAPACITY:,} (0 means 1)"
        )
    if card.capacity > _MAX_CAPACITY:
        raise InvalidFieldError(
            f"{field}.capacity",
            f"`{field}.capacity` is over {_MAX_CAPACITY:,}",
            reason="LIMIT_EXCEEDED",
            metadata={"limit": str(_MAX_CAPACITY)},
        )
    labels = _labels(card.labels, f"{field}.labels")
    return AgentSpec(
        agent_id=card.agent_id,
        display_name=card.display_name,
        description=card.description,
        capabilities=tuple(dict.fromkeys(card.capabilities)),
        vector=vector,
        cost_per_call_micro_usd=card.cost_per_call_micro_usd,
        typical_latency_ns=latency_ns,
        capacity=card.capacity or 1,
        labels=labels,
    )


def agent_spec_from_card(card: agent_pb2.AgentCard, dimension: int, field: str = "agent_card") -> AgentSpec:
    """Converts a worker's declared card (WorkerService registration) to the engine's spec.

    Checked as RegisterAgent checks a card, with the fields named under ``field``.

    Raises:
        InvalidFieldError: A field is invalid (a vector of the wrong dimension
            too: reason DIMENSION_MISMATCH, with the expected and actual
            dimensions in the metadata).
    """
    try:
        return _agent_spec(card, field, dimension)
    except DimensionMismatchError as error:
        raise InvalidFieldError(
            f"{field}.vector",
            f"`{field}.vector` has {error.actual} components; the router's dimension is {error.expected}",
            reason="DIMENSION_MISMATCH",
            metadata={"expected_dimension": str(error.expected), "actual_dimension": str(error.actual)},
        ) from None


def _route_query(request: router_service_pb2.RouteTaskRequest, dimension: int) -> RouteQuery:
    text, vector = _task_query(request, dimension)
    if request.top_k < 0:
        raise InvalidFieldError("top_k", f"`top_k` must be 1 to {_MAX_TOP_K} (0 means {_DEFAULT_TOP_K})")
    if request.top_k > _MAX_TOP_K:
        raise InvalidFieldError(
            "top_k",
            f"`top_k` is over {_MAX_TOP_K}",
            reason="LIMIT_EXCEEDED",
            metadata={"limit": str(_MAX_TOP_K)},
        )
    mode: RouteMode | None = None
    if request.mode != router_service_pb2.ROUTE_MODE_UNSPECIFIED:
        if request.mode not in _MODES:
            raise InvalidFieldError("mode", f"unknown route mode {request.mode}")
        mode = _MODES[request.mode]
    threshold = _optional_range(request, "threshold", -1.0, 1.0)
    cost_weight = _optional_range(request, "cost_weight", 0.0, 1.0)
    _check_ids(request.exclude_agent_ids, "exclude_agent_ids", _MAX_EXCLUDED_AGENTS)
    _check_ids(request.required_capabilities, "required_capabilities", _MAX_REQUIRED_CAPABILITIES)
    return RouteQuery(
        text=text,
        vector=vector,
        top_k=request.top_k or _DEFAULT_TOP_K,
        mode=mode,
        threshold=threshold,
        cost_weight=cost_weight,
        exclude_agent_ids=frozenset(request.exclude_agent_ids),
        required_capabilities=tuple(request.required_capabilities),
        labels=_filter_labels(request.labels, "labels"),
        include_unavailable=request.include_unavailable,
        include_below_threshold=request.include_below_threshold,
    )


def _task_query(
    request: router_service_pb2.RouteTaskRequest, dimension: int
) -> tuple[str | None, bytes | None]:
    which = request.WhichOneof("query")
    if which is None:
        raise InvalidFieldError("query", "exactly one of text or vector must be set")
    if which == "vector":
        return None, _vector(request.vector, "vector", dimension)
    if not request.text:
        raise InvalidFieldError("text", "the task text is empty")
    _check_bytes(request.text, "text", _MAX_TEXT_BYTES)
    return request.text, None


def _optional_range(
    request: router_service_pb2.RouteTaskRequest, field: str, low: float, high: float
) -> float | None:
    if not request.HasField(field):
        return None
    value = float(getattr(request, field))
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidFieldError(field, f"`{field}` must be in [{low:g}, {high:g}], got {value}")
    return value


def _check_ids(values: Sequence[str], field: str, bound: int) -> None:
    _check_count(values, field, bound)
    for i, value in enumerate(values):
        _check_id(value, f"{field}[{i}]")


def _route_model_query(
    request: router_service_pb2.RouteModelRequest, dimension: int
) -> tuple[str | None, bytes | None, float]:
    which = request.WhichOneof("query")
    prompt: str | None = None
    vector: bytes | None = None
    if which is None:
        raise InvalidFieldError("query", "exactly one of prompt or vector must be set")
    if which == "prompt":
        prompt = request.prompt
        if not prompt:
            raise InvalidFieldError("prompt", "the prompt is empty")
        _check_bytes(prompt, "prompt", _MAX_PROMPT_BYTES)
    else:
        vector = _vector(request.vector, "vector", dimension)
    target = request.quality_target
    if not math.isfinite(target) or not 0.0 <= target <= 1.0:
        raise InvalidFieldError("quality_target", f"`quality_target` must be in (0, 1], got {target}")
    _check_ids(request.exclude_model_ids, "exclude_model_ids", _MAX_MODELS)
    _check_at_most(request.estimated_input_tokens, "estimated_input_tokens", _MAX_TOKENS)
    _check_at_most(request.estimated_output_tokens, "estimated_output_tokens", _MAX_TOKENS)
    return prompt, vector, target or _DEFAULT_QUALITY_TARGET


def _outcome(request: router_service_pb2.ReportOutcomeRequest) -> tuple[bool | None, float | None, int]:
    _check_id(request.route_id, "route_id")
    if request.model_id:
        _check_id(request.model_id, "model_id")
    which = request.WhichOneof("outcome")
    if which is None:
        raise InvalidFieldError("outcome", "exactly one of success or score must be set")
    success = request.success if which == "success" else None
    score = request.score if which == "score" else None
    if score is not None and (not math.isfinite(score) or not 0.0 <= score <= 1.0):
        raise InvalidFieldError("score", f"`score` must be in [0, 1], got {score}")
    for name in ("input_tokens", "output_tokens", "cost_micro_usd", "llm_calls", "tool_calls"):
        _check_non_negative(getattr(request.usage, name), f"usage.{name}")
    latency_ns = _duration_ns(request.latency, "latency") if request.HasField("latency") else 0
    return success, score, latency_ns


def _models(models: Sequence[router_service_pb2.ModelSpec]) -> list[ModelSpec]:
    if not models:
        raise InvalidFieldError("catalog.models", "the catalog needs at least one model")
    _check_count(models, "catalog.models", _MAX_MODELS)
    seen: set[str] = set()
    out = []
    for i, model in enumerate(models):
        field = f"catalog.models[{i}]"
        _check_id(model.model_id, f"{field}.model_id")
        if model.model_id in seen:
            raise InvalidFieldError(
                f"{field}.model_id", f"model_id {model.model_id!r} appears twice in the catalog"
            )
        seen.add(model.model_id)
        if not 0 <= model.tier <= _MAX_TIER:
            raise InvalidFieldError(
                f"{field}.tier", f"`{field}.tier` must be 1 to {_MAX_TIER} (0 means 1), got {model.tier}"
            )
        _check_at_most(
            model.input_cost_per_million_tokens_micro_usd,
            f"{field}.input_cost_per_million_tokens_micro_usd",
            _MAX_PRICE,
        )
        _check_at_most(
            model.output_cost_per_million_tokens_micro_usd,
            f"{field}.output_cost_per_million_tokens_micro_usd",
            _MAX_PRICE,
        )
        prior = model.prior_success_rate
        if not math.isfinite(prior) or not 0.0 <= prior <= 1.0:
            raise InvalidFieldError(
                f"{field}.prior_success_rate", f"`{field}.prior_success_rate` must be in [0, 1], got {prior}"
            )
        _check_non_negative(model.context_window_tokens, f"{field}.context_window_tokens")
        out.append(
            ModelSpec(
                model_id=model.model_id,
                tier=model.tier or 1,
                input_cost_per_million_tokens_micro_usd=model.input_cost_per_million_tokens_micro_usd,
                output_cost_per_million_tokens_micro_usd=model.output_cost_per_million_tokens_micro_usd,
                prior_success_rate=prior or _DEFAULT_PRIOR,
                context_window_tokens=model.context_window_tokens,
                labels=_labels(model.labels, f"{field}.labels"),
            )
        )
    return out


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidFieldError("page_size", f"`page_size` must not be negative, got {requested}")
    return min(requested or _DEFAULT_PAGE, _MAX_PAGE)


class _PageToken(msgspec.Struct, array_like=True):
    after: str
    digest: str


_token_encoder = msgspec.msgpack.Encoder()
_token_decoder = msgspec.msgpack.Decoder(_PageToken)


def _filter_digest(capability: str, labels: Mapping[str, str], available_only: bool) -> str:
    text = repr((capability, sorted(labels.items()), available_only)).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _encode_token(after: str, digest: str) -> str:
    return base64.urlsafe_b64encode(_token_encoder.encode(_PageToken(after, digest))).decode().rstrip("=")


def _decode_token(token: str, digest: str) -> str:
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = _token_decoder.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise InvalidFieldError(
            "page_token", "the page_token is malformed", reason="INVALID_PAGE_TOKEN"
        ) from None
    if decoded.digest != digest:
        raise InvalidFieldError(
            "page_token", "the page_token was issued for a different filter", reason="INVALID_PAGE_TOKEN"
        )
    return decoded.after


# -------------------------------------------------------------- to protobuf


def _timestamp(nanos: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(nanos)
    return stamp


def _card(view: AgentView) -> agent_pb2.AgentCard:
    spec = view.spec
    card = agent_pb2.AgentCard(
        agent_id=spec.agent_id,
        display_name=spec.display_name,
        description=spec.description,
        capabilities=spec.capabilities,
        cost_per_call_micro_usd=spec.cost_per_call_micro_usd,
        capacity=view.capacity,
        labels=spec.labels,
        source=_SOURCES[view.source],
        available=view.available,
        running=view.running,
        worker_ids=view.worker_ids,
        create_time=_timestamp(view.create_time_ns),
        update_time=_timestamp(view.update_time_ns),
    )
    if spec.vector is not None:
        card.vector.values.extend(np.frombuffer(spec.vector, dtype=np.float32).tolist())
    if spec.typical_latency_ns:
        card.typical_latency.FromNanoseconds(spec.typical_latency_ns)
    return card


def _catalog(catalog: StoredCatalog) -> router_service_pb2.ModelCatalog:
    return router_service_pb2.ModelCatalog(
        models=[
            router_service_pb2.ModelSpec(
                model_id=m.model_id,
                tier=m.tier,
                input_cost_per_million_tokens_micro_usd=m.input_cost_per_million_tokens_micro_usd,
                output_cost_per_million_tokens_micro_usd=m.output_cost_per_million_tokens_micro_usd,
                prior_success_rate=m.prior_success_rate,
                context_window_tokens=m.context_window_tokens,
                labels=m.labels,
            )
            for m in catalog.models
        ],
        update_time=_timestamp(catalog.update_time_ns),
    )
