"""Blob references and the sweep of unreferenced blobs: real LMDB, an injected clock, no server."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from are_core.state import (
    BlobNotFoundError,
    BlobStore,
    MemoryStore,
    NoteContent,
    NoteInput,
    workflow_referrer,
)
from are_core.storage import Batch, Durability, GroupCommitter, Storage, u64_key
from tests.unit.state.conftest import TABLES

Store = tuple[Storage, GroupCommitter]
HOUR = 3600 * 10**9
TTL = 24 * HOUR


class Clock:
    """Wall-clock nanoseconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def blobs(store: Store, clock: Clock) -> BlobStore:
    return BlobStore(*store, clock=clock)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def _stored(blobs: BlobStore, data: bytes, workflow_id: str = "") -> bytes:
    info, _ = await blobs.put(data, workflow_id=workflow_id)
    return bytes.fromhex(info.sha256)


async def _reference(blobs: BlobStore, referrer: bytes, digest: bytes) -> None:
    batch = blobs.storage.batch()
    blobs.stage_reference(batch, referrer, digest)
    await blobs.committer.submit(batch)


async def test_a_staged_reference_is_part_of_the_callers_batch(blobs: BlobStore) -> None:
    digest = await _stored(blobs, b"payload")
    batch = blobs.storage.batch()
    batch.put("blob_uploads", b"caller's own row", b"")  # stands for the payload naming the blob
    blobs.stage_reference(batch, b"wf:a", digest)
    assert not blobs.referenced(digest)  # nothing is written before the caller's commit
    assert {m.table for m in batch.mutations} == {"blob_uploads", "blob_refs", "blob_refs_by_blob"}
    await blobs.committer.submit(batch)
    assert blobs.referenced(digest)
    assert blobs.referrers(digest) == [b"wf:a"]
    assert blobs.references(b"wf:a") == [digest]
    # Staging again is idempotent: key-only rows, no counter to race on.
    await _reference(blobs, b"wf:a", digest)
    assert blobs.storage.count("blob_refs") == blobs.storage.count("blob_refs_by_blob") == 1


@pytest.mark.parametrize("referrer", [b"", b"wf:\x00x", b"x" * 257])
def test_a_referrer_is_short_bytes_without_nul(blobs: BlobStore, referrer: bytes) -> None:
    batch = blobs.storage.batch()
    with pytest.raises(ValueError, match="referrer"):
        blobs.stage_reference(batch, referrer, b"\x01" * 32)
    assert len(batch) == 0


async def test_an_owned_blob_goes_with_its_last_referrer_an_unowned_one_waits_for_the_sweep(
    blobs: BlobStore, clock: Clock
) -> None:
    owned = await _stored(blobs, b"owned by a", workflow_id="a")
    unowned = await _stored(blobs, b"unowned")
    await _reference(blobs, workflow_referrer("b"), owned)
    await _reference(blobs, b"cache:e1", owned)  # any short key may refer
    await _reference(blobs, workflow_referrer("b"), unowned)

    assert await blobs.release_referrer(workflow_referrer("a")) == 0
    assert await blobs.release_referrer(workflow_referrer("b")) == 0  # the cache entry still refers
    assert blobs.stat(owned) is not None
    assert await blobs.release_referrer(b"cache:e1") == len(b"owned by a")
    assert blobs.stat(owned) is None
    assert blobs.storage.count("blob_refs") == blobs.storage.count("blob_refs_by_blob") == 0

    assert blobs.stat(unowned) is not None  # unreferenced now, but younger than the TTL
    assert (await blobs.sweep(TTL)).deleted == 0
    clock.now += TTL
    result = await blobs.sweep(TTL)
    assert (result.deleted, result.deleted_bytes) == (1, len(b"unowned"))
    assert blobs.stat(unowned) is None
    assert blobs.storage.count("blob_chunks") == blobs.storage.count("blob_uploads") == 0


async def test_the_sweep_keeps_referenced_young_and_uploading_blobs(blobs: BlobStore, clock: Clock) -> None:
    old_unreferenced = await _stored(blobs, os.urandom(3 * 1024 * 1024))  # 3 chunks
    old_referenced = await _stored(blobs, b"referenced")
    await _reference(blobs, b"wf:keeper", old_referenced)
    old_owned = await _stored(blobs, b"owned", workflow_id="owner")
    uploading = blobs.begin(content_type="", size_bytes=2 * 1024 * 1024, sha256="", workflow_id="")
    await uploading.write(os.urandom(1024 * 1024))  # flushed: chunks and an upload row, no blob yet
    clock.now += TTL
    young = await _stored(blobs, b"young")
    clock.now += HOUR

    result = await blobs.sweep(TTL)

    assert (result.scanned, result.deleted) == (4, 1)
    assert blobs.stat(old_unreferenced) is None
    for kept in (old_referenced, old_owned, young):
        assert blobs.stat(kept) is not None
    assert blobs.storage.count("blob_chunks") == 1 + 3  # the upload's chunk, one per kept blob
    await uploading.write(os.urandom(1024 * 1024))
    info, deduplicated = await uploading.finish()  # the upload carries on as if nothing happened
    assert (deduplicated, info.size_bytes) == (False, 2 * 1024 * 1024)
    assert sum(len(chunk) for _, chunk in blobs.read(bytes.fromhex(info.sha256))[1]) == 2 * 1024 * 1024


async def test_uploading_the_same_bytes_again_restarts_the_ttl(blobs: BlobStore, clock: Clock) -> None:
    digest = await _stored(blobs, b"again")
    clock.now += TTL - HOUR
    _, deduplicated = await blobs.put(b"again")
    assert deduplicated
    clock.now += 2 * HOUR  # the first upload is past the TTL, the second is not
    assert (await blobs.sweep(TTL)).deleted == 0
    clock.now += TTL
    assert (await blobs.sweep(TTL)).deleted == 1
    assert blobs.stat(digest) is None


async def test_a_reference_staged_while_the_sweep_decides_wins(blobs: BlobStore, clock: Clock) -> None:
    digest = await _stored(blobs, b"about to be referenced")
    clock.now += 2 * TTL
    batch = blobs.storage.batch()
    blobs.stage_reference(batch, b"wf:late", digest)  # not committed yet: invisible to the probe
    assert (await blobs.sweep(TTL)).deleted == 0
    await blobs.committer.submit(batch)
    assert blobs.referenced(digest)
    assert (await blobs.sweep(TTL)).deleted == 0
    assert b"".join(chunk for _, chunk in blobs.read(digest)[1]) == b"about to be referenced"


async def test_a_reference_staged_while_the_owner_releases_keeps_the_owned_blob(blobs: BlobStore) -> None:
    digest = await _stored(blobs, b"shared", workflow_id="owner")
    batch = blobs.storage.batch()
    blobs.stage_reference(batch, workflow_referrer("user"), digest)  # a submit not yet committed
    assert await blobs.release_workflow("owner") == 0
    assert blobs.stat(digest) is not None
    await blobs.committer.submit(batch)
    assert await blobs.release_workflow("user") == len(b"shared")
    assert blobs.stat(digest) is None


async def test_a_sweep_works_in_bounded_commits_and_stops_when_told(tmp_path: Path, clock: Clock) -> None:
    storage = Storage.open(tmp_path / "relaxed", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    try:
        blobs = BlobStore(storage, committer, clock=clock)
        for i in range(600):
            await blobs.put(b"blob %d" % i)
        clock.now += 2 * TTL
        stop = asyncio.Event()
        stop.set()
        assert (await blobs.sweep(TTL, stop=stop)).scanned == 0
        before = committer.stats()
        result = await blobs.sweep(TTL)
        after = committer.stats()
        assert (result.scanned, result.deleted) == (600, 600)
        assert storage.count("blob_meta") == storage.count("blob_chunks") == 0
        # Three pages of blob_meta deletions (256, 256, 88), then each blob's chunks.
        assert after.batches - before.batches == 3 + 600
    finally:
        await committer.aclose()
        storage.close()


async def test_a_meta_row_that_cannot_be_decoded_stops_no_sweep(tmp_path: Path, clock: Clock) -> None:
    storage = Storage.open(tmp_path / "relaxed", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    try:
        blobs = BlobStore(storage, committer, clock=clock)
        for i in range(300):  # two pages
            await blobs.put(b"blob %d" % i)
        batch = storage.batch()
        batch.put("blob_meta", b"\x00" * 32, b"\xc1 not msgpack")  # sorts first: every pass met it first
        await committer.submit(batch)
        clock.now += 2 * TTL
        result = await blobs.sweep(TTL)
        assert (result.scanned, result.deleted, result.unreadable) == (301, 300, 1)
        assert storage.count("blob_meta") == 1  # left in place
    finally:
        await committer.aclose()
        storage.close()


class _OldBlobMeta(msgspec.Struct, frozen=True, kw_only=True):
    """``BlobMeta`` as data folders wrote it before references were recorded."""

    size_bytes: int
    content_type: str
    data_id: bytes
    create_time_ns: int
    owners: int = 0


def _write_old_blob(storage: Storage, data: bytes, *, owners: list[str], time_ns: int) -> bytes:
    digest = _digest(data)
    data_id = os.urandom(16)
    storage.apply_batches(
        [
            storage.batch()
            .put("blob_chunks", data_id + u64_key(0), data)
            .put(
                "blob_meta",
                digest,
                msgspec.msgpack.encode(
                    _OldBlobMeta(
                        size_bytes=len(data),
                        content_type="text/plain",
                        data_id=data_id,
                        create_time_ns=time_ns,
                        owners=len(owners),
                    )
                ),
            )
        ]
        + [storage.batch().put("blob_owners", owner.encode() + b"\x00" + digest, b"") for owner in owners]
    )
    return digest


async def test_owner_rows_of_an_older_data_folder_are_migrated_on_start(
    blobs: BlobStore, clock: Clock
) -> None:
    storage = blobs.storage
    shared = _write_old_blob(storage, b"owned twice", owners=["a", "b"], time_ns=clock.now)
    legacy = _write_old_blob(storage, b"never owned", owners=[], time_ns=clock.now)

    assert await blobs.migrate() == 2
    assert await blobs.migrate() == 0  # done once; an interrupted run is finished by the next start
    assert storage.count("blob_owners") == 0
    assert blobs.referrers(shared) == [b"wf:a", b"wf:b"]
    assert blobs.stat(shared) is not None
    assert blobs.stat(legacy) is not None

    clock.now += 10 * TTL
    # The payloads naming an old unowned blob recorded nothing: the sweep keeps it.
    assert (await blobs.sweep(TTL)).deleted == 0
    assert await blobs.release_workflow("a") == 0
    assert await blobs.release_workflow("b") == len(b"owned twice")
    assert blobs.stat(shared) is None
    assert blobs.stat(legacy) is not None
    assert b"".join(chunk for _, chunk in blobs.read(legacy)[1]) == b"never owned"


async def test_a_deletion_cut_short_is_finished_on_start(blobs: BlobStore, clock: Clock) -> None:
    digest = await _stored(blobs, os.urandom(2 * 1024 * 1024 + 1))
    clock.now += 2 * TTL
    await blobs.sweep(TTL)
    assert blobs.stat(digest) is None
    # As if the process died between the blob_meta deletion and the last chunk deletion:
    # the data id stays listed in blob_uploads until its chunks are gone.
    orphan = os.urandom(16)
    storage = blobs.storage
    await blobs.committer.submit(
        storage.batch().put("blob_chunks", orphan + u64_key(0), b"x").put("blob_uploads", orphan, u64_key(1))
    )
    assert await BlobStore(storage, blobs.committer).recover() == 1
    assert storage.count("blob_chunks") == storage.count("blob_uploads") == 0


async def test_memory_notes_reference_their_blobs(store: Store, tmp_path: Path, clock: Clock) -> None:
    storage, committer = store
    blobs = BlobStore(storage, committer, clock=clock)
    memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path, blobs=blobs)
    digest = await _stored(blobs, b"note body")
    content = NoteContent(blob_sha256=digest.hex(), blob_size_bytes=9)
    await memory.add("wf", [NoteInput(text="n", vector=[1.0, 0.0], content=content)])
    assert blobs.referrers(digest) == [b"wf:wf"]

    missing = NoteContent(blob_sha256="00" * 32)
    with pytest.raises(BlobNotFoundError) as caught:
        await memory.add(
            "wf",
            [
                NoteInput(text="ok", vector=[1.0, 0.0]),
                NoteInput(text="x", vector=[0.0, 1.0], content=missing),
            ],
        )
    assert caught.value.field == "entries[1].content.blob"
    assert storage.count("memory_notes") == 1  # nothing of the refused call was stored

    assert await memory.copy_notes("wf", "fork", 2**62) == 1
    assert blobs.referrers(digest) == [b"wf:fork", b"wf:wf"]
    clock.now += 2 * TTL
    assert (await blobs.sweep(TTL)).deleted == 0
    await blobs.release_workflow("wf")
    await blobs.release_workflow("fork")
    assert (await blobs.sweep(TTL)).deleted == 1


async def test_an_owned_blob_goes_in_the_commit_that_drops_its_last_reference(
    blobs: BlobStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: the references went in one commit, the owned blob left without one in a second;
    a SIGKILL between them kept the blob, referenced by nothing, until the sweep's TTL (a day).
    Here the release stops right after its first commit, as a crash would."""
    owned = await _stored(blobs, b"owned by a", workflow_id="a")
    shared = await _stored(blobs, b"owned, also used by b", workflow_id="a")
    await _reference(blobs, workflow_referrer("b"), shared)

    submit = blobs.committer.submit
    commits = 0

    async def one_commit_then_killed(batch: Batch) -> None:
        nonlocal commits
        commits += 1
        if commits > 1:
            raise RuntimeError("killed")
        await submit(batch)

    with monkeypatch.context() as patched:
        patched.setattr(blobs.committer, "submit", one_commit_then_killed)
        with pytest.raises(RuntimeError, match="killed"):
            await blobs.release_workflow("a")
    assert blobs.stat(owned) is None  # gone with its last reference
    assert blobs.stat(shared) is not None  # b still refers to it
    assert blobs.references(workflow_referrer("a")) == []
    # The next start drops the chunks the crash left (their blob_uploads row says so).
    restarted = BlobStore(blobs.storage, blobs.committer, clock=clock)
    await restarted.recover()
    assert blobs.storage.count("blob_uploads") == 0
    assert restarted.stat(shared) is not None
    assert restarted.read(shared) is not None


async def test_a_blob_a_check_finds_gets_a_full_ttl_again(blobs: BlobStore, clock: Clock) -> None:
    # The SDK's put() asks CheckBlobs first and skips the upload of a blob found: that blob,
    # uploaded long ago, was swept seconds after the client was told it was stored.
    checked = await _stored(blobs, b"checked")
    unchecked = await _stored(blobs, b"unchecked")
    clock.now += TTL - HOUR
    assert await blobs.refresh([checked, checked, _digest(b"never stored")]) == 1
    clock.now += 2 * HOUR  # past the TTL of the first upload, within the refreshed one
    result = await blobs.sweep(TTL)
    assert result.deleted == 1
    assert blobs.stat(unchecked) is None
    assert blobs.stat(checked) is not None


async def test_an_upload_without_a_workflow_keeps_its_ttl_past_an_owner_s_release(
    blobs: BlobStore, clock: Clock
) -> None:
    # An anonymous upload deduplicated onto a workflow's blob was told "stored" (a full TTL),
    # yet the blob went at once when that workflow was released; so it did when the anonymous
    # upload came first and an owner's after.
    for first, then in (("owner", ""), ("", "owner")):
        data = os.urandom(3000)
        digest = await _stored(blobs, data, workflow_id=first)
        await _stored(blobs, data, workflow_id=then)
        await blobs.release_workflow("owner")
        assert blobs.stat(digest) is not None, (first, then)
        clock.now += TTL + HOUR
        await blobs.sweep(TTL)  # the TTL, not the release, ends it
        assert blobs.stat(digest) is None, (first, then)


async def test_a_blob_a_check_refreshes_outlives_its_owner_s_release(blobs: BlobStore, clock: Clock) -> None:
    # A refresh stands for an upload without a workflow (the SDK skipped it): the caller was
    # promised the TTL, which the owner's release must not cut short.
    digest = await _stored(blobs, os.urandom(2000), workflow_id="owner")
    await blobs.refresh([digest])
    await blobs.release_workflow("owner")
    assert blobs.stat(digest) is not None
    clock.now += TTL + HOUR
    await blobs.sweep(TTL)
    assert blobs.stat(digest) is None
