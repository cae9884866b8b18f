"""Engine fixtures: a real LMDB in a temporary folder, no server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.state import BLOB_TABLES, MEMORY_TABLES, STATE_TABLES
from are_core.storage import GroupCommitter, Storage

TABLES = (*STATE_TABLES, *BLOB_TABLES, *MEMORY_TABLES)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[Storage, GroupCommitter]]:
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    try:
        yield storage, committer
    finally:
        await committer.aclose()
        storage.close()
