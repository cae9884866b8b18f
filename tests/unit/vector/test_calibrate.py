"""Recall calibration: the child's searches, the Wilson bound, the choice of an expansion."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from are_core.vector import LADDER, VectorIndex, choose_expansion, wilson_lower_bound


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((12, d)).astype(np.float32)
    rows = rng.standard_normal((n, 12)).astype(np.float32) @ basis
    rows += 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def test_wilson_lower_bound() -> None:
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(300, 300) == pytest.approx(0.991, abs=0.001)  # 300 of 300: >= 0.99
    assert wilson_lower_bound(200, 200) < 0.99  # too few to claim 0.99
    assert wilson_lower_bound(95, 100) < 0.95 < wilson_lower_bound(990, 1000)


def test_the_child_searches_the_index_as_it_was_at_the_fork() -> None:
    vectors = _clustered(6000, 32, seed=1)
    index = VectorIndex(dimension=32, dtype="i8")
    index.add(np.arange(5000), vectors[:5000])
    queries = vectors[:300] + 0.02 * np.random.default_rng(2).standard_normal((300, 32)).astype(np.float32)
    child = index.search_in_child(queries, [8, 64])
    assert child is not None
    index.add(np.arange(5000, 6000), vectors[5000:])  # after the fork: the child never sees these
    found = asyncio.run(child.result())
    assert sorted(found) == [0, 8, 64]
    exact_keys, exact_sims = found[0]
    assert int(exact_keys.max()) < 5000
    top = [index.search(q, 1, exact=True)[0] for q in queries[:50]]  # now over 6,000: may differ
    assert all(s >= exact_sims[i] - 1e-6 for i, (_, s) in enumerate(top))  # more vectors: never worse
    assert np.mean(found[64][0] == exact_keys) >= 0.99


def test_choose_the_smallest_expansion_that_clears_the_target() -> None:
    n = 1000
    ref_keys = np.arange(n, dtype=np.uint64)
    ref_sims = np.full(n, 0.95, dtype=np.float32)
    thresholds = np.full(n, 0.9, dtype=np.float32)
    wrong = ref_keys + np.uint64(10_000)
    found = {
        8: (
            np.where(np.arange(n) < 50, wrong, ref_keys),
            np.where(np.arange(n) < 50, 0.9, 0.95).astype(np.float32),
        ),
        16: (
            np.where(np.arange(n) < 2, wrong, ref_keys),
            np.where(np.arange(n) < 2, 0.9, 0.95).astype(np.float32),
        ),
        32: (ref_keys.copy(), ref_sims.copy()),
    }
    chosen = choose_expansion(
        found, (ref_keys, ref_sims), thresholds, target=0.99, similarity_error=0.0, entries=5, time_ns=1
    )
    assert chosen is not None
    assert (chosen.expansion, chosen.recall, chosen.met, chosen.samples) == (16, 0.998, True, 1000)
    # A duplicate vector (another key, the same similarity) is a right answer.
    found[8] = (wrong, ref_sims.copy())
    chosen = choose_expansion(
        found, (ref_keys, ref_sims), thresholds, target=0.99, similarity_error=0.0, entries=5, time_ns=1
    )
    assert chosen is not None
    assert chosen.expansion == 8
    # Queries whose exact neighbour could not answer do not count: too few left decides nothing.
    far = np.full(n, 0.5, dtype=np.float32)
    assert (
        choose_expansion(
            found, (ref_keys, far), thresholds, target=0.99, similarity_error=0.0, entries=5, time_ns=1
        )
        is None
    )
    # Nothing clears the target: the largest, not met.
    bad = {e: (wrong, np.full(n, 0.9, dtype=np.float32)) for e in LADDER[:3]}
    worst = choose_expansion(
        bad, (ref_keys, ref_sims), thresholds, target=0.99, similarity_error=0.0, entries=5, time_ns=1
    )
    assert worst is not None and worst.expansion == LADDER[2] and not worst.met
