"""Hot entries: the bodies of recently answered entries, kept in memory.

A hit used to read its entry's body from LMDB and decode it. That read is
cheap in a tight loop (1-2 µs) but not inside a busy sidecar, where the
pages, the transaction set-up and the decoder all run cold: 18-24 µs of
an exact hit's 55-70 µs in the engine, measured in the sidecar. Real
workloads ask the same prompts again and again, so the bodies of entries
that answered recently stay here, least recently used dropped first, under
a bound in bytes; the exact tier also remembers which entry answered a
prompt hash, which saves the search of the saved entry table.

Nothing here decides whether an entry may answer: the caller looks the
entry's head up first (removals leave memory before their commit), so a
stale body can never answer. Entries are immutable and their ids are never
reused within a run, so a body kept under an id is that entry's body.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from are_core.cache._model import EntryBody

__all__ = ["DEFAULT_HOT_BYTES", "HotBodies"]

DEFAULT_HOT_BYTES = 64 * 1024 * 1024

# Bytes counted per entry beyond its prompt and response (the objects
# around them); an estimate, so that many tiny entries still count.
_OVERHEAD_BYTES = 512


class HotBodies:
    """Recently answered entries' bodies, bounded in bytes (0 keeps none).

    Args:
        max_bytes: The bound: prompt and response bytes of the kept bodies,
            plus a fixed estimate per entry.
    """

    __slots__ = ("_bodies", "_by_digest", "hits", "max_bytes", "size_bytes")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self.hits = 0
        # entry id -> (body, bytes counted, (namespace, prompt hash))
        self._bodies: OrderedDict[int, tuple[EntryBody, int, tuple[str, bytes]]] = OrderedDict()
        self._by_digest: dict[tuple[str, bytes], int] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def entry_for(self, namespace: str, digest: bytes) -> int | None:
        """The id of the kept entry of this namespace whose prompt hash is ``digest``, if any."""
        return self._by_digest.get((namespace, digest))

    def get(self, entry_id: int) -> EntryBody | None:
        """The kept body of ``entry_id`` (now the most recently used), or None."""
        kept = self._bodies.get(entry_id)
        if kept is None:
            return None
        self._bodies.move_to_end(entry_id)
        self.hits += 1
        return kept[0]

    def put(self, entry_id: int, body: EntryBody, namespace: str, digest: bytes) -> None:
        """Keeps ``body`` as the most recently used; drops the least recently used over the bound."""
        size = len(body.prompt) + len(body.response) + _OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        self.forget(entry_id)
        key = (namespace, digest)
        self._bodies[entry_id] = (body, size, key)
        self._by_digest[key] = entry_id
        self.size_bytes += size
        while self.size_bytes > self.max_bytes:
            self.forget(next(iter(self._bodies)))

    def forget(self, entry_id: int) -> None:
        """Drops ``entry_id``'s body (removed, or the least recently used)."""
        kept = self._bodies.pop(entry_id, None)
        if kept is None:
            return
        _, size, key = kept
        self.size_bytes -= size
        if self._by_digest.get(key) == entry_id:
            del self._by_digest[key]

    def clear(self) -> None:
        """Drops everything (a namespace's memory was reloaded)."""
        self._bodies.clear()
        self._by_digest.clear()
        self.size_bytes = 0
