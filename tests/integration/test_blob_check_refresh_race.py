"""CheckBlobs(refresh_found) and the SDK's put() racing the sweep in a real sidecar with a short TTL.

Defect (found against a real sidecar): with uploads keeping the blob
store's lock busy, a CheckBlobs(refresh_found) made as its blobs reached
their TTL answered "found" for a blob that a sweep queued on that lock
deleted before the refresh ran; the SDK's put() (check_first, its default)
then skipped the upload and returned a reference to nothing (about 2% of
such calls: BLOB_NOT_FOUND right after put() returned). The deterministic
form of the race is in tests/unit/state/test_blob_check_refresh_race.py;
this one drives the real interleaving, bounded in calls and time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from are_sdk import Client, NotFoundError
from are_sdk._proto.are.v1 import state_service_pb2 as st
from are_sdk.testing import SidecarProcess

TTL_S = 2.0  # the sweep runs every TTL / 4
_BLOBS = 240
_CONTENDERS = 4
_CHECKERS = 6
_WAIT_S = 120.0  # hang guard


@pytest.fixture(scope="module")
def short_ttl_sidecar() -> Iterator[SidecarProcess]:
    with SidecarProcess.start(args=["--blob-unreferenced-ttl-s", str(TTL_S)]) as process:
        yield process


@pytest.fixture
async def client(short_ttl_sidecar: SidecarProcess) -> AsyncIterator[Client]:
    async with await Client.connect(short_ttl_sidecar.target) as connected:
        yield connected


async def _race(client: Client, check: bool) -> tuple[int, list[str]]:
    """Uploads blobs, then re-puts (or checks) each as it reaches its TTL while uploads keep the lock busy.

    Returns how many calls were made and the digests a call reported stored that were gone right after.
    """
    blobs = client.state.blobs
    datas = [os.urandom(40) + i.to_bytes(4, "big") for i in range(_BLOBS)]
    for data in datas:
        await blobs.put(data, check_first=False)
    started = time.monotonic()
    await asyncio.sleep(TTL_S - 0.4)
    stop = asyncio.Event()

    async def contend() -> None:  # publishes: the blob store's lock is held most of the time
        for _ in range(5000):
            if stop.is_set():
                return
            await blobs.put(os.urandom(2000), check_first=False)

    broken: list[str] = []
    calls = 0

    async def call(part: list[bytes]) -> None:
        nonlocal calls
        for data in part:
            if time.monotonic() - started > TTL_S + 3:
                return
            calls += 1
            if check:
                digest = hashlib.sha256(data).hexdigest()
                response = await client.raw.state.CheckBlobs(
                    st.CheckBlobsRequest(sha256s=[digest], refresh_found=True)
                )
                if response.found and not await blobs.check([digest]):
                    broken.append(digest)
            else:
                ref = await blobs.put(data)  # check_first: the upload is skipped for a blob found
                try:
                    assert await blobs.get(ref) == data
                except NotFoundError:
                    broken.append(ref.sha256)
            await asyncio.sleep(0.005)

    contenders = [asyncio.create_task(contend()) for _ in range(_CONTENDERS)]
    try:
        async with asyncio.timeout(_WAIT_S):
            await asyncio.gather(*(call(datas[i::_CHECKERS]) for i in range(_CHECKERS)))
    finally:
        stop.set()
        await asyncio.gather(*contenders)
    return calls, broken


async def test_the_sdk_put_returns_a_readable_reference_while_blobs_are_swept(client: Client) -> None:
    calls, broken = await _race(client, check=False)
    assert calls
    assert broken == []


async def test_a_blob_check_refresh_reports_found_is_still_stored_after(client: Client) -> None:
    calls, broken = await _race(client, check=True)
    assert calls
    assert broken == []
