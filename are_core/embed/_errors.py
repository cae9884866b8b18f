"""The embedders' exceptions."""

from __future__ import annotations

__all__ = ["EmbedderError"]


class EmbedderError(Exception):
    """An embedder spec, model directory or runtime that cannot be used; the message says why."""
