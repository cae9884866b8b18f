"""Fixtures shared by every suite: a real sidecar process, started once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from are_sdk import Client
from are_sdk.testing import SidecarProcess


@pytest.fixture(scope="session")
def sidecar() -> Iterator[SidecarProcess]:
    """One sidecar on an ephemeral 127.0.0.1 port in a temporary data folder."""
    with SidecarProcess.start() as process:
        yield process


@pytest.fixture
async def client(sidecar: SidecarProcess) -> AsyncIterator[Client]:
    """An async client connected to the session's sidecar."""
    async with await Client.connect(sidecar.target) as connected:
        yield connected
