"""CacheService edges over real gRPC: vectors without a direction, refusals naming the right field,
a task's exact_only cache key, and the SDK helper's failed stores and shared calls."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from itertools import count

import grpc
import numpy as np
import pytest

from are_sdk import Client, InvalidArgumentError, RawPayload, RpcError
from are_sdk._proto.are.v1 import cache_service_pb2 as cs
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from tests.integration.test_scheduler import completion, submit, task, unique_capability, wait_closed

_ids = count()


def _name(tag: str) -> str:
    return f"{tag}:{uuid.uuid4().hex[:10]}"


def _unit(d: int, seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(d)
    unit: list[float] = (v / np.linalg.norm(v)).tolist()
    return unit


def _check(error: RpcError, reason: str, field: str) -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == reason, error
    assert [v.field for v in error.field_violations] == [field], error


async def test_a_zero_vector_is_refused_naming_the_field_and_changes_nothing(client: Client) -> None:
    ns = _name("zero")
    await client.cache.put_namespace(ns, embedder="caller", dimension=8, vector_dtype="f16")
    v = _unit(8, 1)
    first = await client.cache.store(ns, "p1", RawPayload(b"one", "text/plain"), vector=v)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.cache.store(ns, "p1", RawPayload(b"two", "text/plain"), vector=[0.0] * 8)
    _check(caught.value, "INVALID_ARGUMENT", "vector")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.cache.lookup(ns, vector=[0.0] * 8)
    _check(caught.value, "INVALID_ARGUMENT", "vector")
    # The entry the refused store would have replaced still answers, in both tiers.
    exact = await client.cache.lookup(ns, "p1")
    assert exact is not None
    assert (exact.entry_id, exact.data) == (first.entry_id, b"one")
    semantic = await client.cache.lookup(ns, vector=v)
    assert semantic is not None
    assert semantic.entry_id == first.entry_id
    [stats] = await client.cache.stats(ns)
    assert stats.entries == 1


async def test_prompts_without_words_do_not_answer_each_other(client: Client) -> None:
    ns = _name("emoji")
    await client.cache.put_namespace(ns, similarity_threshold=0.5)
    await client.cache.store(ns, "\N{THUMBS UP SIGN}", "thumbs")
    for prompt in ("?", "...", "\N{HEAVY BLACK HEART}"):
        miss = await client.cache.lookup_raw(ns, prompt)
        assert not miss.hit, prompt
        assert miss.best_similarity == 0.0
    exact = await client.cache.lookup(ns, "\N{THUMBS UP SIGN}")
    assert exact is not None
    assert (exact.tier, exact.value) == ("exact", "thumbs")


async def test_a_whitespace_prompt_alone_is_refused_and_not_counted(client: Client) -> None:
    ns = _name("blank")
    await client.cache.put_namespace(ns)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.cache.lookup(ns, " \t\n ")
    _check(caught.value, "INVALID_ARGUMENT", "prompt")
    [stats] = await client.cache.stats(ns)
    assert (stats.lookups, stats.misses) == (0, 0)


async def test_an_entry_over_max_bytes_names_the_field_that_is_too_large(client: Client) -> None:
    ns = _name("small")
    await client.cache.put_namespace(ns, max_bytes=100)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.cache.store(ns, "p" * 150, RawPayload(b"r", "text/plain"))
    _check(caught.value, "LIMIT_EXCEEDED", "prompt")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.cache.store(ns, "short prompt", RawPayload(b"r" * 150, "text/plain"))
    _check(caught.value, "LIMIT_EXCEEDED", "response")


async def test_an_entry_id_named_twice_is_removed_and_counted_once(client: Client) -> None:
    ns = _name("twice")
    await client.cache.put_namespace(ns)
    first = await client.cache.store(ns, "alpha question", "a")
    await client.cache.store(ns, "beta question", "b")
    assert await client.cache.invalidate(ns, entry_ids=[first.entry_id, first.entry_id]) == 1
    [stats] = await client.cache.stats(ns)
    assert stats.entries == 1


async def test_an_exact_only_cache_key_is_not_answered_by_the_semantic_tier(client: Client) -> None:
    ns = f"exact{next(_ids)}-{os.getpid()}"
    await client.cache.put_namespace(ns, similarity_threshold=0.7)
    await client.cache.store(ns, "How do I book a cheap flight to Paris?", "use a fare tracker")
    paraphrase = "how do i book cheap flights to paris"
    semantic = await client.cache.lookup(ns, paraphrase)
    assert semantic is not None
    assert semantic.tier == "semantic"  # what a key without exact_only is answered by
    cap = unique_capability("llm")
    key = t.TaskCacheKey(namespace=ns, prompt=paraphrase, exact_only=True, read_only=True)
    workflow_id = await submit(client, task("a", cap, cache_key=key))
    async with asyncio.timeout(20):  # dispatched: a worker receives it
        while True:
            polled = await client.raw.worker.PollTask(
                w.PollTaskRequest(worker_name="edges", capabilities=[cap], max_tasks=1), timeout=5
            )
            if polled.assignments:
                break
    await client.raw.worker.CompleteTask(
        w.CompleteTaskRequest(completion=completion(polled.assignments[0], "fresh answer"))
    )
    closed = await wait_closed(client, workflow_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert json.loads(closed.result.data) == "fresh answer"
    # Without exact_only the same key is answered from the cache (the control).
    answered = await submit(
        client, task("a", cap, cache_key=t.TaskCacheKey(namespace=ns, prompt=paraphrase, read_only=True))
    )
    done = await wait_closed(client, answered)
    assert json.loads(done.result.data) == "use a fare tracker"


async def test_get_or_call_returns_the_answer_when_the_store_fails(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    ns = _name("tiny")
    await client.cache.put_namespace(ns, max_bytes=200)
    calls = 0

    async def llm() -> str:
        nonlocal calls
        calls += 1
        return "a long answer " * 40

    with caplog.at_level(logging.WARNING, logger="are_sdk.cache"):
        result = await client.cache.get_or_call(ns, "explain everything", llm)
    assert result.value == "a long answer " * 40
    assert (result.hit, result.stored, result.from_cache) == (None, None, False)
    assert calls == 1
    assert any("was not stored" in r.getMessage() for r in caplog.records)
    [stats] = await client.cache.stats(ns)
    assert stats.entries == 0


async def test_concurrent_get_or_call_share_one_llm_call(client: Client) -> None:
    ns = _name("flight")
    await client.cache.put_namespace(ns)
    calls = 0
    release = asyncio.Event()

    async def llm() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"answer": 42}

    prompts = ["What is six times seven?", "What is  six times seven?", " What is six times seven? "]
    waiting = [asyncio.create_task(client.cache.get_or_call(ns, p, llm)) for p in prompts]
    async with asyncio.timeout(10):
        while not calls:
            await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*waiting)
    assert calls == 1
    assert [r.value for r in results] == [{"answer": 42}] * 3
    assert not client.cache._flights  # nothing kept once the call ended
    [stats] = await client.cache.stats(ns)
    assert (stats.entries, stats.lookups) == (1, 1)
    # Another prompt is another call; a later call of the same prompt is a hit.
    again = await client.cache.get_or_call(ns, "What is six times seven?", llm)
    assert again.from_cache
    assert calls == 1


async def test_a_failed_shared_llm_call_reaches_every_caller_and_stores_nothing(client: Client) -> None:
    ns = _name("boom")
    await client.cache.put_namespace(ns)
    calls = 0
    release = asyncio.Event()

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        raise RuntimeError("the LLM is down")

    waiting = [asyncio.create_task(client.cache.get_or_call(ns, "same prompt", failing)) for _ in range(3)]
    async with asyncio.timeout(10):
        while not calls:
            await asyncio.sleep(0.01)
    release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(o, RuntimeError) and str(o) == "the LLM is down" for o in outcomes)
    assert not client.cache._flights
    assert await client.cache.lookup(ns, "same prompt") is None
    [stats] = await client.cache.stats(ns)
    assert stats.entries == 0

    async def working() -> str:
        nonlocal calls
        calls += 1
        return "fine now"

    result = await client.cache.get_or_call(ns, "same prompt", working)  # a new call, not the failed one
    assert (result.value, calls) == ("fine now", 2)


async def test_a_store_with_any_negative_usage_counter_is_refused_naming_it(client: Client) -> None:
    """Every Usage counter is at least 0 (common.proto): llm_calls and tool_calls too, though not kept."""
    ns = _name("usage")
    await client.cache.put_namespace(ns)
    for name in ("input_tokens", "output_tokens", "cost_micro_usd", "llm_calls", "tool_calls"):
        request = cs.StoreCacheRequest(
            namespace=ns,
            prompt="what is two plus two",
            response=c.Payload(data=b"four", content_type="text/plain"),
            usage=c.Usage(**{name: -1}),
        )
        with pytest.raises(InvalidArgumentError) as caught:
            await client.raw.cache.StoreCache(request)
        _check(caught.value, "INVALID_ARGUMENT", f"usage.{name}")
    assert await client.cache.lookup(ns, "what is two plus two") is None
    [stats] = await client.cache.stats(ns)
    assert stats.entries == 0


# ------------------------------------------- a review of the contract (2026-11-27)


async def test_a_blob_response_counts_its_size_and_keeps_its_size_and_media_type(client: Client) -> None:
    """A response stored as a blob counted 0 bytes (max_bytes never applied to it), and a reference
    sent without size or media type came back without them: the SDK decoded the text as JSON."""
    ns = _name("blobsize")
    await client.cache.put_namespace(ns, max_bytes=1000)
    blob = await client.state.blobs.put(b"x" * 5000, content_type="text/plain")
    too_big = cs.StoreCacheRequest(
        namespace=ns, prompt="big", response=c.Payload(blob=c.BlobRef(sha256=blob.sha256))
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.cache.StoreCache(too_big)
    _check(caught.value, "LIMIT_EXCEEDED", "response")
    small = await client.state.blobs.put(b"hello blob text", content_type="text/plain")
    await client.raw.cache.StoreCache(
        cs.StoreCacheRequest(
            namespace=ns, prompt="small", response=c.Payload(blob=c.BlobRef(sha256=small.sha256))
        )
    )
    [stats] = await client.cache.stats(ns)
    assert (stats.entries, stats.size_bytes) == (1, len("small") + len(b"hello blob text"))
    answer = await client.cache.lookup_raw(ns, "small")
    assert answer.response.blob.size_bytes == len(b"hello blob text")
    assert answer.response.blob.content_type == answer.response.content_type == "text/plain"
    hit = await client.cache.lookup(ns, "small")
    assert hit is not None and (hit.data, hit.content_type) == (b"hello blob text", "text/plain")


async def test_a_lookups_vector_is_checked_whichever_tier_answers(client: Client) -> None:
    """A vector of the wrong dimension, or with no direction, was accepted when the exact tier
    answered (or with exact_only), and refused only when the lookup reached the semantic tier."""
    ns = _name("lookvec")
    await client.cache.put_namespace(ns, embedder="caller", dimension=8)
    await client.cache.store(ns, "p", "answer", vector=_unit(8, 3))
    for exact_only in (False, True):
        with pytest.raises(InvalidArgumentError) as caught:
            await client.cache.lookup(ns, "p", vector=[1.0] * 7, exact_only=exact_only)
        _check(caught.value, "DIMENSION_MISMATCH", "vector")
        with pytest.raises(InvalidArgumentError) as caught:
            await client.cache.lookup(ns, "p", vector=[0.0] * 8, exact_only=exact_only)
        _check(caught.value, "INVALID_ARGUMENT", "vector")
    [stats] = await client.cache.stats(ns)
    assert stats.lookups == 0  # refused calls count nothing


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(1, -999_999_999), (0, 2_000_000_000), (-1, 5)], ids=["sign", "nanos", "mixed"]
)
async def test_a_malformed_duration_is_refused_naming_its_field(
    client: Client, seconds: int, nanos: int
) -> None:
    ns = _name("duration")
    await client.cache.put_namespace(ns)
    bad = {"seconds": seconds, "nanos": nanos}
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.cache.StoreCache(
            cs.StoreCacheRequest(namespace=ns, prompt="p", response=c.Payload(data=b"r"), ttl=bad)
        )
    _check(caught.value, "INVALID_ARGUMENT", "ttl")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.cache.LookupCache(cs.LookupCacheRequest(namespace=ns, prompt="p", max_age=bad))
    _check(caught.value, "INVALID_ARGUMENT", "max_age")
    [stats] = await client.cache.stats(ns)
    assert (stats.entries, stats.lookups) == (0, 0)


async def test_a_max_age_past_every_ttl_admits_any_unexpired_entry(client: Client) -> None:
    ns = _name("maxage")
    await client.cache.put_namespace(ns)
    await client.cache.store(ns, "p", "answer")
    hit = await client.cache.lookup(ns, "p", max_age=400 * 86_400.0)  # over the 366 days a TTL may be
    assert hit is not None and hit.value == "answer"


async def test_a_store_over_an_expired_entry_replaces_nothing_and_counts_the_expiry(client: Client) -> None:
    """StoreCache said `replaced` for an entry expired but not yet swept (it answered no lookup
    any more), and its expiry was never counted."""
    ns = _name("expired")
    await client.cache.put_namespace(ns)
    await client.raw.cache.StoreCache(
        cs.StoreCacheRequest(
            namespace=ns, prompt="p", response=c.Payload(data=b"old"), ttl={"nanos": 1_000_000}
        )
    )
    await asyncio.sleep(0.01)  # past its 1 ms TTL (the sweep runs once a second)
    assert await client.cache.lookup(ns, "p") is None
    stored = await client.raw.cache.StoreCache(
        cs.StoreCacheRequest(namespace=ns, prompt="p", response=c.Payload(data=b"new"))
    )
    [stats] = await client.cache.stats(ns)
    assert stored.replaced is False  # whether the store or the sweep removed the expired entry
    assert (stats.expirations, stats.entries) == (1, 1)
    hit = await client.cache.lookup(ns, "p")
    assert hit is not None and hit.data == b"new"
