"""The semantic cache: never pay for the same thought twice.

A lookup tries the exact tier (a hash of the normalised prompt) and then
the semantic tier (cosine similarity over a usearch index, above the
namespace's threshold). Namespaces keep apart what must never mix; entries
expire by TTL and are evicted least recently used past the size bounds;
statistics count hits, misses and what they saved. Entries live in LMDB;
indexes are derived. See :class:`CacheEngine`.

The scheduler's task short-circuit calls
:meth:`CacheEngine.lookup_for_task` (namespace, prompt) and gets a
:class:`CacheHit` or None; the workflow and task it names are on the
lookup's event, as the completed attempt given to :meth:`CacheEngine.store`
is on CACHE_STORED.

Exceptions::

    CacheError
    ├── NamespaceNotFoundError      no namespace of this name
    ├── NamespaceDeletingError      being deleted: no stores or settings changes meanwhile
    ├── NamespaceUnavailableError   being reloaded from storage after a failed commit: retry later
    │   └── NamespaceWritesUnavailableError  no writes for a while after one failed: retry later
    ├── DimensionMismatchError      a vector of another dimension (names the field)
    ├── EmbedderUnavailableError    text to embed, but no embedder can
    ├── EmbedderMismatchError       text to embed, but the configured model no longer fits
    ├── ImmutableFieldError         embedder, dimension or dtype changed
    ├── CacheLimitError             an entry over its namespace's bounds
    ├── InvalidCacheArgumentError   a setting out of range (names the field)
    └── NamespaceLimitError         past 1,000 namespaces

    are_core.storage.StorageBusyError   the storage is busy: retry later (nothing changed)
    └── InvalidationBusyError       an invalidation refused after removing ``removed_count``
"""

from ._engine import CACHE_TABLES, DEFAULT_INDEX_AT_START, MUTABLE_SETTINGS, BlobReferences, CacheEngine
from ._errors import (
    BlobNotFoundError,
    CacheError,
    CacheLimitError,
    DimensionMismatchError,
    EmbedderMismatchError,
    EmbedderUnavailableError,
    ImmutableFieldError,
    InvalidationBusyError,
    InvalidCacheArgumentError,
    NamespaceDeletingError,
    NamespaceLimitError,
    NamespaceNotFoundError,
    NamespaceUnavailableError,
    NamespaceWritesUnavailableError,
)
from ._hot import DEFAULT_HOT_BYTES
from ._model import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_RECALL_TARGET,
    DEFAULT_THRESHOLD,
    DEFAULT_TTL_NS,
    MAX_NAMESPACES,
    CacheHit,
    CacheStats,
    LookupResult,
    Namespace,
    NamespaceSettings,
    StoreResult,
)
from ._normalise import normalise_prompt, prompt_hash

__all__ = [
    "CACHE_TABLES",
    "DEFAULT_HOT_BYTES",
    "DEFAULT_INDEX_AT_START",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_RECALL_TARGET",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TTL_NS",
    "MAX_NAMESPACES",
    "MUTABLE_SETTINGS",
    "BlobNotFoundError",
    "BlobReferences",
    "CacheEngine",
    "CacheError",
    "CacheHit",
    "CacheLimitError",
    "CacheStats",
    "DimensionMismatchError",
    "EmbedderMismatchError",
    "EmbedderUnavailableError",
    "ImmutableFieldError",
    "InvalidCacheArgumentError",
    "InvalidationBusyError",
    "LookupResult",
    "Namespace",
    "NamespaceDeletingError",
    "NamespaceLimitError",
    "NamespaceNotFoundError",
    "NamespaceSettings",
    "NamespaceUnavailableError",
    "NamespaceWritesUnavailableError",
    "StoreResult",
    "normalise_prompt",
    "prompt_hash",
]
