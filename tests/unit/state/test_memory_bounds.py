"""Loaded memory indexes are bounded (LRU by count and bytes), and an eviction loses nothing.

Defect: ``MemoryStore`` kept the usearch index of every workflow that ever
added or queried a note loaded for the life of the process (about 52 KiB
resident and 16 MiB of address space each). Real LMDB in a temporary
folder, no server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from are_core.state import MemoryStore, NoteInput
from are_core.state import _memory as memory_module
from are_core.state._memory import MAX_LOADED_INDEX_BYTES, MAX_LOADED_INDEXES
from are_core.storage import GroupCommitter, Storage
from are_core.vector import VectorIndex, child_exit_code
from tests.unit.state.conftest import TABLES

DIMENSION = 16


def _vectors(workflow: int, count: int) -> list[list[float]]:
    """Distinct vectors of one workflow (each note is found first by its own vector)."""
    rng = np.random.default_rng(workflow)
    return [[float(x) for x in row] for row in rng.standard_normal((count, DIMENSION))]


def _notes(workflow: int, count: int, start: int = 0) -> list[NoteInput]:
    vectors = _vectors(workflow, start + count)[start:]
    return [NoteInput(text=f"w{workflow}-n{start + i}", vector=v) for i, v in enumerate(vectors)]


async def _top(memory: MemoryStore, workflow: int, note: int) -> list[str]:
    """The text of the best hit for the note's own vector."""
    vector = _vectors(workflow, note + 1)[note]
    hits, _, _ = await memory.hydrate(f"w{workflow}", vector=vector, top_k=1)
    return [hit.note.text for hit in hits]


@contextmanager
def _bounded(memory: MemoryStore) -> Iterator[None]:
    """Asserts on exit that the loaded indexes are within both bounds (count, and bytes measured now)."""
    yield
    loaded = memory._indexes
    assert len(loaded) <= memory.max_loaded, sorted(loaded)
    assert sum(entry[0].memory_bytes for entry in loaded.values()) <= memory.max_loaded_bytes


def _accounted(memory: MemoryStore) -> None:
    """The running byte count of the loaded indexes is the sum of their sizes."""
    assert memory._loaded_bytes == sum(entry.size_bytes for entry in memory._indexes.values())


class Sidecar:
    """A storage at a fixed folder that a test stops (cleanly or not) and opens again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.storage = Storage.open(folder / "data", tables=TABLES)
        self.committer = GroupCommitter(self.storage)

    def memory(
        self, *, max_loaded: int = MAX_LOADED_INDEXES, max_loaded_bytes: int = MAX_LOADED_INDEX_BYTES
    ) -> MemoryStore:
        return MemoryStore(
            self.storage,
            self.committer,
            embedder=None,
            index_dir=self.folder / "idx",
            max_loaded=max_loaded,
            max_loaded_bytes=max_loaded_bytes,
        )

    async def reopen(self) -> None:
        """Closes the storage (whatever was committed is durable) and opens it again."""
        await self.committer.aclose()
        self.storage.close()
        self.storage = Storage.open(self.folder / "data", tables=TABLES)
        self.committer = GroupCommitter(self.storage)


@asynccontextmanager
async def _sidecar(folder: Path) -> AsyncIterator[Sidecar]:
    sidecar = Sidecar(folder)
    try:
        yield sidecar
    finally:
        await sidecar.committer.aclose()
        sidecar.storage.close()


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with _sidecar(tmp_path) as opened:
        yield opened


async def test_more_workflows_than_the_bound_stay_within_it_and_every_note_is_still_found(
    sidecar: Sidecar,
) -> None:
    memory = sidecar.memory(max_loaded=4)
    workflows = range(12)
    for w in workflows:  # two adds and a query each, interleaved with the others'
        with _bounded(memory):
            await memory.add(f"w{w}", _notes(w, 3))
        with _bounded(memory):
            assert await _top(memory, w, 1) == [f"w{w}-n1"]
        with _bounded(memory):
            await memory.add(f"w{w}", _notes(w, 2, start=3))
    assert len(memory._indexes) == 4
    assert list(memory._indexes) == ["w8", "w9", "w10", "w11"]  # the most recently used
    for w in workflows:  # the evicted ones load again (from LMDB: a few notes each)
        for note in range(5):
            with _bounded(memory):
                assert await _top(memory, w, note) == [f"w{w}-n{note}"]
    for w in reversed(workflows):  # and take notes again
        with _bounded(memory):
            await memory.add(f"w{w}", _notes(w, 1, start=5))
        with _bounded(memory):
            assert await _top(memory, w, 5) == [f"w{w}-n5"]
    _accounted(memory)


async def test_the_bytes_of_loaded_indexes_are_bounded_too(sidecar: Sidecar) -> None:
    # A small index reserves 16 MiB (usearch's arenas): 40 MiB holds two.
    memory = sidecar.memory(max_loaded=100, max_loaded_bytes=40 << 20)
    for w in range(6):
        with _bounded(memory):
            await memory.add(f"w{w}", _notes(w, 2))
    assert len(memory._indexes) == 2
    for w in range(6):
        with _bounded(memory):
            assert await _top(memory, w, 1) == [f"w{w}-n1"]
    _accounted(memory)


async def test_an_evicted_index_with_many_unsaved_notes_is_saved_and_a_small_one_dropped(
    sidecar: Sidecar,
) -> None:
    memory = sidecar.memory(max_loaded=1)
    await memory.add("w0", _notes(0, 100))  # far from save_every: nothing saved yet
    await memory.add("w1", _notes(1, 5))  # evicts w0: saved by a forked child
    folder = sidecar.folder / "idx"
    assert list(memory._indexes) == ["w1"]
    await memory.settle()
    assert json.loads((folder / "w0.json").read_text()) == {"covered": 101, "dimension": DIMENSION}
    await memory.add("w2", _notes(2, 5))  # evicts w1: 5 notes, dropped (LMDB has them)
    assert not (folder / "w1.usearch").exists()
    assert await _top(memory, 0, 99) == ["w0-n99"]  # restored from its file, not rebuilt
    assert memory._indexes["w0"].saved == 101
    await memory.add("w0", _notes(0, 10, start=100))  # then evicted again with 10 unsaved: dropped
    assert await _top(memory, 1, 4) == ["w1-n4"]
    assert json.loads((folder / "w0.json").read_text())["covered"] == 101
    assert await _top(memory, 0, 109) == ["w0-n109"]  # the file, topped up from LMDB


@pytest.mark.parametrize("clean", [True, False], ids=["clean-stop", "no-stop"])
async def test_evictions_lose_nothing_across_a_reopen(tmp_path: Path, clean: bool) -> None:
    async with _sidecar(tmp_path) as sidecar:
        memory = sidecar.memory(max_loaded=2)
        sizes = {0: 100, 1: 3, 2: 70, 3: 1, 4: 64, 5: 63}  # around the save-on-evict threshold
        for w, count in sizes.items():
            await memory.add(f"w{w}", _notes(w, count))
        await memory.add("w0", _notes(0, 7, start=100))  # w0 loads again, takes notes
        sizes[0] = 107
        for w in (1, 2, 3):  # evicting w0 again (and others)
            assert await _top(memory, w, 0) == [f"w{w}-n0"]
        assert len(memory._indexes) == 2
        await memory.settle()  # the evictions' saves (forked children) have ended, as a stop awaits them
        if clean:
            assert memory.save_all() == 2
        await sidecar.reopen()
        again = sidecar.memory(max_loaded=2)
        for w, count in sizes.items():
            for note in (0, count // 2, count - 1):
                with _bounded(again):
                    assert await _top(again, w, note) == [f"w{w}-n{note}"]


async def test_an_index_an_add_is_filling_is_not_evicted_and_the_bound_returns_after(
    sidecar: Sidecar,
) -> None:
    memory = sidecar.memory(max_loaded=1)
    for w in (1, 2):
        await memory.add(f"w{w}", _notes(w, 2))
    adding = asyncio.ensure_future(memory.add("w0", _notes(0, 300)))  # indexed 64 notes per loop turn
    await _mid_indexing(memory, "w0", 300)
    # Queries (no await inside) load w1's index, then w2's: the bound would
    # evict w0's (and save it: 300 notes unsaved) while half of them are in it.
    assert await _top(memory, 1, 1) == ["w1-n1"]
    assert list(memory._indexes) == ["w0", "w1"]
    assert await _top(memory, 2, 1) == ["w2-n1"]
    assert list(memory._indexes) == ["w0", "w2"]
    await adding
    assert len(memory._indexes) == 1  # back within the bound once the add let go
    for note in (0, 150, 299):
        assert await _top(memory, 0, note) == [f"w0-n{note}"]
    assert list(memory._indexes) == ["w0"]
    assert await _top(memory, 2, 0) == ["w2-n0"]  # w0's evicted now, saved whole (by a child)
    await memory.settle()
    await sidecar.reopen()
    again = sidecar.memory(max_loaded=1)
    for note in (0, 150, 299):
        assert await _top(again, 0, note) == [f"w0-n{note}"]


async def test_concurrent_adds_over_the_bound_find_everything_and_end_within_it(sidecar: Sidecar) -> None:
    memory = sidecar.memory(max_loaded=3)
    await asyncio.gather(*(memory.add(f"w{w}", _notes(w, 130)) for w in range(8)))
    assert len(memory._indexes) <= 3
    await asyncio.gather(*(memory.add(f"w{w}", _notes(w, 5, start=130)) for w in range(8)))
    with _bounded(memory):
        for w in range(8):
            for note in (0, 129, 134):
                assert await _top(memory, w, note) == [f"w{w}-n{note}"]
    _accounted(memory)


async def test_a_save_while_an_add_is_still_indexing_leaves_no_file_claiming_its_notes(
    sidecar: Sidecar,
) -> None:
    """The add claims the new notes' coverage before it indexes them a slice per loop turn: a save
    then wrote a file claiming notes it lacked, which a later load trusted (never topped up)."""
    memory = sidecar.memory()
    adding = asyncio.ensure_future(memory.add("w0", _notes(0, 300)))
    await _mid_indexing(memory, "w0", 300)
    memory.save_all()  # e.g. the stop of a capability while a call is still running
    await adding
    memory.save_all()  # the clean stop
    await sidecar.reopen()
    again = sidecar.memory()
    for note in (0, 150, 299):
        assert await _top(again, 0, note) == [f"w0-n{note}"]


async def _mid_indexing(memory: MemoryStore, workflow_id: str, total: int) -> None:
    """Waits until the add's notes are committed and some, not all, indexed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30  # the writer thread commits: no count of loop turns bounds that
    while loop.time() < deadline:
        loaded = memory._indexes.get(workflow_id)
        if loaded is not None and 0 < len(loaded[0]) < total:
            return
        await asyncio.sleep(0)
    pytest.fail("the notes were never being indexed")


async def test_a_delete_while_an_add_is_under_way_leaves_nothing_of_the_workflow(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeleteWorkflow took no lock: run while an add awaited its commit, it deleted what LMDB held
    then, and the add's commit then wrote the notes and the memory space of a workflow that no
    longer exists, and loaded its index (saved at the next stop)."""
    memory = sidecar.memory()
    committer = sidecar.committer
    submit = committer.submit
    gate = asyncio.Event()

    async def held(batch: Any) -> None:
        await gate.wait()
        await submit(batch)

    monkeypatch.setattr(committer, "submit", held)
    adding = asyncio.ensure_future(memory.add("w0", _notes(0, 5)))
    for _ in range(20):  # the add reaches its commit within a few loop turns (no thread involved)
        await asyncio.sleep(0)
    monkeypatch.setattr(committer, "submit", submit)  # the delete's own commits go through
    deleting = asyncio.ensure_future(memory.delete("w0"))
    for _ in range(20):
        await asyncio.sleep(0)
    gate.set()
    await adding
    await deleting
    assert "w0" not in memory._indexes
    assert memory.space("w0") is None
    assert sidecar.storage.scan("memory_notes", prefix=b"w0\x00") == []
    memory.save_all()
    assert not (sidecar.folder / "idx" / "w0.usearch").exists()


async def test_an_eviction_saves_in_a_child_and_a_use_meanwhile_takes_the_index_back(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evicted index with many unsaved notes was written on the event loop: seconds for a
    large memory, with the sidecar answering nothing. Now a forked child writes it."""
    saved_here: list[str] = []
    real_save = VectorIndex.save

    def save(index: VectorIndex, path: Path) -> None:
        saved_here.append(Path(path).name)
        real_save(index, path)

    monkeypatch.setattr(VectorIndex, "save", save)
    memory = sidecar.memory(max_loaded=1)
    await memory.add("w0", _notes(0, 100))
    index = memory._indexes["w0"].vector_index
    await memory.add("w1", _notes(1, 5))  # evicts w0, its save starting in a child
    assert list(memory._indexes) == ["w1"] and "w0" in memory._saving
    assert await _top(memory, 0, 99) == ["w0-n99"]  # taken back while it is written: not restored
    assert memory._indexes["w0"].vector_index is index
    await memory.settle()
    assert saved_here == []
    folder = sidecar.folder / "idx"
    assert json.loads((folder / "w0.json").read_text()) == {"covered": 101, "dimension": DIMENSION}
    assert memory._indexes["w0"].saved == 101
    await memory.add("w0", _notes(0, 80, start=100))  # 80 more: its eviction saves it again
    await memory.add("w2", _notes(2, 5))
    await memory.settle()
    assert json.loads((folder / "w0.json").read_text())["covered"] == 181
    await sidecar.reopen()
    again = sidecar.memory(max_loaded=1)
    for note in (0, 100, 179):
        assert await _top(again, 0, note) == [f"w0-n{note}"]


async def test_a_delete_during_an_evictions_save_leaves_no_file(sidecar: Sidecar) -> None:
    memory = sidecar.memory(max_loaded=1)
    await memory.add("w0", _notes(0, 100))
    await memory.add("w1", _notes(1, 5))  # evicts w0, its save starting in a child
    assert "w0" in memory._saving
    await memory.delete("w0")
    await memory.settle()
    assert not memory._evicted
    assert sorted(path.name for path in (sidecar.folder / "idx").iterdir()) == []
    assert memory.space("w0") is None


async def test_a_burst_of_evictions_saves_two_at_once_and_drops_the_rest(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each eviction's save forks a child and holds its index until written: a burst is bounded."""
    release = asyncio.Event()
    real_exit_code = child_exit_code

    async def slow_exit_code(pid: int) -> int:
        await release.wait()
        return await real_exit_code(pid)

    monkeypatch.setattr(memory_module, "child_exit_code", slow_exit_code)
    memory = sidecar.memory(max_loaded=1)
    for w in range(5):
        await memory.add(f"w{w}", _notes(w, 100))  # each evicts the one before
    assert sorted(memory._saving) == ["w0", "w1"] and sorted(memory._evicted) == ["w0", "w1"]
    release.set()
    await memory.settle()
    assert sorted(path.name for path in (sidecar.folder / "idx").glob("*.json")) == ["w0.json", "w1.json"]
    await sidecar.reopen()
    again = sidecar.memory(max_loaded=1)
    for w in range(5):  # the dropped ones from LMDB
        assert await _top(again, w, 99) == [f"w{w}-n99"]
