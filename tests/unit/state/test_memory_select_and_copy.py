"""Memory review: a wider search repeats or drops no note, and a fork copies notes a page at a time.

Defects (found against a real sidecar):

* HydrateMemory walked only ``found[seen:]`` of each wider search, as if
  HNSW's approximate top 4k began with its top k. It does not: a note of
  the first search could come again (returned twice, its bytes counted
  twice) and a note the first missed, ranked early in the wider one, was
  never looked at.
* ForkWorkflow read every note of its source into one list on the event
  loop before copying any (a 100k-note memory: +320 MiB and the loop
  stalled some 300 ms; the 1M-note cap: gigabytes and seconds).

Real LMDB in a temporary folder, no server. The searches are scripted (a
stand-in for the index) so that the approximate orders that cause the
defect happen on every run.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from are_core.state import BlobStore, MemoryStore, NoteContent, NoteInput, StateError
from are_core.state import _memory as memory_module
from are_core.storage import Batch, GroupCommitter, Storage

Store = tuple[Storage, GroupCommitter]
_WAIT_S = 30.0


class _ScriptedIndex:
    """Stands in for a workflow's vector index: each search answers what ``script(k)`` says."""

    def __init__(self, total: int, script: Callable[[int], list[int]]) -> None:
        self.total = total
        self.script = script
        self.searches: list[int] = []

    def __len__(self) -> int:
        return self.total

    def search(self, query: Any, k: int) -> list[tuple[int, float]]:
        self.searches.append(k)
        return [(key, _similarity(key)) for key in self.script(k)]


def _similarity(key: int) -> float:
    """A note's fixed similarity to the query: the lower its id, the better."""
    return 1.0 - key / 1000


async def _scripted(memory: MemoryStore, monkeypatch: pytest.MonkeyPatch, index: _ScriptedIndex) -> None:
    async def loaded(workflow_id: str, space: Any, *, locked: bool) -> _ScriptedIndex:
        return index

    monkeypatch.setattr(memory, "_index", loaded)


def _ids(hits: Sequence[memory_module.MemoryHit]) -> list[int]:
    return [hit.note.note_id for hit in hits]


async def test_a_wider_search_is_walked_whole_each_note_once_best_first(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first search (64) misses rare note 30 and finds rare 70; the wider one (256) is exact.

    The old walk of ``found[64:]`` of the wider search returned 70 twice and
    never saw 30 (at rank 29 there): [70, 70, 100] instead of [30, 70, 100].
    """
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    rare = {30, 70, 100, 250}
    await memory.add(
        "wf",
        [
            NoteInput(text=f"n{i}", vector=[1.0, 0.0], metadata={"k": "rare" if i in rare else "common"})
            for i in range(1, 301)
        ],
    )

    def script(k: int) -> list[int]:
        if k <= 64:  # approximate: 30 is missed, 70 reached
            return [*range(1, 30), *range(31, 65), 70]
        return list(range(1, k + 1))

    index = _ScriptedIndex(300, script)
    await _scripted(memory, monkeypatch, index)
    hits, used, truncated = await memory.hydrate(
        "wf", vector=[1.0, 0.0], top_k=3, metadata_match={"k": "rare"}
    )
    assert index.searches == [64, 256]
    assert _ids(hits) == [30, 70, 100]
    assert [hit.similarity for hit in hits] == pytest.approx(
        [_similarity(30), _similarity(70), _similarity(100)]
    )
    assert used == sum(len(hit.note.text) for hit in hits)
    assert not truncated


async def test_a_search_widened_by_the_budget_counts_each_note_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Note 1 is over the budget, so 3 fit of the first search's [1, 3, 4]: the search widens.

    The old walk of ``found[3:]`` of the wider search ([1..12]) took 4 again
    (its bytes counted twice) and never saw 2.
    """
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    texts = ["x" * 30, *(f"n{i:03d}" for i in range(2, 21))]  # note 1: 30 bytes; the others 4
    await memory.add("wf", [NoteInput(text=text, vector=[1.0, 0.0]) for text in texts])

    def script(k: int) -> list[int]:
        return [1, 3, 4] if k <= 3 else list(range(1, k + 1))

    index = _ScriptedIndex(20, script)
    await _scripted(memory, monkeypatch, index)
    hits, used, truncated = await memory.hydrate("wf", vector=[1.0, 0.0], top_k=3, max_bytes=25)
    assert index.searches == [3, 12]
    assert _ids(hits) == [2, 3, 4]
    assert used == 12
    assert truncated  # note 1 was skipped for the budget


async def test_a_better_note_found_by_a_wider_search_comes_first(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first search (64) finds rare 70 and misses the better rare 67 and 68; the wider one is exact.

    The old walk appended 67 and 68 after 70: [70, 67, 68], not best first.
    """
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    rare = {67, 68, *range(70, 80)}
    await memory.add(
        "wf",
        [
            NoteInput(text=f"n{i}", vector=[1.0, 0.0], metadata={"k": "rare" if i in rare else "common"})
            for i in range(1, 301)
        ],
    )

    def script(k: int) -> list[int]:
        if k <= 64:  # approximate: of the rare ones, only 70
            return [*range(1, 64), 70]
        return list(range(1, k + 1))

    index = _ScriptedIndex(300, script)
    await _scripted(memory, monkeypatch, index)
    hits, _, _ = await memory.hydrate("wf", vector=[1.0, 0.0], top_k=3, metadata_match={"k": "rare"})
    assert _ids(hits) == [67, 68, 70]
    similarities = [hit.similarity for hit in hits]
    assert similarities == sorted(similarities, reverse=True)


async def test_hydrate_on_a_real_index_returns_each_note_once_best_first(
    store: Store, tmp_path: Path
) -> None:
    """A selective filter on a real HNSW index: the search widens; no note twice, best first, budget exact."""
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    rng = np.random.default_rng(11)
    count, dimension = 6000, 16
    vectors = rng.standard_normal((count, dimension)).astype(np.float32)
    for start in range(0, count, 1000):
        await memory.add(
            "wf",
            [
                NoteInput(
                    text=f"n{i}",
                    vector=vectors[i].tolist(),
                    metadata={"k": "rare" if i % 150 == 0 else "common"},
                )
                for i in range(start, start + 1000)
            ],
        )
    for _ in range(10):
        query = rng.standard_normal(dimension).astype(np.float32)
        hits, used, _ = await memory.hydrate(
            "wf", vector=query.tolist(), top_k=20, metadata_match={"k": "rare"}
        )
        ids = _ids(hits)
        assert len(ids) == len(set(ids)) == 20
        similarities = [hit.similarity for hit in hits]
        assert similarities == sorted(similarities, reverse=True)
        assert all(hit.note.metadata == {"k": "rare"} for hit in hits)
        assert used == sum(len(hit.note.text) for hit in hits)


# The copy of a fork's notes


def _small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of a fork's copy of some 20 notes (read 8 at a time until past 1,500 bytes)."""
    monkeypatch.setattr(memory_module, "_COPY_PAGE_BYTES", 1500)
    monkeypatch.setattr(memory_module, "_COPY_SCAN", 8)


async def _add_notes(memory: MemoryStore, workflow_id: str, count: int, *, text_bytes: int = 8) -> None:
    for start in range(0, count, 1000):
        size = min(1000, count - start)
        await memory.add(
            workflow_id,
            [
                NoteInput(
                    text=f"{start + i:08d}".ljust(text_bytes, "x"), vector=[1.0, float(start + i) % 7 + 0.5]
                )
                for i in range(size)
            ],
        )


async def test_a_fork_copy_lets_the_loop_run_between_pages(store: Store, tmp_path: Path) -> None:
    """The pages of notes are read in turns of the loop of their own: the old copy read all in one."""
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path)
    await _add_notes(memory, "src", 5000)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    read_at: list[int] = []
    scan = storage.scan

    def counted_scan(table: str, **kwargs: Any) -> list[tuple[bytes, bytes]]:
        if table == "memory_notes":
            read_at.append(turns)
        return scan(table, **kwargs)

    counter = asyncio.ensure_future(count_turns())
    try:
        storage.scan = counted_scan  # type: ignore[method-assign]
        copied = await asyncio.wait_for(memory.copy_notes("src", "fork", 2**62), _WAIT_S)
    finally:
        storage.scan = scan  # type: ignore[method-assign]
        counter.cancel()
    assert copied == 5000
    assert len(set(read_at)) >= 3, read_at  # pages of 2,000 notes at most, each read in its own turn


async def test_a_fork_copy_holds_a_page_not_the_memory(store: Store, tmp_path: Path) -> None:
    """Copying 24 MB of notes allocates some page's worth at a time (the old copy held all of them)."""
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path)
    await _add_notes(memory, "src", 6000, text_bytes=4000)
    tracemalloc.start()
    try:
        copied = await asyncio.wait_for(memory.copy_notes("src", "fork", 2**62), _WAIT_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert copied == 6000
    assert peak < 12 << 20, peak  # a page is some 4 MiB; the notes 24 MB


async def test_a_fork_copies_the_notes_up_to_its_checkpoint_with_their_ids_and_blobs(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of a few notes each: the notes to the time, ids kept, blob references, the space last."""
    _small_pages(monkeypatch)
    storage, committer = store
    blobs = BlobStore(storage, committer)
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path, blobs=blobs)
    digest = (await blobs.put(b"note body", workflow_id="src"))[0].sha256
    content = NoteContent(blob_sha256=digest, blob_size_bytes=9)
    await _add_notes(memory, "src", 150)
    await memory.add("src", [NoteInput(text="with a blob", vector=[0.0, 1.0], content=content)])
    space = memory.space("src")
    assert space is not None
    until = memory_module._note_dec.decode(
        storage.scan("memory_notes", prefix=b"src\x00")[-1][1]
    ).create_time_ns
    await asyncio.sleep(0.01)  # the next notes are created later than ``until``
    await _add_notes(memory, "src", 40)

    commits: list[Batch] = []
    submit = committer.submit

    async def recorded(batch: Batch) -> None:
        commits.append(batch)
        await submit(batch)

    monkeypatch.setattr(committer, "submit", recorded)
    assert await asyncio.wait_for(memory.copy_notes("src", "fork", until), _WAIT_S) == 151
    monkeypatch.undo()

    assert len(commits) > 3
    assert all(m.table != "memory_spaces" for batch in commits[:-1] for m in batch.mutations)
    source_rows = storage.scan("memory_notes", prefix=b"src\x00")[:151]
    fork_rows = storage.scan("memory_notes", prefix=b"fork\x00")
    assert [(k[4:], v) for k, v in source_rows] == [(k[5:], v) for k, v in fork_rows]
    forked = memory.space("fork")
    assert forked is not None and (forked.count, forked.next_id) == (151, 152)
    assert blobs.referrers(bytes.fromhex(digest)) == [b"wf:fork", b"wf:src"]
    ids = await memory.add("fork", [NoteInput(text="after", vector=[1.0, 1.0])])
    assert ids == [152]
    hits, _, _ = await memory.hydrate("fork", vector=[0.0, 1.0], top_k=1)
    assert [hit.note.text for hit in hits] == ["with a blob"]


async def test_a_delete_of_the_source_waits_for_the_fork_copy(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's notes cannot go half-way through a paged copy: its delete waits for the copy."""
    _small_pages(monkeypatch)
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path)
    await _add_notes(memory, "src", 200)
    submit = committer.submit
    deleting: list[asyncio.Future[int]] = []

    async def delete_after_first_page(batch: Batch) -> None:
        await submit(batch)
        if not deleting:
            deleting.append(asyncio.ensure_future(memory.delete("src")))
            await asyncio.sleep(0.01)  # the delete runs as far as it may

    monkeypatch.setattr(committer, "submit", delete_after_first_page)
    assert await asyncio.wait_for(memory.copy_notes("src", "fork", 2**62), _WAIT_S) == 200
    assert not deleting[0].done()  # it waited for the copy
    await asyncio.wait_for(deleting[0], _WAIT_S)
    assert memory.space("src") is None
    assert len(storage.scan("memory_notes", prefix=b"fork\x00")) == 200


async def test_a_copy_cut_short_between_pages_is_removed_by_the_delete_of_its_target(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a fork's undo (at once, or at the restart after a crash) relies on: notes, no space."""
    _small_pages(monkeypatch)
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path)
    await _add_notes(memory, "src", 200)
    submit = committer.submit
    pages = 0

    async def fail_third_page(batch: Batch) -> None:
        nonlocal pages
        pages += 1
        if pages == 3:
            raise StateError("the process died here")
        await submit(batch)

    monkeypatch.setattr(committer, "submit", fail_third_page)
    with pytest.raises(StateError):
        await asyncio.wait_for(memory.copy_notes("src", "fork", 2**62), _WAIT_S)
    monkeypatch.undo()
    assert 0 < len(storage.scan("memory_notes", prefix=b"fork\x00")) < 200
    assert memory.space("fork") is None
    await memory.delete("fork")
    assert storage.scan("memory_notes", prefix=b"fork\x00") == []
    assert len(storage.scan("memory_notes", prefix=b"src\x00")) == 200
