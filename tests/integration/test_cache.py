"""CacheService over real gRPC against a real sidecar: tiers, namespaces, bounds, stats, SDK."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import numpy as np
import pytest

from are_sdk import (
    CacheUsage,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RawPayload,
    RpcError,
)
from are_sdk._proto.are.v1 import cache_service_pb2, common_pb2
from tests.integration._events import retained_events


def _name(tag: str) -> str:
    return f"{tag}:{uuid.uuid4().hex[:10]}"


def _unit(d: int, seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(d)
    unit: list[float] = (v / np.linalg.norm(v)).tolist()
    return unit


def _check(error: RpcError, code: grpc.StatusCode, reason: str, field: str | None) -> None:
    assert error.code == code, error
    assert error.reason == reason, error
    if field is not None:
        assert [v.field for v in error.field_violations] == [field], error
    if reason == "LIMIT_EXCEEDED":  # errors.proto: ErrorInfo.metadata "limit" holds the bound
        assert error.metadata.get("limit", "").isdigit(), error


async def test_exact_and_semantic_hits_with_savings(client: Client) -> None:
    ns = _name("gpt")
    created = await client.cache.put_namespace(ns, similarity_threshold=0.7, description="test")
    assert created.created
    assert (created.embedder, created.dimension, created.vector_dtype) == ("lexical", 256, "f32")
    assert created.default_ttl == timedelta(days=7)
    stored = await client.cache.store(
        ns,
        "How do I book a cheap flight to Paris?",
        {"answer": "use a fare tracker"},
        metadata={"model": "gpt-4o"},
        usage=CacheUsage(input_tokens=12, output_tokens=30, cost_micro_usd=450),
    )
    assert stored.entry_id
    exact = await client.cache.lookup(ns, "How do I book a  cheap flight to Paris?")
    assert exact is not None
    assert (exact.tier, exact.similarity, exact.entry_id) == ("exact", 1.0, stored.entry_id)
    assert exact.value == {"answer": "use a fare tracker"}
    assert exact.usage == CacheUsage(input_tokens=12, output_tokens=30, cost_micro_usd=450)
    assert exact.metadata == {"model": "gpt-4o"}
    semantic = await client.cache.lookup(ns, "how do i book cheap flights to paris")
    assert semantic is not None
    assert semantic.tier == "semantic"
    assert 0.7 <= semantic.similarity < 1.0
    assert semantic.matched_prompt == "How do I book a cheap flight to Paris?"
    miss = await client.cache.lookup_raw(ns, "how do i book cheap flights to paris", threshold=0.99)
    assert not miss.hit
    assert miss.tier == cache_service_pb2.CACHE_TIER_UNSPECIFIED
    assert 0.7 <= miss.best_similarity < 0.99
    assert await client.cache.lookup(ns, "Explain quantum entanglement") is None
    [stats] = await client.cache.stats(ns)
    assert (stats.lookups, stats.exact_hits, stats.semantic_hits, stats.misses) == (4, 1, 1, 2)
    assert stats.hit_rate == pytest.approx(0.5)
    assert (stats.entries, stats.saved_tokens, stats.saved_cost_micro_usd) == (1, 84, 900)
    assert stats.size_bytes > 0


async def test_caller_vectors_dimension_and_embedder_errors(client: Client) -> None:
    ns = _name("vec")
    await client.cache.put_namespace(ns, embedder="caller", dimension=8, vector_dtype="f16")
    v = _unit(8, 1)
    await client.cache.store(ns, "first", RawPayload(b"one", "text/plain"), vector=v)
    hit = await client.cache.lookup(ns, vector=[x + 0.001 for x in v])
    assert hit is not None
    assert (hit.tier, hit.data, hit.content_type) == ("semantic", b"one", "text/plain")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.cache.lookup(ns, vector=[1.0] * 7)
    _check(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.cache.store(ns, "second", "x", vector=[1.0] * 9)
    _check(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector")
    # Text alone in a caller namespace: the exact tier answers, or it is a miss.
    assert await client.cache.lookup(ns, "text only") is None
    assert await client.cache.lookup(ns, "text only", exact_only=True) is None
    await client.cache.store(ns, "text only", "exact answer")
    hit = await client.cache.lookup(ns, "  text   only ")
    assert hit is not None
    assert (hit.tier, hit.data) == ("exact", b'"exact answer"')  # the SDK stores str as JSON
    await client.cache.invalidate(ns, entry_ids=[hit.entry_id])
    assert (await client.cache.stats(ns))[0].entries == 1  # nothing refused was stored


async def test_namespaces_put_list_and_errors(client: Client) -> None:
    base = _name("ns")
    first = await client.cache.put_namespace(f"{base}.a")
    await client.cache.put_namespace(f"{base}.b", embedder="lexical", dimension=64, vector_dtype="i8")
    assert first.search_expansion == 64  # the f32 default
    updated = await client.cache.put_namespace(f"{base}.a", similarity_threshold=0.8, max_entries=10)
    assert not updated.created
    assert (updated.similarity_threshold, updated.max_entries) == (0.8, 10)
    assert (first.search_expansion_fixed, first.recall_target) == (False, 0.995)  # calibrated, to 0.995
    faster = await client.cache.put_namespace(f"{base}.a", search_expansion=16)
    assert (faster.search_expansion, faster.search_expansion_fixed) == (16, True)
    again = await client.cache.put_namespace(f"{base}.a", recall_target=0.95)
    assert (again.search_expansion, again.search_expansion_fixed) == (64, False)  # 0: calibrated again
    assert again.recall_target == 0.95
    [stats] = await client.cache.stats(f"{base}.a")
    assert (stats.search_expansion, stats.measured_recall, stats.recall_samples) == (64, 0.0, 0)
    assert stats.calibrate_time is None  # too few vectors and lookups to measure yet
    assert updated.create_time == first.create_time
    names = [n.name for n in await client.cache.list_namespaces()]
    assert [n for n in names if n.startswith(base)] == [f"{base}.a", f"{base}.b"]
    page = await client.raw.cache.ListNamespaces(cache_service_pb2.ListNamespacesRequest(page_size=1))
    assert len(page.namespaces) == 1
    assert page.next_page_token

    with pytest.raises(FailedPreconditionError) as caught:
        await client.cache.put_namespace(f"{base}.a", embedder="caller", dimension=8)
    _check(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "IMMUTABLE_FIELD", None)
    assert caught.value.metadata["field"] == "namespace.embedder"
    with pytest.raises(FailedPreconditionError) as caught:
        await client.cache.put_namespace(f"{base}.c", embedder="no-such-model")
    _check(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE", None)
    for kwargs, field in [
        ({"similarity_threshold": 1.5}, "namespace.similarity_threshold"),
        ({"dimension": 5000}, "namespace.dimension"),
        ({"max_entries": -1}, "namespace.max_entries"),
        ({"default_ttl": timedelta(days=400)}, "namespace.default_ttl"),
        ({"embedder": "caller"}, "namespace.dimension"),
        ({"search_expansion": 2}, "namespace.search_expansion"),
        ({"search_expansion": 5000}, "namespace.search_expansion"),
        ({"recall_target": 1.0}, "namespace.recall_target"),
        ({"recall_target": 0.3}, "namespace.recall_target"),
        ({"recall_target": float("nan")}, "namespace.recall_target"),
    ]:
        with pytest.raises(InvalidArgumentError) as invalid:
            # Each row's keywords have put_namespace's types; mypy joins the rows' dicts to object.
            await client.cache.put_namespace(f"{base}.c", **kwargs)  # type: ignore[arg-type]
        _check(invalid.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", field)
    with pytest.raises(InvalidArgumentError) as invalid:
        await client.cache.put_namespace("bad name!")
    _check(invalid.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "namespace.name")
    with pytest.raises(InvalidArgumentError) as invalid:
        await client.raw.cache.ListNamespaces(cache_service_pb2.ListNamespacesRequest(page_token="garbage!"))
    _check(invalid.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token")
    assert f"{base}.c" not in [n.name for n in await client.cache.list_namespaces()]


async def test_request_validation_names_the_field(client: Client) -> None:
    ns = _name("val")
    await client.cache.put_namespace(ns)
    with pytest.raises(NotFoundError) as missing:
        await client.cache.lookup(_name("missing"), "x")
    _check(missing.value, grpc.StatusCode.NOT_FOUND, "NAMESPACE_NOT_FOUND", None)
    with pytest.raises(NotFoundError):
        await client.cache.stats(_name("missing"))
    raw = client.raw.cache
    cases = [
        (raw.LookupCache(cache_service_pb2.LookupCacheRequest(namespace=ns)), "INVALID_ARGUMENT", "prompt"),
        (
            raw.LookupCache(cache_service_pb2.LookupCacheRequest(namespace=ns, prompt="x", threshold=0.0)),
            "INVALID_ARGUMENT",
            "threshold",
        ),
        (
            raw.LookupCache(
                cache_service_pb2.LookupCacheRequest(
                    namespace=ns, vector=common_pb2.Vector(values=[float("nan")] * 256)
                )
            ),
            "INVALID_ARGUMENT",
            "vector.values",
        ),
        (raw.StoreCache(cache_service_pb2.StoreCacheRequest(namespace=ns)), "INVALID_ARGUMENT", "prompt"),
        (
            raw.StoreCache(
                cache_service_pb2.StoreCacheRequest(
                    namespace=ns, prompt="p", response=common_pb2.Payload(data=b"x" * (4 * 1024 * 1024 + 1))
                )
            ),
            "LIMIT_EXCEEDED",
            "response.data",
        ),
        (
            raw.StoreCache(
                cache_service_pb2.StoreCacheRequest(namespace=ns, prompt="p", metadata={"bad key": "v"})
            ),
            "INVALID_ARGUMENT",
            'metadata["bad key"]',
        ),
        (
            raw.StoreCache(
                cache_service_pb2.StoreCacheRequest(
                    namespace=ns, prompt="p", usage=common_pb2.Usage(cost_micro_usd=-1)
                )
            ),
            "INVALID_ARGUMENT",
            "usage.cost_micro_usd",
        ),
        (
            raw.InvalidateCache(cache_service_pb2.InvalidateCacheRequest(namespace=ns)),
            "INVALID_ARGUMENT",
            "all",
        ),
        (
            raw.InvalidateCache(
                cache_service_pb2.InvalidateCacheRequest(namespace=ns, entry_ids=["e1"], all=True)
            ),
            "INVALID_ARGUMENT",
            "all",
        ),
        (
            raw.InvalidateCache(
                cache_service_pb2.InvalidateCacheRequest(
                    namespace=ns, metadata_match={f"k{i}": "v" for i in range(9)}
                )
            ),
            "LIMIT_EXCEEDED",
            "metadata_match",
        ),
    ]
    for call, reason, field in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            await call
        _check(caught.value, grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    assert (await client.cache.stats(ns))[0].entries == 0


async def test_ttl_lru_and_invalidation(client: Client) -> None:
    ns = _name("bound")
    await client.cache.put_namespace(ns, max_entries=3)
    short = await client.cache.store(ns, "short lived answer", "s", ttl=0.05)
    assert short.expire_time > short.expire_time - timedelta(seconds=1)
    a = await client.cache.store(ns, "alpha prompt", "a", metadata={"model": "m1"})
    await client.cache.store(ns, "beta prompt", "b", metadata={"model": "m2"})
    await asyncio.sleep(0.1)
    assert await client.cache.lookup(ns, "short lived answer") is None  # expired: never answers
    assert await client.cache.lookup(ns, "alpha prompt") is not None  # alpha is now recent
    await client.cache.store(ns, "gamma prompt", "c", metadata={"model": "m1"})
    await client.cache.store(ns, "delta prompt", "d")  # over 3 entries: the least recently used goes
    assert await client.cache.lookup(ns, "beta prompt", exact_only=True) is None
    assert await client.cache.invalidate(ns, entry_ids=[a.entry_id]) == 1
    assert await client.cache.lookup(ns, "alpha prompt") is None
    assert await client.cache.invalidate(ns, metadata={"model": "m1"}) == 1
    assert await client.cache.lookup(ns, "gamma prompt") is None
    assert await client.cache.invalidate(ns, all=True) == 1
    [stats] = await client.cache.stats(ns)
    assert stats.entries == 0
    assert stats.evictions + stats.expirations >= 2


async def test_get_or_call_and_decorator(client: Client) -> None:
    ns = _name("helper")
    await client.cache.put_namespace(ns)
    calls: list[str] = []

    async def llm(prompt: str) -> dict[str, str]:
        calls.append(prompt)
        return {"text": prompt.upper()}

    first = await client.cache.get_or_call(
        ns, "say hi", lambda: llm("say hi"), usage=lambda _value: CacheUsage(input_tokens=2, output_tokens=2)
    )
    assert (first.value, first.from_cache) == ({"text": "SAY HI"}, False)
    assert first.stored is not None
    second = await client.cache.get_or_call(ns, "say  hi", lambda: llm("say hi"))
    assert (second.value, second.from_cache) == ({"text": "SAY HI"}, True)
    assert calls == ["say hi"]

    @client.cache.cached(ns, prompt=lambda question: f"Q: {question}")
    async def ask(question: str) -> dict[str, str]:
        return await llm(question)

    assert await ask("why") == {"text": "WHY"}
    assert await ask("why") == {"text": "WHY"}
    assert calls == ["say hi", "why"]
    assert (await client.cache.stats(ns))[0].saved_tokens == 4


async def test_concurrent_lookups_and_stores_over_grpc(client: Client) -> None:
    ns = _name("conc")
    await client.cache.put_namespace(ns)

    async def worker(k: int) -> None:
        for i in range(15):
            await client.cache.store(ns, f"worker {k} question {i}", f"{k}/{i}")
            hit = await client.cache.lookup(ns, f"worker {k} question {i}", exact_only=True)
            assert hit is not None
            assert hit.value == f"{k}/{i}"

    await asyncio.wait_for(asyncio.gather(*(worker(k) for k in range(6))), timeout=60)
    assert (await client.cache.stats(ns))[0].entries == 90


async def test_cache_decisions_are_events_in_the_flight_recorder(client: Client) -> None:
    ns = _name("events")
    await client.cache.put_namespace(ns)
    stored = await client.cache.store(ns, "an event prompt", "r")
    hit = await client.cache.lookup(ns, "an event prompt")
    assert hit is not None
    assert hit.entry_id == stored.entry_id
    assert await client.cache.lookup(ns, "an entirely different question") is None
    await client.cache.invalidate(ns, all=True)
    wanted = {"CACHE_STORED", "CACHE_HIT", "CACHE_MISS", "CACHE_INVALIDATED"}
    seen: dict[str, dict[str, object]] = {}
    for _ in range(300):  # lookups' events are flushed about every second (bounded: 30 s)
        for event in await retained_events(client, event_types=sorted(wanted)):
            if event.name == ns:
                kind = pb_event_type_name(event.event_type)
                seen[kind] = dict(event.attributes.items())
        if set(seen) == wanted:
            break
        await asyncio.sleep(0.1)
    assert set(seen) == wanted
    # The attribute names event.proto documents for each type.
    assert {"are.cache.namespace", "are.cache.tier", "are.cache.entry_id", "are.cache.similarity"} <= set(
        seen["CACHE_HIT"]
    )
    assert {"are.cache.namespace", "are.cache.best_similarity"} <= set(seen["CACHE_MISS"])
    assert {"are.cache.namespace", "are.cache.entry_id", "are.cache.size_bytes"} <= set(seen["CACHE_STORED"])
    assert {"are.cache.namespace", "are.cache.removed_count", "are.cache.reason"} <= set(
        seen["CACHE_INVALIDATED"]
    )


def pb_event_type_name(number: int) -> str:
    from are_sdk._proto.are.v1 import event_pb2

    return event_pb2.EventType.Name(number).removeprefix("EVENT_TYPE_")


async def test_the_sidecar_calibrates_a_namespaces_search_expansion_on_its_lookups(client: Client) -> None:
    ns = _name("cal")
    await client.cache.put_namespace(ns, embedder="caller", dimension=32, vector_dtype="i8")
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((2600, 6)).astype(np.float32) @ rng.standard_normal((6, 32)).astype(
        np.float32
    )
    vectors += 0.05 * rng.standard_normal(vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, len(vectors), 200):
        await asyncio.gather(
            *(
                client.cache.store(ns, f"p{i}", {"i": i}, vector=vectors[i].tolist())
                for i in range(start, min(start + 200, len(vectors)))
            )
        )
    right = 0
    for i in range(2060):  # near-duplicates of stored prompts: the lookups calibration measures on
        query = vectors[i % 1300 * 2] + 0.01 * rng.standard_normal(32).astype(np.float32)
        hit = await client.cache.lookup(ns, vector=query.tolist())
        right += hit is not None and hit.value == {"i": i % 1300 * 2}
    assert right >= 1957  # 95%: an approximate search over 8-bit components
    for _ in range(300):  # the flush loop starts it within a second; the child searches (bounded: 30 s)
        [stats] = await client.cache.stats(ns)
        if stats.recall_samples:
            break
        await asyncio.sleep(0.1)
    assert stats.recall_samples == 2048  # the last 2,048 lookups, every one of which could hit
    assert stats.measured_recall >= 0.95
    assert stats.calibrate_time is not None
    [listed] = [n for n in await client.cache.list_namespaces() if n.name == ns]
    assert listed.search_expansion == stats.search_expansion  # in force
    for _ in range(300):  # the event commits just after the calibration (bounded: 30 s)
        events = [e for e in await retained_events(client, event_types=["CACHE_CALIBRATED"]) if e.name == ns]
        if events:
            break
        await asyncio.sleep(0.1)
    [event] = events
    assert event.attributes["are.cache.search_expansion"].int_value == stats.search_expansion
    assert event.attributes["are.cache.samples"].int_value == 2048


async def test_a_namespace_that_evicted_enough_is_swept_and_reports_the_entries_it_repaired(
    client: Client,
) -> None:
    ns = _name("sweep")
    # Over 2,048 vectors (searched through the graph, not exactly); a fixed expansion: no calibration.
    await client.cache.put_namespace(
        ns, embedder="caller", dimension=32, vector_dtype="i8", max_entries=2100, search_expansion=8
    )
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((3200, 6)).astype(np.float32) @ rng.standard_normal((6, 32)).astype(
        np.float32
    )
    vectors += 0.05 * rng.standard_normal(vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, len(vectors), 200):  # 1,100 evictions: at least the default 1,000 removals
        await asyncio.gather(
            *(
                client.cache.store(ns, f"p{i}", {"i": i}, vector=vectors[i].tolist())
                for i in range(start, min(start + 200, len(vectors)))
            )
        )
    events = []
    for _ in range(300):  # the upkeep starts the sweep within a second; the child searches (bounded: 30 s)
        events = [
            e
            for e in await retained_events(client, event_types=["CACHE_INDEXING"])
            if e.name == ns and e.attributes["are.cache.reason"].string_value == "REPAIR"
        ]
        if events:
            break
        await asyncio.sleep(0.1)
    [event] = events
    attributes = event.attributes
    assert attributes["are.cache.checked"].int_value >= 2100  # every entry in the index, each pass
    reinserted = attributes["are.cache.reinserted"].int_value
    assert 0 <= reinserted <= attributes["are.cache.unreachable"].int_value
    [stats] = await client.cache.stats(ns)
    assert stats.repaired_entries == reinserted
    assert stats.entries == 2100
    assert stats.evictions == 1100
