"""The LMDB environment: declared tables, bounded reads and atomic writes."""

from __future__ import annotations

import enum
import mmap
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Self

import lmdb

from ._batch import Batch, MutationKind
from ._errors import (
    KeyExistsError,
    ScanTooLargeError,
    StorageClosedError,
    StorageError,
    StorageFullError,
    StorageOpenError,
    UnknownTableError,
)
from ._keys import prefix_end
from ._lock import DataDirLock

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator, Sequence

__all__ = ["Durability", "ReadView", "Storage"]

MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_TABLES = 64
"""Upper bound on declared tables; LMDB scans its table list linearly."""
DEFAULT_MAX_SCAN_ROWS = 10_000
_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_RESIZE_WAIT_SECONDS = 30.0
_Puts = list[tuple[bytes, bytes]]  # one table's puts, in order


class Durability(enum.Enum):
    """How far a commit has gone before it is acknowledged."""

    SYNC = "sync"
    """Every commit is flushed to the disk (fsync) before it is acknowledged.

    An acknowledged write survives a process crash, a kernel crash and a power
    loss. Costs one sync per group commit, not per write.
    """

    RELAXED = "relaxed"
    """Commits are written to the OS page cache but not synced (LMDB ``sync=False``).

    An acknowledged write survives the process dying (crash, SIGKILL, OOM
    kill), because the kernel still holds it and writes it out later. It may
    be lost on a power loss or kernel crash; LMDB's copy-on-write meta pages
    keep the database consistent even then, at an older transaction. Choose
    it for throughput when losing the last moments of work on a host failure
    is acceptable.
    """


class Storage:
    """One LMDB environment at ``<data_dir>/lmdb/`` with tables declared at open.

    Reads are synchronous and cheap (memory-mapped, no copies beyond the
    returned ``bytes``), meant to be called from the event loop. Writes go
    through ``apply_batches``, which blocks on the commit (and its sync), so
    async code uses ``GroupCommitter`` to run it on a dedicated writer thread.

    The memory map grows when a write does not fit: the transaction is aborted,
    the map doubled (up to ``max_map_size_bytes``) and the write retried. LMDB
    may only remap while no transaction of this process is open, so every read
    view registers with a guard that the resize waits on. Do not await while
    holding a ``read()`` view: a map growth would wait for it.

    The data folder is owned exclusively through ``DataDirLock``.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        env: lmdb.Environment,
        dbs: dict[str, lmdb._Database],
        durability: Durability,
        max_map_size_bytes: int,
        max_scan_rows: int,
        lock: DataDirLock,
        owns_lock: bool,
    ) -> None:
        """Wrap an opened environment; use ``Storage.open``."""
        self.data_dir = data_dir
        self.path = data_dir / "lmdb"
        self.durability = durability
        self.max_map_size_bytes = max_map_size_bytes
        self.max_scan_rows = max_scan_rows
        self.tables: frozenset[str] = frozenset(dbs)
        self.map_resizes = 0
        """How many times the map has grown since open."""
        self._env = env
        self._dbs = dbs
        self._lock = lock
        self._owns_lock = owns_lock
        self._max_key_size = env.max_key_size()
        self._map_size = env.info()["map_size"]
        self._guard = threading.Condition()
        self._active_readers = 0
        self._closed = False

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        tables: Iterable[str],
        durability: Durability = Durability.SYNC,
        initial_map_size_bytes: int = 256 * MiB,
        max_map_size_bytes: int = 64 * GiB,
        max_scan_rows: int = DEFAULT_MAX_SCAN_ROWS,
        data_dir_lock: DataDirLock | None = None,
    ) -> Storage:
        """Open (creating if needed) the storage of ``data_dir``.

        Args:
            data_dir: The sidecar's data folder; LMDB lives in its ``lmdb/``.
            tables: Names of every table (LMDB named database) used; at most
                ``MAX_TABLES``, each matching ``[a-z][a-z0-9_]*``.
            durability: When a commit counts as done; see ``Durability``.
            initial_map_size_bytes: Starting map size; it doubles when full.
                An existing environment keeps at least its current size.
            max_map_size_bytes: The map never grows past this; a write that
                would need more raises ``StorageFullError``.
            max_scan_rows: Bound on rows returned by a scan without ``limit``.
            data_dir_lock: A lock the caller already holds on ``data_dir``;
                when omitted, the storage takes one and releases it on close.

        Raises:
            DataDirLockedError: another holder owns ``data_dir``.
            StorageOpenError: the LMDB environment cannot be opened (a damaged
                file, one that is not LMDB's, or one this process cannot read).
            ValueError: a bad table name or size.
        """
        names = _check_tables(tables)
        page = mmap.PAGESIZE
        if initial_map_size_bytes < 16 * page:
            raise ValueError(f"initial_map_size_bytes must be at least {16 * page}")
        if max_map_size_bytes < initial_map_size_bytes:
            raise ValueError(
                f"max_map_size_bytes={max_map_size_bytes} is below "
                f"initial_map_size_bytes={initial_map_size_bytes}"
            )
        if max_scan_rows < 1:
            raise ValueError(f"max_scan_rows must be positive, got {max_scan_rows}")
        folder = Path(data_dir).absolute()
        if data_dir_lock is None:
            lock, owns_lock = DataDirLock.acquire(folder), True
        else:
            if not data_dir_lock.held or data_dir_lock.data_dir != folder:
                raise ValueError(f"data_dir_lock does not hold {str(folder)!r}")
            lock, owns_lock = data_dir_lock, False
        try:
            env_dir = folder / "lmdb"
            env_dir.mkdir(mode=0o700, exist_ok=True)
            try:
                env = lmdb.open(
                    str(env_dir),
                    map_size=_round_up(initial_map_size_bytes, page),
                    max_dbs=len(names),
                    sync=durability is Durability.SYNC,
                    metasync=True,
                    writemap=False,  # stray writes cannot corrupt the map
                    map_async=False,
                    mode=0o600,
                )
                try:
                    dbs = {name: env.open_db(name.encode()) for name in names}
                except BaseException:
                    env.close()
                    raise
            except lmdb.Error as error:  # a damaged file, not LMDB's, or unreadable
                reason = str(error).removeprefix(f"{env_dir}: ")
                raise StorageOpenError(folder, reason) from error
        except BaseException:
            if owns_lock:
                lock.release()
            raise
        return cls(
            data_dir=folder,
            env=env,
            dbs=dbs,
            durability=durability,
            max_map_size_bytes=max(max_map_size_bytes, env.info()["map_size"]),
            max_scan_rows=max_scan_rows,
            lock=lock,
            owns_lock=owns_lock,
        )

    @property
    def map_size_bytes(self) -> int:
        """The current size of the memory map (the database's size limit now)."""
        return self._map_size

    @property
    def max_key_size(self) -> int:
        """The longest key LMDB accepts, in bytes."""
        return self._max_key_size

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called."""
        return self._closed

    def batch(self) -> Batch:
        """Return an empty batch that checks tables and keys as they are added."""
        return Batch(self.tables, self._max_key_size)

    # Reads

    @contextmanager
    def read(self) -> Iterator[ReadView]:
        """Open a consistent snapshot for several reads.

        Do not await inside the block: the view pins the map, and a map growth
        on the writer thread waits until it is closed.
        """
        with self._guard:
            if self._closed:
                raise StorageClosedError("storage")
            self._active_readers += 1
        try:
            txn = self._env.begin()
            view = ReadView(txn, self._dbs, self.max_scan_rows, self._max_key_size)
            try:
                yield view
            finally:
                # py-lmdb keeps an aborted read transaction's reader slot until the
                # object is freed, and an exception raised in the block keeps this
                # frame and the caller's view alive (until a cyclic collection, which
                # the sidecar makes rare): a burst of refused reads would fill LMDB's
                # reader table (MDB_READERS_FULL). Drop every reference now.
                txn.abort()
                view.close()
                del txn, view
        finally:
            with self._guard:
                self._active_readers -= 1
                if not self._active_readers:
                    self._guard.notify_all()

    def get(self, table: str, key: bytes) -> bytes | None:
        """Return the value of ``key`` in ``table``, or None if absent."""
        with self.read() as view:
            return view.get(table, key)

    def scan(
        self,
        table: str,
        *,
        prefix: bytes = b"",
        start: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Return rows of ``table`` in key order; see ``ReadView.scan``."""
        with self.read() as view:
            return view.scan(table, prefix=prefix, start=start, end=end, reverse=reverse, limit=limit)

    def count(self, table: str) -> int:
        """Return the number of rows in ``table``."""
        with self.read() as view:
            return view.count(table)

    # Writes

    def apply_batches(self, batches: Sequence[Batch]) -> list[KeyExistsError | None]:
        """Apply ``batches`` in order in one write transaction and commit it.

        Blocks until the commit returns (and, in ``SYNC`` mode, is on disk).
        A batch whose ``put_if_absent`` finds its key is skipped whole and its
        slot in the result holds the ``KeyExistsError``; the others are
        applied. Call it from one thread at a time; ``GroupCommitter`` does.

        Raises:
            StorageFullError: the transaction does not fit even in the
                largest allowed map; nothing is applied.
            StorageError: LMDB failed; nothing is applied.
        """
        if self._closed:
            raise StorageClosedError("storage")
        while True:
            try:
                return self._write_once(batches)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise StorageError(f"write transaction failed in {str(self.path)!r}: {exc}") from exc

    def _write_once(self, batches: Sequence[Batch]) -> list[KeyExistsError | None]:
        """One write transaction; the puts go to LMDB a table at a time, in C.

        Puts are gathered per table and written with one ``putmulti`` call
        each (py-lmdb's loop in C, faster than a ``put`` call per mutation;
        like ``put``, it still releases the GIL around each LMDB call).
        Puts and deletes of one table keep their order: a delete
        first writes the puts gathered before it, and a conditional batch's
        check first writes everything gathered, so that it reads the state
        the batches before it left. Tables are independent, so the order
        between them does not matter.
        """
        dbs = self._dbs
        results: list[KeyExistsError | None] = []
        gathered: dict[str, _Puts] = {}
        txn = self._env.begin(write=True)
        try:
            for batch in batches:
                conflict = None
                if batch.conditional:
                    _put_gathered(txn, dbs, gathered)
                    conflict = _first_conflict(txn, dbs, batch)
                results.append(conflict)
                if conflict is not None:
                    continue
                for kind, table, key, value in batch:
                    if kind is MutationKind.DELETE:
                        earlier = gathered.pop(table, None)
                        if earlier:
                            txn.cursor(db=dbs[table]).putmulti(earlier)
                        txn.delete(key, db=dbs[table])
                    elif (puts := gathered.get(table)) is not None:
                        puts.append((key, value))
                    else:
                        gathered[table] = [(key, value)]
            _put_gathered(txn, dbs, gathered)
        except BaseException:
            txn.abort()
            raise
        txn.commit()  # LMDB aborts the transaction itself if the commit fails
        return results

    def _grow(self) -> None:
        """Double the map (up to the maximum) once no read view is open."""
        current = self._map_size
        if current >= self.max_map_size_bytes:
            raise StorageFullError(self.path, self.max_map_size_bytes)
        target = min(current * 2, self.max_map_size_bytes)
        with self._guard:
            if not self._guard.wait_for(lambda: not self._active_readers, _RESIZE_WAIT_SECONDS):
                raise StorageError(
                    f"cannot grow the map of {str(self.path)!r}: a read view stayed open "
                    f"for over {_RESIZE_WAIT_SECONDS:.0f}s"
                )
            self._env.set_mapsize(target)
            self._map_size = self._env.info()["map_size"]
            self.map_resizes += 1

    # Lifecycle

    def sync(self) -> None:
        """Force every committed write to disk, whatever the durability."""
        with self._guard:
            if self._closed:
                raise StorageClosedError("storage")
            self._env.sync(force=True)

    def close(self) -> None:
        """Flush, close the environment and release the folder lock if owned.

        Close the ``GroupCommitter`` first. Calling it again does nothing.
        """
        with self._guard:
            if self._closed:
                return
            self._closed = True
        try:
            if self.durability is Durability.RELAXED:
                self._env.sync(force=True)  # a clean shutdown loses nothing
            self._env.close()
        finally:
            if self._owns_lock:
                self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Storage {str(self.path)!r} {self.durability.value} {state}>"


class ReadView:
    """A consistent snapshot of every table, valid inside ``Storage.read()``."""

    __slots__ = ("_dbs", "_max_key_size", "_max_scan_rows", "_txn")

    def __init__(
        self,
        txn: lmdb.Transaction[bytes],
        dbs: dict[str, lmdb._Database],
        max_scan_rows: int,
        max_key_size: int = 511,
    ) -> None:
        """Bind the view to ``txn``; use ``Storage.read``."""
        self._txn = txn
        self._dbs = dbs
        self._max_scan_rows = max_scan_rows
        self._max_key_size = max_key_size

    def close(self) -> None:
        """Forgets the transaction (``Storage.read`` has ended it); the view is unusable after."""
        del self._txn

    def _db(self, table: str) -> lmdb._Database:
        try:
            return self._dbs[table]
        except KeyError:
            raise UnknownTableError(table, frozenset(self._dbs)) from None

    def get(self, table: str, key: bytes) -> bytes | None:
        """Return the value of ``key`` in ``table``, or None if absent.

        A key LMDB cannot hold (empty, or over ``max_key_size``) is absent.
        """
        if not 0 < len(key) <= self._max_key_size:
            return None
        return self._txn.get(key, db=self._db(table))

    def get_many(self, table: str, keys: Iterable[bytes]) -> list[bytes | None]:
        """Return the values of ``keys`` in order, None where absent (see :meth:`get`)."""
        db = self._db(table)
        get = self._txn.get
        most = self._max_key_size
        return [get(key, db=db) if 0 < len(key) <= most else None for key in keys]

    def count(self, table: str) -> int:
        """Return the number of rows in ``table``."""
        return self._txn.stat(self._db(table))["entries"]

    def scan(
        self,
        table: str,
        *,
        prefix: bytes = b"",
        start: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        r"""Return rows of ``table`` in key order (descending if ``reverse``).

        Select rows either by ``prefix`` or by the half-open range
        ``start <= key < end`` (either bound may be omitted), not both.

        Args:
            table: A declared table.
            prefix: Only keys starting with these bytes.
            start: Smallest key included.
            end: First key excluded.
            reverse: Walk from the high end; ``limit`` then keeps the largest.
            limit: Maximum rows to return (a page). To continue ascending,
                pass ``start=last_key + b"\x00"``; descending, ``end=last_key``.

        Raises:
            ScanTooLargeError: ``limit`` is None and more than
                ``max_scan_rows`` rows match.
            ValueError: both ``prefix`` and a range, or ``limit < 1``.
        """
        db = self._db(table)
        if prefix:
            if start is not None or end is not None:
                raise ValueError("scan takes prefix= or start=/end=, not both")
            low: bytes | None = prefix
            high = prefix_end(prefix)
        else:
            low, high = start, end
        if limit is None:
            cap = self._max_scan_rows + 1
        elif limit < 1:
            raise ValueError(f"scan limit must be positive, got {limit}")
        else:
            cap = limit
        with self._txn.cursor(db) as cursor:
            if reverse:
                rows = _walk_backward(cursor, low, high, cap)
            else:
                rows = _walk_forward(cursor, low, high, cap)
        if limit is None and len(rows) > self._max_scan_rows:
            raise ScanTooLargeError(table, self._max_scan_rows)
        return rows


def _walk_forward(
    cursor: lmdb.Cursor[bytes], low: bytes | None, high: bytes | None, cap: int
) -> list[tuple[bytes, bytes]]:
    """Collect up to ``cap`` rows with ``low <= key < high``, ascending."""
    rows: list[tuple[bytes, bytes]] = []
    ok = cursor.set_range(low) if low else cursor.first()
    while ok and len(rows) < cap:
        key, value = cursor.item()
        if high is not None and key >= high:
            break
        rows.append((key, value))
        ok = cursor.next()
    return rows


def _walk_backward(
    cursor: lmdb.Cursor[bytes], low: bytes | None, high: bytes | None, cap: int
) -> list[tuple[bytes, bytes]]:
    """Collect up to ``cap`` rows with ``low <= key < high``, descending."""
    rows: list[tuple[bytes, bytes]] = []
    # Start at the last key, or step back from the first key >= high.
    ok = cursor.last() if high is None or not cursor.set_range(high) else cursor.prev()
    while ok and len(rows) < cap:
        key, value = cursor.item()
        if low is not None and key < low:
            break
        rows.append((key, value))
        ok = cursor.prev()
    return rows


def _put_gathered(
    txn: lmdb.Transaction[bytes], dbs: dict[str, lmdb._Database], gathered: dict[str, _Puts]
) -> None:
    """Writes and forgets the puts gathered per table (see ``Storage._write_once``)."""
    for table, puts in gathered.items():
        txn.cursor(db=dbs[table]).putmulti(puts)
    gathered.clear()


def _first_conflict(
    txn: lmdb.Transaction[bytes], dbs: dict[str, lmdb._Database], batch: Batch
) -> KeyExistsError | None:
    """Return the first failed ``put_if_absent`` of ``batch``, if any."""
    for kind, table, key, _ in batch:
        if kind is MutationKind.PUT_IF_ABSENT and txn.get(key, db=dbs[table]) is not None:
            return KeyExistsError(table, key)
    return None


def _check_tables(tables: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(tables))
    if not names:
        raise ValueError("declare at least one table")
    if len(names) > MAX_TABLES:
        raise ValueError(f"{len(names)} tables declared; at most {MAX_TABLES} allowed")
    for name in names:
        if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
            raise ValueError(f"bad table name {name!r}: use [a-z][a-z0-9_]*, up to 63 chars")
    return names


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
