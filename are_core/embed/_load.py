"""load_embedder: an embedder from a spec string."""

from __future__ import annotations

from ._errors import EmbedderError
from ._lexical import LexicalEmbedder
from ._onnx import OnnxEmbedder
from ._protocol import Embedder

__all__ = ["load_embedder"]


def load_embedder(spec: str) -> Embedder:
    """Builds the embedder a spec names.

    Specs: ``"lexical"`` (256 dimensions), ``"lexical:<dimension>"``, or
    ``"model:<directory>"`` (an ONNX model directory, see :class:`OnnxEmbedder`).

    Raises:
        EmbedderError: The spec is malformed, or the model cannot be loaded.
    """
    kind, _, argument = spec.strip().partition(":")
    if kind == "lexical":
        if not argument:
            return LexicalEmbedder()
        try:
            dimension = int(argument)
        except ValueError:
            raise EmbedderError(f"embedder spec {spec!r}: the dimension must be an integer") from None
        return LexicalEmbedder(dimension)
    if kind == "model":
        if not argument:
            raise EmbedderError(f"embedder spec {spec!r}: give the model directory, model:/path/to/dir")
        return OnnxEmbedder(argument)
    raise EmbedderError(f"unknown embedder spec {spec!r}: use lexical, lexical:<dimension> or model:<dir>")
