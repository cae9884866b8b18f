"""A memory index that takes long to load does not hold the event loop.

Defect: after a crash, the first use of a workflow's memory topped its
index up from LMDB on the event loop: up to ``save_every`` (20,000) notes of
HNSW insertion, measured at 7 s for 384-d vectors on a 2-CPU VM, during
which the sidecar answered nothing. A load now reads and inserts in a
thread under the workflow's lock; tiny loads stay on the loop. Real LMDB in
a temporary folder, no server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from are_core.state import MemoryStore, NoteInput
from are_core.storage import GroupCommitter, Storage

Store = tuple[Storage, GroupCommitter]

DIMENSION = 64
BIG = 6000  # notes to top up after the crash: about a second of insertion in a thread


def _vectors(workflow: str, count: int) -> np.ndarray:
    """Distinct vectors of one workflow (each note is found first by its own vector)."""
    rng = np.random.default_rng(sum(workflow.encode()))
    return rng.standard_normal((count, DIMENSION)).astype(np.float32)


async def _fill(memory: MemoryStore, workflow: str, count: int) -> None:
    vectors = _vectors(workflow, count)
    for start in range(0, count, 1000):
        notes = [
            NoteInput(text=f"{workflow}-n{i}", vector=vectors[i].tolist())
            for i in range(start, min(start + 1000, count))
        ]
        await memory.add(workflow, notes)


async def _top(memory: MemoryStore, workflow: str, note: int, count: int) -> list[str]:
    hits, _, _ = await memory.hydrate(workflow, vector=_vectors(workflow, count)[note].tolist(), top_k=1)
    return [hit.note.text for hit in hits]


async def _crashed(store: Store, tmp_path: Path) -> MemoryStore:
    """A store with a big unsaved workflow and a small one, then reopened (nothing saved: a crash)."""
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path / "indexes")
    await _fill(memory, "big", BIG)
    await _fill(memory, "small", 3)
    return MemoryStore(storage, committer, embedder=None, index_dir=tmp_path / "indexes")


async def test_other_calls_are_served_while_a_big_index_loads(store: Store, tmp_path: Path) -> None:
    memory = await _crashed(store, tmp_path)
    loading = asyncio.ensure_future(_top(memory, "big", 10, BIG))
    await asyncio.sleep(0)  # the load starts: its first page goes to a thread
    # A tiny memory loads on the loop and answers meanwhile; before, the big
    # load ran to its end on the loop first.
    assert await _top(memory, "small", 2, 3) == ["small-n2"]
    assert not loading.done()
    assert await loading == ["big-n10"]
    for note in (0, BIG // 2, BIG - 1):
        assert await _top(memory, "big", note, BIG) == [f"big-n{note}"]


async def test_concurrent_first_uses_share_one_load_and_all_find_every_note(
    store: Store, tmp_path: Path
) -> None:
    memory = await _crashed(store, tmp_path)
    notes = (0, 1999, 2000, 4321, BIG - 1)  # on both sides of the scan's pages
    results = await asyncio.gather(*(_top(memory, "big", note, BIG) for note in notes))
    assert results == [[f"big-n{note}"] for note in notes]
    assert len(memory._indexes["big"].vector_index) == BIG  # loaded once: every note once


async def test_an_add_after_a_crash_waits_for_the_load_and_is_found(store: Store, tmp_path: Path) -> None:
    memory = await _crashed(store, tmp_path)
    searching = asyncio.ensure_future(_top(memory, "big", 5, BIG))
    await asyncio.sleep(0)
    extra = _vectors("big", BIG + 1)[BIG]
    [note_id] = await memory.add("big", [NoteInput(text="big-extra", vector=extra.tolist())])
    assert note_id == BIG + 1
    assert await searching == ["big-n5"]
    hits, _, _ = await memory.hydrate("big", vector=extra.tolist(), top_k=1)
    assert [hit.note.text for hit in hits] == ["big-extra"]
    assert len(memory._indexes["big"].vector_index) == BIG + 1


async def test_a_delete_during_a_load_leaves_nothing_loaded(store: Store, tmp_path: Path) -> None:
    memory = await _crashed(store, tmp_path)
    searching = asyncio.ensure_future(_top(memory, "big", 5, BIG))
    await asyncio.sleep(0)
    deleting = asyncio.ensure_future(memory.delete("big"))  # waits for the load's lock
    late = asyncio.ensure_future(_top(memory, "big", 6, BIG))  # finds the memory gone once it may look
    assert await searching == ["big-n5"]
    assert await deleting > 0
    assert await late == []
    assert "big" not in memory._indexes
    assert not list((tmp_path / "indexes").glob("big.*"))
