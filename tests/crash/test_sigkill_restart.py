"""SIGKILL the sidecar and restart it on the same folder: nothing acknowledged is lost."""

from __future__ import annotations

from pathlib import Path

from are_sdk import Client
from are_sdk.testing import SidecarProcess

from ..integration.test_cli import _boot_count


async def test_restart_after_sigkill_serves_again_on_the_same_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for round_number in range(1, 4):
        process = SidecarProcess.start(data_dir=data)
        try:
            async with await Client.connect(process.target) as client:
                assert await client.health() == "SERVING"
        finally:
            process.kill()  # no shutdown at all: the lock must die with the process
            process.cleanup()
        # SERVING is only reported after the boot record was durably committed.
        assert _boot_count(data) == round_number
