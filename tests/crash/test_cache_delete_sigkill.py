"""SIGKILL around DeleteNamespace: an acknowledged deletion stays done; one cut short, a retry finishes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from are_sdk import Client, NotFoundError, RpcError
from are_sdk.testing import SidecarProcess

NS = "crash:delete"
DIM = 16


def _vector(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    unit: list[float] = (v / np.linalg.norm(v)).tolist()
    return unit


async def _fill(client: Client, count: int) -> None:
    await client.cache.put_namespace(NS, embedder="caller", dimension=DIM, similarity_threshold=0.99)
    for start in range(0, count, 50):
        await asyncio.gather(
            *(
                client.cache.store(NS, f"prompt {i}", {"i": i}, vector=_vector(i))
                for i in range(start, min(start + 50, count))
            )
        )


async def _removals(client: Client) -> list[Any]:
    """The CACHE_INVALIDATED events of the deletion so far (recorded with each chunk's commit)."""
    page = await client.trace.list_events(event_types=["CACHE_INVALIDATED"], page_size=100)
    return [e for e in page.events if e.name == NS]


def _files(data: Path) -> list[str]:
    return sorted(p.name for p in data.rglob("*") if p.name.startswith(NS + "."))


async def test_an_acknowledged_deletion_survives_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with SidecarProcess.start(data_dir=data) as process:
        async with await Client.connect(process.target) as client:
            await _fill(client, 120)
    assert _files(data)  # a clean stop saved the namespace's index and entry table

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            assert await client.cache.delete_namespace(NS) == 120
    finally:
        process.kill()
        process.cleanup()
    assert _files(data) == []

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            assert NS not in {n.name for n in await client.cache.list_namespaces()}
            created = await client.cache.put_namespace(NS, embedder="caller", dimension=DIM)
            assert created.created
            for i in range(0, 120, 7):  # nothing of the old namespace answers the new one
                assert await client.cache.lookup(NS, f"prompt {i}") is None
                assert await client.cache.lookup(NS, vector=_vector(i)) is None
    finally:
        process.kill()
        process.cleanup()


async def test_a_deletion_cut_short_by_sigkill_is_finished_by_a_retry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with SidecarProcess.start(data_dir=data) as process:
        async with await Client.connect(process.target) as client:
            await _fill(client, 12_000)  # three chunks of 5,000: a deletion takes a few commits

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            deletion = asyncio.ensure_future(client.cache.delete_namespace(NS))
            async with asyncio.timeout(30):  # until a first chunk's removal committed
                while not deletion.done() and not await _removals(client):
                    await asyncio.sleep(0.005)
            process.kill()  # the checks below hold wherever the deletion got to
            with contextlib.suppress(RpcError):
                await deletion
    finally:
        process.kill()
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            try:
                [stats] = await client.cache.stats(NS)
            except NotFoundError:
                return  # the whole deletion landed before the kill
            # Still there: every entry left answers as stored, and a retry finishes the deletion.
            left = [
                i for i in range(0, 12_000, 97) if await client.cache.lookup(NS, f"prompt {i}") is not None
            ]
            for i in left:
                hit = await client.cache.lookup(NS, vector=_vector(i))
                assert hit is not None and hit.value == {"i": i}, i
            assert await client.cache.delete_namespace(NS) == stats.entries
            assert NS not in {n.name for n in await client.cache.list_namespaces()}
    finally:
        process.kill()
        process.cleanup()
    assert _files(data) == []
