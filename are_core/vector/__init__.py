"""Vector indexes: a thin, typed wrapper over usearch (HNSW, SIMD, memory map).

An index is derived data: its owner keeps every vector and its uint64 key in
LMDB (the source of truth), saves the index for a fast start, restores it by
memory map, and rebuilds it from LMDB when the saved copy is missing, corrupt
or stale. Similarities are cosine similarities in [-1, 1], best first.

Exceptions::

    VectorError
    └── VectorShapeError     a vector of the wrong dimension or shape
"""

from ._errors import VectorError, VectorShapeError
from ._index import DTYPES, VectorIndex

__all__ = ["DTYPES", "VectorError", "VectorIndex", "VectorShapeError"]
