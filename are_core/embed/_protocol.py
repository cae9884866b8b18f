"""The Embedder protocol every source of vectors follows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors.

    Attributes:
        name: Recorded with each index or namespace that uses it, so a
            change of embedder is detected (``"lexical-v1:256"``,
            ``"onnx:all-MiniLM-L6-v2"``).
        dimension: Components per vector.
    """

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """An (n, dimension) float32 array of L2-normalised vectors, one row per text."""
        ...
