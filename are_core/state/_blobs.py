"""Content-addressed blobs: streamed in, stored in chunks, deduplicated by SHA-256, kept while referenced.

Tables:

* ``blob_meta``         ``sha256 (32 bytes)`` -> :class:`BlobMeta`
* ``blob_chunks``       ``data_id (16 bytes) u64(offset)`` -> up to 1 MiB of bytes
* ``blob_uploads``      ``data_id`` -> u64 time: chunks that no ``blob_meta`` row points
  to, an upload not finished yet or a deleted blob's data not dropped yet;
  dropped on start (:meth:`BlobStore.recover`)
* ``blob_refs``         ``referrer NUL sha256`` -> empty
* ``blob_refs_by_blob`` ``sha256 NUL referrer`` -> empty
* ``blob_owners``       ``workflow_id NUL sha256`` -> empty: the owners recorded by
  data folders older than ``blob_refs``, moved there on start
  (:meth:`BlobStore.migrate`); nothing writes it any more

An upload streams its chunks into LMDB under a fresh ``data_id`` as they
arrive (bounded memory, backpressure from the group committer), then its
digest is checked and ``blob_meta`` is pointed at ``data_id`` in one commit;
a duplicate upload only deletes its staged chunks.

References. A *referrer* is a short byte key naming what holds references:
``b"wf:" + workflow_id`` (:func:`workflow_referrer`) for a workflow's task
payloads, memory notes and the blobs uploaded for it; other holders use
their own prefix (``b"cache:" + entry id``). A reference is staged with
:meth:`BlobStore.stage_reference` into the caller's own batch, so it commits
with the payload that names the blob: a crash keeps both or neither. Its
rows are key-only, in both directions, so staging is two puts and never a
read-modify-write two batches could race on, "is this blob referenced?" is
a one-row prefix probe of ``blob_refs_by_blob``, and
:meth:`BlobStore.release_referrer` drops a referrer's references with one
prefix scan of ``blob_refs``.

Lifetime:

* A blob uploaded for a workflow (PutBlob ``workflow_id``) is *owned*: it is
  deleted as soon as its last reference is released (DeleteWorkflow of the
  last workflow that uploaded or used it).
* Any blob without a reference whose creation (or latest upload of the same
  bytes) is older than the TTL is deleted by :meth:`BlobStore.sweep`, which
  the state capability runs periodically. An upload in progress has no
  ``blob_meta`` row and a fresh blob is younger than the TTL: neither is
  ever swept.
* Blobs stored before references were recorded (``BlobMeta.tracked`` is
  False) may be named by payloads that never recorded a reference, so the
  sweep keeps them; an owned one still goes with its last owner.

Deleting versus a concurrent reference (the rule). The sweep and
``release_referrer`` decide under the store's lock, in one event-loop step
from the reads to the submission of the deletion, and skip a blob that has
a reference row in LMDB or had a reference staged in the last
``TOUCH_GRACE_S`` seconds (a staged batch not committed yet is invisible to
the probe; at most the last 100,000 stagings are remembered, which bounds
the memory: one pushed out by 100,000 newer ones has long been committed).
While its deletion commits, :meth:`BlobStore.stat` and
:meth:`BlobStore.read` already say the blob is missing. So a caller checks
the blob with ``stat`` and stages its reference in the same loop step (no
``await`` between), and submits the batch promptly (well within the
grace): the reference then either wins, keeping the blob, or the check
fails (BLOB_NOT_FOUND). A reference is never left naming a deleted blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

import msgspec

from are_core.storage import Batch, GroupCommitter, ReadView, Storage, u64_key

from ._errors import (
    BlobDigestMismatchError,
    BlobNotFoundError,
    BlobSizeMismatchError,
    InvalidStateArgumentError,
    LimitExceededError,
)

__all__ = [
    "BLOB_TABLES",
    "MAX_BLOB_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_REFERRER_BYTES",
    "TOUCH_GRACE_S",
    "BlobInfo",
    "BlobStore",
    "BlobUpload",
    "SweepResult",
    "workflow_referrer",
]

MiB = 1024 * 1024
MAX_BLOB_BYTES = 256 * MiB
MAX_CHUNK_BYTES = 1 * MiB
MAX_REFERRER_BYTES = 256
TOUCH_GRACE_S = 60.0
"""Seconds a freshly staged reference protects its blob before its rows must be committed."""
_STORED_CHUNK_BYTES = 1 * MiB
_MAX_TOUCHES = 100_000  # stagings remembered; past it the oldest (long committed) are forgotten
_PAGE = 256  # blob_meta rows read, and blobs deleted, per step and commit
_DROP_PAGE = 64  # chunk rows (of up to 1 MiB each) deleted per commit
META, CHUNKS, UPLOADS, OWNERS = "blob_meta", "blob_chunks", "blob_uploads", "blob_owners"
REFS, REFS_BY_BLOB = "blob_refs", "blob_refs_by_blob"
BLOB_TABLES = (META, CHUNKS, UPLOADS, OWNERS, REFS, REFS_BY_BLOB)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NUL = b"\x00"


class BlobMeta(msgspec.Struct, frozen=True, kw_only=True):
    """A stored blob (table ``blob_meta``)."""

    size_bytes: int
    content_type: str
    data_id: bytes
    create_time_ns: int
    owners: int = 0
    """Legacy: the owner count of data folders older than ``blob_refs``; 0 once migrated."""
    owned: bool = False
    """Uploaded for a workflow: deleted as soon as its last reference is released."""
    tracked: bool = False
    """Its references are recorded in ``blob_refs`` (False: stored before they were, kept by the sweep)."""
    upload_time_ns: int = 0
    """The latest upload of the same bytes (a deduplicated PutBlob); the TTL counts from it too."""


class SweepResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one :meth:`BlobStore.sweep` pass did."""

    scanned: int
    """Blobs looked at."""
    deleted: int
    """Blobs deleted."""
    deleted_bytes: int
    """Their total size."""
    unreadable: int = 0
    """Meta rows that could not be decoded: skipped, and left in place."""


def workflow_referrer(workflow_id: str) -> bytes:
    """The referrer key of a workflow: its task payloads, memory notes and the blobs uploaded for it."""
    return b"wf:" + workflow_id.encode()


def _check_referrer(referrer: bytes) -> None:
    if not 0 < len(referrer) <= MAX_REFERRER_BYTES or _NUL in referrer:
        raise ValueError(f"a referrer is 1 to {MAX_REFERRER_BYTES} bytes without NUL, got {referrer!r}")


class BlobInfo(msgspec.Struct, frozen=True):
    """A blob's reference: digest (hex), size and media type."""

    sha256: str
    size_bytes: int
    content_type: str


_enc = msgspec.msgpack.Encoder()
_meta_dec = msgspec.msgpack.Decoder(BlobMeta)


def check_digest(text: str, *, field: str) -> bytes:
    """The 32 bytes of a 64-lowercase-hex SHA-256 digest.

    Raises:
        InvalidStateArgumentError: it is not one.
    """
    if not _SHA256.fullmatch(text):
        raise InvalidStateArgumentError(
            f"{field} must be 64 lowercase hexadecimal characters (a SHA-256 digest)", field=field
        )
    return bytes.fromhex(text)


class BlobUpload:
    """One PutBlob in progress; ``write`` chunks, then ``finish`` (or ``abort``)."""

    def __init__(
        self,
        store: BlobStore,
        *,
        content_type: str,
        size_bytes: int,
        sha256: bytes | None,
        workflow_id: str,
    ) -> None:
        self._store = store
        self.content_type = content_type
        self.size_bytes = size_bytes
        self.expected = sha256
        self.workflow_id = workflow_id
        self.data_id = os.urandom(16)
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._flushed = 0
        self._received = 0
        self._started = False

    async def write(self, chunk: bytes, *, field: str = "chunk") -> None:
        """Append bytes; flushes to LMDB every 1 MiB.

        Raises:
            LimitExceededError: the chunk is over 1 MiB.
            BlobSizeMismatchError: more bytes than the declared size.
        """
        if len(chunk) > MAX_CHUNK_BYTES:
            raise LimitExceededError(
                f"a chunk is {len(chunk)} bytes; at most {MAX_CHUNK_BYTES}",
                field=field,
                limit=MAX_CHUNK_BYTES,
            )
        self._received += len(chunk)
        if self._received > self.size_bytes:
            raise BlobSizeMismatchError(
                f"received more than the declared {self.size_bytes} bytes", field="header.size_bytes"
            )
        self._hash.update(chunk)
        self._buffer += chunk
        if len(self._buffer) >= _STORED_CHUNK_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        storage = self._store.storage
        batch = storage.batch()
        if not self._started:
            batch.put(UPLOADS, self.data_id, u64_key(time.time_ns()))
            self._started = True
        while self._buffer:
            piece = bytes(self._buffer[:_STORED_CHUNK_BYTES])
            del self._buffer[:_STORED_CHUNK_BYTES]
            batch.put(CHUNKS, self.data_id + u64_key(self._flushed), piece)
            self._flushed += len(piece)
        await self._store.committer.submit(batch)

    async def finish(self) -> tuple[BlobInfo, bool]:
        """Check size and digest and publish the blob; returns (reference, deduplicated).

        Raises:
            BlobSizeMismatchError, BlobDigestMismatchError: nothing is kept.
        """
        if self._received != self.size_bytes:
            await self.abort()
            raise BlobSizeMismatchError(
                f"received {self._received} bytes; the header declared {self.size_bytes}",
                field="header.size_bytes",
            )
        digest = self._hash.digest()
        if self.expected is not None and digest != self.expected:
            await self.abort()
            raise BlobDigestMismatchError(
                f"the bytes hash to {digest.hex()}, not the declared {self.expected.hex()}",
                field="header.sha256",
            )
        return await self._store.publish(self, digest, bytes(self._buffer))

    async def abort(self) -> None:
        """Drop whatever was staged."""
        self._buffer.clear()
        if self._started:
            await self._store.drop_data(self.data_id, upload=True)
            self._started = False

    @property
    def staged(self) -> bool:
        """Whether chunks were written to LMDB (and so must be published or dropped)."""
        return self._started


class BlobStore:
    """The content-addressed blob store of one sidecar.

    Args:
        storage, committer: The sidecar's storage.
        clock: Wall-clock nanoseconds, for creation times and the sweep's
            TTL (tests pass a fake).
    """

    def __init__(
        self, storage: Storage, committer: GroupCommitter, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        """Bind the store to storage."""
        self.storage = storage
        self.committer = committer
        self._clock = clock
        self._lock = asyncio.Lock()
        """Held by every writer of ``blob_meta`` (publish, deletions, migration)."""
        self._touched: dict[bytes, dict[bytes, float]] = {}
        """Digest -> referrer -> monotonic time of a staging in the last ``TOUCH_GRACE_S`` seconds."""
        self._touches: deque[tuple[float, bytes, bytes]] = deque()
        """(time, digest, referrer) of each staging, oldest first: what to forget past the grace."""
        self._deleting: set[bytes] = set()
        """Digests whose deletion is submitted and not yet committed."""

    async def recover(self) -> int:
        """Drop the chunks no blob points to (uploads or deletions a crash cut short); returns how many.

        All of them: a sweep cut short can leave a ``blob_uploads`` row per
        blob it was deleting, and taking at most 10,000 per start left the
        chunks of the others stored until later starts. Small ones share a
        commit (at most ``_DROP_PAGE`` chunk rows); a larger one is dropped
        on its own, a page per commit.
        """
        dropped = 0
        while rows := self.storage.scan(UPLOADS, limit=_PAGE):
            batch = self.storage.batch()
            chunk_rows = 0
            for data_id, _ in rows:
                chunks = self.storage.scan(CHUNKS, prefix=data_id, limit=_DROP_PAGE + 1)
                if len(chunks) > _DROP_PAGE:
                    await self.drop_data(data_id, upload=True)
                    continue
                if chunk_rows + len(chunks) > _DROP_PAGE:
                    await self.committer.submit(batch)
                    batch, chunk_rows = self.storage.batch(), 0
                for key, _ in chunks:
                    batch.delete(CHUNKS, key)
                batch.delete(UPLOADS, data_id)
                chunk_rows += len(chunks)
            if len(batch):
                await self.committer.submit(batch)
            dropped += len(rows)
        return dropped

    async def migrate(self) -> int:
        """Move the owners of an older data folder into ``blob_refs``; returns the rows moved.

        Each ``blob_owners`` row (``workflow_id NUL sha256``) becomes the
        reference of ``wf:<workflow_id>``, and its blob (whose
        ``BlobMeta.owners`` counted those rows) becomes owned and tracked
        with ``owners`` 0. Batches are bounded and each is self-contained, so
        a crash half-way is finished on the next start. Unowned blobs of such
        a folder stay untracked: the payloads naming them recorded nothing.
        """
        moved = 0
        async with self._lock:
            while True:
                rows = self.storage.scan(OWNERS, limit=_PAGE)
                if not rows:
                    return moved
                batch = self.storage.batch()
                metas: dict[bytes, BlobMeta] = {}
                for key, _ in rows:
                    batch.delete(OWNERS, key)
                    if len(key) < 34 or key[-33] != 0:
                        continue  # not a row of the old layout
                    workflow_id, digest = key[:-33], key[-32:]
                    meta = metas.get(digest)
                    if meta is None:
                        raw = self.storage.get(META, digest)
                        if raw is None:
                            continue  # the blob is gone: only the row was left
                        meta = _meta_dec.decode(raw)
                    metas[digest] = msgspec.structs.replace(meta, owners=0, owned=True, tracked=True)
                    self.stage_reference(batch, b"wf:" + workflow_id, digest)
                for digest, meta in metas.items():
                    batch.put(META, digest, _enc.encode(meta))
                await self.committer.submit(batch)
                moved += len(rows)

    def begin(self, *, content_type: str, size_bytes: int, sha256: str, workflow_id: str) -> BlobUpload:
        """Start an upload after checking its header.

        Raises:
            LimitExceededError, InvalidStateArgumentError: naming ``header.*``.
        """
        if size_bytes < 0:
            raise InvalidStateArgumentError("size_bytes must not be negative", field="header.size_bytes")
        if size_bytes > MAX_BLOB_BYTES:
            raise LimitExceededError(
                f"a blob is at most {MAX_BLOB_BYTES} bytes; {size_bytes} declared",
                field="header.size_bytes",
                limit=MAX_BLOB_BYTES,
            )
        if len(content_type) > 128:
            raise LimitExceededError(
                "content_type is over 128 characters", field="header.content_type", limit=128
            )
        expected = check_digest(sha256, field="header.sha256") if sha256 else None
        return BlobUpload(
            self, content_type=content_type, size_bytes=size_bytes, sha256=expected, workflow_id=workflow_id
        )

    async def put(
        self, data: bytes, *, content_type: str = "", workflow_id: str = ""
    ) -> tuple[BlobInfo, bool]:
        """Store ``data`` in one call (small blobs, tests)."""
        upload = self.begin(
            content_type=content_type, size_bytes=len(data), sha256="", workflow_id=workflow_id
        )
        for start in range(0, len(data), MAX_CHUNK_BYTES):
            await upload.write(data[start : start + MAX_CHUNK_BYTES])
        return await upload.finish()

    async def publish(self, upload: BlobUpload, digest: bytes, tail: bytes) -> tuple[BlobInfo, bool]:
        """Make a checked upload visible (or count it as a duplicate); used by ``BlobUpload.finish``.

        An upload naming a workflow stages that workflow's reference, and a
        new blob uploaded so is owned. A duplicate refreshes the blob's upload
        time, so the caller told "stored" has a full TTL to reference it; one
        without a workflow makes the blob unowned, for the same reason.
        """
        referrer = workflow_referrer(upload.workflow_id) if upload.workflow_id else b""
        async with self._lock:
            now = self._clock()
            raw = self.storage.get(META, digest)
            batch = self.storage.batch()
            if raw is not None:
                meta = _meta_dec.decode(raw)
                # Owned only while every upload named a workflow: a caller that uploaded the same
                # bytes without one was told "stored" with a full TTL, which an owner's release
                # must not cut short (it deleted the blob at once).
                meta = msgspec.structs.replace(meta, upload_time_ns=now, owned=meta.owned and bool(referrer))
                batch.put(META, digest, _enc.encode(meta))
                if referrer:
                    self.stage_reference(batch, referrer, digest)
                await self.committer.submit(batch)
                deduplicated = True
            else:
                if tail:
                    batch.put(CHUNKS, upload.data_id + u64_key(upload.size_bytes - len(tail)), tail)
                if upload.staged:
                    batch.delete(UPLOADS, upload.data_id)
                meta = BlobMeta(
                    size_bytes=upload.size_bytes,
                    content_type=upload.content_type,
                    data_id=upload.data_id,
                    create_time_ns=now,
                    owned=bool(referrer),
                    tracked=True,
                )
                batch.put(META, digest, _enc.encode(meta))
                if referrer:
                    self.stage_reference(batch, referrer, digest)
                await self.committer.submit(batch)
                deduplicated = False
        if deduplicated and upload.staged:
            await self.drop_data(upload.data_id, upload=True)
        return BlobInfo(digest.hex(), meta.size_bytes, meta.content_type), deduplicated

    async def refresh(self, digests: Sequence[bytes]) -> int:
        """Gives the stored blobs among ``digests`` a full TTL again, as their upload would; returns how many.

        :meth:`refresh_stored` without the references.
        """
        return len(await self.refresh_stored(digests))

    async def refresh_stored(self, digests: Sequence[bytes]) -> dict[bytes, BlobInfo]:
        """Gives the stored blobs among ``digests`` a full TTL again, as their upload would; returns them.

        For CheckBlobs: a client told a blob is stored skips its upload and
        references it later. Without this, a blob uploaded long ago was
        swept seconds after the client was told so (the SDK's put() with
        check_first, its default).

        What is stored is decided here, under the lock, and the refresh is
        committed before the lock goes: the blobs returned are stored with a
        full TTL, and the others are not stored. A :meth:`stat` before the
        call does not say so: a sweep waiting on the lock ahead of this call
        may delete the blob in between (CheckBlobs answered "found" for a
        blob just deleted, and the SDK's put() skipped its upload).
        """
        refreshed: dict[bytes, BlobInfo] = {}
        async with self._lock:
            now = self._clock()
            batch = self.storage.batch()
            with self.storage.read() as view:
                for digest in dict.fromkeys(digests):
                    raw = None if digest in self._deleting else view.get(META, digest)
                    if raw is None:
                        continue
                    meta = _meta_dec.decode(raw)
                    # As an upload without a workflow would: unowned (see publish), so no owner's
                    # release cuts the TTL the caller was promised short.
                    meta = msgspec.structs.replace(meta, upload_time_ns=now, owned=False)
                    batch.put(META, digest, _enc.encode(meta))
                    refreshed[digest] = BlobInfo(digest.hex(), meta.size_bytes, meta.content_type)
            if refreshed:
                await self.committer.submit(batch)
        return refreshed

    async def drop_data(self, data_id: bytes, *, upload: bool) -> None:
        """Delete the chunks stored under ``data_id`` (and its ``blob_uploads`` row when ``upload``)."""
        while True:
            rows = self.storage.scan(CHUNKS, prefix=data_id, limit=_DROP_PAGE)
            batch = self.storage.batch()
            for key, _ in rows:
                batch.delete(CHUNKS, key)
            if len(rows) < _DROP_PAGE and upload:
                batch.delete(UPLOADS, data_id)
            await self.committer.submit(batch)
            if len(rows) < _DROP_PAGE:
                return

    def stat(self, digest: bytes) -> BlobInfo | None:
        """The reference of a stored blob, or None (also while its deletion commits)."""
        if digest in self._deleting:
            return None
        raw = self.storage.get(META, digest)
        if raw is None:
            return None
        meta = _meta_dec.decode(raw)
        return BlobInfo(digest.hex(), meta.size_bytes, meta.content_type)

    def read(
        self, digest: bytes, *, offset: int = 0, length: int = 0
    ) -> tuple[BlobInfo, Iterator[tuple[int, bytes]]]:
        """The blob's reference and an iterator of (offset, chunk) over the range.

        Each step reads LMDB afresh (no view is held between chunks).

        Raises:
            BlobNotFoundError: no such blob.
            InvalidStateArgumentError: the range is outside the blob.
        """
        raw = None if digest in self._deleting else self.storage.get(META, digest)
        if raw is None:
            raise BlobNotFoundError(f"no blob has digest {digest.hex()}", field="sha256")
        meta = _meta_dec.decode(raw)
        if offset < 0 or offset > meta.size_bytes:
            raise InvalidStateArgumentError(
                f"offset {offset} is outside the blob of {meta.size_bytes} bytes", field="offset"
            )
        if length < 0 or offset + length > meta.size_bytes:
            raise InvalidStateArgumentError(
                f"length {length} from offset {offset} runs past the blob of {meta.size_bytes} bytes",
                field="length",
            )
        end = offset + length if length else meta.size_bytes
        info = BlobInfo(digest.hex(), meta.size_bytes, meta.content_type)
        return info, self._chunks(meta.data_id, offset, end)

    def _chunks(self, data_id: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        position = start
        while position < end:
            rows = self.storage.scan(
                CHUNKS, start=data_id, end=data_id + u64_key(position + 1), reverse=True, limit=1
            )
            if not rows:
                raise BlobNotFoundError(f"blob data {data_id.hex()} is missing a chunk at {position}")
            chunk_start = int.from_bytes(rows[0][0][-8:], "big")
            piece = rows[0][1][position - chunk_start : end - chunk_start]
            if not piece:
                raise BlobNotFoundError(f"blob data {data_id.hex()} is missing a chunk at {position}")
            yield position, piece
            position += len(piece)

    # References

    def stage_reference(self, batch: Batch, referrer: bytes, digest: bytes) -> None:
        """Add ``referrer``'s reference to the blob ``digest`` to ``batch`` (two key-only puts).

        The reference is durable with the caller's batch. Check the blob
        with :meth:`stat` in the same event-loop step (no ``await`` between)
        and submit the batch promptly: see the module's rule. Staging a
        reference that exists already, or to a blob that is gone, is
        harmless (the rows go with the referrer).

        Raises:
            ValueError: ``referrer`` is empty, over ``MAX_REFERRER_BYTES``
                or holds NUL, or ``digest`` is not 32 bytes.
        """
        _check_referrer(referrer)
        if len(digest) != 32:
            raise ValueError(f"a digest is 32 bytes, got {len(digest)}")
        batch.put(REFS, referrer + _NUL + digest, b"")
        batch.put(REFS_BY_BLOB, digest + _NUL + referrer, b"")
        now = time.monotonic()
        self._touched.setdefault(digest, {})[referrer] = now
        touches = self._touches
        touches.append((now, digest, referrer))
        horizon = now - TOUCH_GRACE_S
        while touches[0][0] < horizon or len(touches) > _MAX_TOUCHES:
            at, old_digest, old_referrer = touches.popleft()
            by = self._touched.get(old_digest)
            if by is not None and by.get(old_referrer) == at:
                del by[old_referrer]
                if not by:
                    del self._touched[old_digest]

    def stage_release(self, batch: Batch, referrer: bytes, digest: bytes) -> None:
        """Add the removal of ``referrer``'s reference to the blob ``digest`` to ``batch``.

        For a holder that drops one reference in its own commit (a cache
        entry removed with its rows). The blob is not deleted here, owned or
        not: once no reference is left the sweep collects it (past the TTL).

        Raises:
            ValueError: As :meth:`stage_reference`.
        """
        _check_referrer(referrer)
        if len(digest) != 32:
            raise ValueError(f"a digest is 32 bytes, got {len(digest)}")
        batch.delete(REFS, referrer + _NUL + digest)
        batch.delete(REFS_BY_BLOB, digest + _NUL + referrer)
        self._untouch(digest, referrer)

    def _touched_recently(self, digest: bytes) -> bool:
        by = self._touched.get(digest)
        if not by:
            return False
        horizon = time.monotonic() - TOUCH_GRACE_S
        return any(at >= horizon for at in by.values())

    def _untouch(self, digest: bytes, referrer: bytes) -> None:
        """Forget a staging by a referrer that released it (its own reference must not keep the blob)."""
        by = self._touched.get(digest)
        if by is not None and by.pop(referrer, None) is not None and not by:
            del self._touched[digest]

    def referenced(self, digest: bytes) -> bool:
        """Whether a committed reference names the blob (a one-row prefix probe)."""
        return bool(self.storage.scan(REFS_BY_BLOB, prefix=digest + _NUL, limit=1))

    def referrers(self, digest: bytes, *, limit: int = 100) -> list[bytes]:
        """The referrers of the blob, in key order, at most ``limit``."""
        prefix = digest + _NUL
        return [key[len(prefix) :] for key, _ in self.storage.scan(REFS_BY_BLOB, prefix=prefix, limit=limit)]

    def references(self, referrer: bytes, *, limit: int = 1000, after: bytes | None = None) -> list[bytes]:
        """The digests ``referrer`` references, in key order, at most ``limit`` (past ``after``: pages)."""
        _check_referrer(referrer)
        prefix = referrer + _NUL
        if after is None:
            rows = self.storage.scan(REFS, prefix=prefix, limit=limit)
        else:
            rows = self.storage.scan(REFS, start=prefix + after + _NUL, end=referrer + b"\x01", limit=limit)
        return [key[len(prefix) :] for key, _ in rows]

    async def release_referrer(self, referrer: bytes) -> int:
        """Drop every reference of ``referrer``; owned blobs left without one go; returns their bytes.

        Call it once the referrer stages no more references (a deleted
        workflow, an evicted cache entry). Unowned blobs left without a
        reference are the sweep's, once older than its TTL. An owned blob
        whose last reference goes is deleted in the same commit as that
        reference (the decision taken under the lock, as in
        :meth:`_delete_unreferenced`), so a crash between two commits
        cannot leave it without references until the sweep; its chunks go
        afterwards (or at the next start, by its ``blob_uploads`` row).
        """
        _check_referrer(referrer)
        prefix = referrer + _NUL
        deleted = 0
        while True:
            rows = self.storage.scan(REFS, prefix=prefix, limit=_PAGE)
            if not rows:
                return deleted
            doomed: list[tuple[bytes, BlobMeta]] = []
            async with self._lock:
                batch = self.storage.batch()
                with self.storage.read() as view:
                    for key, _ in rows:
                        digest = key[len(prefix) :]
                        own = digest + _NUL + referrer
                        batch.delete(REFS, key)
                        batch.delete(REFS_BY_BLOB, own)
                        self._untouch(digest, referrer)  # its own staging must not keep the blob
                        meta = self._last_reference_of_owned(view, digest, own)
                        if meta is not None:
                            self._stage_deletion(batch, digest, meta, doomed)
                await self._commit_deletion(batch, doomed)
            deleted += await self._drop_deleted(doomed)

    def _last_reference_of_owned(self, view: ReadView, digest: bytes, own: bytes) -> BlobMeta | None:
        """The blob's meta if it is owned and ``own`` is its last reference (none staged meanwhile)."""
        if digest in self._deleting or self._touched_recently(digest):
            return None
        raw = view.get(META, digest)
        if raw is None:
            return None
        meta = _meta_dec.decode(raw)
        if not meta.owned:
            return None
        others = view.scan(REFS_BY_BLOB, prefix=digest + _NUL, limit=2)
        return meta if all(key == own for key, _ in others) else None

    async def release_workflow(self, workflow_id: str) -> int:
        """:meth:`release_referrer` of the workflow (DeleteWorkflow); returns the bytes of blobs deleted."""
        return await self.release_referrer(workflow_referrer(workflow_id))

    # Deletion

    async def sweep(self, ttl_ns: int, *, stop: asyncio.Event | None = None) -> SweepResult:
        """Delete every tracked blob without a reference created (or uploaded again) over ``ttl_ns`` ago.

        Walks ``blob_meta`` a page at a time, deleting at most one page of
        blobs per commit (their chunks in further commits of bounded size)
        and yielding to the event loop between pages; returns early once
        ``stop`` is set. A blob referenced meanwhile is kept (module rule).
        """
        cutoff = self._clock() - ttl_ns
        scanned = deleted = deleted_bytes = unreadable = 0
        start: bytes | None = None
        while stop is None or not stop.is_set():
            rows = self.storage.scan(META, start=start, limit=_PAGE)
            scanned += len(rows)
            candidates = []
            for key, raw in rows:
                try:
                    meta = _meta_dec.decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    # Skipped, not fatal: a pass that stopped here would never
                    # reach the blobs after it, at every pass.
                    unreadable += 1
                    continue
                if _expired(meta, cutoff):
                    candidates.append(key)
            if candidates:
                count, size = await self._delete_unreferenced(candidates, cutoff_ns=cutoff)
                deleted += count
                deleted_bytes += size
            if len(rows) < _PAGE:
                break
            start = rows[-1][0] + _NUL
            await asyncio.sleep(0)
        return SweepResult(
            scanned=scanned, deleted=deleted, deleted_bytes=deleted_bytes, unreadable=unreadable
        )

    async def _delete_unreferenced(
        self, digests: Iterable[bytes], *, owned_only: bool = False, cutoff_ns: int | None = None
    ) -> tuple[int, int]:
        """Delete the unreferenced ``digests`` (owned ones only, or expired ones only); (count, bytes).

        Decides under the lock in one loop step, from the reads to the
        submission, so that no reference staged before the submission is
        missed (it is in LMDB or recently touched); blobs being deleted look
        missing to :meth:`stat` until the commit. The chunks are dropped
        afterwards, outside the lock: their ``blob_uploads`` row, written with
        the deletion, has them dropped on the next start should a crash come first.
        """
        doomed: list[tuple[bytes, BlobMeta]] = []
        async with self._lock:
            batch = self.storage.batch()
            with self.storage.read() as view:
                for digest in dict.fromkeys(digests):
                    if digest in self._deleting or self._touched_recently(digest):
                        continue
                    raw = view.get(META, digest)
                    if raw is None:
                        continue
                    meta = _meta_dec.decode(raw)
                    if owned_only and not meta.owned:
                        continue
                    if cutoff_ns is not None and not _expired(meta, cutoff_ns):
                        continue
                    if view.scan(REFS_BY_BLOB, prefix=digest + _NUL, limit=1):
                        continue
                    self._stage_deletion(batch, digest, meta, doomed)
            if not doomed:
                return 0, 0
            await self._commit_deletion(batch, doomed)
        return len(doomed), await self._drop_deleted(doomed)

    def _stage_deletion(
        self, batch: Batch, digest: bytes, meta: BlobMeta, doomed: list[tuple[bytes, BlobMeta]]
    ) -> None:
        """Stages a blob's deletion: its meta goes, its ``blob_uploads`` row has its chunks dropped."""
        batch.delete(META, digest)
        batch.put(UPLOADS, meta.data_id, u64_key(self._clock()))
        doomed.append((digest, meta))

    async def _commit_deletion(self, batch: Batch, doomed: list[tuple[bytes, BlobMeta]]) -> None:
        """Commits staged deletions (under the lock); the blobs look missing until it ends."""
        gone = [digest for digest, _ in doomed]
        self._deleting.update(gone)
        try:
            await self.committer.submit(batch)
        finally:
            self._deleting.difference_update(gone)

    async def _drop_deleted(self, doomed: list[tuple[bytes, BlobMeta]]) -> int:
        """Drops the chunks of committed deletions; returns their bytes."""
        for _, meta in doomed:
            await self.drop_data(meta.data_id, upload=True)
        return sum(meta.size_bytes for _, meta in doomed)


def _expired(meta: BlobMeta, cutoff_ns: int) -> bool:
    """Whether the sweep may take the blob: tracked, created and last uploaded by ``cutoff_ns``."""
    return meta.tracked and max(meta.create_time_ns, meta.upload_time_ns) <= cutoff_ns
