"""The vector index's exceptions."""

from __future__ import annotations

__all__ = ["VectorError", "VectorShapeError"]


class VectorError(Exception):
    """Base of every vector index error."""


class VectorShapeError(VectorError, ValueError):
    """A vector (or a batch of them) does not have the index's dimension."""

    def __init__(self, *, expected: int, got: tuple[int, ...]) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"expected vectors of dimension {expected}, got an array of shape {got}")
