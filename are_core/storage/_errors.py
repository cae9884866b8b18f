"""The storage exception tree.

::

    StorageError
    ├── StorageClosedError
    ├── StorageFullError
    ├── StorageBusyError
    ├── BatchTooLargeError
    ├── KeyExistsError
    ├── UnknownTableError
    ├── ScanTooLargeError
    ├── DataDirLockedError
    └── StorageOpenError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class StorageError(Exception):
    """Base class of every error raised by ``are_core.storage``."""


class StorageClosedError(StorageError):
    """The storage or committer was used after it was closed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is closed")


class StorageFullError(StorageError):
    """A write needs more space than ``max_map_size_bytes`` allows.

    Raised to every submitter of the transaction that did not fit; nothing of
    that transaction is applied.
    """

    def __init__(self, path: Path, max_map_size_bytes: int) -> None:
        self.path = path
        self.max_map_size_bytes = max_map_size_bytes
        super().__init__(
            f"storage at {str(path)!r} is full: the write does not fit in "
            f"max_map_size_bytes={max_map_size_bytes}; raise the limit or free space"
        )


class StorageBusyError(StorageError):
    """Too much work is already waiting for the writer; retry later.

    The sidecar maps it to ``RESOURCE_EXHAUSTED`` with a retry hint.
    """

    def __init__(self, *, limit_name: str, limit: int, pending: int, incoming: int) -> None:
        self.limit_name = limit_name
        self.limit = limit
        self.pending = pending
        self.incoming = incoming
        super().__init__(
            f"storage writer is busy: {pending} pending + {incoming} incoming would "
            f"exceed {limit_name}={limit}; retry later"
        )


class BatchTooLargeError(StorageError):
    """One batch alone exceeds the committer's bound, so retrying cannot help."""

    def __init__(self, *, limit_name: str, limit: int, size: int) -> None:
        self.limit_name = limit_name
        self.limit = limit
        self.size = size
        super().__init__(f"batch is too large: {size} exceeds {limit_name}={limit}; split it")


class KeyExistsError(StorageError):
    """A ``put_if_absent`` found its key present; nothing of that batch applied."""

    def __init__(self, table: str, key: bytes) -> None:
        self.table = table
        self.key = key
        super().__init__(f"key {key!r} already exists in table {table!r}")


class UnknownTableError(StorageError):
    """A table name was not declared when the storage was opened."""

    def __init__(self, table: str, known: frozenset[str]) -> None:
        self.table = table
        super().__init__(f"unknown table {table!r}; tables declared at open: {sorted(known)}")


class ScanTooLargeError(StorageError):
    """An unlimited scan matched more rows than the storage's scan bound."""

    def __init__(self, table: str, max_rows: int) -> None:
        self.table = table
        self.max_rows = max_rows
        super().__init__(
            f"scan of table {table!r} matches more than max_scan_rows={max_rows} "
            "rows; pass limit= and page with start="
        )


class DataDirLockedError(StorageError):
    """Another holder (process or open) already owns the data folder."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        holder = f"process pid {pid}" if pid is not None else "another process (pid unknown)"
        super().__init__(
            f"data folder {str(data_dir)!r} is locked by {holder}; stop it or choose another data folder"
        )


class StorageOpenError(StorageError):
    """The LMDB environment of a data folder cannot be opened: damaged, not LMDB's, or unreadable.

    Raised by ``Storage.open`` in place of the driver's own error, so that a
    caller can report it in one line naming the folder.
    """

    def __init__(self, data_dir: Path, reason: str) -> None:
        self.data_dir = data_dir
        self.reason = reason
        where = f"{str(data_dir / 'lmdb')!r} (data folder {str(data_dir)!r})"
        super().__init__(
            f"cannot open the LMDB environment in {where}: {reason}; "
            "repair or restore it, or choose another data folder"
        )
