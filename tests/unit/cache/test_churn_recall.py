"""A churning cache still finds every live entry by its own vector (graph damage never loses one)."""

from __future__ import annotations

import numpy as np
import pytest

from are_core.cache import NamespaceSettings
from are_core.cache import _engine as engine_module
from are_core.cache._normalise import entry_id_text

from .conftest import Harness, low_dimension_rows, own_vector_misses

_DIMENSION = 32
_BOUND = 3000  # above the size searched exactly anyway (EXACT_SEARCH_BELOW)
_CHUNK = 250


async def test_every_live_entry_answers_its_own_vector_after_churn_and_restarts(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A size-bounded namespace stored four times over (LRU eviction removes an
    # entry per store), with invalidations and expiry on top: the HNSW graph
    # loses links with every removal, and a node can become unreachable. A
    # small search expansion makes that show at a few thousand entries.
    # Exact confirmations of misses find those nodes; their wall-clock budget
    # (tested below) would make this depend on the machine's load, so it is
    # lifted here.
    monkeypatch.setattr(engine_module, "_CONFIRM_SHARE", 1.0)
    monkeypatch.setattr(engine_module, "_CONFIRM_BURST_NS", 3_600 * 10**9)
    e = harness.e
    await e.put_namespace(
        NamespaceSettings(
            name="churn",
            embedder="caller",
            dimension=_DIMENSION,
            vector_dtype="i8",
            similarity_threshold=0.95,
            max_entries=_BOUND,
            search_expansion=4,
        )
    )
    rows = low_dimension_rows(4 * _BOUND, _DIMENSION, seed=7)
    rng = np.random.default_rng(8)
    for start in range(0, rows.shape[0], _CHUNK):
        stop = start + _CHUNK
        prompts = [f"prompt {i}" for i in range(start, stop)]
        ttl = 30 * 10**9 if start % (4 * _CHUNK) == 0 else 0
        await e.store_many("churn", prompts, [b"r"] * _CHUNK, vectors=rows[start:stop], ttl_ns=ttl)
        harness.clock.advance(10)
        live = e._states["churn"].entries.ids()
        chosen = rng.choice(live, size=_CHUNK // 10, replace=False)
        await e.invalidate("churn", entry_ids=[entry_id_text(int(n)) for n in chosen])
        await e.flush()  # sweeps what expired
    assert len(e._states["churn"].index) > 2048
    assert await own_vector_misses(harness, "churn") == []
    # A vector near no entry still misses, reporting the best similarity there is.
    stranger = -rows[0] + 0.5 * low_dimension_rows(1, _DIMENSION, seed=9)[0]
    before = e.stats("churn")[0].misses
    result = await e.lookup("churn", vector=stranger, threshold=0.95)
    assert result.hit is None
    assert 0.0 <= result.best_similarity < 0.95
    assert e.stats("churn")[0].misses == before + 1
    await harness.reopen()  # the index restored as a memory-mapped view of its file
    assert e is not harness.e and harness.e._states["churn"].index.is_view
    assert await own_vector_misses(harness, "churn") == []
    await harness.reopen(save=False)  # as after SIGKILL: the index rebuilt from LMDB
    assert await own_vector_misses(harness, "churn") == []


async def test_exact_confirmations_of_misses_stay_within_their_time_budget(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load of misses (a cold cache) must not hand the event loop to brute-force scans: past the
    namespace's budget the graph's miss stands, and the budget refills with time."""
    e = harness.e
    await e.put_namespace(
        NamespaceSettings(name="cold", embedder="caller", dimension=_DIMENSION, vector_dtype="i8")
    )
    rows = low_dimension_rows(_BOUND, _DIMENSION, seed=11)
    await e.store_many("cold", [f"p{i}" for i in range(_BOUND)], [b"r"] * _BOUND, vectors=rows)
    state = e._states["cold"]
    scans: list[bool] = []
    search = state.index.search

    def counted(vector: np.ndarray, k: int, *, exact: bool = False) -> list[tuple[int, float]]:
        scans.append(exact)
        return search(vector, k, exact=exact)

    monkeypatch.setattr(state.index, "search", counted)
    monkeypatch.setattr(engine_module, "_CONFIRM_SHARE", 0.0)  # no refill
    state.confirm_budget_ns = 1  # enough to start one confirmation
    far = -rows[0]
    for _ in range(20):
        assert (await e.lookup("cold", vector=far, threshold=0.99)).hit is None
    assert scans.count(True) == 1
    monkeypatch.setattr(engine_module, "_CONFIRM_SHARE", 0.1)  # the default share again
    state.confirm_at_ns -= 10**9  # as if a second passed: a tenth of it refills the budget
    assert (await e.lookup("cold", vector=far, threshold=0.99)).hit is None
    assert scans.count(True) == 2
