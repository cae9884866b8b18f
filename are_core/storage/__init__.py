"""Storage: one LMDB environment, msgspec codecs, group commit, folder lock.

LMDB is the source of truth on one host. Records are msgspec structs encoded
as MessagePack (``Codec``) under byte keys laid out for range scans
(``u64_key``, ``join_key``, ``prefix_key``). Reads are synchronous on
``Storage``; writes are ``Batch`` objects submitted to a ``GroupCommitter``,
which writes everything submitted in one event-loop turn in one transaction
and acknowledges only after it is durable. Its ``enqueue`` admits or refuses
a batch in the caller's loop step, and ``check_room`` asks ahead, for callers
that change memory before their batch exists. ``KeyedLocks`` serialise the
read-modify-write of one record (a workflow's document, an agent's card).

Exceptions::

    StorageError
    ├── StorageClosedError     used after close
    ├── StorageFullError       the map cannot grow past max_map_size_bytes
    ├── StorageBusyError       pending writes over their bound; retry later
    ├── BatchTooLargeError     one batch alone is over the bound
    ├── KeyExistsError         put_if_absent found its key
    ├── UnknownTableError      a table not declared at open
    ├── ScanTooLargeError      an unlimited scan over max_scan_rows
    ├── DataDirLockedError     the data folder belongs to another holder
    └── StorageOpenError       the LMDB environment cannot be opened (damaged, not LMDB's)
"""

from ._batch import Batch, Mutation, MutationKind
from ._codec import Codec
from ._commit import CommitStats, GroupCommitter
from ._errors import (
    BatchTooLargeError,
    DataDirLockedError,
    KeyExistsError,
    ScanTooLargeError,
    StorageBusyError,
    StorageClosedError,
    StorageError,
    StorageFullError,
    StorageOpenError,
    UnknownTableError,
)
from ._keyed_locks import KeyedLocks
from ._keys import (
    KEY_SEPARATOR,
    join_key,
    parse_u64_key,
    prefix_end,
    prefix_key,
    u64_key,
)
from ._lock import DataDirLock
from ._storage import MAX_TABLES, Durability, ReadView, Storage

__all__ = [
    "KEY_SEPARATOR",
    "MAX_TABLES",
    "Batch",
    "BatchTooLargeError",
    "Codec",
    "CommitStats",
    "DataDirLock",
    "DataDirLockedError",
    "Durability",
    "GroupCommitter",
    "KeyExistsError",
    "KeyedLocks",
    "Mutation",
    "MutationKind",
    "ReadView",
    "ScanTooLargeError",
    "Storage",
    "StorageBusyError",
    "StorageClosedError",
    "StorageError",
    "StorageFullError",
    "StorageOpenError",
    "UnknownTableError",
    "join_key",
    "parse_u64_key",
    "prefix_end",
    "prefix_key",
    "u64_key",
]
