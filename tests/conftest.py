"""Fixtures shared by every suite: a real sidecar process, started once per session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from are_sdk import Client
from are_sdk.testing import SidecarProcess

# pytest-xdist's workers start with COLUMNS=80 in their environment; the CLI's
# consoles, made when sidecar._cli_client is imported (at collection), would
# keep that width for good, and tests that run `are` in this process and set
# their own COLUMNS would see tables squeezed into 80 columns. Without it, the
# consoles read COLUMNS when they print, as they do in a plain pytest run.
os.environ.pop("COLUMNS", None)


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
