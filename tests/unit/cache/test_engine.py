"""The cache engine: tiers, namespaces, TTL, LRU, invalidation, stats, durability."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import random
import re
import sys
import time
import unicodedata
from typing import Any

import numpy as np
import pytest

import are_core.cache
import are_core.cache._engine as cache_engine
from are_core.cache import (
    CacheEngine,
    CacheLimitError,
    DimensionMismatchError,
    EmbedderUnavailableError,
    ImmutableFieldError,
    InvalidCacheArgumentError,
    NamespaceNotFoundError,
    NamespaceSettings,
    normalise_prompt,
)
from are_core.cache._normalise import (
    is_blank,
)
from are_core.vector import LADDER, wilson_lower_bound
from are_core.vector import _index as vector_index

from ._failing import full_disk
from .conftest import Harness, is_view

SECOND = 10**9


def _unit(d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def test_exported_members() -> None:
    public = {name for name in vars(are_core.cache) if not name.startswith("_")}
    assert set(are_core.cache.__all__) == public


def test_normalisation_keeps_case_and_collapses_whitespace() -> None:
    assert normalise_prompt("  Hello\t\n  World  ") == "Hello World"
    assert normalise_prompt("Cafe\u0301") == "Caf\u00e9"
    assert normalise_prompt("hello world") != normalise_prompt("Hello World")


def test_normalisation_is_the_regex_one_it_replaced() -> None:
    # Stored exact-tier keys hash the normalised prompt: the normalisation
    # must stay what it was (``re.sub(r"\s+", " ", nfc).strip()``) for every
    # whitespace character there is.
    spaces = re.compile(r"\s+")
    every = [chr(c) for c in range(sys.maxunicode + 1)]
    assert [c for c in every if bool(spaces.fullmatch(c)) != c.isspace()] == []
    whitespace = [c for c in every if c.isspace()]
    rng = random.Random(7)
    alphabet = [*whitespace, "a", "B", "e\u0301", "\u212b", "x y"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        nfc = unicodedata.normalize("NFC", text)
        assert normalise_prompt(text) == spaces.sub(" ", nfc).strip()
        assert is_blank(text) == (not normalise_prompt(text))


async def test_exact_hit_returns_the_entry_and_its_cost(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="gpt:sys1"))
    stored = await e.store(
        "gpt:sys1",
        prompt="What is 2+2?",
        response=b'{"answer": 4}',
        content_type="application/json",
        metadata={"model": "gpt"},
        input_tokens=10,
        output_tokens=5,
        cost_micro_usd=300,
    )
    assert not stored.replaced
    result = await e.lookup("gpt:sys1", prompt="  What is   2+2? ")
    assert result.hit is not None
    hit = result.hit
    assert (hit.tier, hit.similarity, hit.entry_id) == ("EXACT", 1.0, stored.entry_id)
    assert (hit.response, hit.content_type, hit.metadata) == (
        b'{"answer": 4}',
        "application/json",
        {"model": "gpt"},
    )
    assert (hit.input_tokens, hit.output_tokens, hit.cost_micro_usd, hit.prompt) == (
        10,
        5,
        300,
        "What is 2+2?",
    )
    [stats] = e.stats("gpt:sys1")
    assert (stats.lookups, stats.exact_hits, stats.misses, stats.entries) == (1, 1, 0, 1)
    assert (stats.saved_tokens, stats.saved_cost_micro_usd, stats.hit_rate) == (15, 300, 1.0)


async def test_semantic_tier_with_lexical_embedder_and_threshold(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="lex", similarity_threshold=0.7))
    await e.store("lex", prompt="How do I book a cheap flight to Paris?", response=b"A")
    result = await e.lookup("lex", prompt="how do i book cheap flights to paris")
    assert result.hit is not None
    assert result.hit.tier == "SEMANTIC"
    assert 0.7 <= result.hit.similarity < 1.0
    # A stricter threshold per call turns it into a miss that reports the best similarity.
    miss = await e.lookup("lex", prompt="how do i book cheap flights to paris", threshold=0.99)
    assert miss.hit is None
    assert 0.7 <= miss.best_similarity < 0.99
    assert (await e.lookup("lex", prompt="how do i book cheap flights to paris", exact_only=True)).hit is None
    [stats] = e.stats("lex")
    assert (stats.lookups, stats.semantic_hits, stats.misses) == (3, 1, 2)


async def test_caller_vectors_and_dimension_checks(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(
        NamespaceSettings(name="vec", embedder="caller", dimension=8, similarity_threshold=0.95)
    )
    v = _unit(8, 1)
    await e.store("vec", prompt="p1", vector=v, response=b"r1")
    await e.store("vec", prompt="p2", response=b"r2")  # no vector: answers exact lookups only
    near = v + 0.01 * _unit(8, 2)
    hit = (await e.lookup("vec", vector=near)).hit
    assert hit is not None
    assert hit.response == b"r1"
    assert hit.tier == "SEMANTIC"
    assert (await e.lookup("vec", prompt="p2")).hit is not None
    with pytest.raises(DimensionMismatchError) as caught:
        await e.lookup("vec", vector=np.ones(7, dtype=np.float32))
    assert (caught.value.field, caught.value.expected, caught.value.got) == ("vector", 8, 7)
    with pytest.raises(DimensionMismatchError):
        await e.store("vec", prompt="p3", vector=np.ones(9, dtype=np.float32))
    # Text alone in a caller namespace: the exact tier alone, a miss here, counted.
    misses = e.stats("vec")[0].misses
    assert (await e.lookup("vec", prompt="unknown text")).hit is None
    assert (await e.lookup("vec", prompt="unknown text", exact_only=True)).hit is None
    assert e.stats("vec")[0].misses == misses + 2
    assert await e.lookup_for_task("vec", "p2") is not None
    assert await e.lookup_for_task("vec", "unknown text") is None


async def test_namespaces_settings_defaults_and_immutables(harness: Harness) -> None:
    e = harness.e
    ns, created = await e.put_namespace(NamespaceSettings(name="a"))
    assert created
    assert (ns.embedder, ns.embedder_name, ns.dimension, ns.vector_dtype) == (
        "lexical",
        "lexical-v1:256",
        256,
        "f32",
    )
    assert ns.similarity_threshold == pytest.approx(0.92)
    ns2, created = await e.put_namespace(
        NamespaceSettings(name="a", similarity_threshold=0.8, description="d")
    )
    assert not created
    assert (ns2.similarity_threshold, ns2.description, ns2.create_time_ns) == (0.8, "d", ns.create_time_ns)
    for settings, field in [
        (NamespaceSettings(name="a", embedder="caller"), "namespace.embedder"),
        (NamespaceSettings(name="a", dimension=128), "namespace.dimension"),
        (NamespaceSettings(name="a", vector_dtype="i8"), "namespace.vector_dtype"),
    ]:
        with pytest.raises(ImmutableFieldError) as immutable:
            await e.put_namespace(settings)
        assert immutable.value.field == field
    with pytest.raises(InvalidCacheArgumentError) as invalid:
        await e.put_namespace(NamespaceSettings(name="b", embedder="caller"))
    assert invalid.value.field == "namespace.dimension"
    with pytest.raises(InvalidCacheArgumentError) as invalid:
        await e.put_namespace(NamespaceSettings(name="b", similarity_threshold=1.5))
    assert invalid.value.field == "namespace.similarity_threshold"
    with pytest.raises(EmbedderUnavailableError) as unavailable:
        await e.put_namespace(NamespaceSettings(name="b", embedder="minilm"))
    assert unavailable.value.field == "namespace.embedder"
    with pytest.raises(NamespaceNotFoundError):
        await e.lookup("missing", prompt="x")
    with pytest.raises(NamespaceNotFoundError):
        e.stats("missing")
    with pytest.raises(InvalidCacheArgumentError) as invalid:
        await e.put_namespace(NamespaceSettings(name="b", search_expansion=3))
    assert invalid.value.field == "namespace.search_expansion"
    await e.put_namespace(NamespaceSettings(name="c", embedder="lexical", dimension=64, vector_dtype="i8"))
    page, after = e.list_namespaces(limit=1)
    assert [n.name for n in page] == ["a"]
    assert after == "a"
    page, after = e.list_namespaces(after=after, limit=5)
    assert [n.name for n in page] == ["c"]
    assert after == ""


async def test_store_replaces_the_same_normalised_prompt(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="n"))
    first = await e.store("n", prompt="Hello  there", response=b"1")
    second = await e.store("n", prompt="Hello there", response=b"2")
    assert second.replaced
    assert second.entry_id != first.entry_id
    hit = (await e.lookup("n", prompt="Hello there")).hit
    assert hit is not None
    assert (hit.response, hit.entry_id) == (b"2", second.entry_id)
    assert e.stats("n")[0].entries == 1


async def test_ttl_and_max_age_never_answer_old_entries(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="t", default_ttl_ns=60 * SECOND))
    short = await e.store("t", prompt="short lived", response=b"s", ttl_ns=5 * SECOND)
    await e.store("t", prompt="long lived", response=b"l")
    assert short.expire_time_ns == harness.clock.now + 5 * SECOND
    harness.clock.advance(10)
    assert (await e.lookup("t", prompt="short lived")).hit is None  # exact tier
    assert (await e.lookup("t", prompt="short lived!")).hit is None  # semantic tier
    assert (await e.lookup("t", prompt="long lived", max_age_ns=5 * SECOND)).hit is None
    assert (await e.lookup("t", prompt="long lived")).hit is not None
    await e.flush()  # the sweep removes what expired and counts it
    [stats] = e.stats("t")
    assert (stats.entries, stats.expirations) == (1, 1)
    assert any(
        d.event_type == "CACHE_INVALIDATED" and d.attributes["are.cache.reason"] == "EXPIRED"
        for d in harness.sink.recorded
    )


async def test_lru_eviction_by_count_and_bytes(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="l", max_entries=3))
    for i in range(3):
        await e.store("l", prompt=f"prompt number {i}", response=b"x")
    assert (await e.lookup("l", prompt="prompt number 0")).hit is not None  # 0 is now recent
    await e.store("l", prompt="prompt number 3", response=b"x")  # evicts 1, the least recently used
    assert (await e.lookup("l", prompt="prompt number 1", exact_only=True)).hit is None
    for i in (0, 2, 3):
        assert (await e.lookup("l", prompt=f"prompt number {i}", exact_only=True)).hit is not None
    # Shrinking the bound evicts at once.
    await e.put_namespace(NamespaceSettings(name="l", max_entries=1))
    [stats] = e.stats("l")
    assert (stats.entries, stats.evictions) == (1, 3)
    # Byte bound: an entry alone larger than it is refused; others evict.
    await e.put_namespace(NamespaceSettings(name="b", max_bytes=100))
    with pytest.raises(CacheLimitError):
        await e.store("b", prompt="p", response=b"y" * 200)
    await e.store("b", prompt="one", response=b"y" * 60)
    await e.store("b", prompt="two", response=b"y" * 60)
    assert (await e.lookup("b", prompt="one", exact_only=True)).hit is None
    assert e.stats("b")[0].size_bytes == 63


async def test_invalidate_by_id_metadata_and_all(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="i"))
    a = await e.store("i", prompt="alpha question", response=b"a", metadata={"model": "m1", "user": "u"})
    await e.store("i", prompt="beta question", response=b"b", metadata={"model": "m2", "user": "u"})
    await e.store("i", prompt="gamma question", response=b"c", metadata={"model": "m1"})
    assert await e.invalidate("i", entry_ids=[a.entry_id, "e00000000000000ff", "bogus"]) == 1
    assert (await e.lookup("i", prompt="alpha question")).hit is None
    assert (await e.lookup("i", prompt="alpha questions")).hit is None
    assert await e.invalidate("i", metadata_match={"model": "m1"}) == 1
    assert (await e.lookup("i", prompt="gamma question")).hit is None
    assert (await e.lookup("i", prompt="beta question")).hit is not None
    assert await e.invalidate("i", everything=True) == 1
    assert e.stats("i")[0].entries == 0
    assert await e.invalidate("i", everything=True) == 0


async def test_events_for_hits_misses_stores_and_invalidations(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="ev"))
    await e.store("ev", prompt="q", response=b"r")
    await e.lookup("ev", prompt="q")
    await e.lookup("ev", prompt="something else entirely")
    await e.invalidate("ev", everything=True)
    await e.flush()
    kinds = [d.event_type for d in harness.sink.recorded]
    assert kinds.count("CACHE_STORED") == 1
    assert kinds.count("CACHE_HIT") == 1
    assert kinds.count("CACHE_MISS") == 1
    assert kinds.count("CACHE_INVALIDATED") == 1
    assert len(harness.sink.published) == len(harness.sink.recorded)
    hit = next(d for d in harness.sink.recorded if d.event_type == "CACHE_HIT")
    assert hit.attributes["are.cache.tier"] == "EXACT"


async def _one_entry_flushed(e: CacheEngine, namespace: str) -> None:
    """A namespace holding one entry (prompt "q"), every event so far flushed."""
    await e.put_namespace(NamespaceSettings(name=namespace))
    await e.store(namespace, prompt="q", response=b"r")
    await e.flush()


async def test_a_flush_writes_the_events_queued_before_it_and_leaves_later_ones_for_the_next(
    harness: Harness,
) -> None:
    # A flush used to take whatever was pending after each commit, so while
    # lookups kept coming it committed them one at a time (a commit, an fsync
    # under sync durability, per lookup) and did not end.
    e = harness.e
    await _one_entry_flushed(e, "fl")
    before = len(harness.sink.recorded)
    for _ in range(600):
        await e.lookup("fl", prompt="q")
    flushing = asyncio.ensure_future(e.flush())
    await asyncio.sleep(0)  # the flush starts (and takes what is queued)
    during = 0
    while not flushing.done() and during < 10_000:
        await e.lookup("fl", prompt="q")
        during += 1
        await asyncio.sleep(0)
    await flushing
    assert during > 0  # lookups were answered while the flush committed
    assert len(harness.sink.recorded) == before + 600
    await e.flush()
    assert len(harness.sink.recorded) == before + 600 + during
    assert {d.event_type for d in harness.sink.recorded[before:]} == {"CACHE_HIT"}


async def test_a_flush_records_lookup_events_a_slice_per_loop_turn_and_publishes_them_once_committed(
    harness: Harness,
) -> None:
    # Recording 256 events in one loop turn held the loop some 0.4 ms: each
    # lookup arriving during a flush waited that long (the slowest 1%).
    e = harness.e
    await _one_entry_flushed(e, "sl")
    before, published = len(harness.sink.recorded), len(harness.sink.published)
    for _ in range(1000):
        await e.lookup("sl", prompt="q")
    flushing = asyncio.ensure_future(e.flush())
    seen = []
    while not flushing.done():
        seen.append(len(harness.sink.recorded) - before)
        await asyncio.sleep(0)
    await flushing
    seen.append(len(harness.sink.recorded) - before)
    assert seen[-1] == 1000
    assert max(b - a for a, b in itertools.pairwise(seen)) <= 32  # a slice per turn at most
    assert len(set(seen)) >= 1000 // 32  # and the loop ran between slices
    assert len(harness.sink.published) - published == 1000  # published after their commit, every one


async def _indexed(e: CacheEngine, namespace: str) -> None:
    """Waits (at most 30 s) until the namespace's background indexing is done."""
    for _ in range(3000):
        if e.stats(namespace)[0].unindexed_entries == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("background indexing did not finish in 30 s")


async def _store_vectors(e: CacheEngine, namespace: str, count: int) -> dict[int, str]:
    await e.put_namespace(NamespaceSettings(name=namespace, embedder="caller", dimension=16))
    return {
        i: (await e.store(namespace, prompt=f"p{i}", vector=_unit(16, i), response=str(i).encode())).entry_id
        for i in range(count)
    }


async def test_a_start_missing_many_vectors_serves_at_once_and_indexes_them_behind(harness: Harness) -> None:
    ids = await _store_vectors(harness.e, "bk", 300)
    await harness.close(save=False)  # as after SIGKILL: no index file
    e = await harness.open(index_at_start=50)
    assert e.stats("bk")[0].unindexed_entries == 300  # serving before any is indexed
    # Stored while indexing (the first before the indexer ever ran): queued for the indexer,
    # no store waits for the index's lock; one of them is removed again below.
    late = {
        i: (await e.store("bk", prompt=f"p{i}", vector=_unit(16, i), response=str(i).encode())).entry_id
        for i in range(300, 305)
    }
    for i in range(305):  # the exact tier answers every entry meanwhile
        hit = (await e.lookup("bk", prompt=f"p{i}")).hit
        assert hit is not None and hit.response == str(i).encode()
    removed = [ids[7], ids[250], late[302]]
    assert await e.invalidate("bk", entry_ids=removed) == 3  # removed while indexing (or just after)
    await _indexed(e, "bk")
    for i in range(305):
        hit = (await e.lookup("bk", vector=_unit(16, i))).hit
        if i in (7, 250, 302):
            assert hit is None or hit.response != str(i).encode()
        else:
            assert hit is not None and hit.tier == "SEMANTIC" and hit.response == str(i).encode()
    await e.flush()
    progress = [d.attributes for d in harness.sink.recorded if d.event_type == "CACHE_INDEXING"]
    assert progress[0] == {
        "are.cache.namespace": "bk",
        "are.cache.indexed": 0,
        "are.cache.total": 300,
        "are.cache.done": False,
    }
    assert progress[-1]["are.cache.done"] is True and progress[-1]["are.cache.indexed"] == 300
    assert len(progress) <= 12  # the start, the tenths crossed (chunks grow with speed), the end
    counts = [p["are.cache.indexed"] for p in progress]
    assert counts == sorted(counts)
    e = await harness.reopen()  # a clean stop saved the completed index: nothing left to index
    assert e.stats("bk")[0].unindexed_entries == 0
    assert (await e.lookup("bk", vector=_unit(16, 42))).hit is not None


async def test_a_stop_during_background_indexing_leaves_the_rest_to_the_next_start(harness: Harness) -> None:
    await _store_vectors(harness.e, "st", 200)
    await harness.close(save=False)
    e = await harness.open(index_at_start=20)
    await asyncio.sleep(0)  # indexing begins
    await harness.close(save=True)  # the partial index is saved, not as complete
    e = await harness.open(index_at_start=20)
    assert 0 < e.stats("st")[0].unindexed_entries <= 200
    await _indexed(e, "st")
    for i in range(200):
        hit = (await e.lookup("st", vector=_unit(16, i))).hit
        assert hit is not None and hit.response == str(i).encode()


async def test_few_missing_vectors_are_indexed_before_serving(harness: Harness) -> None:
    await _store_vectors(harness.e, "few", 30)
    await harness.close(save=False)
    e = await harness.open(index_at_start=30)
    assert e.stats("few")[0].unindexed_entries == 0
    assert (await e.lookup("few", vector=_unit(16, 3))).hit is not None


async def test_a_checkpoint_bounds_what_a_start_after_a_crash_indexes_again(harness: Harness) -> None:
    await harness.close()
    e = await harness.open(checkpoint_changes=100)
    ids = await _store_vectors(e, "cp", 250)
    task = e.checkpoint_due()  # 250 changes: due; written by a forked child
    assert task is not None
    await task
    assert e.checkpoint_due() is None  # nothing changed since
    for i in range(250, 270):
        await e.store("cp", prompt=f"p{i}", vector=_unit(16, i), response=str(i).encode())
    await e.invalidate("cp", entry_ids=[ids[5]])
    await harness.close(save=False)  # as after SIGKILL: only the checkpoint is on disk
    e = await harness.open(index_at_start=0)
    assert e.stats("cp")[0].unindexed_entries == 20  # those stored after the checkpoint, not all 270
    await _indexed(e, "cp")
    for i in range(270):
        hit = (await e.lookup("cp", vector=_unit(16, i))).hit
        if i == 5:
            assert hit is None or hit.response != b"5"
        else:
            assert hit is not None and hit.response == str(i).encode(), i


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, 8)).astype(np.float32) @ rng.standard_normal((8, d)).astype(np.float32)
    rows += 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


async def test_the_search_expansion_is_calibrated_on_the_namespaces_own_lookups(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    vectors = _clustered(5000, 32, seed=3)
    for name, fixed in (("cal", 0), ("fixed", 48)):
        await e.put_namespace(
            NamespaceSettings(
                name=name, embedder="caller", dimension=32, vector_dtype="f16", search_expansion=fixed
            )
        )
        await e.store_many(name, [f"p{i}" for i in range(5000)], [b"r"] * 5000, vectors=vectors)
    # f16: 8-bit components of 32-d vectors leave near-duplicates too close to
    # call, and the lookups below must all hit.
    assert e.get_namespace("cal").search_expansion == 32  # the f16 default until measured
    assert e.calibrate_due() is None  # no lookups yet
    rng = np.random.default_rng(4)
    hits = 0
    for i in range(2100):  # near-duplicates of stored prompts: each could hit
        query = vectors[i * 7 % 5000] + 0.01 * rng.standard_normal(32).astype(np.float32)
        hits += (await e.lookup("cal", vector=query)).hit is not None
        await e.lookup("fixed", vector=query)
    assert hits >= 1995  # an approximate search
    task = e.calibrate_due()
    assert task is not None
    assert e.stats("cal")[0].calibrating
    await task
    [stats] = e.stats("cal")
    assert not stats.calibrating
    assert stats.recall_samples == 2048
    assert stats.measured_recall >= 0.95  # see `met` below
    assert stats.search_expansion in LADDER
    assert e.get_namespace("cal").search_expansion == stats.search_expansion
    assert e.calibrate_due() is None  # the fixed namespace is never calibrated; "cal" is not due again
    # A calibration made on another ladder (an older version's) is made again.
    monkeypatch.setattr(cache_engine, "LADDER", (*LADDER, 384))
    again = e.calibrate_due()
    assert again is not None
    await again
    assert e.calibrate_due() is None
    assert e.stats("cal")[0].search_expansion in (*LADDER, 384)
    monkeypatch.undo()
    kept = e.stats("cal")[0].search_expansion
    assert e.stats("fixed")[0].search_expansion == 48
    assert e.stats("fixed")[0].recall_samples == 0
    await e.flush()
    event, _ = [d for d in harness.sink.recorded if d.event_type == "CACHE_CALIBRATED"]
    assert event.attributes["are.cache.search_expansion"] == stats.search_expansion
    assert event.attributes["are.cache.previous_search_expansion"] == 32
    # Met unless a node or two sits where no search reaches it (HNSW's own
    # limit: then no expansion finds it, and the largest is kept).
    correct = round(stats.measured_recall * stats.recall_samples)
    met = wilson_lower_bound(correct, stats.recall_samples) >= 0.995
    assert event.attributes["are.cache.met"] is met
    assert met or stats.search_expansion == LADDER[-1]
    e = await harness.reopen()  # the calibration is kept
    assert e.stats("cal")[0].search_expansion == kept
    assert e.get_namespace("cal").search_expansion == kept
    # Setting an expansion fixes it; setting 0 again returns to the calibrated one.
    await e.put_namespace(NamespaceSettings(name="cal", search_expansion=100))
    assert e.stats("cal")[0].search_expansion == 100
    await e.put_namespace(NamespaceSettings(name="cal"))
    assert e.stats("cal")[0].search_expansion == kept


async def _due_for_calibration(e: CacheEngine, name: str, *, hitting: bool) -> np.ndarray:
    """A namespace of 5,000 vectors after 2,100 semantic lookups: near its vectors, or far from all."""
    vectors = _clustered(5000, 32, seed=3)
    await e.put_namespace(NamespaceSettings(name=name, embedder="caller", dimension=32, vector_dtype="f16"))
    await e.store_many(name, [f"p{i}" for i in range(5000)], [b"r"] * 5000, vectors=vectors)
    await _look_up(e, name, vectors, 2100, hitting=hitting, seed=4)
    return vectors


async def _look_up(
    e: CacheEngine, name: str, vectors: np.ndarray, count: int, *, hitting: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        if hitting:
            query = vectors[i * 7 % len(vectors)] + 0.01 * rng.standard_normal(32).astype(np.float32)
        else:  # no stored vector is near: such lookups cannot hit, whatever the expansion
            query = rng.standard_normal(32).astype(np.float32)
        await e.lookup(name, vector=query)


async def _until_reaped(pid: int) -> None:
    for _ in range(1000):  # 10 s at most
        try:  # WNOWAIT: a zombie stays for the engine to reap
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"child {pid} was never reaped")


async def test_a_calibration_that_ends_without_a_result_waits_for_as_many_new_lookups(
    harness: Harness,
) -> None:
    e = harness.e
    vectors = await _due_for_calibration(e, "far", hitting=False)
    task = e.calibrate_due()
    assert task is not None
    await task
    [stats] = e.stats("far")
    assert stats.recall_samples == 0  # too few of its lookups could hit: nothing measured
    # Not at the next flush again (a fork of the whole index every second): after as many new lookups.
    assert e.calibrate_due() is None
    await _look_up(e, "far", vectors, 2000, hitting=False, seed=5)
    assert e.calibrate_due() is None
    await _look_up(e, "far", vectors, 48, hitting=False, seed=6)
    again = e.calibrate_due()
    assert again is not None
    await again


async def test_a_calibration_child_past_its_deadline_is_killed_reaped_and_made_again_later(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    e = harness.e
    vectors = await _due_for_calibration(e, "slow", hitting=True)
    search = vector_index._compiled_search

    def slow(*args: Any, **kwargs: Any) -> Any:  # in the child: starved, as on a CPU kept busy
        time.sleep(30)
        return search(*args, **kwargs)

    monkeypatch.setattr(vector_index, "_compiled_search", slow)  # no lookup runs while it is set
    monkeypatch.setattr(cache_engine, "_CHILD_DEADLINE_S", 0.5)
    task = e.calibrate_due()
    assert task is not None
    child = e._states["slow"].calibrating
    assert child is not None
    await asyncio.wait_for(task, timeout=15)  # at the deadline, not after the child's 30 s
    await _until_reaped(child.pid)  # killed, and reaped in the background: no zombie left
    assert "calibrating 'slow' did not end within 0.5 s" in caplog.text
    [stats] = e.stats("slow")
    assert not stats.calibrating
    assert stats.recall_samples == 0
    monkeypatch.undo()
    assert e.calibrate_due() is None  # made again after as many new lookups
    await _look_up(e, "slow", vectors, 2048, hitting=True, seed=7)
    again = e.calibrate_due()
    assert again is not None
    await again
    assert e.stats("slow")[0].recall_samples == 2048


async def test_a_stop_cuts_short_the_calibration_of_a_namespace_reloaded_since_it_began(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await _due_for_calibration(e, "gone", hitting=True)
    search = vector_index._compiled_search

    def slow(*args: Any, **kwargs: Any) -> Any:  # in the child: a calibration still running at the stop
        time.sleep(30)
        return search(*args, **kwargs)

    monkeypatch.setattr(vector_index, "_compiled_search", slow)  # no lookup runs while it is set
    task = e.calibrate_due()
    assert task is not None
    child = e._states["gone"].calibrating
    assert child is not None
    # A store whose commit fails reloads the namespace: the state that forked the child is gone.
    disk = full_disk(harness, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        await e.store("gone", prompt="one more", response=b"r", vector=_clustered(1, 32, seed=9)[0])
    disk.full = False
    assert e._states["gone"].calibrating is None  # a fresh state
    closing = asyncio.ensure_future(harness.close())
    done, _ = await asyncio.wait({closing}, timeout=15)  # not cancelled at the bound, as wait_for would
    if closing not in done:
        closing.cancel()
        raise AssertionError("the stop waited for the calibration child (it sleeps 30 s)")
    closing.result()
    assert task.done()
    await _until_reaped(child.pid)  # killed, and reaped


async def test_a_stop_cuts_a_checkpoint_short_and_no_half_written_file_stays(harness: Harness) -> None:
    await harness.close()
    e = await harness.open(checkpoint_changes=10)
    await _store_vectors(e, "cut", 100)
    assert e.checkpoint_due() is not None
    await harness.close()  # the stop kills the child (if still writing) and writes the index itself
    folder = harness.root / "data" / "cache"
    assert not list(folder.glob(".*.tmp"))
    (folder / ".cut.f32.usearch.12345.tmp").write_bytes(b"half")  # as a killed writer leaves it
    e = await harness.open()
    assert not list(folder.glob(".*.tmp"))
    assert e.stats("cut")[0].unindexed_entries == 0
    assert (await e.lookup("cut", vector=_unit(16, 9))).hit is not None


async def test_restart_keeps_entries_stats_and_removals(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="d", embedder="caller", dimension=16))
    vectors = {i: _unit(16, i) for i in range(20)}
    ids = {}
    for i, v in vectors.items():
        ids[i] = (await e.store("d", prompt=f"p{i}", vector=v, response=str(i).encode())).entry_id
    await e.invalidate("d", entry_ids=[ids[3], ids[4]])
    await e.lookup("d", prompt="p1")
    e = await harness.reopen()  # clean stop: the index was saved and is memory-mapped back
    assert e.stats("d")[0].entries == 18
    assert e.stats("d")[0].exact_hits == 1
    for i, v in vectors.items():
        hit = (await e.lookup("d", vector=v)).hit
        if i in (3, 4):
            assert hit is None or hit.response not in (b"3", b"4")
        else:
            assert hit is not None
            assert hit.response == str(i).encode()
    # A new entry after restart gets a fresh id.
    new = await e.store("d", prompt="p-new", vector=_unit(16, 99), response=b"n")
    assert new.entry_id not in ids.values()


async def test_stale_index_is_repaired_and_missing_index_rebuilt(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="r", embedder="caller", dimension=16))
    for i in range(10):
        await e.store("r", prompt=f"p{i}", vector=_unit(16, i), response=str(i).encode())
    e = await harness.reopen()  # saves the index with 10 vectors
    first = (await e.lookup("r", prompt="p0")).hit
    assert first is not None
    await e.invalidate("r", entry_ids=[first.entry_id])
    await e.store("r", prompt="p10", vector=_unit(16, 10), response=b"10")
    e = await harness.reopen(save=False)  # "crash": the saved index is stale
    hit0 = (await e.lookup("r", vector=_unit(16, 0), threshold=0.999)).hit
    assert hit0 is None
    hit10 = (await e.lookup("r", vector=_unit(16, 10))).hit
    assert hit10 is not None
    assert hit10.response == b"10"
    await harness.close()
    for path in (harness.root / "data" / "cache").iterdir():
        path.unlink()
    e = await harness.open()
    hit10 = (await e.lookup("r", vector=_unit(16, 10))).hit
    assert hit10 is not None
    assert hit10.response == b"10"
    assert e.stats("r")[0].entries == 10


async def test_concurrent_lookups_and_stores(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="c", max_entries=50))

    async def writer(k: int) -> None:
        for i in range(20):
            await e.store("c", prompt=f"w{k} item {i}", response=f"{k}:{i}".encode())

    async def reader(k: int) -> None:
        for i in range(20):
            result = await e.lookup("c", prompt=f"w{k} item {i}")
            if result.hit is not None and result.hit.tier == "EXACT":
                assert result.hit.response == f"{k}:{i}".encode()

    await asyncio.gather(*(writer(k) for k in range(4)), *(reader(k) for k in range(4)))
    [stats] = e.stats("c")
    assert stats.entries == 50
    assert stats.evictions == 30
    e = await harness.reopen(save=False)
    assert e.stats("c")[0].entries == 50


async def test_store_many_bulk_loads_and_survives_restart(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="bulk", embedder="caller", dimension=16, max_entries=120))
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((150, 16)).astype(np.float32)
    results = await e.store_many(
        "bulk", [f"bulk {i}" for i in range(150)], [str(i).encode() for i in range(150)], vectors=vectors
    )
    assert len(results) == 150
    assert e.stats("bulk")[0].entries == 120  # the 30 least recent were evicted
    e = await harness.reopen()
    hit = (await e.lookup("bulk", vector=vectors[149])).hit
    assert hit is not None
    assert hit.response == b"149"
    assert (await e.lookup("bulk", prompt="bulk 0", exact_only=True)).hit is None
    with pytest.raises(DimensionMismatchError):
        await e.store_many("bulk", ["x"], [b"y"], vectors=np.ones((1, 8), dtype=np.float32))
    lexical = await e.put_namespace(NamespaceSettings(name="bulk-text"))
    assert lexical[1]
    await e.store_many("bulk-text", ["hello big world", "goodbye"], [b"1", b"2"])
    assert (await e.lookup("bulk-text", prompt="hello big worlds", threshold=0.6)).hit is not None


async def test_churn_keeps_the_expiry_heap_bounded(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="churn", embedder="caller", dimension=4, max_entries=5))
    prompts = [f"p{i}" for i in range(1500)]
    await e.store_many("churn", prompts, [b"r"] * len(prompts))
    state = e._states["churn"]
    assert len(state.heads) == 5
    assert len(state.entries._heap) <= 2 * 5 + 1024 + 1
    harness.clock.advance(8 * 86_400)
    await e.flush()
    assert e.stats("churn")[0].entries == 0
    assert e.stats("churn")[0].expirations == 5


async def test_coalesced_searches_answer_as_inline_ones_do(harness: Harness) -> None:
    # Above the exact-search size, so the graph answers; concurrent lookups share native calls.
    await harness.close()
    e = await harness.open(coalesce=True)
    await e.put_namespace(
        NamespaceSettings(name="co", embedder="caller", dimension=16, similarity_threshold=0.95)
    )
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids: list[str] = []
    for chunk in range(0, len(vectors), 500):
        stored = await asyncio.gather(
            *(
                e.store("co", prompt=f"p{i}", vector=vectors[i], response=str(i).encode())
                for i in range(chunk, chunk + 500)
            )
        )
        ids.extend(s.entry_id for s in stored)
    probe = range(0, 3000, 30)
    results = await asyncio.gather(*(e.lookup("co", vector=vectors[i]) for i in probe))
    answered = [(r.hit.entry_id, r.hit.response) if r.hit else None for r in results]
    right = sum(a == (ids[i], str(i).encode()) for a, i in zip(answered, probe, strict=True))
    assert right >= 0.95 * len(probe)  # an approximate index; each answer names its own entry
    [stats] = e.stats("co")
    assert stats.semantic_hits + stats.misses == len(probe)


async def test_a_restored_index_takes_writes_in_its_overlay_and_folds_them_when_large(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import are_core.cache._engine as engine_module

    monkeypatch.setattr(engine_module, "_FOLD_AT", 8)
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="o", embedder="caller", dimension=16))
    vectors = {i: _unit(16, 100 + i) for i in range(30)}
    ids = {}
    for i in range(10):
        ids[i] = (await e.store("o", prompt=f"p{i}", vector=vectors[i], response=str(i).encode())).entry_id
    e = await harness.reopen()  # memory-mapped back
    index = e._states["o"].index
    assert index.is_view
    for i in range(10, 15):  # a few writes: they stay in the overlay, the file is not loaded
        ids[i] = (await e.store("o", prompt=f"p{i}", vector=vectors[i], response=str(i).encode())).entry_id
    await e.invalidate("o", entry_ids=[ids[0]])
    e._fold_due()
    assert index.is_view and index.pending_changes == 6
    for i in range(15, 30):  # past the bound: the next flush turn folds the overlay in
        ids[i] = (await e.store("o", prompt=f"p{i}", vector=vectors[i], response=str(i).encode())).entry_id
    e._fold_due()
    await asyncio.gather(*e._warmers)
    assert not is_view(index)
    assert len(index) == 29
    for i, v in vectors.items():
        hit = (await e.lookup("o", vector=v, threshold=0.999)).hit
        assert (hit.response if hit else None) == (None if i == 0 else str(i).encode())


async def test_search_expansion_is_the_indexs_and_survives_a_restart(harness: Harness) -> None:
    e = harness.e
    ns, _ = await e.put_namespace(NamespaceSettings(name="x", vector_dtype="i8"))
    assert ns.search_expansion == 32  # the i8 default
    assert e._states["x"].index.expansion_search == 32
    ns, _ = await e.put_namespace(NamespaceSettings(name="x", search_expansion=12))
    assert (ns.search_expansion, e._states["x"].index.expansion_search) == (12, 12)
    for i in range(20):
        await e.store("x", prompt=f"prompt number {i}", response=b"r")
    e = await harness.reopen()  # the saved index is restored by memory map
    assert e._states["x"].namespace.search_expansion == 12
    assert e._states["x"].index.expansion_search == 12
    assert (await e.lookup("x", prompt="prompt number 7")).hit is not None


async def test_lookup_answers_are_not_tracked_by_the_cyclic_gc(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="gc"))
    await e.store("gc", prompt="p", response=b"r", metadata={"model": "m"})
    result = await e.lookup("gc", prompt="p")
    assert result.hit is not None
    assert not any(gc.is_tracked(record) for record in (result, result.hit))
