"""SearchCoalescer: concurrent searches batched into one native call, each with its own outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from are_core.vector import EXACT_SEARCH_BELOW, SearchCoalescer, VectorIndex, VectorShapeError

_N = EXACT_SEARCH_BELOW + 1000  # above the brute-force size: the graph is searched
_D = 32


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v: np.ndarray = rng.standard_normal((n, d)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


@pytest.fixture(scope="module")
def index() -> VectorIndex:
    index = VectorIndex(dimension=_D, dtype="f32")
    index.add(np.arange(_N), _unit(_N, _D))
    return index


class _Recording:
    """The index's own batch search, recording how many queries each call took."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.sizes: list[int] = []

    def __call__(self, queries: np.ndarray, k: int, **options: Any) -> list[list[tuple[int, float]]]:
        self.sizes.append(queries.shape[0])
        return self.index._search(queries, k, **options)


def test_batched_results_equal_one_by_one_results(index: VectorIndex) -> None:
    queries = _unit(40, _D, seed=1)
    ks = [1 + i % 8 for i in range(len(queries))]
    expected = [index.search(q, k) for q, k in zip(queries, ks, strict=True)]
    search = _Recording(index)
    coalescer = SearchCoalescer(search)

    async def run() -> list[list[tuple[int, float]]]:
        return await asyncio.wait_for(
            asyncio.gather(*(coalescer.search(index.query(q), k) for q, k in zip(queries, ks, strict=True))),
            timeout=30,
        )

    got = asyncio.run(run())
    assert [[key for key, _ in r] for r in got] == [[key for key, _ in r] for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert [s for _, s in mine] == pytest.approx([s for _, s in theirs], abs=1e-6)
    # The first ran inline; the other 39 were queued in the same turn and batched.
    assert search.sizes[0] == 1
    assert coalescer.batches >= 1
    assert max(search.sizes) > 1
    assert sum(search.sizes) == len(queries)


def test_a_lone_search_runs_inline_without_a_batch(index: VectorIndex) -> None:
    search = _Recording(index)
    coalescer = SearchCoalescer(search)
    query = index.query(_unit(1, _D, seed=2)[0])

    async def run() -> list[list[tuple[int, float]]]:
        first = await coalescer.search(query, 3)
        await asyncio.sleep(0)  # the next loop turn
        second = await coalescer.search(query, 3)
        return [first, second]

    first, second = asyncio.run(run())
    assert first == second == index.search(query, 3)
    assert coalescer.batches == 0
    assert search.sizes == [1, 1]


def test_an_error_in_one_query_does_not_fail_the_others(index: VectorIndex) -> None:
    queries = _unit(6, _D, seed=3)
    coalescer = SearchCoalescer(index._search)
    wrong = np.zeros((1, _D + 1), dtype=np.float32)  # a shape the native call refuses

    async def run() -> list[object]:
        searches = [coalescer.search(index.query(q), 2) for q in queries]
        searches.insert(3, coalescer.search(wrong, 2))
        return await asyncio.wait_for(asyncio.gather(*searches, return_exceptions=True), timeout=30)

    outcomes = asyncio.run(run())
    assert isinstance(outcomes[3], Exception)
    others = outcomes[:3] + outcomes[4:]
    assert others == [index.search(q, 2) for q in queries]
    assert coalescer.batches >= 1


def test_batches_are_bounded(index: VectorIndex) -> None:
    queries = _unit(100, _D, seed=4)
    search = _Recording(index)
    coalescer = SearchCoalescer(search, max_batch=8)

    async def run() -> list[list[tuple[int, float]]]:
        return await asyncio.wait_for(
            asyncio.gather(*(coalescer.search(index.query(q), 1) for q in queries)), timeout=30
        )

    got = asyncio.run(run())
    assert got == [index.search(q, 1) for q in queries]
    assert max(search.sizes) <= 8
    assert sum(search.sizes) == 100
    assert coalescer.pending == 0


def test_a_cancelled_search_leaves_the_batch_answering_the_others(index: VectorIndex) -> None:
    queries = _unit(10, _D, seed=5)
    coalescer = SearchCoalescer(index._search)

    async def run() -> list[object]:
        tasks = [asyncio.ensure_future(coalescer.search(index.query(q), 1)) for q in queries]
        await asyncio.sleep(0)  # all started: the first inline, the rest queued
        tasks[5].cancel()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)

    outcomes = asyncio.run(run())
    assert isinstance(outcomes[5], asyncio.CancelledError)
    assert [o for i, o in enumerate(outcomes) if i != 5] == [
        index.search(q, 1) for i, q in enumerate(queries) if i != 5
    ]


def test_search_coalesced_matches_search_and_checks_the_shape(index: VectorIndex) -> None:
    queries = _unit(12, _D, seed=6)

    async def run() -> list[list[tuple[int, float]]]:
        return await asyncio.wait_for(
            asyncio.gather(*(index.search_coalesced(q, 4) for q in queries)), timeout=30
        )

    assert asyncio.run(run()) == [index.search(q, 4) for q in queries]
    with pytest.raises(VectorShapeError):
        asyncio.run(index.search_coalesced(np.zeros(_D + 1, dtype=np.float32), 1))
    assert asyncio.run(index.search_coalesced(queries[0], 0)) == []


def test_searches_and_changes_from_two_threads_are_serialised() -> None:
    # A change on the loop thread while a batch searches in the worker thread
    # waits for it (usearch is not safe for a search concurrent with an add).
    index = VectorIndex(dimension=_D, dtype="i8")
    vectors = _unit(_N, _D, seed=7)
    index.add(np.arange(_N), vectors)
    extra = _unit(200, _D, seed=8)

    async def run() -> None:
        for round_ in range(10):
            searches = [index.search_coalesced(v, 1) for v in vectors[round_ * 20 : round_ * 20 + 20]]
            task = asyncio.gather(*searches)
            await asyncio.sleep(0)  # the batch is now in the worker thread
            index.add(
                np.arange(_N + round_ * 20, _N + round_ * 20 + 20), extra[round_ * 20 : round_ * 20 + 20]
            )
            index.remove([round_])
            found = await asyncio.wait_for(task, timeout=30)
            assert all(len(r) == 1 for r in found)

    asyncio.run(run())
    assert len(index) == _N + 200 - 10


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SearchCoalescer(lambda *a, **k: [], max_batch=0)
