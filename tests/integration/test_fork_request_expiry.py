"""ForkWorkflow request ids expire a day after their fork (common.proto: a retry within 24 hours).

Their records were kept for good, one per fork that named a request_id. The
sidecar's periodic sweep (its first pass within seconds of a start) now
deletes those older than a day; a younger one still answers its retries, and
a record of an older sidecar (no time) is left alone. The records' ages are
set in the data folder with the project's storage API while no sidecar runs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from are_core.storage import GroupCommitter, Storage
from are_sdk import AlreadyExistsError, Client
from are_sdk.testing import SidecarProcess
from sidecar._server import TABLES
from sidecar._state import FORK_REQUESTS_TABLE, _ForkRecord
from tests.integration.test_state_delete_and_fork import _submit

_DAY_NS = 24 * 3600 * 1_000_000_000
_HANG_GUARD_S = 30.0


async def _age(data: Path, ages_ns: dict[str, int | None]) -> None:
    """Makes each request id's record that old (None: as an older sidecar wrote it, with no time)."""
    storage = Storage.open(data, tables=TABLES)
    committer = GroupCommitter(storage)
    try:
        batch = storage.batch()
        for request_id, age in ages_ns.items():
            raw = storage.get(FORK_REQUESTS_TABLE, request_id.encode())
            assert raw is not None, request_id
            record = msgspec.msgpack.decode(raw, type=_ForkRecord)
            assert record.create_ns > 0  # this sidecar dates its records
            create_ns = 0 if age is None else time.time_ns() - age
            aged = msgspec.structs.replace(record, create_ns=create_ns)
            batch.put(FORK_REQUESTS_TABLE, request_id.encode(), msgspec.msgpack.encode(aged))
        await committer.submit(batch)
    finally:
        await committer.aclose()
        storage.close()


async def _forks(target: str, source: str, request_ids: list[str]) -> dict[str, str]:
    async with await Client.connect(target) as client:
        return {r: (await client.state.fork(source, request_id=r)).workflow_id for r in request_ids}


async def test_a_fork_request_id_is_forgotten_a_day_after_its_fork(tmp_path: Path) -> None:
    data = tmp_path / "data"
    source = "fork-expiry-source"
    with SidecarProcess.start(data_dir=data) as sidecar:
        async with await Client.connect(sidecar.target) as client:
            await _submit(client, source)
        first = await _forks(sidecar.target, source, ["expired", "recent", "legacy"])
    await _age(data, {"expired": _DAY_NS + 3600 * 1_000_000_000, "recent": _DAY_NS // 2, "legacy": None})

    with SidecarProcess.start(data_dir=data) as sidecar:
        async with await Client.connect(sidecar.target) as client:
            # Another request under the expired id: a conflict until the sweep deleted its record.
            async with asyncio.timeout(_HANG_GUARD_S):
                while True:
                    try:
                        fresh = await client.state.fork(source, request_id="expired", labels={"other": "1"})
                        break
                    except AlreadyExistsError:
                        await asyncio.sleep(0.2)
            assert fresh.workflow_id != first["expired"]
            # The younger record and the undated one still answer their retries with the first fork.
            again = await _forks(sidecar.target, source, ["recent", "legacy"])
            assert again == {"recent": first["recent"], "legacy": first["legacy"]}
