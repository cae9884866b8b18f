"""When a repair sweep runs: not on a restored view, after a failure not at once, the most overdue first."""

from __future__ import annotations

import numpy as np
import pytest

from are_core.cache import NamespaceSettings
from are_core.cache._normalise import entry_id_text
from are_core.vector import _index as index_module

from .conftest import Harness, is_view, low_dimension_rows, own_vector_misses
from .test_repair import _DIMENSION, _churned, due_for_a_sweep


@pytest.fixture
def graph_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups answer from the graph alone, as in a namespace too large for exact confirmations."""
    monkeypatch.setitem(index_module.EXACT_CONFIRM_COMPONENTS, "i8", 0)


@pytest.mark.usefixtures("graph_only")
async def test_a_restored_view_is_swept_once_folded_with_the_removals_counted_before_the_restart(
    harness: Harness,
) -> None:
    """The churned index (live entries its own vectors miss) is saved and restored as a view, and
    200 entries are invalidated there. A view's searches look past its hidden keys with a wider
    expansion, so a sweep of it would see none of the damage (and reset the count): none runs.
    The removals counted before the restart were kept; once the overlay is folded into a private
    copy (what a large overlay or a stop does), the sweep is due and leaves no entry unreachable."""
    await _churned(harness, "churn")
    damaged = await own_vector_misses(harness, "churn")
    assert damaged  # the precondition
    before = harness.e._states["churn"].index_removals
    assert before > 0
    await harness.close()
    e = await harness.open(repair_changes=200)
    state = e._states["churn"]
    assert state.index.is_view
    assert state.index_removals == before  # durable: a restart does not start the count again
    gone = np.random.default_rng(3).choice(state.entries.ids(), 200, replace=False)
    await e.invalidate("churn", entry_ids=[entry_id_text(int(n)) for n in gone])
    assert state.index_removals == before + 200
    assert e.repair_due() is None  # a view: not now
    await e._warm(state)  # the overlay folded into a private copy
    assert not is_view(state.index)
    task = e.repair_due()
    assert task is not None
    await task
    assert state.index_removals == 0
    assert await own_vector_misses(harness, "churn") == []


async def test_a_failed_sweep_is_not_started_again_for_a_minute(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await due_for_a_sweep(harness, "f")

    def failing(*args: object) -> object:  # in the child: it dies (as when the OOM killer takes it)
        raise MemoryError

    monkeypatch.setattr(index_module, "_sweep", failing)
    task = e.repair_due()
    assert task is not None
    await task
    state = e._states["f"]
    assert state.index_removals == 1  # still owed
    assert e.repair_due() is None  # not a fork per upkeep turn
    harness.clock.advance(59)
    assert e.repair_due() is None
    monkeypatch.undo()
    harness.clock.advance(2)
    task = e.repair_due()
    assert task is not None
    await task
    assert state.index_removals == 0


async def test_the_most_overdue_namespace_is_swept_first(harness: Harness) -> None:
    """A namespace that keeps churning does not keep the sweep from another one that is due."""
    await harness.close()
    e = await harness.open(repair_changes=10)
    for name, seed in (("a", 7), ("b", 8)):
        await e.put_namespace(NamespaceSettings(name=name, embedder="caller", dimension=_DIMENSION))
        rows = low_dimension_rows(2200, _DIMENSION, seed=seed)
        await e.store_many(name, [f"p{i}" for i in range(2200)], [b"r"] * 2200, vectors=rows)
    for name, count in (("a", 10), ("b", 30)):
        ids = e._states[name].entries.ids()[:count]
        await e.invalidate(name, entry_ids=[entry_id_text(int(n)) for n in ids])
    task = e.repair_due()
    assert task is not None
    await task
    assert e._states["b"].index_removals == 0  # three times its bound: first
    assert e._states["a"].index_removals == 10
    task = e.repair_due()
    assert task is not None
    await task
    assert e._states["a"].index_removals == 0
