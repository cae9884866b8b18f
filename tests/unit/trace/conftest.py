"""Fixtures for the trace engine tests: real LMDB storage and group commit in a temporary folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.storage import Durability, GroupCommitter, Storage
from are_core.trace import EVENT_TABLES
from tests.unit.trace._support import Clock, Harness, MakeHarness


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    """Builds recorders over one data folder; closing one and making another simulates a restart."""
    opened: list[tuple[Storage, GroupCommitter]] = []

    def make(**options: object) -> Harness:
        storage = Storage.open(tmp_path / "data", tables=EVENT_TABLES, durability=Durability.RELAXED)
        committer = GroupCommitter(storage)
        opened.append((storage, committer))
        return Harness(storage, committer, Clock(), **options)

    yield make
    for storage, committer in opened:
        if not storage.closed:
            await committer.aclose()
            storage.close()
