"""Responses stored as blob references: checked against the blob store, referenced while kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from are_core.cache import (
    CACHE_TABLES,
    BlobNotFoundError,
    CacheEngine,
    InvalidCacheArgumentError,
    NamespaceSettings,
)
from are_core.state import BLOB_TABLES, BlobStore
from are_core.storage import Durability, GroupCommitter, Storage

NS = "blobs"


async def test_entries_reference_their_blob_until_removed(tmp_path: Path) -> None:
    storage = Storage.open(
        tmp_path / "data", tables=(*CACHE_TABLES, *BLOB_TABLES), durability=Durability.RELAXED
    )
    try:
        async with GroupCommitter(storage) as committer:
            blobs = BlobStore(storage, committer)
            engine = CacheEngine(
                storage, committer, index_dir=tmp_path / "indexes", blobs=blobs, flush_interval=3600
            )
            await engine.start()
            await engine.put_namespace(NamespaceSettings(name=NS, max_entries=2))
            info, _ = await blobs.put(b"a long answer" * 100, content_type="text/plain")
            digest = bytes.fromhex(info.sha256)

            with pytest.raises(BlobNotFoundError) as missing:
                await engine.store(NS, prompt="p", blob_sha256="ab" * 32)
            assert missing.value.field == "response.blob"
            with pytest.raises(InvalidCacheArgumentError) as wrong:
                await engine.store(NS, prompt="p", blob_sha256=info.sha256, blob_size_bytes=5)
            assert wrong.value.field == "response.blob.size_bytes"
            assert engine.stats(NS)[0].entries == 0  # refusals store nothing

            assert not engine._states[NS].namespace.blob_entries  # removals need not look for references
            first = await engine.store(
                NS, prompt="p", blob_sha256=info.sha256, blob_size_bytes=info.size_bytes
            )
            assert engine._states[NS].namespace.blob_entries
            assert blobs.referrers(digest) == [b"cache:" + first.entry_id.encode()]
            hit = (await engine.lookup(NS, prompt="p")).hit
            assert hit is not None
            assert (hit.blob_sha256, hit.blob_size_bytes) == (info.sha256, info.size_bytes)

            # Replaced under the same prompt: the new entry holds the reference, the old one's goes.
            second = await engine.store(NS, prompt="p", blob_sha256=info.sha256)
            assert blobs.referrers(digest) == [b"cache:" + second.entry_id.encode()]

            # Restarted (the entry's digest is read back from LMDB), then evicted by two newer entries.
            await engine.stop()
            engine = CacheEngine(
                storage, committer, index_dir=tmp_path / "indexes", blobs=blobs, flush_interval=3600
            )
            await engine.start()
            assert engine._states[NS].namespace.blob_entries  # durable with the first blob entry
            await engine.store(NS, prompt="q", response=b"1")
            await engine.store(NS, prompt="r", response=b"2")
            assert (await engine.lookup(NS, prompt="p")).hit is None
            assert not blobs.referenced(digest)  # the sweep may take it once past the TTL
            await engine.stop()
    finally:
        storage.close()
