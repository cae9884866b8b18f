"""Embedders: text to L2-normalised float32 vectors, with no network ever.

Three sources of vectors, chosen per namespace or index:

* the caller's own vectors (no embedder here at all);
* :class:`LexicalEmbedder`, the built-in default: hashed words, word pairs
  and character trigrams. Fast (tens of microseconds) and needs no model,
  but it is *lexical*: it matches wording, not meaning ("cheap flights" is
  close to "cheap flight", far from "inexpensive airfare");
* :class:`OnnxEmbedder`, a local model directory (``model.onnx`` plus
  ``tokenizer.json``, e.g. a sentence-transformers export) run with ONNX
  Runtime and Hugging Face tokenizers: real semantic matching, no PyTorch,
  nothing downloaded. Needs the ``embed-model`` extra.

:func:`load_embedder` builds one from a spec string.

Exceptions::

    EmbedderError          a spec, directory or model that cannot be used
"""

from ._errors import EmbedderError
from ._lexical import LexicalEmbedder
from ._load import load_embedder
from ._onnx import OnnxEmbedder
from ._protocol import Embedder

__all__ = ["Embedder", "EmbedderError", "LexicalEmbedder", "OnnxEmbedder", "load_embedder"]
