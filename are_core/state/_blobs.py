"""Content-addressed blobs: streamed in, stored in chunks, deduplicated by SHA-256.

Tables:

* ``blob_meta``    ``sha256 (32 bytes)`` -> :class:`BlobMeta`
* ``blob_chunks``  ``data_id (16 bytes) u64(offset)`` -> up to 1 MiB of bytes
* ``blob_uploads`` ``data_id`` -> start time of an upload not yet finished
* ``blob_owners``  ``workflow_id NUL sha256`` -> empty (one reference each)

An upload streams its chunks into LMDB under a fresh ``data_id`` as they
arrive (bounded memory, backpressure from the group committer), then its
digest is checked and ``blob_meta`` is pointed at ``data_id`` in one commit;
a duplicate upload only deletes its staged chunks. Uploads cut short by a
crash are swept on start. A blob owned by workflows is removed when the last
owner's state is deleted (reference counting).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Iterator

import msgspec

from are_core.storage import GroupCommitter, Storage, u64_key

from ._errors import (
    BlobDigestMismatchError,
    BlobNotFoundError,
    BlobSizeMismatchError,
    InvalidStateArgumentError,
    LimitExceededError,
)

__all__ = ["BLOB_TABLES", "MAX_BLOB_BYTES", "MAX_CHUNK_BYTES", "BlobInfo", "BlobStore", "BlobUpload"]

MiB = 1024 * 1024
MAX_BLOB_BYTES = 256 * MiB
MAX_CHUNK_BYTES = 1 * MiB
_STORED_CHUNK_BYTES = 1 * MiB
META, CHUNKS, UPLOADS, OWNERS = "blob_meta", "blob_chunks", "blob_uploads", "blob_owners"
BLOB_TABLES = (META, CHUNKS, UPLOADS, OWNERS)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobMeta(msgspec.Struct, frozen=True, kw_only=True):
    """A stored blob (table ``blob_meta``)."""

    size_bytes: int
    content_type: str
    data_id: bytes
    create_time_ns: int
    owners: int = 0


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
    """The content-addressed blob store of one sidecar."""

    def __init__(self, storage: Storage, committer: GroupCommitter) -> None:
        """Bind the store to storage."""
        self.storage = storage
        self.committer = committer
        self._lock = asyncio.Lock()

    async def recover(self) -> int:
        """Drop the chunks of uploads a crash cut short; returns how many."""
        rows = self.storage.scan(UPLOADS, limit=10_000)
        for data_id, _ in rows:
            await self.drop_data(data_id, upload=True)
        return len(rows)

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
        """Make a checked upload visible (or count it as a duplicate); used by ``BlobUpload.finish``."""
        async with self._lock:
            raw = self.storage.get(META, digest)
            batch = self.storage.batch()
            owner_key = upload.workflow_id.encode() + b"\x00" + digest if upload.workflow_id else b""
            new_owner = bool(owner_key) and self.storage.get(OWNERS, owner_key) is None
            if raw is not None:
                meta = _meta_dec.decode(raw)
                if new_owner:
                    batch.put(OWNERS, owner_key, b"")
                    batch.put(
                        META, digest, _enc.encode(msgspec.structs.replace(meta, owners=meta.owners + 1))
                    )
                await self.committer.submit(batch)
                if upload.staged:
                    await self.drop_data(upload.data_id, upload=True)
                return BlobInfo(digest.hex(), meta.size_bytes, meta.content_type), True
            if tail:
                batch.put(CHUNKS, upload.data_id + u64_key(upload.size_bytes - len(tail)), tail)
            if upload.staged:
                batch.delete(UPLOADS, upload.data_id)
            meta = BlobMeta(
                size_bytes=upload.size_bytes,
                content_type=upload.content_type,
                data_id=upload.data_id,
                create_time_ns=time.time_ns(),
                owners=1 if new_owner else 0,
            )
            batch.put(META, digest, _enc.encode(meta))
            if new_owner:
                batch.put(OWNERS, owner_key, b"")
            await self.committer.submit(batch)
            return BlobInfo(digest.hex(), meta.size_bytes, meta.content_type), False

    async def drop_data(self, data_id: bytes, *, upload: bool) -> None:
        """Delete the chunks stored under ``data_id`` (and its upload row when ``upload``)."""
        while True:
            rows = self.storage.scan(CHUNKS, prefix=data_id, limit=64)
            batch = self.storage.batch()
            for key, _ in rows:
                batch.delete(CHUNKS, key)
            if len(rows) < 64 and upload:
                batch.delete(UPLOADS, data_id)
            await self.committer.submit(batch)
            if len(rows) < 64:
                return

    def stat(self, digest: bytes) -> BlobInfo | None:
        """The reference of a stored blob, or None."""
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
        raw = self.storage.get(META, digest)
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

    async def add_owner(self, workflow_id: str, digest: bytes) -> bool:
        """Count ``workflow_id`` as an owner of an owned blob its tasks reference.

        A blob uploaded for a workflow is deleted with its last owner; a
        workflow whose task payloads reference it becomes an owner too, so
        deleting another workflow keeps it. An unowned blob (uploaded without
        a workflow, never deleted by a workflow) is left unowned. Returns
        whether the blob exists.
        """
        owner_key = workflow_id.encode() + b"\x00" + digest
        async with self._lock:
            raw = self.storage.get(META, digest)
            if raw is None:
                return False
            meta = _meta_dec.decode(raw)
            if meta.owners == 0 or self.storage.get(OWNERS, owner_key) is not None:
                return True
            batch = self.storage.batch()
            batch.put(OWNERS, owner_key, b"")
            batch.put(META, digest, _enc.encode(msgspec.structs.replace(meta, owners=meta.owners + 1)))
            await self.committer.submit(batch)
            return True

    async def release_workflow(self, workflow_id: str) -> int:
        """Drop the workflow's references; blobs left with no owner are deleted. Returns their bytes."""
        prefix = workflow_id.encode() + b"\x00"
        deleted = 0
        async with self._lock:
            while True:
                rows = self.storage.scan(OWNERS, prefix=prefix, limit=256)
                if not rows:
                    return deleted
                batch = self.storage.batch()
                drop: list[BlobMeta] = []
                for key, _ in rows:
                    digest = key[len(prefix) :]
                    batch.delete(OWNERS, key)
                    raw = self.storage.get(META, digest)
                    if raw is None:
                        continue
                    meta = _meta_dec.decode(raw)
                    if meta.owners <= 1:
                        batch.delete(META, digest)
                        drop.append(meta)
                    else:
                        batch.put(
                            META, digest, _enc.encode(msgspec.structs.replace(meta, owners=meta.owners - 1))
                        )
                await self.committer.submit(batch)
                for meta in drop:
                    await self.drop_data(meta.data_id, upload=False)
                    deleted += meta.size_bytes
