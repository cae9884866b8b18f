"""Fixtures of the router engine tests: real LMDB, real usearch, the lexical embedder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import are_core.router._engine as router_engine
from are_core.embed import LexicalEmbedder
from are_core.router import TABLES, Router, RouterSettings
from are_core.storage import GroupCommitter, Storage
from are_core.vector import VectorIndex

DIMENSION = 64

RouterFactory = Callable[..., Router]
NATIVE = router_engine._native


@pytest.fixture(autouse=True, params=["c", "numpy"])
def ranking_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every router engine test runs with the C ranking loop and with its numpy twin."""
    if request.param == "c":
        if NATIVE is None:
            pytest.skip("the C ranking loop is not built (no C compiler at install)")
    else:
        monkeypatch.setattr(router_engine, "_native", None)
    return str(request.param)


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


async def open_router(storage: Storage, committer: GroupCommitter, **options: Any) -> Router:
    """A loaded router over open storage: DIMENSION, no embedder (vectors only), unless given."""
    options.setdefault("dimension", DIMENSION)
    options.setdefault("embedder", None)
    options.setdefault("index_factory", make_index)
    engine = Router(storage, committer, **options)
    await engine.load()
    return engine
