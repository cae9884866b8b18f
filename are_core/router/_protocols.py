"""What the router needs from a vector index and an embedder.

The implementations are ``are_core.vector.VectorIndex`` (usearch) and the
embedders of ``are_core.embed``; the router depends only on these shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["EmbedderLike", "IndexFactory", "VectorIndexLike"]


class VectorIndexLike(Protocol):
    """A cosine-similarity index over uint64 keys."""

    def add(self, keys: Sequence[int] | npt.NDArray[np.uint64], vectors: npt.NDArray[np.float32]) -> None:
        """Adds or replaces the vectors of ``keys``."""
        ...

    def remove(self, keys: Sequence[int] | npt.NDArray[np.uint64]) -> None:
        """Removes ``keys``."""
        ...

    def search(
        self, vector: npt.NDArray[np.float32], k: int, *, exact: bool = False
    ) -> list[tuple[int, float]]:
        """The ``k`` nearest keys with their cosine similarity, best first."""
        ...

    def search_arrays(
        self, vector: npt.NDArray[np.float32], k: int, *, exact: bool = False
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
        """As :meth:`search`: the keys and similarities as two arrays, best first."""
        ...

    def __len__(self) -> int:
        """The number of vectors held."""
        ...

    @property
    def similarity_error(self) -> float:
        """How far a similarity the index reports may be from the exact one."""
        ...

    def save(self, path: Path) -> None:
        """Writes the index to ``path`` atomically."""
        ...


class EmbedderLike(Protocol):
    """Turns text into L2-normalised float32 vectors."""

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """An ``(n, dimension)`` array, one row per text."""
        ...


IndexFactory = Callable[[int], VectorIndexLike]
"""Makes an empty index of the given dimension."""
