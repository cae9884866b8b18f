"""LexicalEmbedder: feature hashing of words, word pairs and character trigrams."""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._errors import EmbedderError

__all__ = ["LexicalEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)
_WORD_WEIGHT = 1.0
_PAIR_WEIGHT = 0.6
_TRIGRAM_WEIGHT = 0.35


class LexicalEmbedder:
    """The built-in embedder: lexical, not semantic, and honest about it.

    A text becomes a bag of features (case-folded NFKC words, adjacent word
    pairs, and character trigrams of each word with boundary marks, so
    "flight" and "flights" share most of theirs), each weighted by
    ``1 + log(count)`` and hashed (CRC-32, stable across processes and
    machines) with a sign into ``dimension`` buckets; the sum is
    L2-normalised. Two prompts are close when they share wording. A text
    with no word characters ("?", an emoji) has no features and gets the
    zero vector: it has no direction, so it is similar to nothing (the cache
    stores such a prompt for its exact tier only). It needs
    no model and runs in tens of microseconds; for paraphrases configure a
    model (:class:`OnnxEmbedder`).

    Args:
        dimension: Buckets (vector components), 16 to 4,096; 256 by default.
    """

    VERSION = "lexical-v1"

    def __init__(self, dimension: int = 256) -> None:
        if not 16 <= dimension <= 4096:
            raise EmbedderError(f"lexical embedder dimension must be 16 to 4096, got {dimension}")
        self.dimension = dimension
        self.name = f"{self.VERSION}:{dimension}"

    def __repr__(self) -> str:
        return f"LexicalEmbedder(dimension={self.dimension})"

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """An (n, dimension) float32 array of L2-normalised vectors; a text without words gives zeros."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            features = _features(text)
            if not features:
                continue
            buckets = np.empty(len(features), dtype=np.int64)
            weights = np.empty(len(features), dtype=np.float32)
            for i, (feature, (count, weight)) in enumerate(features.items()):
                h = zlib.crc32(feature.encode("utf-8"))
                buckets[i] = (h >> 1) % self.dimension
                sign = 1.0 if h & 1 else -1.0
                weights[i] = sign * weight * (1.0 + math.log(count))
            np.add.at(out[row], buckets, weights)
            norm = float(np.linalg.norm(out[row]))
            if norm > 0.0:
                out[row] /= norm
        return out


def _features(text: str) -> dict[str, tuple[int, float]]:
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    counts: Counter[str] = Counter()
    weights: dict[str, float] = {}
    for word in words:
        key = "w:" + word
        counts[key] += 1
        weights[key] = _WORD_WEIGHT
        marked = f"<{word}>"
        for i in range(len(marked) - 2):
            tri = "c:" + marked[i : i + 3]
            counts[tri] += 1
            weights[tri] = _TRIGRAM_WEIGHT
    for first, second in itertools.pairwise(words):
        key = f"p:{first} {second}"
        counts[key] += 1
        weights[key] = _PAIR_WEIGHT
    return {feature: (count, weights[feature]) for feature, count in counts.items()}
