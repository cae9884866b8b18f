"""SIGKILL the sidecar while the cache is in use: every acknowledged entry answers, no removed one does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from are_sdk import Client
from are_sdk.testing import SidecarProcess

NS = "crash:vectors"
DIM = 32


def _vector(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    return [float(x) for x in v / np.linalg.norm(v)]


async def _store_many(client: Client, start: int, stop: int) -> list[tuple[int, str]]:
    acknowledged: list[tuple[int, str]] = []

    async def one(i: int) -> None:
        stored = await client.cache.store(NS, f"prompt {i}", {"i": i}, vector=_vector(i))
        acknowledged.append((i, stored.entry_id))

    await asyncio.gather(*(one(i) for i in range(start, stop)))
    return acknowledged


async def test_acknowledged_entries_survive_sigkill_and_removals_stay_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            await client.cache.put_namespace(NS, embedder="caller", dimension=DIM, similarity_threshold=0.99)
            first = await _store_many(client, 0, 60)
        # A clean stop saves the index, so the next start restores it by memory map.
    finally:
        assert process.stop() == 0
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            ids = dict(first)
            removed = set(range(0, 60, 5))
            assert await client.cache.invalidate(NS, entry_ids=[ids[i] for i in sorted(removed)]) == len(
                removed
            )
            later = await _store_many(client, 60, 100)  # in LMDB, not in the saved index
            await client.cache.store(NS, "prompt 7", {"i": "7 again"}, vector=_vector(7))  # replaces entry 7
    finally:
        process.kill()  # no shutdown: the saved index is now stale
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            for i, _entry_id in [*first, *later]:
                exact = await client.cache.lookup(NS, f"prompt {i}", exact_only=True)
                semantic = await client.cache.lookup(NS, vector=_vector(i))
                if i in removed:
                    assert exact is None, i
                    assert semantic is None, i
                    continue
                expected = {"i": "7 again"} if i == 7 else {"i": i}
                assert exact is not None, i
                assert exact.value == expected, i
                assert semantic is not None, i
                assert semantic.value == expected, i
            [stats] = await client.cache.stats(NS)
            assert stats.entries == 100 - len(removed)
    finally:
        process.kill()
        process.cleanup()


async def _check(client: Client, acknowledged: list[tuple[int, str]], removed: set[int]) -> None:
    for i, _entry_id in acknowledged:
        exact = await client.cache.lookup(NS, f"prompt {i}", exact_only=True)
        semantic = await client.cache.lookup(NS, vector=_vector(i))
        if i in removed:
            assert exact is None, i
            assert semantic is None, i
        else:
            assert exact is not None, i
            assert exact.value == {"i": i}, i
            assert semantic is not None, i
            assert semantic.value == {"i": i}, i
    [stats] = await client.cache.stats(NS)
    assert stats.entries == len(acknowledged) - len(removed)


async def test_sigkill_after_a_periodic_entry_table(tmp_path: Path) -> None:
    """No clean stop ever: the table saved in the background, then the journal after it, carry the truth."""
    data = tmp_path / "data"
    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            await client.cache.put_namespace(NS, embedder="caller", dimension=DIM, similarity_threshold=0.99)
            first = await _store_many(client, 0, 40)
    finally:
        process.kill()  # no table, no index saved
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        # Started from every head in LMDB; the flush loop saves a table within about a second.
        tables = data / "indexes" / "cache"
        for _ in range(400):
            if any(tables.glob("*.entries")):
                break
            await asyncio.sleep(0.05)
        assert any(tables.glob("*.entries"))
        async with await Client.connect(process.target) as client:
            ids = dict(first)
            removed = {2, 11, 30}
            await client.cache.invalidate(NS, entry_ids=[ids[i] for i in sorted(removed)])
            later = await _store_many(client, 40, 60)
    finally:
        process.kill()
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            await _check(client, [*first, *later], removed)
    finally:
        process.kill()
        process.cleanup()


async def _indexed(client: Client) -> None:
    """Waits (bounded: 30 s) until the namespace's background indexing is done."""
    for _ in range(600):
        [stats] = await client.cache.stats(NS)
        if stats.unindexed_entries == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{stats.unindexed_entries} entries still unindexed after 30 s")


async def _indexing_progress(client: Client) -> list[Any]:
    """The CACHE_INDEXING events' attributes, once the last (done) one is recorded (bounded: 30 s)."""
    for _ in range(600):  # the last event is recorded at the next flush (about a second)
        page = await client.trace.list_events(event_types=["CACHE_INDEXING"], page_size=100)
        if any(e.attributes["are.cache.done"].bool_value for e in page.events):
            break
        await asyncio.sleep(0.05)
    return [e.attributes for e in page.events]


async def test_after_sigkill_the_sidecar_serves_at_once_and_indexes_missing_vectors_behind(
    tmp_path: Path,
) -> None:
    """A start that finds the index far behind serves first; the vectors are indexed in the background."""
    data = tmp_path / "data"
    args = ["--cache-index-at-start", "16"]
    process = SidecarProcess.start(data_dir=data, args=args)
    try:
        async with await Client.connect(process.target) as client:
            await client.cache.put_namespace(NS, embedder="caller", dimension=DIM, similarity_threshold=0.99)
            acknowledged = await _store_many(client, 0, 300)
    finally:
        process.kill()  # no index saved: all 300 vectors are missing at the next start
        process.cleanup()

    process = SidecarProcess.start(data_dir=data, args=args)
    try:
        async with await Client.connect(process.target) as client:
            await _indexed(client)
            await _check(client, acknowledged, set())
            progress = await _indexing_progress(client)
            assert progress[0]["are.cache.indexed"].int_value == 0
            assert progress[0]["are.cache.total"].int_value == 300
            assert progress[-1]["are.cache.done"].bool_value
            assert progress[-1]["are.cache.indexed"].int_value == 300
    finally:
        process.kill()
        process.cleanup()


async def test_a_checkpoint_written_while_serving_is_what_a_start_after_sigkill_builds_on(
    tmp_path: Path,
) -> None:
    """The index is written in the background (a forked child) as entries change; SIGKILL; restart."""
    data = tmp_path / "data"
    index_file = data / "indexes" / "cache" / f"{NS}.f32.usearch"
    process = SidecarProcess.start(data_dir=data, args=["--cache-checkpoint-changes", "100"])
    try:
        async with await Client.connect(process.target) as client:
            await client.cache.put_namespace(NS, embedder="caller", dimension=DIM, similarity_threshold=0.99)
            acknowledged = await _store_many(client, 0, 250)
            for _ in range(200):  # the flush loop starts a checkpoint within about a second (bounded: 10 s)
                if index_file.exists():
                    break
                await asyncio.sleep(0.05)
            assert index_file.exists()
            acknowledged += await _store_many(client, 250, 260)
    finally:
        process.kill()  # never a clean stop: the only index on disk is a checkpoint
        process.cleanup()

    process = SidecarProcess.start(data_dir=data, args=["--cache-index-at-start", "0"])
    try:
        async with await Client.connect(process.target) as client:
            await _indexed(client)
            await _check(client, acknowledged, set())
            progress = await _indexing_progress(client)
            # Only what changed after the checkpoint was indexed again, not all 260 entries.
            assert 0 < progress[0]["are.cache.total"].int_value < 260
    finally:
        process.kill()
        process.cleanup()


async def test_sigkill_during_background_indexing_then_a_start_finishes_it(tmp_path: Path) -> None:
    """SIGKILL while a start's backlog is being indexed (a checkpoint perhaps mid-way); the next finishes."""
    data = tmp_path / "data"
    args = ["--cache-index-at-start", "16", "--cache-checkpoint-changes", "200"]
    process = SidecarProcess.start(data_dir=data, args=args)
    try:
        async with await Client.connect(process.target) as client:
            await client.cache.put_namespace(NS, embedder="caller", dimension=DIM, similarity_threshold=0.99)
            acknowledged = []
            for start in range(0, 1500, 250):  # under the sidecar's concurrent-stream bound
                acknowledged += await _store_many(client, start, start + 250)
    finally:
        process.kill()  # no index on disk
        process.cleanup()

    process = SidecarProcess.start(data_dir=data, args=args)
    try:
        async with await Client.connect(process.target) as client:
            removed = {3, 700}
            ids = dict(acknowledged)
            await client.cache.invalidate(NS, entry_ids=[ids[i] for i in sorted(removed)])
    finally:
        process.kill()  # most likely mid-way through the backlog
        process.cleanup()

    process = SidecarProcess.start(data_dir=data, args=args)
    try:
        async with await Client.connect(process.target) as client:
            await _indexed(client)
            await _check(client, acknowledged, removed)
    finally:
        process.kill()
        process.cleanup()


async def test_entry_ids_are_never_reused_after_a_restart_or_sigkill(tmp_path: Path) -> None:
    """A stale InvalidateCache of a removed entry's id must never remove an entry stored after a restart."""
    data = tmp_path / "data"
    ns = "crash:ids"
    removed: list[str] = []
    for stop in ("clean", "sigkill", "clean"):
        process = SidecarProcess.start(data_dir=data)
        try:
            async with await Client.connect(process.target) as client:
                if not removed:
                    await client.cache.put_namespace(ns)
                    await client.cache.store(ns, "kept", "k")
                # A new entry's id is above every id ever handed out, removed ones included.
                fresh = await client.cache.store(ns, f"stored after {len(removed)}", "v")
                assert all(fresh.entry_id > old for old in removed), (fresh.entry_id, removed)
                if removed:  # stale ids: nothing of today's answers to them
                    assert await client.cache.invalidate(ns, entry_ids=removed) == 0
                hit = await client.cache.lookup(ns, f"stored after {len(removed)}")
                assert hit is not None
                assert hit.entry_id == fresh.entry_id
                assert await client.cache.invalidate(ns, entry_ids=[fresh.entry_id]) == 1
                removed.append(fresh.entry_id)
                assert await client.cache.lookup(ns, "kept") is not None
        finally:
            if stop == "clean":
                assert process.stop() == 0
            else:
                process.kill()
            process.cleanup()
