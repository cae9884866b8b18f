"""CacheService: the semantic cache over gRPC.

:class:`CacheCapability` owns the cache engine (:mod:`are_core.cache`); the
servicer validates requests (every bad field is INVALID_ARGUMENT naming its
path, and changes nothing), translates protobuf to engine calls and maps the
engine's exceptions to rich statuses.

The scheduler's task short-circuit uses the engine directly:
``runtime.find(CacheCapability).engine.lookup_for_task(namespace, prompt)``
returns a :class:`~are_core.cache.CacheHit` or None (given the task's
``workflow_id`` and ``task_id``, its CACHE_HIT or CACHE_MISS event names
them; ``engine.store`` takes the completed attempt's for CACHE_STORED). The
calls of this service name no workflow: their events name none.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeAlias

import grpc
import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from are_core.cache import (
    CACHE_TABLES,
    MUTABLE_SETTINGS,
    BlobNotFoundError,
    CacheEngine,
    CacheError,
    CacheHit,
    CacheLimitError,
    CacheStats,
    DimensionMismatchError,
    EmbedderMismatchError,
    EmbedderUnavailableError,
    ImmutableFieldError,
    InvalidationBusyError,
    InvalidCacheArgumentError,
    Namespace,
    NamespaceDeletingError,
    NamespaceLimitError,
    NamespaceNotFoundError,
    NamespaceSettings,
    NamespaceUnavailableError,
)
from are_core.storage import StorageError
from are_sdk._proto.are.v1 import cache_service_pb2, cache_service_pb2_grpc, common_pb2
from sidecar import _conventions as conventions
from sidecar._capability import Capability, Runtime
from sidecar._config import ConfigError, parse_cache_models
from sidecar._state import StateCapability
from sidecar._status import abort, abort_storage, storage_status

__all__ = ["CacheCapability", "CacheServicer", "parse_models"]

_Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_ID = conventions.ID
_METADATA_KEY = conventions.KEY
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_PROMPT = 1 << 20
_MAX_RESPONSE = 4 << 20
_MAX_CONTENT_TYPE = 128
_MAX_METADATA = 32
_MAX_METADATA_VALUE = 256
_MAX_MATCH = 8
_MAX_IDS = 1000
_MAX_TTL = timedelta(days=366)
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000

_DTYPE_NAMES = {
    cache_service_pb2.VECTOR_DTYPE_UNSPECIFIED: "",
    cache_service_pb2.VECTOR_DTYPE_F32: "f32",
    cache_service_pb2.VECTOR_DTYPE_F16: "f16",
    cache_service_pb2.VECTOR_DTYPE_I8: "i8",
}
_DTYPE_ENUMS = {
    "f32": cache_service_pb2.VECTOR_DTYPE_F32,
    "f16": cache_service_pb2.VECTOR_DTYPE_F16,
    "i8": cache_service_pb2.VECTOR_DTYPE_I8,
}
_TIERS = {"EXACT": cache_service_pb2.CACHE_TIER_EXACT, "SEMANTIC": cache_service_pb2.CACHE_TIER_SEMANTIC}


def parse_models(text: str) -> dict[str, Path]:
    """``NAME=DIR[,NAME=DIR...]`` (the ``cache_models`` option) as a mapping.

    Raises:
        ValueError: An item is not ``NAME=DIR``, a name is not an id or is
            repeated, or a directory cannot hold a model (see
            :func:`sidecar._config.parse_cache_models`).
    """
    return parse_cache_models(text)


class CacheCapability(Capability):
    """Serves ``are.v1.CacheService``: the exact and semantic tiers, namespaces, stats."""

    tables: ClassVar[tuple[str, ...]] = CACHE_TABLES
    services: ClassVar[tuple[str, ...]] = ("are.v1.CacheService",)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        try:  # checked by the option's parser already; again here for a Config built otherwise
            models = parse_models(runtime.config.cache_models)
        except ValueError as error:
            raise ConfigError(f"invalid value for --cache-models: {error}") from error
        state = runtime.find(StateCapability)  # its blob store holds blob-backed responses
        self.engine = CacheEngine(
            runtime.storage,
            runtime.committer,
            index_dir=runtime.data_dir / "indexes" / "cache",
            events=runtime.events,
            models=models,
            coalesce=runtime.config.cache_search == "coalesced",
            blobs=state.blobs if state is not None else None,
            hot_bytes=runtime.config.cache_hot_bytes,
            index_at_start=runtime.config.cache_index_at_start,
            huge_pages=runtime.config.cache_huge_pages == "on",
            checkpoint_changes=runtime.config.cache_checkpoint_changes,
            repair_changes=runtime.config.cache_repair_changes,
        )

    async def start(self) -> None:
        """Loads namespaces and entries, restores (or repairs) the indexes."""
        await self.engine.start()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the CacheService servicer."""
        cache_service_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(self.engine), server)

    async def stop(self) -> None:
        """Flushes counters and saves the indexes for a fast start."""
        await self.engine.stop()


class CacheServicer(cache_service_pb2_grpc.CacheServiceServicer):  # type: ignore[misc]  # the generated base class is Any to mypy (are_sdk._proto is not checked)
    """Translates CacheService calls to the cache engine."""

    def __init__(self, engine: CacheEngine) -> None:
        self._engine = engine

    async def LookupCache(  # noqa: N802 - the RPC's name
        self, request: cache_service_pb2.LookupCacheRequest, context: _Context
    ) -> cache_service_pb2.LookupCacheResponse:
        """Looks a prompt up, exact tier first, then semantic tier."""
        await _check_id(context, request.namespace, "namespace")
        await _check_prompt(context, request.prompt, required=False)
        vector = await _vector(context, request) if request.HasField("vector") else None
        if vector is None and not request.prompt.strip():  # whitespace alone normalises to nothing
            await _invalid(context, "give a prompt, a vector or both", "prompt")
        threshold: float | None = None
        if request.HasField("threshold"):
            threshold = request.threshold
            if not (0.0 < threshold <= 1.0):
                await _invalid(context, "`threshold` must be in (0, 1]", "threshold")
        max_age_ns: int | None = None
        if request.HasField("max_age"):
            # Unbounded: an age past every TTL admits any unexpired entry.
            max_age_ns = await _duration_ns(context, request.max_age, "max_age", bounded=False)
        try:
            result = await self._engine.lookup(
                request.namespace,
                prompt=request.prompt,
                vector=vector,
                threshold=threshold,
                max_age_ns=max_age_ns or None,
                exact_only=request.exact_only,
            )
        except (CacheError, StorageError) as error:
            await _fail(context, error)
        if result.hit is None:
            return cache_service_pb2.LookupCacheResponse(hit=False, best_similarity=result.best_similarity)
        return _hit_response(result.hit)

    async def StoreCache(  # noqa: N802 - the RPC's name
        self, request: cache_service_pb2.StoreCacheRequest, context: _Context
    ) -> cache_service_pb2.StoreCacheResponse:
        """Stores a response under a prompt (and its vector)."""
        await _check_id(context, request.namespace, "namespace")
        await _check_prompt(context, request.prompt, required=True)
        vector = await _vector(context, request) if request.HasField("vector") else None
        content_type, data, blob_sha256, blob_size = await _response(context, request.response)
        ttl_ns = 0
        if request.HasField("ttl"):
            ttl_ns = await _duration_ns(context, request.ttl, "ttl")
        await _check_metadata(context, request.metadata, "metadata", _MAX_METADATA)
        usage = request.usage
        problem = conventions.usage_problem(usage)  # llm_calls and tool_calls too, though not kept
        if problem is not None:
            await _invalid(context, f"`usage.{problem[0]}` {problem[1]}", f"usage.{problem[0]}")
        try:
            result = await self._engine.store(
                request.namespace,
                prompt=request.prompt,
                response=data,
                content_type=content_type,
                blob_sha256=blob_sha256,
                blob_size_bytes=blob_size,
                vector=vector,
                ttl_ns=ttl_ns,
                metadata=dict(request.metadata),
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_micro_usd=usage.cost_micro_usd,
            )
        except (CacheError, StorageError) as error:
            await _fail(context, error)
        return cache_service_pb2.StoreCacheResponse(
            entry_id=result.entry_id, replaced=result.replaced, expire_time=_timestamp(result.expire_time_ns)
        )

    async def InvalidateCache(  # noqa: N802 - the RPC's name
        self, request: cache_service_pb2.InvalidateCacheRequest, context: _Context
    ) -> cache_service_pb2.InvalidateCacheResponse:
        """Removes entries by id, by metadata match, or all.

        Refused for backpressure (RESOURCE_EXHAUSTED) after some of its chunks
        committed, the status's ErrorInfo metadata ``removed_count`` says how
        many entries those removed (they stay removed; a retry removes the rest).
        """
        await _check_id(context, request.namespace, "namespace")
        selectors = [
            name
            for name, used in (
                ("entry_ids", bool(request.entry_ids)),
                ("metadata_match", bool(request.metadata_match)),
                ("all", request.all),
            )
            if used
        ]
        if not selectors:
            await _invalid(
                context,
                "choose what to remove: entry_ids, metadata_match, or all (to clear the namespace)",
                "all",
            )
        if len(selectors) > 1:
            await _invalid(context, f"use one selector, not {' and '.join(selectors)}", selectors[1])
        if len(request.entry_ids) > _MAX_IDS:
            await _limit(context, f"at most {_MAX_IDS} `entry_ids`", "entry_ids", _MAX_IDS)
        for i, entry_id in enumerate(request.entry_ids):
            if not _ID.fullmatch(entry_id):
                await _invalid(
                    context, "an entry id is 1 to 128 characters of [A-Za-z0-9._:-]", f"entry_ids[{i}]"
                )
        await _check_metadata(context, request.metadata_match, "metadata_match", _MAX_MATCH)
        try:
            removed = await self._engine.invalidate(
                request.namespace,
                entry_ids=list(request.entry_ids),
                metadata_match=dict(request.metadata_match),
                everything=request.all,
            )
        except (CacheError, StorageError) as error:
            await _fail(context, error)
        return cache_service_pb2.InvalidateCacheResponse(removed_count=removed)

    async def GetCacheStats(  # noqa: N802 - the RPC's name
        self, request: cache_service_pb2.GetCacheStatsRequest, context: _Context
    ) -> cache_service_pb2.GetCacheStatsResponse:
        """Hit statistics and savings per namespace."""
        if request.namespace:
            await _check_id(context, request.namespace, "namespace")
        try:
            stats = self._engine.stats(request.namespace)
        except CacheError as error:
            await _fail(context, error)
        return cache_service_pb2.GetCacheStatsResponse(stats=[_stats(s) for s in stats])

    async def PutNamespace(  # noqa: N802 - the RPC's name
        self, request: cache_service_pb2.PutNamespaceRequest, context: _Context
    ) -> cache_service_pb2.PutNamespaceResponse:
        """Creates a namespace or updates its mutable settings."""
        ns = request.namespace
        await _check_id(context, ns.name, "namespace.name")
        if ns.embedder and not _ID.fullmatch(ns.embedder):
            await _invalid(
                context,
                "`namespace.embedder` is lexical, caller or a configured model's name",
                "namespace.embedder",
            )
        # Ranges of the numbers are the engine's to check (_check_settings).
        ttl_ns = 0
        if ns.HasField("default_ttl"):
            ttl_ns = await _duration_ns(context, ns.default_ttl, "namespace.default_ttl")
        if ns.vector_dtype not in _DTYPE_NAMES:
            await _invalid(context, "`namespace.vector_dtype` is not a VectorDtype", "namespace.vector_dtype")
        if len(ns.description.encode("utf-8")) > 1024:
            await _limit(context, "`namespace.description` is over 1 KiB", "namespace.description", 1024)
        settings = NamespaceSettings(
            name=ns.name,
            embedder=ns.embedder,
            dimension=ns.dimension,
            similarity_threshold=ns.similarity_threshold,
            default_ttl_ns=ttl_ns,
            max_entries=ns.max_entries,
            max_bytes=ns.max_bytes,
            vector_dtype=_DTYPE_NAMES[ns.vector_dtype],
            description=ns.description,
            search_expansion=ns.search_expansion,
            recall_target=ns.recall_target,
        )
        only = None
        if request.HasField("update_mask"):
            only = set()
            for i, path in enumerate(request.update_mask.paths):
                if path not in _MUTABLE_PATHS:
                    await _invalid(
                        context,
                        f"`update_mask.paths[{i}]` {path!r} is not a mutable setting: one of "
                        + ", ".join(sorted(_MUTABLE_PATHS)),
                        "update_mask",
                    )
                only.add(_MUTABLE_PATHS[path])
        try:
            namespace, created = await self._engine.put_namespace(
                settings, only=None if only is None else frozenset(only)
            )
        except (CacheError, StorageError) as error:
            await _fail(context, error)
        return cache_service_pb2.PutNamespaceResponse(namespace=_namespace(namespace), created=created)

    async def ListNamespaces(  # noqa: N802 - the RPC's name
        self, request: cache_service_pb2.ListNamespacesRequest, context: _Context
    ) -> cache_service_pb2.ListNamespacesResponse:
        """Lists namespaces by name, a page at a time."""
        if request.page_size < 0:
            await _invalid(context, "`page_size` must be at least 0", "page_size")
        size = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        after = ""
        if request.page_token:
            after = _decode_token(request.page_token)
            if not after:
                await _invalid(
                    context,
                    "`page_token` is not a token this RPC issued",
                    "page_token",
                    reason="INVALID_PAGE_TOKEN",
                )
        page, last = self._engine.list_namespaces(after=after, limit=size)
        return cache_service_pb2.ListNamespacesResponse(
            namespaces=[_namespace(n) for n in page], next_page_token=_encode_token(last) if last else ""
        )

    async def DeleteNamespace(  # noqa: N802 - the RPC's name
        self, request: cache_service_pb2.DeleteNamespaceRequest, context: _Context
    ) -> cache_service_pb2.DeleteNamespaceResponse:
        """Deletes a namespace with its entries, counters and index.

        Refused for backpressure (RESOURCE_EXHAUSTED) part way, the status's
        ErrorInfo metadata ``removed_count`` says how many entries were removed
        (they stay removed, the namespace stays; a retry finishes the deletion).
        """
        await _check_id(context, request.namespace, "namespace")
        try:
            removed = await self._engine.delete_namespace(request.namespace)
        except (CacheError, StorageError) as error:
            await _fail(context, error)
        return cache_service_pb2.DeleteNamespaceResponse(removed_count=removed)


# -- translation ---------------------------------------------------------


def _timestamp(unix_ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(unix_ns)
    return stamp


def _duration(ns: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(ns)
    return duration


def _hit_response(hit: CacheHit) -> cache_service_pb2.LookupCacheResponse:
    if hit.blob_sha256:
        payload = common_pb2.Payload(
            blob=common_pb2.BlobRef(
                sha256=hit.blob_sha256, size_bytes=hit.blob_size_bytes, content_type=hit.content_type
            ),
            content_type=hit.content_type,
        )
    else:
        payload = common_pb2.Payload(data=hit.response, content_type=hit.content_type)
    return cache_service_pb2.LookupCacheResponse(
        hit=True,
        tier=_TIERS[hit.tier],
        entry_id=hit.entry_id,
        response=payload,
        similarity=hit.similarity,
        usage=common_pb2.Usage(
            input_tokens=hit.input_tokens, output_tokens=hit.output_tokens, cost_micro_usd=hit.cost_micro_usd
        ),
        metadata=hit.metadata,
        matched_prompt=hit.prompt,
        create_time=_timestamp(hit.create_time_ns),
        best_similarity=hit.similarity,
    )


def _namespace(ns: Namespace) -> cache_service_pb2.CacheNamespace:
    return cache_service_pb2.CacheNamespace(
        name=ns.name,
        embedder=ns.embedder,
        dimension=ns.dimension,
        similarity_threshold=ns.similarity_threshold,
        default_ttl=_duration(ns.default_ttl_ns),
        max_entries=ns.max_entries,
        max_bytes=ns.max_bytes,
        vector_dtype=_DTYPE_ENUMS[ns.vector_dtype],
        description=ns.description,
        create_time=_timestamp(ns.create_time_ns),
        update_time=_timestamp(ns.update_time_ns),
        search_expansion=ns.search_expansion,
        recall_target=ns.recall_target,
        search_expansion_fixed=ns.expansion_fixed,
    )


def _stats(s: CacheStats) -> cache_service_pb2.CacheStats:
    return cache_service_pb2.CacheStats(
        namespace=s.namespace,
        lookups=s.lookups,
        exact_hits=s.exact_hits,
        semantic_hits=s.semantic_hits,
        misses=s.misses,
        hit_rate=s.hit_rate,
        entries=s.entries,
        size_bytes=s.size_bytes,
        expirations=s.expirations,
        evictions=s.evictions,
        saved_tokens=s.saved_tokens,
        saved_cost_micro_usd=s.saved_cost_micro_usd,
        unindexed_entries=s.unindexed_entries,
        search_expansion=s.search_expansion,
        measured_recall=s.measured_recall,
        recall_samples=s.recall_samples,
        calibrate_time=_timestamp(s.calibrate_time_ns) if s.calibrate_time_ns else None,
        calibrating=s.calibrating,
        repaired_entries=s.repaired_entries,
    )


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(b"ns1:" + name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""
    if not raw.startswith("ns1:") or not _ID.fullmatch(raw[4:]):
        return ""
    return raw[4:]


# -- validation ----------------------------------------------------------


# PutNamespace's update_mask paths (CacheNamespace field names) -> the engine's setting names.
_MUTABLE_PATHS = {
    "similarity_threshold": "similarity_threshold",
    "default_ttl": "default_ttl_ns",
    "max_entries": "max_entries",
    "max_bytes": "max_bytes",
    "description": "description",
    "search_expansion": "search_expansion",
    "recall_target": "recall_target",
}
assert set(_MUTABLE_PATHS.values()) == MUTABLE_SETTINGS


async def _invalid(
    context: _Context,
    message: str,
    field: str,
    *,
    reason: str = "INVALID_ARGUMENT",
    metadata: dict[str, str] | None = None,
) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason=reason,
        metadata=metadata,
        field_violations=[(field, message)],
    )


async def _limit(context: _Context, message: str, field: str, limit: int) -> NoReturn:
    """INVALID_ARGUMENT, reason LIMIT_EXCEEDED, with the bound in ErrorInfo metadata "limit"."""
    await _invalid(
        context, message, field, reason="LIMIT_EXCEEDED", metadata={"field": field, "limit": str(limit)}
    )


async def _check_id(context: _Context, value: str, field: str) -> None:
    if not _ID.fullmatch(value):
        await _invalid(context, f"`{field}` must be 1 to 128 characters of [A-Za-z0-9._:-]", field)


async def _check_prompt(context: _Context, prompt: str, *, required: bool) -> None:
    if required and not prompt.strip():
        await _invalid(context, "`prompt` is required", "prompt")
    if len(prompt) > _MAX_PROMPT // 4 and len(prompt.encode("utf-8")) > _MAX_PROMPT:
        await _limit(context, "`prompt` is over 1 MiB", "prompt", _MAX_PROMPT)


async def _vector(context: _Context, request: Any) -> np.ndarray[Any, Any]:
    values = conventions.vector_values(request.vector)
    if values.size == 0:
        await _invalid(context, "`vector.values` is empty", "vector.values")
    if not bool(np.isfinite(values).all()):
        await _invalid(context, "every component of `vector.values` must be finite", "vector.values")
    return values


async def _response(context: _Context, response: common_pb2.Payload) -> tuple[str, bytes, str, int]:
    """(content type, inline bytes, blob digest, blob size) of a response payload, validated."""
    content_type = response.content_type
    if len(content_type) > _MAX_CONTENT_TYPE:
        await _limit(
            context,
            "`response.content_type` is over 128 characters",
            "response.content_type",
            _MAX_CONTENT_TYPE,
        )
    which = response.WhichOneof("content")
    if which == "blob":
        if not _SHA256.fullmatch(response.blob.sha256):
            await _invalid(
                context, "`response.blob.sha256` must be 64 lowercase hex digits", "response.blob.sha256"
            )
        if response.blob.size_bytes < 0:
            await _invalid(
                context, "`response.blob.size_bytes` must be at least 0", "response.blob.size_bytes"
            )
        # The payload's media type, else the reference's; else the blob's recorded one (the engine's).
        return content_type or response.blob.content_type, b"", response.blob.sha256, response.blob.size_bytes
    data = response.data if which == "data" else b""
    if len(data) > _MAX_RESPONSE:
        await _limit(
            context,
            "`response.data` is over 4 MiB; store it as a blob and pass a reference",
            "response.data",
            _MAX_RESPONSE,
        )
    return content_type, data, "", 0


async def _duration_ns(
    context: _Context, duration: duration_pb2.Duration, field: str, *, bounded: bool = True
) -> int:
    problem = conventions.duration_problem(duration)
    if problem is not None:
        await _invalid(context, f"`{field}` is not a valid Duration: {problem}", field)
    ns = duration.ToNanoseconds()
    if ns < 0:
        await _invalid(context, f"`{field}` must not be negative", field)
    if bounded and ns > _MAX_TTL // timedelta(microseconds=1) * 1000:
        await _invalid(context, f"`{field}` must be at most 366 days", field)
    return int(ns)


async def _check_metadata(context: _Context, metadata: Any, field: str, bound: int) -> None:
    if len(metadata) > bound:
        await _limit(context, f"`{field}` has more than {bound} entries", field, bound)
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            await _invalid(
                context, "a metadata key is 1 to 128 characters of [A-Za-z0-9._:/-]", f'{field}["{key}"]'
            )
        if len(value.encode("utf-8")) > _MAX_METADATA_VALUE:
            await _limit(
                context, "a metadata value is at most 256 bytes", f'{field}["{key}"]', _MAX_METADATA_VALUE
            )


# -- errors --------------------------------------------------------------


async def _fail(context: _Context, error: CacheError | StorageError) -> NoReturn:
    """Ends the call with the status an engine or storage error maps to."""
    if isinstance(error, InvalidationBusyError):
        # A StorageBusyError's status (RESOURCE_EXHAUSTED, RESOURCE_LIMIT, a retry hint) that also
        # says how many entries the chunks committed before the refusal removed: they stay removed.
        status = storage_status(error)
        await abort(
            context,
            status.code,
            status.message,
            reason=status.reason,
            metadata={**status.metadata, "removed_count": str(error.removed_count)},
            retry_after=status.retry_after,
        )
    if isinstance(error, StorageError):
        await abort_storage(context, error)
    await _fail_cache(context, error)


async def _fail_cache(context: _Context, error: CacheError) -> NoReturn:  # noqa: C901 - one branch per error
    message = str(error)
    if isinstance(error, NamespaceNotFoundError):
        await abort(
            context,
            grpc.StatusCode.NOT_FOUND,
            message,
            reason="NAMESPACE_NOT_FOUND",
            metadata={"namespace": error.name},
        )
    if isinstance(error, NamespaceDeletingError):
        await abort(
            context,
            grpc.StatusCode.ABORTED,
            message,
            reason="NAMESPACE_DELETING",
            metadata={"namespace": error.name},
        )
    if isinstance(error, NamespaceUnavailableError):
        # Until its next reload is due (reloads that fail back off, up to a minute); at least a second.
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            message,
            reason="NAMESPACE_UNAVAILABLE",
            metadata={"namespace": error.name},
            retry_after=timedelta(microseconds=max(error.retry_after_ns // 1000, 1_000_000)),
        )
    if isinstance(error, DimensionMismatchError):
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            message,
            reason="DIMENSION_MISMATCH",
            metadata={"expected_dimension": str(error.expected), "actual_dimension": str(error.got)},
            field_violations=[(error.field, message)],
        )
    if isinstance(error, EmbedderUnavailableError):
        await abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            message,
            reason="EMBEDDER_UNAVAILABLE",
            metadata={"field": error.field} if error.field else None,
        )
    if isinstance(error, EmbedderMismatchError):
        await abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            message,
            reason="EMBEDDER_MISMATCH",
            metadata={"namespace": error.namespace},
        )
    if isinstance(error, ImmutableFieldError):
        await abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            message,
            reason="IMMUTABLE_FIELD",
            metadata={"field": error.field},
        )
    if isinstance(error, CacheLimitError):
        await _limit(context, message, error.field, error.limit)
    if isinstance(error, BlobNotFoundError):
        await abort(
            context,
            grpc.StatusCode.NOT_FOUND,
            message,
            reason="BLOB_NOT_FOUND",
            field_violations=[(error.field, message)],
        )
    if isinstance(error, InvalidCacheArgumentError):
        await _invalid(context, message, error.field)
    if isinstance(error, NamespaceLimitError):
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            message,
            reason="RESOURCE_LIMIT",
            metadata={"limit": "cache_namespaces"},
        )  # no RetryInfo: only deleting a namespace (DeleteNamespace) makes room, not waiting
    # Unreachable while every CacheError subclass is mapped above.
    await abort(context, grpc.StatusCode.INTERNAL, message, reason="STORAGE_FAILURE")
