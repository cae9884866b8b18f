"""The typed facade of CacheService: ``client.cache``.

A semantic cache of LLM results, so the same thought is not paid for twice.
A lookup tries the exact tier (the normalised prompt) and then the semantic
tier (embedding similarity over the namespace's threshold)::

    await client.cache.put_namespace("gpt-4o:sys-3f2a", similarity_threshold=0.9)
    hit = await client.cache.lookup("gpt-4o:sys-3f2a", "What is the capital of France?")
    if hit:
        answer = hit.value
    else:
        answer = await llm(...)
        await client.cache.store("gpt-4o:sys-3f2a", prompt, answer, input_tokens=12, output_tokens=3)

    # Or let the helper do all three (look up, call on a miss, store):
    result = await client.cache.get_or_call("gpt-4o:sys-3f2a", prompt, lambda: llm(prompt))
    result.value, result.hit

The helper never loses an answer it paid for (a failed store is logged, not
raised), concurrent calls for the same prompt in one client share one LLM
call, and it returns the same value on a miss as on a later hit (the call's
result after the encoding round trip a stored answer makes).

Values are encoded like every payload of the SDK (:mod:`are_sdk._payload`):
JSON by default, ``bytes`` raw, :class:`~are_sdk.RawPayload` as given.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from google.protobuf import duration_pb2

from are_sdk._errors import (
    AbortedError,
    DeadlineExceededError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from are_sdk._payload import decode_payload, encode_payload
from are_sdk._proto.are.v1 import cache_service_pb2, common_pb2

if TYPE_CHECKING:
    from are_sdk._client import ServiceClient
    from are_sdk._state import StateBlobs

# A response over this many bytes is stored in the blob store and the entry holds a reference.
MAX_INLINE_BYTES = 4 * 1024 * 1024

__all__ = [
    "Cache",
    "CacheHit",
    "CacheNamespace",
    "CacheStats",
    "CacheStored",
    "CacheUsage",
    "CachedResult",
]

T = TypeVar("T")
P = ParamSpec("P")

_log = logging.getLogger("are_sdk.cache")
# Lookup errors that get_or_call lets the call through on: the cache is down or busy.
_CACHE_DOWN = (UnavailableError, ResourceExhaustedError, DeadlineExceededError, AbortedError)

_TIERS = {cache_service_pb2.CACHE_TIER_EXACT: "exact", cache_service_pb2.CACHE_TIER_SEMANTIC: "semantic"}
_DTYPES = {
    "": cache_service_pb2.VECTOR_DTYPE_UNSPECIFIED,
    "f32": cache_service_pb2.VECTOR_DTYPE_F32,
    "f16": cache_service_pb2.VECTOR_DTYPE_F16,
    "i8": cache_service_pb2.VECTOR_DTYPE_I8,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items() if k}


def _time(stamp: Any) -> datetime:
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


def _duration(value: timedelta | float) -> Any:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """Tokens and cost a response took to produce (credited as savings on each hit)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0


@dataclass(frozen=True, slots=True)
class CacheHit:
    """The entry that answered a lookup.

    Attributes:
        entry_id: The entry's id (for :meth:`Cache.invalidate`).
        tier: ``"exact"`` or ``"semantic"``.
        similarity: Cosine similarity of the entry's prompt (1.0 for exact hits).
        value: The stored response, decoded (JSON to Python, otherwise a RawPayload);
            a response stored as a blob is fetched first.
        data: The stored response's bytes.
        content_type: The stored response's media type.
        matched_prompt: The prompt stored with the entry.
        metadata: The entry's metadata.
        usage: What producing the response cost, i.e. what this hit saved.
        create_time: When the entry was stored.
    """

    entry_id: str
    tier: str
    similarity: float
    value: Any
    data: bytes
    content_type: str
    matched_prompt: str
    metadata: dict[str, str]
    usage: CacheUsage
    create_time: datetime


@dataclass(frozen=True, slots=True)
class CacheStored:
    """A stored entry: its id, whether it replaced one, when it expires."""

    entry_id: str
    replaced: bool
    expire_time: datetime


@dataclass(frozen=True, slots=True)
class CacheNamespace:
    """A namespace's settings (defaults filled in); ``created`` is set by put_namespace."""

    name: str
    embedder: str
    dimension: int
    similarity_threshold: float
    default_ttl: timedelta
    max_entries: int
    max_bytes: int
    vector_dtype: str
    description: str
    create_time: datetime
    update_time: datetime
    search_expansion: int = 0
    """The search expansion in force (calibrated unless ``search_expansion_fixed``)."""
    recall_target: float = 0.995
    search_expansion_fixed: bool = False
    created: bool = False


@dataclass(frozen=True, slots=True)
class CacheStats:
    """One namespace's counters since it was created."""

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
    unindexed_entries: int = 0
    """Entries not in the semantic index yet (the sidecar is indexing them after a start); 0 normally."""
    search_expansion: int = 0
    """The search expansion in force."""
    measured_recall: float = 0.0
    """recall@1 last measured at that expansion on the namespace's own lookups (0: not measured yet)."""
    recall_samples: int = 0
    """How many lookups it was measured on."""
    calibrate_time: datetime | None = None
    calibrating: bool = False
    """Whether a measurement is running now."""
    repaired_entries: int = 0
    """Entries a repair sweep found unreachable by their own vector and inserted again (since creation)."""


@dataclass(frozen=True, slots=True)
class CachedResult(Generic[T]):
    """What :meth:`Cache.get_or_call` returns: the value, and the hit if the cache answered.

    ``value`` is the same on a miss as on a hit: the answer decoded from the
    encoding it is stored in (see :meth:`Cache.get_or_call`).
    """

    value: T
    hit: CacheHit | None = None
    stored: CacheStored | None = field(default=None)

    @property
    def from_cache(self) -> bool:
        """True when the cache answered and the call was not made."""
        return self.hit is not None


def _namespace(ns: Any, created: bool = False) -> CacheNamespace:
    return CacheNamespace(
        name=ns.name,
        embedder=ns.embedder,
        dimension=ns.dimension,
        similarity_threshold=ns.similarity_threshold,
        default_ttl=ns.default_ttl.ToTimedelta(),
        max_entries=ns.max_entries,
        max_bytes=ns.max_bytes,
        vector_dtype=_DTYPE_NAMES.get(ns.vector_dtype, "f32"),
        description=ns.description,
        create_time=_time(ns.create_time),
        update_time=_time(ns.update_time),
        search_expansion=ns.search_expansion,
        recall_target=ns.recall_target,
        search_expansion_fixed=ns.search_expansion_fixed,
        created=created,
    )


class Cache:
    """``client.cache``: look up, store, invalidate, statistics, namespaces.

    Errors are the SDK's exceptions: :class:`~are_sdk.NotFoundError` for an
    unknown namespace, :class:`~are_sdk.InvalidArgumentError` naming the
    field (a vector of the wrong dimension names ``vector``), and so on.
    """

    def __init__(self, raw: ServiceClient, blobs: StateBlobs | None = None) -> None:
        self._raw = raw
        self._blobs = blobs
        # get_or_call calls under way, by what decides their answer (see _FlightKey): one
        # entry per distinct question being answered now, removed when its call ends or
        # the moment its last caller gives up on it.
        self._flights: dict[_FlightKey, _Flight] = {}

    async def lookup(
        self,
        namespace: str,
        prompt: str = "",
        *,
        vector: Sequence[float] | None = None,
        threshold: float | None = None,
        max_age: timedelta | float | None = None,
        exact_only: bool = False,
    ) -> CacheHit | None:
        """The entry answering a prompt (exact tier, then semantic), or None on a miss.

        Args:
            namespace: The namespace to search.
            prompt: The prompt text (exact tier; embedded for the semantic tier).
            vector: The prompt's embedding, when you compute your own.
            threshold: The similarity a semantic hit needs; default the namespace's.
            max_age: Only entries younger than this (seconds or a timedelta) answer.
            exact_only: Consult the exact tier only.
        """
        response = await self.lookup_raw(
            namespace, prompt, vector=vector, threshold=threshold, max_age=max_age, exact_only=exact_only
        )
        if not response.hit:
            return None
        payload = response.response
        if payload.WhichOneof("content") == "blob" and self._blobs is not None:
            data = await self._blobs.get(payload.blob.sha256)
            payload = common_pb2.Payload(
                data=data, content_type=payload.content_type or payload.blob.content_type
            )
        return _hit(response, payload)

    async def lookup_raw(
        self,
        namespace: str,
        prompt: str = "",
        *,
        vector: Sequence[float] | None = None,
        threshold: float | None = None,
        max_age: timedelta | float | None = None,
        exact_only: bool = False,
    ) -> cache_service_pb2.LookupCacheResponse:
        """Like :meth:`lookup`, returning the response message (``best_similarity`` on a miss)."""
        request = cache_service_pb2.LookupCacheRequest(
            namespace=namespace, prompt=prompt, exact_only=exact_only
        )
        if vector is not None:
            request.vector.values.extend(vector)
        if threshold is not None:
            request.threshold = threshold
        if max_age is not None:
            request.max_age.CopyFrom(_duration(max_age))
        response: cache_service_pb2.LookupCacheResponse = await self._raw.LookupCache(request)
        return response

    async def store(
        self,
        namespace: str,
        prompt: str,
        value: Any,
        *,
        content_type: str | None = None,
        vector: Sequence[float] | None = None,
        ttl: timedelta | float | None = None,
        metadata: Mapping[str, str] | None = None,
        usage: CacheUsage | None = None,
    ) -> CacheStored:
        """Stores a response under a prompt; an entry of the same normalised prompt is replaced.

        Args:
            namespace: The namespace to store in.
            prompt: The prompt.
            value: The response: JSON-serialisable, ``bytes``, or a RawPayload. Encoded
                over 4 MiB, it is uploaded to the blob store and the entry holds a reference
                (lookups fetch it back).
            content_type: Overrides the encoded content type.
            vector: The prompt's embedding, when you compute your own.
            ttl: Time to live (seconds or a timedelta); default the namespace's.
            metadata: Entry metadata (matched by :meth:`invalidate`).
            usage: The tokens and cost the response took, credited on each hit.
        """
        inline = payload = encode_payload(value, content_type)
        large = payload.WhichOneof("content") == "data" and len(payload.data) > MAX_INLINE_BYTES
        if large and self._blobs is not None:
            ref = await self._blobs.put(inline.data, content_type=inline.content_type)
            payload = encode_payload(ref, inline.content_type)
        request = cache_service_pb2.StoreCacheRequest(
            namespace=namespace,
            prompt=prompt,
            response=payload,
            metadata=dict(metadata or {}),
        )
        if vector is not None:
            request.vector.values.extend(vector)
        if ttl is not None:
            request.ttl.CopyFrom(_duration(ttl))
        if usage is not None:
            request.usage.CopyFrom(
                common_pb2.Usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cost_micro_usd=usage.cost_micro_usd,
                )
            )
        try:
            response = await self._raw.StoreCache(request)
        except NotFoundError as error:
            if not (large and self._blobs is not None and error.reason == "BLOB_NOT_FOUND"):
                raise
            # Swept between the check and the store (it was near its TTL): send the bytes again.
            ref = await self._blobs.put(inline.data, content_type=inline.content_type, check_first=False)
            request.response.CopyFrom(encode_payload(ref, inline.content_type))
            response = await self._raw.StoreCache(request)
        return CacheStored(
            entry_id=response.entry_id, replaced=response.replaced, expire_time=_time(response.expire_time)
        )

    async def invalidate(
        self,
        namespace: str,
        *,
        entry_ids: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        all: bool = False,  # noqa: A002 - mirrors the RPC's field
    ) -> int:
        """Removes entries by id, by metadata match, or all; returns how many were removed."""
        request = cache_service_pb2.InvalidateCacheRequest(
            namespace=namespace, entry_ids=list(entry_ids), metadata_match=dict(metadata or {}), all=all
        )
        response = await self._raw.InvalidateCache(request)
        return int(response.removed_count)

    async def stats(self, namespace: str = "") -> list[CacheStats]:
        """Counters of one namespace, or of every namespace when ``namespace`` is empty."""
        response = await self._raw.GetCacheStats(cache_service_pb2.GetCacheStatsRequest(namespace=namespace))
        return [
            CacheStats(
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
                calibrate_time=_time(s.calibrate_time) if s.HasField("calibrate_time") else None,
                calibrating=s.calibrating,
                repaired_entries=s.repaired_entries,
            )
            for s in response.stats
        ]

    async def put_namespace(
        self,
        name: str,
        *,
        embedder: str = "",
        dimension: int = 0,
        similarity_threshold: float = 0.0,
        default_ttl: timedelta | float | None = None,
        max_entries: int = 0,
        max_bytes: int = 0,
        vector_dtype: str = "",
        description: str = "",
        search_expansion: int = 0,
        recall_target: float = 0.0,
    ) -> CacheNamespace:
        """Creates a namespace or updates its mutable settings; zero values mean the defaults.

        Every mutable setting is set: one left out returns to its default. To
        change some settings of an existing namespace and keep the others, use
        :meth:`update_namespace`.

        Args:
            name: The namespace's name (for example ``"gpt-4o:sys-3f2a:t0"``).
            embedder: ``"lexical"`` (default), ``"caller"`` or a model configured on the sidecar.
            dimension: Vector dimension; 0 means the embedder's (required for ``"caller"``).
            similarity_threshold: A semantic hit's minimum similarity; 0 means 0.92.
            default_ttl: Entries' default time to live; None means 7 days.
            max_entries: Most entries kept (LRU eviction); 0 means 1,000,000.
            max_bytes: Most bytes of prompts and responses kept; 0 means 1 GiB.
            vector_dtype: ``"f32"`` (default), ``"f16"`` or ``"i8"``.
            description: For humans.
            search_expansion: Candidates a semantic lookup keeps while walking the index
                graph (HNSW ef): more is more reliable, fewer is faster. 0 means
                calibrated: the sidecar measures recall@1 on the namespace's own lookups
                and keeps the smallest expansion that meets ``recall_target``
                (``stats()`` shows the figures); otherwise 4 to 1,024, fixed.
            recall_target: The recall@1 a calibrated expansion keeps, in [0.5, 1); 0 means 0.995.
        """
        if vector_dtype not in _DTYPES:
            raise ValueError(f"vector_dtype must be f32, f16 or i8, got {vector_dtype!r}")
        ns = cache_service_pb2.CacheNamespace(
            name=name,
            embedder=embedder,
            dimension=dimension,
            similarity_threshold=similarity_threshold,
            max_entries=max_entries,
            max_bytes=max_bytes,
            vector_dtype=_DTYPES[vector_dtype],
            description=description,
            search_expansion=search_expansion,
            recall_target=recall_target,
        )
        if default_ttl is not None:
            ns.default_ttl.CopyFrom(_duration(default_ttl))
        response = await self._raw.PutNamespace(cache_service_pb2.PutNamespaceRequest(namespace=ns))
        return _namespace(response.namespace, response.created)

    async def update_namespace(
        self,
        name: str,
        *,
        similarity_threshold: float | None = None,
        default_ttl: timedelta | float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        description: str | None = None,
        search_expansion: int | None = None,
        recall_target: float | None = None,
    ) -> CacheNamespace:
        """Changes only the settings given of an existing namespace; the others keep their values.

        Where :meth:`put_namespace` sets every mutable setting (those left out
        to their defaults), this sends an update mask of the arguments that are
        not None. A value of 0 (or ``""``) still means the setting's default,
        as in :meth:`put_namespace`, whose docstring describes each setting.

        Raises:
            NotFoundError: No namespace has this name (reason ``NAMESPACE_NOT_FOUND``).
            AbortedError: It is being deleted (``NAMESPACE_DELETING``).
            InvalidArgumentError: A setting is out of range (the field is named).
        """
        ns = cache_service_pb2.CacheNamespace(name=name)
        paths: list[str] = []
        for path, value in (
            ("similarity_threshold", similarity_threshold),
            ("max_entries", max_entries),
            ("max_bytes", max_bytes),
            ("description", description),
            ("search_expansion", search_expansion),
            ("recall_target", recall_target),
        ):
            if value is not None:
                setattr(ns, path, value)
                paths.append(path)
        if default_ttl is not None:
            ns.default_ttl.CopyFrom(_duration(default_ttl))
            paths.append("default_ttl")
        request = cache_service_pb2.PutNamespaceRequest(namespace=ns)
        request.update_mask.paths.extend(paths)
        request.update_mask.SetInParent()  # an empty mask still says "update" (and changes nothing)
        response = await self._raw.PutNamespace(request)
        return _namespace(response.namespace, response.created)

    async def list_namespaces(self) -> list[CacheNamespace]:
        """Every namespace, by name (all pages)."""
        out: list[CacheNamespace] = []
        token = ""
        while True:
            response = await self._raw.ListNamespaces(
                cache_service_pb2.ListNamespacesRequest(page_size=1000, page_token=token)
            )
            out.extend(_namespace(ns) for ns in response.namespaces)
            token = response.next_page_token
            if not token:
                return out

    async def delete_namespace(self, name: str) -> int:
        """Deletes a namespace with its entries, counters and index; returns how many entries it held.

        The entries go first, a chunk per commit; meanwhile lookups still
        answer those not yet removed, while stores and settings changes fail
        with :class:`AbortedError` (reason ``NAMESPACE_DELETING``). Once the
        call returns, the name is free: :meth:`put_namespace` creates it
        afresh, and it no longer counts toward the sidecar's 1,000 namespaces.

        Raises:
            NotFoundError: No namespace has this name (reason ``NAMESPACE_NOT_FOUND``).
            AbortedError: Another deletion of it is under way (``NAMESPACE_DELETING``).
            ResourceExhaustedError: The storage is busy (``RESOURCE_LIMIT``): the entries
                removed so far stay removed (metadata ``removed_count``) and the namespace
                stays; calling again finishes the deletion.
        """
        response = await self._raw.DeleteNamespace(cache_service_pb2.DeleteNamespaceRequest(namespace=name))
        return int(response.removed_count)

    @overload
    async def get_or_call(
        self,
        namespace: str,
        prompt: str,
        call: Callable[[], Awaitable[T]],
        *,
        vector: Sequence[float] | None = None,
        threshold: float | None = None,
        ttl: timedelta | float | None = None,
        metadata: Mapping[str, str] | None = None,
        usage: CacheUsage | Callable[[T], CacheUsage] | None = None,
    ) -> CachedResult[Any]: ...

    @overload
    async def get_or_call(
        self,
        namespace: str,
        prompt: str,
        call: Callable[[], T],
        *,
        vector: Sequence[float] | None = None,
        threshold: float | None = None,
        ttl: timedelta | float | None = None,
        metadata: Mapping[str, str] | None = None,
        usage: CacheUsage | Callable[[T], CacheUsage] | None = None,
    ) -> CachedResult[Any]: ...

    async def get_or_call(
        self,
        namespace: str,
        prompt: str,
        call: Callable[[], Any],
        *,
        vector: Sequence[float] | None = None,
        threshold: float | None = None,
        ttl: timedelta | float | None = None,
        metadata: Mapping[str, str] | None = None,
        usage: CacheUsage | Callable[[Any], CacheUsage] | None = None,
    ) -> CachedResult[Any]:
        """Looks the prompt up; on a miss makes ``call()`` and stores its result.

        Concurrent calls of one client that ask the same question share one
        look-up and one ``call()``: the same namespace, the same prompt
        (equal once normalised as the sidecar does: Unicode NFC, whitespace
        collapsed), the same ``vector`` and the same ``threshold``. The first
        caller's other arguments (``call``, ``ttl``, ``metadata``, ``usage``)
        are used, and every caller gets its result, or its exception (then
        nothing is stored). Cancelling a caller cancels the shared call only
        when no other caller still waits for it; a call arriving after that
        starts a call of its own.

        On a miss the value returned is the call's result as a later hit
        will return it: encoded as it is stored (JSON by default, ``bytes``
        raw) and decoded back, so a tuple comes back as a list, ``bytes`` as
        a :class:`~are_sdk.RawPayload`, and so on, on the miss and on the
        hit alike. A result that cannot be encoded is returned as it is, and
        not stored.

        A store that fails after the call (the response is over the
        namespace's ``max_bytes``, the sidecar is busy or gone) is logged as
        a warning and not raised: the answer paid for is returned, with
        ``stored`` None. A lookup that fails because the cache is down or
        busy (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED)
        is logged too, and the call is made (its answer not stored): a cache
        outage does not stop the calls it stands in front of. Other lookup
        errors (an unknown namespace, a bad vector) are raised.

        Args:
            namespace: The namespace.
            prompt: The prompt (the cache key); it must not be blank, since
                the answer is stored under it.
            call: The LLM call, made only on a miss: an async function is
                awaited; any other callable (a blocking client's call) runs
                in a worker thread, so that it does not stall the event loop,
                and an awaitable it returns (``lambda: llm(prompt)`` around
                an async ``llm``) is then awaited.
            vector: The prompt's embedding, when you compute your own.
            threshold: The similarity a semantic hit needs.
            ttl: Time to live of a stored result.
            metadata: Metadata of a stored result.
            usage: Its tokens and cost, or a function computing them from the
                call's result (as the call returned it), run in a worker
                thread like a plain ``call``.

        Returns:
            The cached value (decoded) and the hit, or the call's result
            (decoded as a hit would be) and the stored entry.

        Raises:
            ValueError: The prompt is empty or whitespace alone.
        """
        normalised = _normalise(prompt)
        if not normalised:
            raise ValueError(
                "get_or_call needs a prompt: the answer is stored under it (StoreCache requires "
                "`prompt`); use lookup() and store() directly to look up by vector alone"
            )
        key: _FlightKey = (
            namespace,
            normalised,
            None if vector is None else tuple(float(x) for x in vector),
            None if threshold is None else float(threshold),
        )
        flight = self._flights.get(key)
        if flight is None or flight.task.done():  # never join a call that has ended (or been cancelled)
            task = asyncio.ensure_future(
                self._look_up_or_call(
                    namespace,
                    prompt,
                    call,
                    vector=vector,
                    threshold=threshold,
                    ttl=ttl,
                    metadata=metadata,
                    usage=usage,
                )
            )
            flight = self._flights[key] = _Flight(task)
            task.add_done_callback(functools.partial(self._landed, key, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                # Every caller gave up on it: forget it now, not when the cancellation lands,
                # so that a caller arriving meanwhile starts its own call instead of joining
                # one that will only raise CancelledError.
                if self._flights.get(key) is flight:
                    del self._flights[key]
                flight.task.cancel()

    def _landed(self, key: _FlightKey, flight: _Flight, task: asyncio.Future[Any]) -> None:
        """Forgets a finished shared call (and retrieves an exception nobody awaited)."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not task.cancelled():
            task.exception()

    async def _look_up_or_call(
        self,
        namespace: str,
        prompt: str,
        call: Callable[[], Any],
        *,
        vector: Sequence[float] | None,
        threshold: float | None,
        ttl: timedelta | float | None,
        metadata: Mapping[str, str] | None,
        usage: CacheUsage | Callable[[Any], CacheUsage] | None,
    ) -> CachedResult[Any]:
        try:
            hit = await self.lookup(namespace, prompt, vector=vector, threshold=threshold)
        except _CACHE_DOWN as error:
            # A cache down or busy must not become an LLM outage: the call answers, and its
            # answer is not stored (the sidecar is gone or shedding load).
            _log.warning(f"cache: {namespace!r} could not be looked up, so the call is made: {error}")
            value = await _answer(call)
            try:
                return CachedResult(value=decode_payload(encode_payload(value)))
            except TypeError:
                return CachedResult(value=value)
        if hit is not None:
            return CachedResult(value=hit.value, hit=hit)
        value = await _answer(call)
        try:
            # Encoded once, for the store and for the value returned: what a hit will return.
            payload = encode_payload(value)
        except TypeError as error:
            _log.warning(f"cache: the answer to a prompt in {namespace!r} was not stored: {error}")
            return CachedResult(value=value)
        returned = decode_payload(payload)
        try:
            # A function of the caller's, maybe blocking (a SyncClient's call): off the loop, like `call`.
            spent = await asyncio.to_thread(usage, value) if callable(usage) else usage
            stored = await self.store(
                namespace, prompt, payload, vector=vector, ttl=ttl, metadata=metadata, usage=spent
            )
        except Exception as error:  # noqa: BLE001 - the answer was paid for: return it anyway
            _log.warning(f"cache: the answer to a prompt in {namespace!r} was not stored: {error}")
            return CachedResult(value=returned)
        return CachedResult(value=returned, stored=stored)

    def cached(
        self,
        namespace: str,
        *,
        prompt: Callable[P, str],
        ttl: timedelta | float | None = None,
        usage: Callable[[Any], CacheUsage] | None = None,
    ) -> Callable[[Callable[P, Any]], Callable[P, Awaitable[Any]]]:
        """A decorator caching a function by the prompt its arguments make.

        The decorated function is async. An async function is awaited on a
        miss; a plain (blocking) one runs in a worker thread, as in
        :meth:`get_or_call`. On a ``SyncClient`` a decorated plain function
        stays a plain one: calling it blocks until the answer is back.

        The decorated function returns what :meth:`get_or_call` returns as
        ``value``: the same on a miss as on a hit, i.e. the function's
        result after the encoding round trip of a stored answer (a tuple
        comes back as a list, ``bytes`` as a :class:`~are_sdk.RawPayload`).
        A prompt that is blank raises ValueError before the function runs.

        Example::

        @client.cache.cached("gpt-4o:sys1", prompt=lambda question: question)
        async def ask(question: str) -> str: ...
        """

        def decorate(function: Callable[P, Any]) -> Callable[P, Awaitable[Any]]:
            @functools.wraps(function)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                # A partial of the function itself: _answer tells an async one from a plain one.
                call = functools.partial(function, *args, **kwargs)
                key = prompt(*args, **kwargs)
                result = await self.get_or_call(namespace, key, call, ttl=ttl, usage=usage)
                return result.value

            return wrapper

        return decorate


def _is_async(call: Callable[..., Any]) -> bool:
    """Whether calling ``call`` makes a coroutine: an async function, a partial of one, or such an object."""
    method = getattr(type(call), "__call__", None)  # noqa: B004 - an object whose __call__ is async
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(method)


async def _answer(call: Callable[[], Any]) -> Any:
    """What ``call()`` answers: an async function awaited here, any other callable run in a worker thread.

    A blocking LLM call made on the event loop stalled every other call of
    the client (and, in a SyncClient, its other threads) for as long as it
    took. An awaitable returned from the thread (a lambda around an async
    call) is awaited here, on the loop it belongs to.
    """
    if _is_async(call):
        return await call()
    value = await asyncio.to_thread(call)
    if inspect.isawaitable(value):
        value = await value
    return value


# What decides a get_or_call's answer: namespace, normalised prompt, vector, threshold.
_FlightKey = tuple[str, str, tuple[float, ...] | None, float | None]


class _Flight:
    """A get_or_call under way, shared by the callers waiting for it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Future[CachedResult[Any]]) -> None:
        self.task = task
        self.waiters = 0


def _normalise(prompt: str) -> str:
    """The prompt as the sidecar's exact tier keys it: NFC, whitespace runs collapsed, trimmed."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


def _hit(response: cache_service_pb2.LookupCacheResponse, payload: Any) -> CacheHit:
    return CacheHit(
        entry_id=response.entry_id,
        tier=_TIERS.get(response.tier, "exact"),
        similarity=response.similarity,
        value=decode_payload(payload),
        data=payload.data,
        content_type=payload.content_type,
        matched_prompt=response.matched_prompt,
        metadata=dict(response.metadata),
        usage=CacheUsage(
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            cost_micro_usd=response.usage.cost_micro_usd,
        ),
        create_time=_time(response.create_time),
    )
