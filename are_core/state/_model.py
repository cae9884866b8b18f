"""Records the state engine keeps in LMDB, and the values it returns."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "Checkpoint",
    "PatchOp",
    "PatchResult",
    "ReadResult",
    "Retention",
    "StateHead",
]


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """Which versions of a document are kept besides the latest.

    A version goes once it is outside *both* bounds: older than the newest
    ``keep_versions`` and older than ``keep_seconds``.
    """

    keep_versions: int = 1000
    keep_seconds: float = 7 * 24 * 3600.0


class StateHead(msgspec.Struct, frozen=True, kw_only=True):
    """One row per workflow: where its document stands (table ``state_heads``)."""

    latest_version: int
    oldest_version: int
    update_time_ns: int
    member_count: int
    pairs_bytes: int
    """Sum over top-level members of ``len('"name":value')``, to derive the size."""
    keep_versions: int = 0
    """Per-workflow retention (0: the engine's default)."""
    keep_seconds: float = -1.0
    """Per-workflow retention (negative: the engine's default)."""

    @property
    def size_bytes(self) -> int:
        """The length of the document's compact JSON encoding."""
        return 2 + self.pairs_bytes + max(self.member_count - 1, 0)


class VersionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One row per retained version (table ``state_versions``)."""

    version: int
    create_time_ns: int
    writer: str
    task_id: str
    attempt: int
    size_bytes: int
    event_sequence: int
    changed: list[bytes]
    """The member keys written at this version (used by retention)."""


class MemberRecord(msgspec.Struct, frozen=True, array_like=True):
    """A top-level member's value from one version on (table ``state_members``)."""

    name: str
    value: bytes | None
    """Compact JSON text; None means the member was removed at this version."""


class PatchOp(msgspec.Struct, frozen=True):
    """One JSON-pointer operation: set ``value_json`` at ``path``, or remove it."""

    op: Literal["set", "remove"]
    path: str
    value_json: bytes = b""


class PatchResult(msgspec.Struct, frozen=True):
    """The version a patch created and when."""

    version: int
    update_time_ns: int


class ReadResult(msgspec.Struct, frozen=True):
    """What ``get`` found: JSON text per resolved path, and the missing paths."""

    version: int
    update_time_ns: int
    values: list[tuple[str, bytes]]
    missing_paths: list[str]


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One retained version as ListCheckpoints reports it."""

    version: int
    create_time_ns: int
    writer: str
    task_id: str
    attempt: int
    size_bytes: int
    event_sequence: int
