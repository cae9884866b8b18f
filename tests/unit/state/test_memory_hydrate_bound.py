"""HydrateMemory's search is bounded: filters and the budget apply to the most similar notes, no further.

Defect (found against a real sidecar): when the byte budget or a metadata
filter rejected notes, the search widened (4 times each round) up to the
whole memory and read and decoded every note on the event loop: 20,000
notes of 2 KB stalled every other call for about a second, and a million
notes (the documented maximum) would have for tens of seconds. The search
now stops at :data:`MAX_HYDRATE_EXAMINED` notes and says so (truncated).

Real LMDB in a temporary folder, no server. The searches are scripted (a
stand-in for the index, exact) so that which notes a round finds is known.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from are_core.state import MemoryStore, NoteContent, NoteInput
from are_core.state import _memory as memory_module
from are_core.storage import GroupCommitter, Storage

Store = tuple[Storage, GroupCommitter]
BOUND = memory_module.MAX_HYDRATE_EXAMINED
COUNT = BOUND + 1904  # past the bound: 6,000 notes


class _ExactIndex:
    """Stands in for a workflow's vector index: note ``i`` is the i-th most similar; records each search."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.searches: list[int] = []

    def __len__(self) -> int:
        return self.total

    def search(self, query: Any, k: int) -> list[tuple[int, float]]:
        self.searches.append(k)
        return [(key, 1.0 - key / (2 * self.total)) for key in range(1, min(k, self.total) + 1)]


async def _memory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata: dict[int, dict[str, str]]
) -> tuple[MemoryStore, _ExactIndex]:
    """A memory of ``COUNT`` notes ``n<id>`` (ids 1 up), ``metadata`` by id, searched by an exact stand-in."""
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    for start in range(1, COUNT + 1, 1000):
        await memory.add(
            "wf",
            [
                NoteInput(text=f"n{i:05d}", vector=[1.0, 0.0], metadata=metadata.get(i, {"k": "common"}))
                for i in range(start, min(start + 1000, COUNT + 1))
            ],
        )
    index = _ExactIndex(COUNT)

    async def loaded(workflow_id: str, space: Any, *, locked: bool) -> _ExactIndex:
        return index

    monkeypatch.setattr(memory, "_index", loaded)
    return memory, index


def _ids(hits: Sequence[memory_module.MemoryHit]) -> list[int]:
    return [hit.note.note_id for hit in hits]


async def test_a_filter_matching_only_notes_past_the_bound_stops_there_and_says_truncated(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old search widened to all 6,000 notes (every one read and decoded) and returned 5,000.
    memory, index = await _memory(store, tmp_path, monkeypatch, {5000: {"k": "rare"}})
    hits, used, truncated = await memory.hydrate(
        "wf", vector=[1.0, 0.0], top_k=3, metadata_match={"k": "rare"}
    )
    assert index.searches == [64, 256, 1024, BOUND]
    assert hits == []
    assert used == 0
    assert truncated  # notes not looked at might have matched


async def test_a_budget_no_note_fits_stops_at_the_bound(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, index = await _memory(store, tmp_path, monkeypatch, {})
    hits, used, truncated = await memory.hydrate("wf", vector=[1.0, 0.0], top_k=10, max_bytes=5)
    assert index.searches == [10, 40, 160, 640, 2560, BOUND]
    assert (hits, used, truncated) == ([], 0, True)


async def test_within_the_bound_the_hits_are_the_best_that_pass_and_nothing_is_truncated(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rare = {30: {"k": "rare"}, 3000: {"k": "rare"}, BOUND: {"k": "rare"}, 5000: {"k": "rare"}}
    memory, index = await _memory(store, tmp_path, monkeypatch, rare)
    hits, used, truncated = await memory.hydrate(
        "wf", vector=[1.0, 0.0], top_k=3, metadata_match={"k": "rare"}
    )
    assert _ids(hits) == [30, 3000, BOUND]
    assert used == 18
    assert not truncated
    # Fewer than top_k found in a memory the bound covers whole: nothing was left unexamined.
    index.total = BOUND
    hits, _, truncated = await memory.hydrate("wf", vector=[1.0, 0.0], top_k=5, metadata_match={"k": "rare"})
    assert _ids(hits) == [30, 3000, BOUND]
    assert not truncated


async def test_a_floor_ends_the_search_before_the_bound_without_truncating(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, index = await _memory(store, tmp_path, monkeypatch, {5000: {"k": "rare"}})
    floor = 1.0 - 200 / (2 * COUNT)  # notes 1 to 200 reach it
    hits, _, truncated = await memory.hydrate(
        "wf", vector=[1.0, 0.0], top_k=3, metadata_match={"k": "rare"}, min_similarity=floor
    )
    assert index.searches == [64, 256]
    assert (hits, truncated) == ([], False)


async def test_the_budget_counts_text_and_inline_content_as_before_without_decoding_them(
    store: Store, tmp_path: Path
) -> None:
    # Filtered notes are measured from their encoded fields (msgpack headers of 1 to 5 bytes).
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    await memory.add("wf", [NoteInput(text="x", vector=[0.0, 1.0])])
    for i, size in enumerate([0, 1, 31, 32, 255, 256, 65535, 65536]):
        inline = i % 2 == 1
        content = NoteContent(data=os.urandom(size)) if inline else NoteContent(blob_sha256="ab" * 32)
        text = "é" * (size // 2)  # two bytes each in UTF-8
        vector = [1.0, float(i)]
        (note_id,) = await memory.add(
            "wf", [NoteInput(text=text, vector=vector, content=content, metadata={"i": str(i)})]
        )
        want = 2 * len(text) + (size if inline else 0)
        match = {"i": str(i)}
        hits, used, truncated = await memory.hydrate(
            "wf", vector=vector, top_k=1, metadata_match=match, max_bytes=max(want, 1)
        )
        assert (_ids(hits), used, truncated) == ([note_id], want, False), size
        if want:
            hits, used, truncated = await memory.hydrate(
                "wf", vector=vector, top_k=1, metadata_match=match, max_bytes=want - 1
            )
            assert (hits, used, truncated) == ([], 0, True), size
