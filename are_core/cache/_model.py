"""The cache's records (stored in LMDB) and the values its engine returns.

The records are ``gc=False``: they hold only scalars, strings, bytes, string
maps and other such records, so they can never be part of a reference cycle;
leaving them out of the cyclic collector's accounting keeps the heads and
hits made per lookup from triggering collections.
"""

from __future__ import annotations

import msgspec

from are_core.vector import Calibration

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_RECALL_TARGET",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TTL_NS",
    "MAX_NAMESPACES",
    "CacheHit",
    "CacheStats",
    "EntryBody",
    "EntryHead",
    "LookupResult",
    "Namespace",
    "NamespaceSettings",
    "SnapshotMark",
    "StatsRecord",
    "StoreResult",
]

DEFAULT_THRESHOLD = 0.92
DEFAULT_RECALL_TARGET = 0.995
DEFAULT_TTL_NS = 7 * 86_400 * 1_000_000_000
DEFAULT_MAX_ENTRIES = 1_000_000
DEFAULT_MAX_BYTES = 1 << 30
MAX_NAMESPACES = 1000


class NamespaceSettings(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a caller asks of a namespace; zero values mean the defaults."""

    name: str
    embedder: str = ""
    dimension: int = 0
    similarity_threshold: float = 0.0
    default_ttl_ns: int = 0
    max_entries: int = 0
    max_bytes: int = 0
    vector_dtype: str = ""
    description: str = ""
    search_expansion: int = 0  # 0: calibrated
    recall_target: float = 0.0  # 0: DEFAULT_RECALL_TARGET


class Namespace(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A namespace as stored, defaults filled in.

    ``embedder`` is what the caller named (``"lexical"``, ``"caller"`` or a
    configured model); ``embedder_name`` is the resolved embedder's own name
    (``"lexical-v1:256"``), so that vectors of two embedders never mix.
    """

    name: str
    embedder: str
    embedder_name: str
    dimension: int
    similarity_threshold: float
    default_ttl_ns: int
    max_entries: int
    max_bytes: int
    vector_dtype: str
    description: str
    create_time_ns: int
    update_time_ns: int
    search_expansion: int = 0  # 0 (namespaces stored before it existed): the dtype's default
    # Set by the caller (fixed), or calibrated on the namespace's lookups; in
    # force: the calibration's if there is one, else ``search_expansion``.
    expansion_fixed: bool = False
    recall_target: float = DEFAULT_RECALL_TARGET
    # Set (durably) once an entry referencing a blob is stored: only then does
    # removing an entry need to find and release its blob reference.
    blob_entries: bool = False


class EntryHead(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """The small part of an entry kept in memory for every entry (scanned at start)."""

    entry_id: int
    prompt_hash: bytes
    create_ns: int
    expire_ns: int
    size_bytes: int
    has_vector: bool
    last_access_ns: int = 0


class EntryBody(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An entry's content, read only when it answers or is matched by metadata."""

    prompt: str
    response: bytes = b""
    content_type: str = ""
    blob_sha256: str = ""
    blob_size_bytes: int = 0
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0


class SnapshotMark(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Which saved entry table is current for a namespace (written only once the file is durable).

    The table holds the namespace's entries as of journal row ``seq``; the
    engine trusts a table file only when its header repeats ``seq``,
    ``token`` and ``namespace_create_ns``, and replays the journal rows after
    ``seq``. ``index_seq`` is ``seq`` when the saved index was written at the
    same moment (a clean stop), else -1 (the index is checked in full).
    """

    seq: int
    token: bytes
    entries: int
    namespace_create_ns: int
    index_seq: int = -1


class StatsRecord(msgspec.Struct, kw_only=True, gc=False):
    """A namespace's durable counters."""

    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    expirations: int = 0
    evictions: int = 0
    saved_tokens: int = 0
    saved_cost_micro_usd: int = 0
    calibration: Calibration | None = None  # the last search-expansion calibration
    repaired: int = 0  # entries a sweep found unreachable by their own vector and inserted again
    unswept_removals: int = 0  # entries with vectors removed or replaced since the last sweep


class CacheStats(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One namespace's statistics since it was created."""

    namespace: str
    lookups: int
    exact_hits: int
    semantic_hits: int
    misses: int
    hit_rate: float
    entries: int
    size_bytes: int
    expirations: int
    evictions: int
    saved_tokens: int
    saved_cost_micro_usd: int
    unindexed_entries: int = 0
    search_expansion: int = 0
    measured_recall: float = 0.0
    recall_samples: int = 0
    calibrate_time_ns: int = 0
    calibrating: bool = False
    repaired_entries: int = 0  # inserted again after a sweep found them unreachable (CacheEngine.repair_due)


class CacheHit(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An entry that answered a lookup.

    ``tier`` is ``"EXACT"`` or ``"SEMANTIC"``; ``similarity`` is 1.0 for exact hits.
    """

    entry_id: str
    tier: str
    similarity: float
    prompt: str
    response: bytes
    content_type: str
    blob_sha256: str
    blob_size_bytes: int
    metadata: dict[str, str]
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    create_time_ns: int


class LookupResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A lookup's answer: a hit, or a miss with the best similarity seen below the threshold."""

    hit: CacheHit | None
    best_similarity: float = 0.0


class StoreResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A stored entry's id, whether it replaced one, and when it expires."""

    entry_id: str
    replaced: bool
    expire_time_ns: int
