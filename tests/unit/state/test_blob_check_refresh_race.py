"""CheckBlobs(refresh_found) against the sweep: a blob reported found is stored, with a full TTL.

Defect (found against a real sidecar): CheckBlobs filled ``found`` with
``stat`` and then awaited the refresh, which waits for the blob store's
lock; a sweep queued on that lock first deleted the blob, the refresh
skipped it, and the response still said found (and the SDK's put(), told
so, skipped the upload: its reference named nothing). The refresh now says
which blobs it refreshed, decided under the lock, and CheckBlobs answers
from that.

Real LMDB in a temporary folder, an injected clock, no server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from are_core.state import BlobInfo, BlobStore
from tests.unit.state.test_blob_references import HOUR, TTL, Clock, blobs, clock

__all__ = ["blobs", "clock"]  # the fixtures (test_blob_references'), by name


async def _stored(blobs: BlobStore, data: bytes) -> bytes:
    info, _ = await blobs.put(data, content_type="text/plain")
    return bytes.fromhex(info.sha256)


async def test_a_sweep_queued_on_the_lock_ahead_of_the_refresh_makes_the_blob_missing(
    blobs: BlobStore, clock: Clock
) -> None:
    expired = await _stored(blobs, b"uploaded long ago")
    clock.now += TTL + HOUR
    # An upload holds the lock (its commit under way) and a sweep queues on it, as in a busy store.
    upload = asyncio.create_task(blobs.put(os.urandom(64)))
    sweep = asyncio.create_task(blobs.sweep(TTL))
    await asyncio.sleep(0)  # both ran to their wait: the upload holds the lock, the sweep waits for it
    assert blobs.stat(expired) is not None  # what the old CheckBlobs answered from
    # The check's refresh queues behind the sweep, which deletes the blob first.
    refreshed = await blobs.refresh_stored([expired])
    assert refreshed == {}
    assert (await sweep).deleted == 1
    await upload
    assert blobs.stat(expired) is None


async def test_the_refresh_returns_the_blobs_it_kept_and_they_outlive_the_old_ttl(
    blobs: BlobStore, clock: Clock
) -> None:
    kept = await _stored(blobs, b"kept")
    clock.now += TTL - HOUR
    never = hashlib.sha256(b"never stored").digest()
    refreshed = await blobs.refresh_stored([kept, never, kept])
    assert refreshed == {kept: BlobInfo(kept.hex(), 4, "text/plain")}
    clock.now += 2 * HOUR  # past the first upload's TTL, within the refreshed one
    sweep = asyncio.create_task(blobs.sweep(TTL))
    assert await blobs.refresh_stored([kept]) == {kept: BlobInfo(kept.hex(), 4, "text/plain")}
    assert (await sweep).deleted == 0
    assert blobs.stat(kept) is not None
