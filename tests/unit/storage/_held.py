"""A committer whose writer is held busy: accepted work stays pending, bounds fill without timing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from are_core.storage import GroupCommitter

__all__ = ["writer_held"]


@contextlib.asynccontextmanager
async def writer_held(committer: GroupCommitter) -> AsyncIterator[None]:
    """Keeps the committer's one writer thread busy until the block ends (a slow disk)."""
    gate = threading.Event()
    held = asyncio.get_running_loop().run_in_executor(committer._executor, gate.wait)
    try:
        yield
    finally:
        gate.set()
        await held
