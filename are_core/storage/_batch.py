"""Batches: ordered, validated lists of mutations committed atomically."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

from ._errors import UnknownTableError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Batch", "Mutation", "MutationKind"]

_Value = bytes | bytearray | memoryview
_new_tuple = tuple.__new__


class MutationKind(enum.Enum):
    """What a mutation does to its key."""

    PUT = "put"
    """Set the key to the value, replacing any previous value."""
    DELETE = "delete"
    """Remove the key; removing an absent key is not an error."""
    PUT_IF_ABSENT = "put_if_absent"
    """Set the key only if absent; otherwise the whole batch is rejected."""


class Mutation(NamedTuple):
    """One validated change to one key of one table."""

    kind: MutationKind
    table: str
    key: bytes
    value: bytes


_PUT = MutationKind.PUT


class Batch:
    """An ordered list of mutations that commit together or not at all.

    A batch is built with ``Storage.batch()`` so that every table name and key
    is checked as it is added: a bad mutation raises at once, in the caller's
    frame, and never reaches (or fails) a shared group-commit transaction.

    Conditions (``put_if_absent``) are evaluated against the state just before
    the batch is applied, which includes batches committed earlier in the same
    group. If any condition fails, none of the batch's mutations are applied
    and its submitter gets ``KeyExistsError``; other batches are unaffected.
    """

    # Weak references let the trace recorder notice a batch dropped without being submitted.
    __slots__ = ("__weakref__", "_max_key_size", "_mutations", "_nbytes", "_tables", "conditional")

    def __init__(self, tables: frozenset[str], max_key_size: int) -> None:
        """Create an empty batch accepting ``tables`` and keys up to ``max_key_size``."""
        self._tables = tables
        self._max_key_size = max_key_size
        self._mutations: list[Mutation] = []
        self._nbytes = 0
        self.conditional = False
        """Whether the batch holds a ``put_if_absent`` (and so needs a check)."""

    def put(self, table: str, key: bytes, value: _Value) -> Batch:
        """Set ``key`` to ``value`` (bytes-like values are copied); returns the batch."""
        # The hot path (every engine write): exact bytes key and value, checked
        # inline; anything else takes the general path with its precise errors.
        if (
            type(key) is bytes
            and type(value) is bytes
            and table in self._tables
            and 0 < len(key) <= self._max_key_size
        ):
            self._mutations.append(_new_tuple(Mutation, (_PUT, table, key, value)))
            self._nbytes += len(key) + len(value)
            return self
        return self._add(MutationKind.PUT, table, key, value)

    def put_if_absent(self, table: str, key: bytes, value: _Value) -> Batch:
        """Set ``key`` only if it is absent, else reject the whole batch."""
        self.conditional = True
        return self._add(MutationKind.PUT_IF_ABSENT, table, key, value)

    def delete(self, table: str, key: bytes) -> Batch:
        """Remove ``key`` from ``table`` (a no-op if absent); returns the batch."""
        return self._add(MutationKind.DELETE, table, key, b"")

    @property
    def nbytes(self) -> int:
        """Total bytes of keys and values, the unit of the committer's byte bound."""
        return self._nbytes

    @property
    def mutations(self) -> tuple[Mutation, ...]:
        """The mutations in the order they will be applied."""
        return tuple(self._mutations)

    def __len__(self) -> int:
        return len(self._mutations)

    def __iter__(self) -> Iterator[Mutation]:
        return iter(self._mutations)

    def __repr__(self) -> str:
        return f"<Batch mutations={len(self._mutations)} nbytes={self._nbytes}>"

    def _add(self, kind: MutationKind, table: str, key: bytes, value: _Value) -> Batch:
        if table not in self._tables:
            raise UnknownTableError(table, self._tables)
        untyped_key: object = key  # callers without type checking reach here too
        if not isinstance(untyped_key, bytes):
            raise TypeError(f"key must be bytes, got {type(untyped_key).__name__}")
        if not 0 < len(key) <= self._max_key_size:
            raise ValueError(f"key length {len(key)} for table {table!r} is not in 1..{self._max_key_size}")
        untyped_value: object = value
        if isinstance(untyped_value, bytes):
            data = untyped_value
        elif isinstance(untyped_value, bytearray | memoryview):
            data = bytes(untyped_value)  # snapshot: the caller may reuse its buffer
        else:
            raise TypeError(f"value must be bytes, got {type(untyped_value).__name__}")
        self._mutations.append(Mutation(kind, table, key, data))
        self._nbytes += len(key) + len(data)
        return self
