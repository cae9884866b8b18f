"""A namespace's entry heads in memory: a column table read in one go, plus what changed since.

Starting a namespace of a million entries by decoding a million LMDB records
into Python objects takes seconds. Instead the heads live in an
:class:`EntryTable` (one numpy column per field, rows in entry-id order,
with the recency, expiry and exact-hash orders precomputed), saved beside
the index and read back with one read and a checksum. :class:`Entries`
serves the engine from that table and keeps in Python only what changed
since it was built (new, removed and recently used entries); an entry's
:class:`EntryHead` object is made the first time it is asked for.

The table file is derived data: the engine trusts it only when LMDB's
snapshot mark names it (same sequence and token), and replays the journal
rows written after it. Anything else (missing, truncated, corrupt, of
another namespace) is refused by :meth:`EntryTable.load`, and the engine
rebuilds the table from LMDB.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._model import EntryHead

__all__ = ["Entries", "EntryTable", "ExactView", "RecencyView", "TableHeader"]

_MAGIC = b"AREcach\x01"
_HEADER = struct.Struct("<8sIQQq16sI12x")  # magic, version, count, seq, namespace create_ns, token, crc32
_VERSION = 1
# (column, dtype, components per row), in file order.
_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("ids", "<u8", 1),
    ("hashes", "u1", 16),
    ("create_ns", "<i8", 1),
    ("expire_ns", "<i8", 1),
    ("access_ns", "<i8", 1),
    ("size_bytes", "<i8", 1),
    ("has_vector", "?", 1),
    ("access_order", "<i4", 1),
    ("expiry_order", "<i4", 1),
    ("exact_order", "<i4", 1),
)
_ROW_BYTES = sum(np.dtype(dtype).itemsize * width for _, dtype, width in _COLUMNS)
_MAX_ROWS = (1 << 31) - 1

_Array = np.ndarray[Any, Any]


class TableHeader:
    """What a table file says about itself: the journal sequence it holds, its token, its namespace."""

    __slots__ = ("count", "namespace_create_ns", "seq", "token")

    def __init__(self, *, count: int, seq: int, token: bytes, namespace_create_ns: int) -> None:
        self.count = count
        self.seq = seq
        self.token = token
        self.namespace_create_ns = namespace_create_ns


class EntryTable:
    """Entry heads as immutable columns, rows in entry-id order.

    ``access_order`` lists rows least recently used first, ``expiry_order``
    soonest expiring first and ``exact_order`` by the first 8 bytes of the
    prompt hash (``exact_keys``), so that start needs no sort.
    """

    __slots__ = (
        "access_ns",
        "access_order",
        "create_ns",
        "exact_keys",
        "exact_order",
        "expire_ns",
        "expiry_order",
        "has_vector",
        "hashes",
        "ids",
        "size_bytes",
    )

    def __init__(self, columns: dict[str, _Array]) -> None:
        self.ids: _Array = columns["ids"]
        self.hashes: _Array = columns["hashes"]
        self.create_ns: _Array = columns["create_ns"]
        self.expire_ns: _Array = columns["expire_ns"]
        self.access_ns: _Array = columns["access_ns"]
        self.size_bytes: _Array = columns["size_bytes"]
        self.has_vector: _Array = columns["has_vector"]
        self.access_order: _Array = columns["access_order"]
        self.expiry_order: _Array = columns["expiry_order"]
        self.exact_order: _Array = columns["exact_order"]
        self.exact_keys: _Array = _hash_keys(self.hashes)[self.exact_order]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def build(
        cls,
        *,
        ids: _Array,
        hashes: _Array,
        create_ns: _Array,
        expire_ns: _Array,
        access_ns: _Array,
        size_bytes: _Array,
        has_vector: _Array,
    ) -> EntryTable:
        """A table from columns given least recently used first (sorts; may run in a worker thread)."""
        ids = np.asarray(ids, dtype=np.uint64)
        n = ids.shape[0]
        if n > _MAX_ROWS:
            raise ValueError(f"an entry table holds at most {_MAX_ROWS} rows, got {n}")
        by_id = np.argsort(ids, kind="stable")
        columns: dict[str, _Array] = {
            "ids": np.ascontiguousarray(ids[by_id]),
            "hashes": np.ascontiguousarray(np.asarray(hashes, dtype=np.uint8).reshape(n, 16)[by_id]),
            "create_ns": np.ascontiguousarray(np.asarray(create_ns, dtype=np.int64)[by_id]),
            "expire_ns": np.ascontiguousarray(np.asarray(expire_ns, dtype=np.int64)[by_id]),
            "access_ns": np.ascontiguousarray(np.asarray(access_ns, dtype=np.int64)[by_id]),
            "size_bytes": np.ascontiguousarray(np.asarray(size_bytes, dtype=np.int64)[by_id]),
            "has_vector": np.ascontiguousarray(np.asarray(has_vector, dtype=np.bool_)[by_id]),
        }
        # Given rows are in recency order: given row k sits at row position[k] once sorted by id.
        position = np.empty(n, dtype=np.int32)
        position[by_id] = np.arange(n, dtype=np.int32)
        columns["access_order"] = position
        columns["expiry_order"] = np.argsort(columns["expire_ns"], kind="stable").astype(np.int32)
        columns["exact_order"] = np.argsort(_hash_keys(columns["hashes"]), kind="stable").astype(np.int32)
        return cls(columns)

    @classmethod
    def empty(cls) -> EntryTable:
        """A table of no entries."""
        return cls(
            {name: np.zeros((0, width) if width > 1 else 0, dtype=dtype) for name, dtype, width in _COLUMNS}
        )

    @classmethod
    def from_heads(cls, heads: Sequence[EntryHead]) -> EntryTable:
        """A table of these heads, given least recently used first."""
        n = len(heads)
        hashes = np.frombuffer(b"".join(_hash16(h.prompt_hash) for h in heads), dtype=np.uint8).reshape(n, 16)
        return cls.build(
            ids=np.fromiter((h.entry_id for h in heads), dtype=np.uint64, count=n),
            hashes=hashes,
            create_ns=np.fromiter((h.create_ns for h in heads), dtype=np.int64, count=n),
            expire_ns=np.fromiter((h.expire_ns for h in heads), dtype=np.int64, count=n),
            access_ns=np.fromiter((h.last_access_ns for h in heads), dtype=np.int64, count=n),
            size_bytes=np.fromiter((h.size_bytes for h in heads), dtype=np.int64, count=n),
            has_vector=np.fromiter((h.has_vector for h in heads), dtype=np.bool_, count=n),
        )

    # -- file ------------------------------------------------------------

    def save(self, path: Path, *, seq: int, token: bytes, namespace_create_ns: int) -> None:
        """Writes the table atomically (a temporary file, fsync, rename, fsync of the folder)."""
        parts = [
            np.ascontiguousarray(getattr(self, name), dtype=dtype).tobytes() for name, dtype, _ in _COLUMNS
        ]
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        header = _HEADER.pack(_MAGIC, _VERSION, len(self), seq, namespace_create_ns, _token16(token), crc)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{_token16(token).hex()}.tmp")
        try:
            with temporary.open("wb") as file:
                file.write(header)
                for part in parts:
                    file.write(part)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(path)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    @classmethod
    def read_header(cls, path: Path) -> TableHeader | None:
        """The header of a table file, or None when it is missing or not one."""
        try:
            with path.open("rb") as file:
                raw = file.read(_HEADER.size)
        except OSError:
            return None
        return _parse_header(raw)

    @classmethod
    def load(cls, path: Path, *, seq: int, token: bytes, namespace_create_ns: int) -> EntryTable | None:
        """The table saved at ``path`` if it is exactly the one expected, else None.

        Refuses a missing or truncated file, another version, another
        sequence, token or namespace, and a checksum mismatch.
        """
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        header = _parse_header(raw[: _HEADER.size])
        if (
            header is None
            or header.seq != seq
            or header.token != _token16(token)
            or header.namespace_create_ns != namespace_create_ns
            or len(raw) != _HEADER.size + header.count * _ROW_BYTES
        ):
            return None
        crc = _HEADER.unpack_from(raw)[6]
        view = memoryview(raw)[_HEADER.size :]
        if zlib.crc32(view) != crc:
            return None
        n = header.count
        columns: dict[str, _Array] = {}
        offset = 0
        for name, dtype, width in _COLUMNS:
            size = np.dtype(dtype).itemsize * width * n
            array = np.frombuffer(view[offset : offset + size], dtype=dtype)
            # Aligned copies: numpy copies a misaligned array on every search
            # (~0.3 ms per searchsorted at 1M rows), and the file's columns are
            # packed after a 68-byte header.
            array = np.require(array, requirements=("A", "C"))
            columns[name] = array.reshape(n, width) if width > 1 else array
            offset += size
        for name in ("access_order", "expiry_order", "exact_order"):
            order = columns[name]
            if n and (int(order.min()) < 0 or int(order.max()) >= n):
                return None
        return cls(columns)


class Entries:
    """Every live entry head of a namespace: a base :class:`EntryTable` and the changes since.

    ``objects`` holds the heads asked for or added since the base (so a
    head's ``last_access_ns`` can be changed in place); ``recent`` the
    recency order of entries used or added since the base, all more recent
    than any base row still in base order; ``heap`` the expiry of heads
    added since. Removing a base row clears its ``live`` flag.
    """

    __slots__ = (
        "_access_cursor",
        "_base",
        "_count",
        "_exact_new",
        "_expiry_cursor",
        "_heap",
        "_live",
        "_moved",
        "_objects",
        "_recent",
        "size_bytes",
    )

    def __init__(self, base: EntryTable | None = None) -> None:
        self._base = base if base is not None else EntryTable.empty()
        n = len(self._base)
        self._live = np.ones(n, dtype=np.bool_)
        self._moved = np.zeros(n, dtype=np.bool_)  # base rows now ordered by ``recent``
        self._objects: dict[int, EntryHead] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._exact_new: dict[bytes, int] = {}
        self._heap: list[tuple[int, int]] = []
        self._access_cursor = 0
        self._expiry_cursor = 0
        self._count = n
        self.size_bytes = int(self._base.size_bytes.sum()) if n else 0

    # -- the mapping of entry id to head -----------------------------------

    def __len__(self) -> int:
        return self._count

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int) and self.get(entry_id) is not None

    def __getitem__(self, entry_id: int) -> EntryHead:
        head = self.get(entry_id)
        if head is None:
            raise KeyError(entry_id)
        return head

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids().tolist())

    def get(self, entry_id: int, default: EntryHead | None = None) -> EntryHead | None:
        """The head of a live entry (made from its base row the first time), or ``default``."""
        head = self._objects.get(entry_id)
        if head is not None:
            return head
        row = self._row(entry_id)
        if row < 0:
            return default
        head = self._head(row)
        self._objects[entry_id] = head
        return head

    def values(self) -> Iterator[EntryHead]:
        """Every live head (makes an object of each: for small namespaces and tests)."""
        for entry_id in self.ids().tolist():
            head = self.get(entry_id)
            if head is not None:
                yield head

    def ids(self) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """Every live entry id, in no particular order."""
        return np.concatenate([self._base.ids[self._live], self._added()])

    def vector_ids(self) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """Every live entry id that has a vector."""
        added = self._added()
        objects = self._objects
        with_vector = np.fromiter(
            (objects[n].has_vector for n in added.tolist()), dtype=np.bool_, count=added.size
        )
        return np.concatenate([self._base.ids[self._live & self._base.has_vector], added[with_vector]])

    def max_id(self) -> int:
        """The largest entry id held (0 when empty)."""
        top = int(self._base.ids[-1]) if len(self._base) else 0
        return max([top, *self._objects]) if self._objects else top

    # -- changes ---------------------------------------------------------

    def admit(self, head: EntryHead) -> None:
        """Adds a head (a new entry, or a newer version of one), most recently used."""
        old = self.forget(head.entry_id)
        del old
        self._objects[head.entry_id] = head
        self._exact_new[head.prompt_hash] = head.entry_id
        self._recent[head.entry_id] = None
        heapq.heappush(self._heap, (head.expire_ns, head.entry_id))
        self._count += 1
        self.size_bytes += head.size_bytes
        self._compact_heap()

    def forget(self, entry_id: int) -> EntryHead | None:
        """Removes an entry; returns its head, or None when it was not held."""
        head = self.get(entry_id)
        if head is None:
            return None
        del self._objects[entry_id]
        row = self._row(entry_id)
        if row >= 0:
            self._live[row] = False
        if self._exact_new.get(head.prompt_hash) == entry_id:
            del self._exact_new[head.prompt_hash]
        self._recent.pop(entry_id, None)
        self._count -= 1
        self.size_bytes -= head.size_bytes
        self._compact_heap()
        return head

    # -- exact tier ------------------------------------------------------

    def find(self, digest: bytes) -> int | None:
        """The id of the live entry whose prompt hash is ``digest``, or None."""
        entry_id = self._exact_new.get(digest)
        if entry_id is not None:
            return entry_id
        base = self._base
        if not len(base):
            return None
        key = np.uint64(int.from_bytes(digest[:8], "little"))
        keys = base.exact_keys
        at = int(keys.searchsorted(key))
        while at < keys.shape[0] and keys[at] == key:
            row = int(base.exact_order[at])
            if self._live[row] and base.hashes[row].tobytes() == digest:
                return int(base.ids[row])
            at += 1
        return None

    # -- recency ---------------------------------------------------------

    def touch(self, entry_id: int) -> None:
        """Marks an entry most recently used."""
        recent = self._recent
        try:
            recent.move_to_end(entry_id)
        except KeyError:
            row = self._row(entry_id)
            if row < 0 and entry_id not in self._objects:
                return
            if row >= 0:
                self._moved[row] = True
            recent[entry_id] = None

    def oldest(self) -> int | None:
        """The least recently used live entry, or None when empty."""
        base = self._base
        order = base.access_order
        cursor = self._access_cursor
        live, moved = self._live, self._moved
        while cursor < order.shape[0]:
            row = int(order[cursor])
            if live[row] and not moved[row]:
                self._access_cursor = cursor
                return int(base.ids[row])
            cursor += 1
        self._access_cursor = cursor
        return next(iter(self._recent), None)

    def recency(self) -> Iterator[int]:
        """Live entry ids, least recently used first."""
        base = self._base
        rows = base.access_order[self._access_cursor :]
        rows = rows[self._live[rows] & ~self._moved[rows]]
        yield from base.ids[rows].tolist()
        yield from list(self._recent)

    # -- expiry ----------------------------------------------------------

    def due(self, now: int) -> list[tuple[int, int]]:
        """(expire_ns, entry_id) of entries that may have expired by ``now``; callers check each."""
        out: list[tuple[int, int]] = []
        base = self._base
        order = base.expiry_order
        cursor = self._expiry_cursor
        while cursor < order.shape[0]:
            row = int(order[cursor])
            expire = int(base.expire_ns[row])
            if expire > now:
                break
            if self._live[row]:
                out.append((expire, int(base.ids[row])))
            cursor += 1
        self._expiry_cursor = cursor
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap))
        return out

    # -- snapshots -------------------------------------------------------

    def export(self) -> dict[str, _Array]:
        """Every live head as columns, least recently used first (for :meth:`EntryTable.build`)."""
        base = self._base
        rows = base.access_order[self._access_cursor :]
        rows = rows[self._live[rows] & ~self._moved[rows]]
        heads = [self._objects.get(n) or self.get(n) for n in self._recent]
        recent = [h for h in heads if h is not None]
        m = len(recent)
        hashes = np.frombuffer(b"".join(_hash16(h.prompt_hash) for h in recent), dtype=np.uint8).reshape(
            m, 16
        )
        return {
            "ids": np.concatenate(
                [base.ids[rows], np.fromiter((h.entry_id for h in recent), dtype=np.uint64, count=m)]
            ),
            "hashes": np.concatenate([base.hashes[rows], hashes]),
            "create_ns": np.concatenate(
                [base.create_ns[rows], np.fromiter((h.create_ns for h in recent), dtype=np.int64, count=m)]
            ),
            "expire_ns": np.concatenate(
                [base.expire_ns[rows], np.fromiter((h.expire_ns for h in recent), dtype=np.int64, count=m)]
            ),
            "access_ns": np.concatenate(
                [
                    base.access_ns[rows],
                    np.fromiter((h.last_access_ns for h in recent), dtype=np.int64, count=m),
                ]
            ),
            "size_bytes": np.concatenate(
                [base.size_bytes[rows], np.fromiter((h.size_bytes for h in recent), dtype=np.int64, count=m)]
            ),
            "has_vector": np.concatenate(
                [base.has_vector[rows], np.fromiter((h.has_vector for h in recent), dtype=np.bool_, count=m)]
            ),
        }

    def rebase(self, table: EntryTable, since: Iterable[int]) -> Entries:
        """A new :class:`Entries` over ``table`` (built from an earlier :meth:`export`).

        ``since`` names the entries changed or used after that export; their
        current heads (or their absence) are carried over, in recency order.
        """
        fresh = Entries(table)
        changed = set(since)
        for entry_id in changed:
            fresh.forget(entry_id)
        for entry_id in self._recent:
            if entry_id in changed:
                head = self.get(entry_id)
                if head is not None:
                    fresh.admit(head)
        return fresh

    # -- helpers ---------------------------------------------------------

    def _compact_heap(self) -> None:
        # Removed entries leave their expiry behind; drop them now and then.
        if len(self._heap) > 2 * len(self._objects) + 1024:
            self._heap = [(h.expire_ns, h.entry_id) for h in self._objects.values()]
            heapq.heapify(self._heap)

    def _added(self) -> np.ndarray[Any, np.dtype[np.uint64]]:
        # Heads held as objects that are not live base rows: the entries added since the base.
        held = np.fromiter(self._objects, dtype=np.uint64, count=len(self._objects))
        if not held.size or not len(self._base):
            return held
        return held[~np.isin(held, self._base.ids[self._live])]

    def _row(self, entry_id: int) -> int:
        ids = self._base.ids
        n = ids.shape[0]
        if not n or entry_id < 0 or entry_id > 0xFFFF_FFFF_FFFF_FFFF:
            return -1
        at = int(ids.searchsorted(np.uint64(entry_id)))
        if at < n and int(ids[at]) == entry_id and self._live[at]:
            return at
        return -1

    def _head(self, row: int) -> EntryHead:
        base = self._base
        return EntryHead(
            entry_id=int(base.ids[row]),
            prompt_hash=base.hashes[row].tobytes(),
            create_ns=int(base.create_ns[row]),
            expire_ns=int(base.expire_ns[row]),
            size_bytes=int(base.size_bytes[row]),
            has_vector=bool(base.has_vector[row]),
            last_access_ns=int(base.access_ns[row]),
        )


def _hash16(digest: bytes) -> bytes:
    return digest[:16].ljust(16, b"\x00")


def _hash_keys(hashes: _Array) -> _Array:
    n = hashes.shape[0]
    if not n:
        return np.zeros(0, dtype=np.uint64)
    return np.ascontiguousarray(hashes[:, :8]).view("<u8").reshape(n)


def _token16(token: bytes) -> bytes:
    return token[:16].ljust(16, b"\x00")


def _parse_header(raw: bytes) -> TableHeader | None:
    if len(raw) < _HEADER.size:
        return None
    magic, version, count, seq, namespace_create_ns, token, _ = _HEADER.unpack_from(raw)
    if magic != _MAGIC or version != _VERSION or count > _MAX_ROWS:
        return None
    return TableHeader(count=count, seq=seq, token=token, namespace_create_ns=namespace_create_ns)


class ExactView:
    """The exact tier's map of prompt hash to entry id, over :class:`Entries`."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Entries) -> None:
        self._entries = entries

    def get(self, digest: bytes, default: int | None = None) -> int | None:
        """The id of the live entry of this prompt hash, or ``default``."""
        found = self._entries.find(digest)
        return default if found is None else found

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, bytes) and self._entries.find(digest) is not None


class RecencyView:
    """The least-recently-used order over :class:`Entries` (an OrderedDict's methods the engine uses)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Entries) -> None:
        self._entries = entries

    def move_to_end(self, entry_id: int) -> None:
        """Marks an entry most recently used."""
        self._entries.touch(entry_id)

    def first(self) -> int | None:
        """The least recently used entry, or None."""
        return self._entries.oldest()

    def __iter__(self) -> Iterator[int]:
        return self._entries.recency()

    def __len__(self) -> int:
        return len(self._entries)
