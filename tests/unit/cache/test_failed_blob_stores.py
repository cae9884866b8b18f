"""Blob-backed entries whose commits fail: the blob references LMDB holds are those of the live entries.

The engine remembers the blob of each blob-backed entry it stored
(``_entry_blobs``) so that removing an entry whose commit is still under
way releases its reference (LMDB does not hold its body yet). A store
whose commit fails leaves its entry's id there; this pins that it does no
harm: an entry id is never handed out twice, a failed entry is never
removed (the reload from LMDB does not hold it), and a reference is a row
of its own referrer (releasing one never drops another's).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from are_core.cache import CACHE_TABLES, CacheEngine, NamespaceSettings
from are_core.cache._normalise import entry_id_text, parse_entry_id
from are_core.state import BLOB_TABLES, BlobStore
from are_core.storage import Durability, GroupCommitter, Storage

from ._failing import GatedCommits
from .conftest import Clock


async def test_failed_blob_stores_leave_no_reference_and_drop_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage.open(
        tmp_path / "data", tables=(*CACHE_TABLES, *BLOB_TABLES), durability=Durability.RELAXED
    )
    try:
        async with GroupCommitter(storage) as committer:
            blobs = BlobStore(storage, committer)
            clock = Clock()
            engine = CacheEngine(
                storage,
                committer,
                index_dir=tmp_path / "indexes",
                blobs=blobs,
                flush_interval=3600,
                clock=clock,
            )
            await engine.start()
            await engine.put_namespace(NamespaceSettings(name="n", max_entries=2))
            one, _ = await blobs.put(b"one" * 100, content_type="text/plain")
            two, _ = await blobs.put(b"two" * 100, content_type="text/plain")
            await engine.store("n", prompt="p", blob_sha256=one.sha256)
            commits = GatedCommits(committer)
            monkeypatch.setattr(committer, "enqueue", commits.enqueue)
            failed = []
            for prompt in ("q", "p"):  # a new entry, then one replacing p: both commits fail
                failed.append(engine._next_id)
                commits.next.append((None, True))
                with pytest.raises(OSError, match="No space left"):
                    await engine.store("n", prompt=prompt, blob_sha256=two.sha256)
                clock.advance(60)  # the namespace's writes wait after a failed one
            assert not blobs.referenced(bytes.fromhex(two.sha256))
            assert not any(blobs.references(f"cache:{entry_id_text(n)}".encode()) for n in failed)
            hit = (await engine.lookup("n", prompt="p")).hit
            assert hit is not None
            assert hit.blob_sha256 == one.sha256
            # Removals release what LMDB holds: p's reference (read back), none of another entry.
            r = await engine.store("n", prompt="r", blob_sha256=two.sha256)
            s = await engine.store("n", prompt="s", blob_sha256=two.sha256)  # evicts p
            assert not blobs.referenced(bytes.fromhex(one.sha256))
            assert sorted(blobs.referrers(bytes.fromhex(two.sha256))) == sorted(
                f"cache:{x.entry_id}".encode() for x in (r, s)
            )
            assert await engine.invalidate("n", everything=True) == 2
            assert not blobs.referenced(bytes.fromhex(two.sha256))
            assert max(failed) < (parse_entry_id(r.entry_id) or 0)  # ids are never handed out again
            await engine.stop()
    finally:
        storage.close()
