"""Vector indexes: a thin, typed wrapper over usearch (HNSW, SIMD, memory map).

An index is derived data: its owner keeps every vector and its uint64 key in
LMDB (the source of truth), saves the index for a fast start, restores it by
memory map, and rebuilds it from LMDB when the saved copy is missing, corrupt
or stale. Similarities are cosine similarities in [-1, 1], best first.
Concurrent searches of one index from one event loop coalesce into one
native call made off the loop (``VectorIndex.search_coalesced``). Removals
leave some vectors that no search reaches by their own vector: a sweep in a
forked child finds them (``VectorIndex.sweep_in_child``), and the owner
inserts them again.

Exceptions::

    VectorError
    └── VectorShapeError     a vector of the wrong dimension or shape
"""

from ._calibrate import LADDER, Calibration, choose_expansion, wilson_lower_bound
from ._child import child_exit_code, child_output
from ._coalesce import SearchCoalescer
from ._errors import VectorError, VectorShapeError
from ._index import (
    DTYPES,
    EXACT_CONFIRM_COMPONENTS,
    EXACT_SEARCH_BELOW,
    EXPANSION_SEARCH,
    SIMILARITY_ERROR,
    SWEEP_MAX_UNREACHABLE,
    ChildSearch,
    ChildSweep,
    Sweep,
    VectorIndex,
    background_threads,
)

__all__ = [
    "DTYPES",
    "EXACT_CONFIRM_COMPONENTS",
    "EXACT_SEARCH_BELOW",
    "EXPANSION_SEARCH",
    "LADDER",
    "SIMILARITY_ERROR",
    "SWEEP_MAX_UNREACHABLE",
    "Calibration",
    "ChildSearch",
    "ChildSweep",
    "SearchCoalescer",
    "Sweep",
    "VectorError",
    "VectorIndex",
    "VectorShapeError",
    "background_threads",
    "child_exit_code",
    "child_output",
    "choose_expansion",
    "wilson_lower_bound",
]
