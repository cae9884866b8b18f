"""Fixtures of the router engine tests: real LMDB, real usearch, the lexical embedder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from are_core.embed import LexicalEmbedder
from are_core.router import TABLES, Router, RouterSettings
from are_core.storage import GroupCommitter, Storage
from are_core.vector import VectorIndex

DIMENSION = 64

RouterFactory = Callable[..., Router]


def make_index(dimension: int) -> VectorIndex:
    """The index the sidecar uses."""
    return VectorIndex(dimension=dimension)


def unit(*components: float) -> bytes:
    """A float32 vector of DIMENSION with the given leading components, as bytes."""
    vector = np.zeros(DIMENSION, dtype=np.float32)
    vector[: len(components)] = components
    return vector.tobytes()


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[Router]:
    """A loaded router over a fresh data folder (lexical embedder, 64 dimensions)."""
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    engine = Router(
        storage,
        committer,
        dimension=DIMENSION,
        embedder=LexicalEmbedder(DIMENSION),
        index_factory=make_index,
        settings=RouterSettings(),
    )
    await engine.load()
    try:
        yield engine
    finally:
        await engine.aclose()
        await committer.aclose()
        storage.close()
