"""Fixtures for the storage unit tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from are_core.storage import Storage

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TABLES = ("kv", "events", "tasks")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    """A fresh storage with the test tables, closed after the test."""
    store = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        yield store
    finally:
        store.close()
