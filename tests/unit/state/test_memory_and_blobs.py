"""Memory (indexes derived from LMDB) and blobs (chunks, dedup, references), no server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from are_core.embed import LexicalEmbedder
from are_core.state import (
    BlobDigestMismatchError,
    BlobStore,
    DimensionMismatchError,
    EmbedderUnavailableError,
    InvalidStateArgumentError,
    MemoryStore,
    NoteInput,
)
from are_core.storage import GroupCommitter, Storage, u64_key

Store = tuple[Storage, GroupCommitter]


class _Renamed(LexicalEmbedder):
    """Same dimension, another name: its vectors must not be mixed in."""

    def __init__(self) -> None:
        super().__init__(64)
        self.name = "other-embedder:64"


def _unit(i: int, dimension: int = 8) -> list[float]:
    vector = [0.0] * dimension
    vector[i % dimension] = 1.0
    vector[(i + 1) % dimension] = 0.25 * (i // dimension + 1)
    return vector


async def test_saved_index_is_topped_up_and_a_broken_one_rebuilt(store: Store, tmp_path: Path) -> None:
    storage, committer = store
    folder = tmp_path / "indexes"
    memory = MemoryStore(storage, committer, embedder=None, index_dir=folder)
    await memory.add("wf", [NoteInput(text=f"n{i}", vector=_unit(i)) for i in range(20)])
    assert memory.save_all() == 1
    # Notes added after the save (then a crash: nothing saved again).
    await memory.add("wf", [NoteInput(text=f"n{i}", vector=_unit(i)) for i in range(20, 30)])

    restarted = MemoryStore(storage, committer, embedder=None, index_dir=folder)
    assert await restarted.load_all() == 1
    hits, _, _ = await restarted.hydrate("wf", vector=_unit(25), top_k=1)
    assert [h.note.text for h in hits] == ["n25"]

    (folder / "wf.usearch").write_bytes(b"garbage")
    rebuilt = MemoryStore(storage, committer, embedder=None, index_dir=folder)
    await rebuilt.load_all()
    hits, _, _ = await rebuilt.hydrate("wf", vector=_unit(3), top_k=1)
    assert [h.note.text for h in hits] == ["n3"]


async def test_an_index_loads_on_first_use_without_a_load_at_start(store: Store, tmp_path: Path) -> None:
    # The sidecar no longer loads every workflow's index at start (a start after
    # SIGKILL rebuilt them all before serving): each loads when first used.
    storage, committer = store
    folder = tmp_path / "indexes"
    memory = MemoryStore(storage, committer, embedder=None, index_dir=folder)
    for workflow in ("a", "b"):
        await memory.add(workflow, [NoteInput(text=f"{workflow}{i}", vector=_unit(i)) for i in range(20)])
    memory.save_all()
    await memory.add("a", [NoteInput(text=f"a{i}", vector=_unit(i)) for i in range(20, 30)])  # then a crash
    (folder / "b.usearch").unlink()  # and b's file is gone

    restarted = MemoryStore(storage, committer, embedder=None, index_dir=folder)
    hits, _, _ = await restarted.hydrate("a", vector=_unit(25), top_k=1)  # restored, topped up
    assert [h.note.text for h in hits] == ["a25"]
    hits, _, _ = await restarted.hydrate("b", vector=_unit(3), top_k=1)  # rebuilt from LMDB
    assert [h.note.text for h in hits] == ["b3"]


async def test_notes_committed_by_a_call_cancelled_while_indexing_are_still_found(
    store: Store, tmp_path: Path
) -> None:
    """Defect: notes are indexed a slice per loop turn after their commit, with the coverage
    claimed first; a caller cancelled between slices left the rest committed yet never found."""
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    notes = [NoteInput(text=f"n{i}", vector=_unit(i, 16)) for i in range(300)]
    adding = asyncio.ensure_future(memory.add("wf", notes))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30  # the writer thread commits: no count of loop turns bounds that
    while loop.time() < deadline:  # until committed, and some slices (not all) indexed
        loaded = memory._indexes.get("wf")
        if loaded is not None and 0 < len(loaded[0]) < len(notes):
            break
        await asyncio.sleep(0)
    else:
        pytest.fail("the notes were never being indexed")
    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await adding
    hits, _, _ = await memory.hydrate("wf", vector=_unit(299, 16), top_k=1)
    assert [h.note.text for h in hits] == ["n299"]


async def test_filters_widen_the_search_until_enough_notes_match(store: Store, tmp_path: Path) -> None:
    memory = MemoryStore(*store, embedder=None, index_dir=tmp_path)
    notes = [
        NoteInput(text=f"n{i}", vector=_unit(i, 4), metadata={"rare": "yes" if i == 299 else "no"})
        for i in range(300)
    ]
    await memory.add("wf", notes)
    hits, _, _ = await memory.hydrate("wf", vector=_unit(0, 4), top_k=3, metadata_match={"rare": "yes"})
    assert [h.note.text for h in hits] == ["n299"]


async def test_a_vector_with_no_direction_is_refused_and_a_text_with_none_finds_nothing(
    store: Store, tmp_path: Path
) -> None:
    """Cosine is undefined for a zero vector: a zero note or query matched another at 1.0."""
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=LexicalEmbedder(64), index_dir=tmp_path / "indexes")
    await memory.add("wf", [NoteInput(text="alpha beta"), NoteInput(text="gamma delta")])
    with pytest.raises(InvalidStateArgumentError) as caught:
        await memory.add("wf", [NoteInput(text="x", vector=[1.0] + [0.0] * 63), NoteInput(vector=[0.0] * 64)])
    assert caught.value.field == "entries[1].vector.values"
    with pytest.raises(InvalidStateArgumentError) as caught:
        await memory.hydrate("wf", vector=[0.0] * 64)
    assert caught.value.field == "vector.values"
    assert await memory.hydrate("wf", text="!!! ???") == ([], 0, False)  # no word: no direction
    hits, _, _ = await memory.hydrate("wf", text="gamma", top_k=5)
    assert [h.note.text for h in hits][:1] == ["gamma delta"]
    space = memory.space("wf")
    assert space is not None and space.count == 2  # the refused call stored nothing


async def test_dimension_and_embedder_are_fixed_by_the_first_note(store: Store, tmp_path: Path) -> None:
    storage, committer = store
    lexical = MemoryStore(storage, committer, embedder=LexicalEmbedder(64), index_dir=tmp_path)
    await lexical.add("wf", [NoteInput(text="hello world")])
    with pytest.raises(DimensionMismatchError) as caught:
        await lexical.add("wf", [NoteInput(vector=[1.0] * 3)])
    assert (caught.value.expected, caught.value.actual, caught.value.field) == (
        64,
        3,
        "entries[0].vector.values",
    )
    other = MemoryStore(storage, committer, embedder=LexicalEmbedder(128), index_dir=tmp_path)
    with pytest.raises(DimensionMismatchError) as caught:
        await other.add("wf", [NoteInput(text="more")])
    assert caught.value.field == "entries[0].text"
    same_size = MemoryStore(storage, committer, embedder=_Renamed(), index_dir=tmp_path)
    with pytest.raises(EmbedderUnavailableError):
        await same_size.add("wf", [NoteInput(text="more")])
    none = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path)
    with pytest.raises(EmbedderUnavailableError):
        await none.hydrate("wf", text="hello")


async def test_delete_removes_notes_and_the_saved_index(store: Store, tmp_path: Path) -> None:
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path)
    await memory.add("wf.1", [NoteInput(text="a", vector=[1.0, 0.0])])
    await memory.add("wf.2", [NoteInput(text="b", vector=[1.0, 0.0])])
    memory.save_all()
    assert (tmp_path / "wf.1.usearch").exists()
    assert await memory.delete("wf.1") > 0
    assert storage.count("memory_notes") == 1
    assert not (tmp_path / "wf.1.usearch").exists()
    assert (await memory.hydrate("wf.1", vector=[1.0, 0.0]))[0] == []
    assert (tmp_path / "wf.2.usearch").exists()


async def test_blobs_dedup_refcount_and_crash_sweep(store: Store) -> None:
    storage, committer = store
    blobs = BlobStore(storage, committer)
    data = os.urandom(3 * 1024 * 1024 + 5)
    digest = hashlib.sha256(data).digest()
    info, dedup = await blobs.put(data, workflow_id="a")
    assert (info.sha256, info.size_bytes, dedup) == (digest.hex(), len(data), False)
    assert storage.count("blob_chunks") == 4  # 1 MiB chunks, not one giant value
    _, dedup = await blobs.put(data, workflow_id="b")
    assert dedup
    assert storage.count("blob_chunks") == 4
    assert await blobs.release_workflow("a") == 0
    assert blobs.stat(digest) is not None
    assert await blobs.release_workflow("b") == len(data)
    assert blobs.stat(digest) is None
    assert storage.count("blob_chunks") == 0

    upload = blobs.begin(content_type="", size_bytes=2 * 1024 * 1024, sha256="", workflow_id="")
    await upload.write(os.urandom(1024 * 1024))  # flushed: a crash now leaves staged chunks
    assert storage.count("blob_chunks") == 1
    assert await BlobStore(storage, committer).recover() == 1
    assert storage.count("blob_chunks") == 0

    bad = blobs.begin(content_type="", size_bytes=2, sha256="0" * 64, workflow_id="")
    await bad.write(b"ab")
    with pytest.raises(BlobDigestMismatchError):
        await bad.finish()
    assert storage.count("blob_meta") == 0


async def test_indexes_are_saved_as_they_grow(store: Store, tmp_path: Path) -> None:
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path, save_every=10)
    for start in range(0, 25, 5):
        await memory.add("wf", [NoteInput(text=f"n{i}", vector=_unit(i)) for i in range(start, start + 5)])
    saved = json.loads((tmp_path / "wf.json").read_text())
    assert saved == {"covered": 21, "dimension": 8}  # saved after notes 1-10 and 11-20
    # A crash now: a new store restores the file and tops up notes 21-25 only.
    restarted = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path)
    await restarted.load_all()
    hits, _, _ = await restarted.hydrate("wf", vector=_unit(23), top_k=1)
    assert [h.note.text for h in hits] == ["n23"]


async def test_a_save_that_fails_fails_no_add(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The save runs in a forked child (a large index takes seconds to write);
    # its failure leaves the old file, and the add that made it due succeeds.
    storage, committer = store
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path, save_every=10)
    (tmp_path / "wf.usearch").mkdir()  # the file cannot replace a folder
    ids = await memory.add("wf", [NoteInput(text=f"n{i}", vector=_unit(i)) for i in range(12)])
    assert ids == list(range(1, 13))
    assert not (tmp_path / "wf.json").exists()
    assert "saving the index of 'wf' failed" in caplog.text
    hits, _, _ = await memory.hydrate("wf", vector=_unit(7), top_k=1)
    assert [h.note.text for h in hits] == ["n7"]
    (tmp_path / "wf.usearch").rmdir()
    await memory.add("wf", [NoteInput(text=f"n{i}", vector=_unit(i)) for i in range(12, 22)])
    assert json.loads((tmp_path / "wf.json").read_text()) == {"covered": 23, "dimension": 8}


async def test_a_start_drops_every_unfinished_upload_not_only_the_first_ten_thousand(store: Store) -> None:
    """What a sweep cut short leaves: a blob_uploads row per blob it was deleting, and their chunks.

    recover() took at most 10,000 rows per start; the chunks of the others
    stayed stored until later starts.
    """
    storage, committer = store
    orphans = 10_050
    for first in range(0, orphans, 5_000):
        batch = storage.batch()
        for i in range(first, min(first + 5_000, orphans)):
            data_id = i.to_bytes(16, "big")
            batch.put("blob_uploads", data_id, u64_key(1))
            for part in range(1 + i % 3):  # one to three small chunks each
                batch.put("blob_chunks", data_id + u64_key(part * 8), b"x" * 8)
        await committer.submit(batch)
    large = (orphans + 1).to_bytes(16, "big")  # more chunk rows than one commit drops
    batch = storage.batch().put("blob_uploads", large, u64_key(1))
    for part in range(200):
        batch.put("blob_chunks", large + u64_key(part), b"y")
    await committer.submit(batch)

    assert await BlobStore(storage, committer).recover() == orphans + 1
    assert storage.count("blob_uploads") == 0
    assert storage.count("blob_chunks") == 0
