"""The repair sweep: a forked child finds the keys that their own vector no longer reaches."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from are_core.vector import DTYPES, VectorIndex

_DIMENSION = 32
_LIVE = 3000  # above EXACT_SEARCH_BELOW: searches walk the graph
_EXPANSION = 8  # small, so that removals' damage shows at a few thousand keys


def _churned(dtype: str) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """3,000 live keys after 9,000 removals, each followed by an insertion: the index, live keys, vectors.

    One key per call (usearch inserts a batch on several threads, and its
    graph then differs from run to run): the same graph every run, with
    11 (f16, f32) or 15 (i8) live keys that a search for their own vector
    does not return at expansion 8.
    """
    rng = np.random.default_rng(1)
    total = 4 * _LIVE
    basis = rng.standard_normal((8, _DIMENSION)).astype(np.float32)  # low intrinsic dimension
    vectors = rng.standard_normal((total, 8)).astype(np.float32) @ basis
    vectors += 0.05 * rng.standard_normal((total, _DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(dimension=_DIMENSION, dtype=dtype, expansion_add=64, expansion_search=_EXPANSION)
    live = np.arange(_LIVE)
    for key in range(_LIVE):
        index.add([key], vectors[key])
    for key in range(_LIVE, total):  # a random live key out, a new one in
        slot = int(rng.integers(_LIVE))
        index.remove([live[slot]])
        live[slot] = key
        index.add([key], vectors[key])
    return index, live, vectors


def _unreachable(index: VectorIndex, keys: np.ndarray, vectors: np.ndarray) -> list[int]:
    """The keys a search for their own vector does not return (nor an identical twin)."""
    found = index.search_many(vectors[keys], 1)
    return sorted(
        int(key)
        for key, matches in zip(keys, found, strict=True)
        if not matches or (matches[0][0] != key and matches[0][1] < 1 - 1e-5)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_sweep_finds_the_keys_no_search_reaches_and_inserting_them_again_repairs_it(dtype: str) -> None:
    index, live, vectors = _churned(dtype)
    lost = _unreachable(index, live, vectors)
    assert lost  # the precondition: removals left live keys that their own vector does not find
    child = index.sweep_in_child()
    assert child is not None
    sweep = asyncio.run(child.result())
    assert sweep.checked == _LIVE
    # The stored vectors (in the index's dtype) search as their float32 originals do.
    assert sorted(sweep.unreachable.tolist()) == lost
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # reaped
    index.add(sweep.unreachable, vectors[sweep.unreachable], threads=1)
    assert _unreachable(index, live, vectors) == []
    assert len(index) == _LIVE


def test_a_sweep_reports_at_most_its_bound() -> None:
    index, live, vectors = _churned("i8")
    child = index.sweep_in_child(max_unreachable=3)
    assert child is not None
    sweep = asyncio.run(child.result())
    assert sweep.unreachable.size == 3
    assert set(sweep.unreachable.tolist()) <= set(_unreachable(index, live, vectors))
    assert sweep.checked < _LIVE  # it stopped there


def test_a_view_is_swept_in_its_file_and_repaired_in_its_overlay(tmp_path: Path) -> None:
    index, live, vectors = _churned("i8")
    lost = _unreachable(index, live, vectors)
    path = tmp_path / "index.usearch"
    index.save(path)
    view = VectorIndex.restore(path, dimension=_DIMENSION, dtype="i8", view=True, expansion_search=_EXPANSION)
    assert view is not None
    removed = [lost[0], int(live[0]), int(live[1])]  # hidden in the file: not live, never reported
    view.remove(removed)
    kept = np.array([key for key in live.tolist() if key not in removed])
    lost_now = _unreachable(view, kept, vectors)
    assert lost_now
    assert lost[0] not in lost_now
    child = view.sweep_in_child()
    assert child is not None
    view.remove([lost_now[0]])  # removed after the fork: the child reports it; its owner skips it
    sweep = asyncio.run(child.result())
    assert sweep.checked == kept.size
    assert sorted(sweep.unreachable.tolist()) == lost_now
    again = np.array([key for key in sweep.unreachable.tolist() if key in view])
    view.add(again, vectors[again], threads=1)
    assert view.is_view  # into the overlay: the file is not loaded for it
    kept = kept[kept != lost_now[0]]
    assert _unreachable(view, kept, vectors) == []
    for key in [*removed, lost_now[0]]:
        assert key not in view
        assert view.search(vectors[key], 1)[0][0] != key
