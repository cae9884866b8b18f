"""VectorIndex: add/replace/remove/search, atomic save, memory-mapped restore."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import threading
from pathlib import Path

import numpy as np
import pytest

import are_core.vector
from are_core.vector import (
    DTYPES,
    VectorError,
    VectorIndex,
    VectorShapeError,
    _index,  # the helpers behind a fold's huge pages
    child_exit_code,
)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _assert_same(keys: np.ndarray, similarities: np.ndarray, matches: list[tuple[int, float]]) -> None:
    assert keys.tolist() == [key for key, _ in matches]
    assert similarities.tolist() == pytest.approx([similarity for _, similarity in matches], abs=1e-6)


def _is_view(index: VectorIndex) -> bool:
    """``index.is_view``, read through a call after a change to the index.

    Mypy keeps what an ``assert index.is_view`` narrowed the property to across
    the calls that change it (``materialize``), and would call the next check
    unreachable.
    """
    return index.is_view


def _exact_is_cheap(index: VectorIndex) -> bool:
    """``index.exact_is_cheap``, read through a call after a change (see ``_is_view``)."""
    return index.exact_is_cheap


def test_exported_members() -> None:
    public = {name for name in vars(are_core.vector) if not name.startswith("_")}
    assert set(are_core.vector.__all__) == public


@pytest.mark.parametrize("dtype", DTYPES)
def test_search_finds_each_vector_first(dtype: str) -> None:
    vectors = _unit(300, 32)
    index = VectorIndex(dimension=32, dtype=dtype)
    index.add(np.arange(300), vectors)
    assert len(index) == 300
    assert index.dtype == dtype
    for key in (0, 17, 299):
        best, similarity = index.search(vectors[key], 1)[0]
        assert best == key
        assert similarity == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("size", [10, 3000])  # exact search, then the graph
def test_search_arrays_match_search(size: int) -> None:
    vectors = _unit(size, 24, seed=3)
    index = VectorIndex(dimension=24, dtype="f16")
    index.add(np.arange(size), vectors)
    keys, similarities = index.search_arrays(vectors[5], 8)
    assert (keys.dtype, similarities.dtype) == (np.dtype(np.uint64), np.dtype(np.float32))
    _assert_same(keys, similarities, index.search(vectors[5], 8))
    assert keys[0] == 5
    empty = VectorIndex(dimension=24)
    assert [a.size for a in empty.search_arrays(vectors[0], 4)] == [0, 0]
    assert [a.size for a in index.search_arrays(vectors[0], 0)] == [0, 0]


@pytest.mark.parametrize(("dtype", "metric"), [("f32", "cos"), ("f16", "ip"), ("i8", "cos")])
def test_reported_similarities_stay_within_the_dtypes_error(dtype: str, metric: str) -> None:
    # Owners rescore candidates exactly and use similarity_error as the slack
    # of decisions made on the index's own similarities (the router's deepening).
    vectors = _unit(2000, 256, seed=3)
    queries = _unit(200, 256, seed=4)
    index = VectorIndex(dimension=256, dtype=dtype, metric=metric)
    index.add(np.arange(2000), vectors)
    assert index.similarity_error == are_core.vector.SIMILARITY_ERROR[dtype]
    worst = 0.0
    for query in queries:
        keys, similarities = index.search_arrays(query, 64)
        exact = vectors[keys.astype(np.intp)] @ query
        worst = max(worst, float(np.abs(similarities - exact).max()))
    assert worst <= index.similarity_error
    if dtype == "i8":
        assert worst > are_core.vector.SIMILARITY_ERROR["f16"]  # the bound is not loose by orders


def test_results_are_best_first_cosine_similarities() -> None:
    index = VectorIndex(dimension=2)
    index.add([1, 2, 3], np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
    results = index.search(np.array([1, 0], dtype=np.float32), 3)
    assert [key for key, _ in results] == [1, 3, 2]
    assert [round(s, 4) for _, s in results] == [1.0, round(2**-0.5, 4), 0.0]
    exact = index.search(np.array([1, 0], dtype=np.float32), 3, exact=True)
    assert [key for key, _ in exact] == [1, 3, 2]


def test_readding_a_key_replaces_its_vector() -> None:
    index = VectorIndex(dimension=2)
    index.add([7], np.array([[1, 0]], dtype=np.float32))
    index.add([7], np.array([[0, 1]], dtype=np.float32))
    assert len(index) == 1
    key, similarity = index.search(np.array([0, 1], dtype=np.float32), 1)[0]
    assert key == 7
    assert similarity == pytest.approx(1.0)


def test_a_key_repeated_in_one_batch_keeps_its_last_vector() -> None:
    index = VectorIndex(dimension=2)
    index.add([5, 5, 6], np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32))
    assert len(index) == 2
    assert index.search(np.array([0, 1], dtype=np.float32), 1)[0][0] == 5


def test_remove_ignores_unknown_keys_and_removed_keys_never_answer() -> None:
    vectors = _unit(50, 8)
    index = VectorIndex(dimension=8)
    index.add(np.arange(50), vectors)
    index.remove([3, 4, 10_000])
    assert len(index) == 48
    assert 3 not in index
    assert 5 in index
    assert -1 not in index
    found = {key for row in index.search_many(vectors, 5) for key, _ in row}
    assert not found & {3, 4}
    assert index.contains_many([3, 5]).tolist() == [False, True]
    assert sorted(index.keys().tolist()) == sorted(set(range(50)) - {3, 4})


def test_empty_index_and_bad_shapes() -> None:
    index = VectorIndex(dimension=4)
    assert index.search(np.ones(4, dtype=np.float32), 3) == []
    assert index.search_many(np.ones((2, 4), dtype=np.float32), 3) == [[], []]
    with pytest.raises(VectorShapeError) as caught:
        index.add([1], np.ones((1, 5), dtype=np.float32))
    assert caught.value.expected == 4
    with pytest.raises(VectorShapeError):
        index.search(np.ones(3, dtype=np.float32), 1)
    with pytest.raises(VectorError):
        index.add([1, 2], np.ones((1, 4), dtype=np.float32))
    with pytest.raises(VectorError):
        VectorIndex(dimension=4, dtype="bf16")
    with pytest.raises(VectorError):
        VectorIndex(dimension=0)


def test_search_many_matches_single_searches() -> None:
    vectors = _unit(200, 16, seed=1)
    index = VectorIndex(dimension=16)
    index.add(np.arange(200), vectors)
    many = index.search_many(vectors[:10], 3)
    assert [row[0][0] for row in many] == list(range(10))
    single = index.search(vectors[4], 3)
    assert [key for key, _ in many[4]] == [key for key, _ in single]
    assert [s for _, s in many[4]] == pytest.approx([s for _, s in single])


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_and_restore_by_view_then_write(tmp_path: Path, dtype: str) -> None:
    vectors = _unit(100, 16, seed=2)
    index = VectorIndex(dimension=16, dtype=dtype)
    index.add(np.arange(100), vectors)
    index.remove([9])
    path = tmp_path / "index.usearch"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.usearch"]  # no temporary left behind

    view = VectorIndex.restore(path, dimension=16, dtype=dtype, view=True)
    assert view is not None
    assert view.is_view
    assert len(view) == 99
    assert 9 not in view
    assert view.search(vectors[42], 1)[0][0] == 42
    view.add([9], vectors[9])  # into the overlay: the file is not loaded for a change
    assert view.is_view
    assert view.search(vectors[9], 1)[0][0] == 9
    view.remove([42])
    assert 42 not in view
    view.materialize()  # a private copy, with the overlay folded in
    assert not _is_view(view)
    assert (len(view), 9 in view, 42 in view) == (99, True, False)
    assert view.search(vectors[9], 1)[0][0] == 9
    assert view.search(vectors[42], 1)[0][0] != 42
    # The file is untouched by changes to the copy.
    again = VectorIndex.restore(path, dimension=16, dtype=dtype)
    assert again is not None
    assert 42 in again
    assert 9 not in again


def test_a_view_finds_its_live_keys_past_any_number_of_hidden_nearer_ones(tmp_path: Path) -> None:
    # 100 keys tight around a centre, one live key farther out: once the 100
    # are removed from a view (hidden in its graph, not gone), k=1 must still
    # find the live one. A fixed allowance of 64 extra results found none.
    rng = np.random.default_rng(9)
    centre = rng.normal(size=16)
    near = centre + rng.normal(0, 0.01, (100, 16))
    far = centre + rng.normal(0, 0.4, 16)
    noise = rng.normal(size=(200, 16))
    vectors = np.vstack([near, far, noise]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(dimension=16, dtype="f32")
    index.add(np.arange(len(vectors)), vectors)
    index.save(tmp_path / "v")
    view = VectorIndex.restore(tmp_path / "v", dimension=16, dtype="f32", view=True)
    assert view is not None
    view.remove(np.arange(100))
    assert view.is_view
    query = (centre / np.linalg.norm(centre)).astype(np.float32)
    assert view.search(query, 1)[0][0] == 100
    keys, _ = view.search_arrays(query, 3)
    assert keys[0] == 100
    assert not set(keys.tolist()) & set(range(100))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_view_takes_changes_in_an_overlay_and_answers_as_a_copy_would(tmp_path: Path, dtype: str) -> None:
    # Above the exact-search size, so the view's graph answers; the overlay is
    # small and searched exactly. Same operations on a plain index as the model.
    n = 3000
    vectors = _unit(n + 50, 24, seed=5)
    index = VectorIndex(dimension=24, dtype=dtype)
    index.add(np.arange(n), vectors[:n])
    index.save(tmp_path / "v")
    view = VectorIndex.restore(tmp_path / "v", dimension=24, dtype=dtype, view=True)
    assert view is not None
    model = VectorIndex(dimension=24, dtype=dtype)
    model.add(np.arange(n), vectors[:n])
    for target in (view, model):
        target.add(np.arange(n, n + 50), vectors[n:])  # new keys
        target.add([7, 8], vectors[[100, 200]])  # file keys replaced
        target.remove([11, 12, n + 3])  # file keys and an overlay key removed
        target.remove([999_999])  # unknown: ignored
    assert view.is_view
    assert len(view) == len(model) == n + 50 - 3
    probe = [7, 8, 11, 12, 13, n, n + 3, n + 49]
    assert view.contains_many(probe).tolist() == model.contains_many(probe).tolist()
    assert sorted(view.keys().tolist()) == sorted(model.keys().tolist())
    for key in (n, n + 20, n + 49):  # new vectors answer first
        assert view.search(vectors[key], 1)[0][0] == key
    for key in (11, 12, n + 3):  # removed ones never answer
        assert key not in [k for k, _ in view.search(vectors[key], 10)]
    assert view.search(vectors[100], 2)[0][0] in (7, 100)  # 7 now holds vector 100
    assert view.search(vectors[7], 1)[0][0] != 7  # 7's old vector (still in the file) is hidden
    for key in (7, 11, n + 3, n + 20):  # the array form agrees with the list form
        keys, similarities = view.search_arrays(vectors[key], 10)
        _assert_same(keys, similarities, view.search(vectors[key], 10))
    view.materialize()
    assert not _is_view(view)
    assert len(view) == n + 50 - 3
    assert sorted(view.keys().tolist()) == sorted(model.keys().tolist())
    view.save(tmp_path / "w")
    again = VectorIndex.restore(tmp_path / "w", dimension=24, dtype=dtype)
    assert again is not None
    assert (n + 49 in again, 11 in again, len(again)) == (True, False, n + 47)


def test_saving_a_changed_view_saves_its_overlay(tmp_path: Path) -> None:
    vectors = _unit(10, 8, seed=9)
    index = VectorIndex(dimension=8)
    index.add(np.arange(5), vectors[:5])
    index.save(tmp_path / "a")
    view = VectorIndex.restore(tmp_path / "a", dimension=8, dtype="f32", view=True)
    assert view is not None
    view.add([5], vectors[5])
    view.remove([0])
    view.save(tmp_path / "b")
    again = VectorIndex.restore(tmp_path / "b", dimension=8, dtype="f32")
    assert again is not None
    assert sorted(again.keys().tolist()) == [1, 2, 3, 4, 5]


def test_materialize_ahead_of_time(tmp_path: Path) -> None:
    index = VectorIndex(dimension=4)
    index.add([1, 2], _unit(2, 4))
    index.save(tmp_path / "i")
    view = VectorIndex.restore(tmp_path / "i", dimension=4, dtype="f32", view=True)
    assert view is not None
    view.materialize()
    assert not view.is_view
    view.materialize()
    assert len(view) == 2


def test_restore_refuses_missing_corrupt_and_other_shapes(tmp_path: Path) -> None:
    assert VectorIndex.restore(tmp_path / "missing", dimension=4, dtype="f32") is None
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not an index" * 10)
    assert VectorIndex.restore(garbage, dimension=4, dtype="f32", view=True) is None
    index = VectorIndex(dimension=4, dtype="f16")
    index.add(np.arange(20), _unit(20, 4))
    path = tmp_path / "good"
    index.save(path)
    assert VectorIndex.restore(path, dimension=5, dtype="f16") is None
    assert VectorIndex.restore(path, dimension=4, dtype="f32") is None
    assert VectorIndex.restore(path, dimension=4, dtype="f16", metric="ip") is None
    truncated = tmp_path / "truncated"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert VectorIndex.restore(truncated, dimension=4, dtype="f16", view=True) is None
    assert VectorIndex.restore(path, dimension=4, dtype="f16") is not None


def test_recall_on_low_intrinsic_dimension_data() -> None:
    # Embedding-like data: 384-d vectors on a 16-d subspace plus a little noise.
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((16, 384)).astype(np.float32)
    data = rng.standard_normal((3000, 16)).astype(np.float32) @ basis
    data += 0.05 * rng.standard_normal(data.shape).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = VectorIndex(dimension=384, dtype="f32")
    # One vector per call: a batch is inserted by several threads, so its graph
    # (and recall) differed from run to run (0.95 to 1.0); this one is the same every run.
    for key in range(3000):
        index.add([key], data[key : key + 1])
    queries = data[:200] + 0.01 * rng.standard_normal((200, 384)).astype(np.float32)
    found = [row[0][0] for row in index.search_many(queries, 1)]
    exact = [index.search(query, 1, exact=True)[0][0] for query in queries]
    # recall@1 against exact search, as the cache benchmark reports it.
    recall = np.mean(np.array(found) == np.array(exact))
    assert recall >= 0.97, recall


def test_churn_reuses_removed_slots_and_keeps_recall() -> None:
    # A bounded cache removes (evicts, expires) as fast as it adds. usearch
    # reuses removed nodes' slots, so memory stays at the peak and the graph
    # keeps finding most live vectors; not every one (the cache confirms a
    # miss exactly where that is cheap: see test_exact_is_cheap_...).
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((8, 64)).astype(np.float32)

    def generate(m: int) -> np.ndarray:
        v = rng.standard_normal((m, 8)).astype(np.float32) @ basis
        v += 0.05 * rng.standard_normal(v.shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    n = 4000
    index = VectorIndex(dimension=64, dtype="i8", expansion_add=64)
    live = dict(zip(range(n), generate(n), strict=True))
    index.add(np.arange(n), np.stack(list(live.values())))
    peak = index.memory_bytes
    next_key = n
    for _ in range(3):  # three rounds of replacing half: 1.5x the live size removed
        keys = np.array(list(live))
        drop = rng.choice(keys, n // 2, replace=False)
        index.remove(drop)
        for key in drop.tolist():
            del live[key]
        fresh = generate(n // 2)
        added = np.arange(next_key, next_key + n // 2)
        next_key += n // 2
        index.add(added, fresh)
        live.update(zip(added.tolist(), fresh, strict=True))
    assert len(index) == n
    assert index.memory_bytes <= peak * 1.1
    keys = np.array(list(live))
    matrix = np.stack([live[k] for k in keys.tolist()])
    probe = rng.choice(len(keys), 300, replace=False)
    truth = keys[np.argmax(matrix[probe] @ matrix.T, axis=1)]
    found = [row[0][0] for row in index.search_many(matrix[probe], 1)]
    assert np.mean(np.array(found) == truth) >= 0.98


def test_exact_is_cheap_up_to_the_dtypes_bound_and_counts_a_views_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = VectorIndex(dimension=8, dtype="i8")
    index.add(np.arange(100), _unit(100, 8))
    assert index.exact_is_cheap
    monkeypatch.setitem(_index.EXACT_CONFIRM_COMPONENTS, "i8", 100 * 8)
    assert index.exact_is_cheap
    index.save(tmp_path / "i.usearch")
    view = VectorIndex.restore(tmp_path / "i.usearch", dimension=8, dtype="i8", view=True)
    assert view is not None and view.exact_is_cheap
    view.add([1000], _unit(1, 8, seed=1))  # into the overlay: one more vector to scan
    assert not _exact_is_cheap(view)
    index.add([1000], _unit(1, 8, seed=1))
    assert not _exact_is_cheap(index)
    monkeypatch.setitem(_index.EXACT_CONFIRM_COMPONENTS, "f32", 1 << 22)
    assert VectorIndex(dimension=384, dtype="f32").exact_is_cheap


def test_prefault_maps_a_views_file_and_is_a_no_op_otherwise(tmp_path: Path) -> None:
    index = VectorIndex(dimension=8)
    index.add(np.arange(3000), _unit(3000, 8, seed=4))
    assert index.prefault() == 0  # not a view
    index.save(tmp_path / "p")
    view = VectorIndex.restore(tmp_path / "p", dimension=8, dtype="f32", view=True)
    assert view is not None
    mapped = view.prefault()
    size = (tmp_path / "p").stat().st_size
    assert mapped == 0 or mapped >= size  # 0 where the kernel lacks MADV_POPULATE_READ
    assert view.search(_unit(3000, 8, seed=4)[17], 1)[0][0] == 17


def _vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping holding ``address`` (from /proc/self/smaps)."""
    inside = False
    with Path("/proc/self/smaps").open(encoding="ascii") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and ":" not in head:
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    return set()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_view_moved_into_huge_pages_answers_and_changes_as_before(tmp_path: Path, dtype: str) -> None:
    n = 6000
    vectors = _unit(n + 10, 32, seed=8)
    index = VectorIndex(dimension=32, dtype=dtype)
    index.add(np.arange(n), vectors[:n])
    assert index.into_huge_pages() == 0  # not a view
    index.save(tmp_path / "h")
    view = VectorIndex.restore(tmp_path / "h", dimension=32, dtype=dtype, view=True)
    assert view is not None
    view.add([n], vectors[n])  # an overlay made before the move stays in force
    view.remove([5])
    probes = vectors[[0, 5, 17, 2999, n - 1, n]]
    before = [view.search(p, 5) for p in probes]
    moved = view.into_huge_pages()
    if not moved:
        pytest.skip("transparent huge pages are off here")
    assert moved == (tmp_path / "h").stat().st_size
    assert view.is_view
    # The view now reads anonymous memory advised MADV_HUGEPAGE ("hg"); whether
    # the kernel backs it with huge pages or falls back to small ones is its call.
    buffer = view._buffer  # what the view reads from
    assert buffer is not None
    assert "hg" in _vm_flags(ctypes.addressof(ctypes.c_char.from_buffer(buffer)))
    assert view.into_huge_pages() == 0  # once
    assert [view.search(p, 5) for p in probes] == before
    (tmp_path / "h").unlink()  # the view reads its own memory now, not the file
    view.add([n + 1], vectors[n + 1])
    view.remove([17])
    assert view.search(vectors[n + 1], 1)[0][0] == n + 1
    assert 17 not in [k for k, _ in view.search(vectors[17], 10)]
    view.materialize()
    assert not _is_view(view)
    assert (len(view), 5 in view, 17 in view, n + 1 in view) == (n, False, False, True)
    view.save(tmp_path / "again")
    again = VectorIndex.restore(tmp_path / "again", dimension=32, dtype=dtype, view=True)
    assert again is not None and len(again) == n


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux only")
def test_new_anonymous_mappings_are_found_and_collapsed_into_huge_pages() -> None:
    before = _index._anonymous_mappings()
    memory = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.write(b"\x01" * (16 << 20))  # populated, as an index's copy is
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    added = _index._anonymous_mappings() - before
    ours = {(low, high) for low, high in added if low <= start < high}
    assert len(ours) == 1
    # The kernel may merge the new mapping with an anonymous neighbour, so the
    # mapping found can be larger than what this test mapped; never smaller.
    ((low, high),) = ours
    assert low <= start and start + (16 << 20) <= high
    collapsed = _index._collapse(ours)
    if not _index._huge_pages_available():
        assert collapsed == 0
    else:  # an older kernel (no MADV_COLLAPSE) collapses nothing, and says so
        assert collapsed % (2 << 20) == 0 and collapsed <= high - low
    assert memory[: 1 << 20] == b"\x01" * (1 << 20)  # the contents stay


def test_a_view_whose_file_was_replaced_is_not_moved(tmp_path: Path) -> None:
    index = VectorIndex(dimension=8)
    index.add(np.arange(3000), _unit(3000, 8, seed=3))
    index.save(tmp_path / "r")
    view = VectorIndex.restore(tmp_path / "r", dimension=8, dtype="f32", view=True)
    assert view is not None
    index.remove([0])
    index.save(tmp_path / "r")  # a checkpoint renamed another file in: not what the view serves
    assert view.into_huge_pages() == 0
    assert 0 in view and len(view) == 3000


def test_save_in_child_writes_the_index_as_it_was_at_the_fork(tmp_path: Path) -> None:
    vectors = _unit(300, 16, seed=5)
    index = VectorIndex(dimension=16, dtype="i8")
    index.add(np.arange(200), vectors[:200])
    path = tmp_path / "index.usearch"
    pid = index.save_in_child(path)
    assert pid is not None
    index.add(np.arange(200, 300), vectors[200:])  # after the fork: not in the child's copy
    index.remove([0, 1])
    assert asyncio.run(child_exit_code(pid)) == 0
    saved = VectorIndex.restore(path, dimension=16, dtype="i8", view=True)
    assert saved is not None
    assert sorted(saved.keys().tolist()) == list(range(200))
    assert saved.search(vectors[150], 1)[0][0] == 150
    assert not list(tmp_path.glob(".*.tmp"))  # the child's temporary file was renamed
    assert saved.save_in_child(tmp_path / "other.usearch") is None  # a view's file is already on disk


def test_materialize_folds_a_large_overlay_while_changes_go_on(tmp_path: Path) -> None:
    # The overlay (6,000 changes) is folded into the copy in rounds without the
    # lock; changes made meanwhile from this thread must all be in the result.
    n, extra = 3000, 6000
    vectors = _unit(n + extra + 400, 16, seed=11)
    index = VectorIndex(dimension=16, dtype="i8")
    index.add(np.arange(n), vectors[:n])
    index.save(tmp_path / "v")
    view = VectorIndex.restore(tmp_path / "v", dimension=16, dtype="i8", view=True)
    assert view is not None
    model = VectorIndex(dimension=16, dtype="i8")
    model.add(np.arange(n), vectors[:n])
    for target in (view, model):
        target.add(np.arange(n, n + extra), vectors[n : n + extra])
        target.remove(np.arange(0, 600, 3))
    folding = threading.Thread(target=view.materialize)
    folding.start()
    changes = 0
    base = n + extra
    while changes < 400 and (folding.is_alive() or changes < 20):  # bounded either way
        key = base + changes
        for target in (view, model):
            target.add([key], vectors[key])  # a new key
            target.add([changes * 7 % n], -vectors[key])  # a file key replaced (by another direction)
            target.remove([n + changes * 13 % extra])  # an overlay key removed
        changes += 1
    folding.join(timeout=120)
    assert not folding.is_alive()
    assert not view.is_view
    assert sorted(view.keys().tolist()) == sorted(model.keys().tolist())
    for key in (base, base + changes - 1, n + 1, 5):
        if key in model:
            assert view.search(vectors[key], 1)[0][0] == model.search(vectors[key], 1)[0][0]


def test_a_batch_added_on_several_threads_leaves_no_vector_unreachable() -> None:
    """usearch's concurrent insertion can strand a node no search reaches, at any expansion (its
    issue #735; 6 to 10 of 40,000 384-d vectors here). A batch added on several threads is
    checked, and what its own vector does not find is inserted again on one thread. Small
    vectors, low connectivity and 8 threads make it frequent: about 58 of these 20,000 before."""
    n, dimension = 20_000, 32
    rng = np.random.default_rng(735)
    basis = rng.standard_normal((8, dimension)).astype(np.float32)  # low intrinsic dimension
    vectors = rng.standard_normal((n, 8)).astype(np.float32) @ basis
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(dimension=dimension, dtype="i8", connectivity=4, expansion_search=256)
    index.add(np.arange(n), vectors, threads=8)
    found = index.search_many(vectors, 1, threads=2)
    lost = [key for key, matches in enumerate(found) if not matches or matches[0][0] != key]
    assert lost == []
