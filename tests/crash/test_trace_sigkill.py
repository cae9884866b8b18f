"""SIGKILL the sidecar while events are recorded: every acknowledged event is kept, no sequence is reused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from are_core.trace import EventDraft
from are_sdk import Client
from are_sdk.testing import SidecarProcess
from sidecar._trace import TEST_HOOK_ENV, TEST_HOOK_METHOD

WF = "wf-crash"


async def _record_many(client: Client, batches: int) -> list[int]:
    call = client.channel.unary_unary(TEST_HOOK_METHOD)
    acknowledged: list[int] = []

    async def one(index: int) -> None:
        drafts = [
            EventDraft(event_type="WORKER_CUSTOM", workflow_id=WF, name=f"e{index}-{i}") for i in range(5)
        ]
        reply = await call(msgspec.msgpack.encode(drafts), timeout=30)
        acknowledged.extend(msgspec.msgpack.decode(reply, type=list[int]))

    await asyncio.gather(*(one(i) for i in range(batches)))
    return acknowledged


async def test_acknowledged_events_survive_sigkill_and_sequences_move_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {TEST_HOOK_ENV: "1"}
    process = SidecarProcess.start(data_dir=data, env=env)
    try:
        async with await Client.connect(process.target) as client:
            acknowledged = await _record_many(client, 40)
            # More in flight while the process dies: those may or may not be kept.
            in_flight = asyncio.ensure_future(_record_many(client, 40))
            await asyncio.sleep(0.01)
            process.kill()
            await asyncio.gather(in_flight, return_exceptions=True)
    finally:
        process.cleanup()

    again = SidecarProcess.start(data_dir=data, env=env)
    try:
        async with await Client.connect(again.target) as client:
            kept = [e.sequence async for e in client.trace.iter_events(workflow_ids=[WF])]
            assert set(acknowledged) <= set(kept)
            assert kept == sorted(set(kept))
            after = max(await _record_many(client, 1))
            assert after > max(kept)
    finally:
        again.cleanup()
