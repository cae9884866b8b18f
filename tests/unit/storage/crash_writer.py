"""Crash-test helper: commit batches forever, printing each acknowledged key.

Run as ``python crash_writer.py DATA_DIR sync|relaxed``. Several tasks submit
concurrently so that acknowledgements come from group commits; each prints
``<n>`` on stdout right after its ``submit`` returns. The test SIGKILLs the
process mid-stream and checks that every printed key survived. The script
stops by itself after a deadline so it can never outlive a broken test.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

import uvloop

from are_core.storage import Durability, GroupCommitter, Storage, u64_key

WRITERS = 8
DEADLINE_SECONDS = 60.0
MAX_KEYS = 1_000_000


def value_for(n: int) -> bytes:
    """The value stored under key ``n`` (also used by the test to check it)."""
    return f"value-{n}-".encode() * 8


async def main(data_dir: str, durability: Durability) -> None:
    """Write until killed, the deadline, or ``MAX_KEYS``."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    counter = itertools.count()
    with Storage.open(
        data_dir, tables=["kv", "log"], durability=durability, initial_map_size_bytes=64 * 1024
    ) as storage:
        async with GroupCommitter(storage) as committer:
            print("ready", flush=True)

            async def writer() -> None:
                while time.monotonic() < deadline:
                    n = next(counter)
                    if n >= MAX_KEYS:
                        return
                    batch = storage.batch().put("kv", u64_key(n), value_for(n)).put("log", u64_key(n), b"1")
                    await committer.submit(batch)
                    sys.stdout.write(f"{n}\n")
                    sys.stdout.flush()

            await asyncio.gather(*(writer() for _ in range(WRITERS)))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], Durability(sys.argv[2])))
