"""Crash durability: every acknowledged commit survives SIGKILL of the writer."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from are_core.storage import DataDirLock, DataDirLockedError, Durability, Storage, u64_key

pytestmark = pytest.mark.timeout(60)
REPO_ROOT = Path(__file__).resolve().parents[3]
WRITER = Path(__file__).with_name("crash_writer.py")
ACKS_BEFORE_KILL = 2000
WAIT_SECONDS = 30.0


def value_for(n: int) -> bytes:
    """The value crash_writer.py stores under key ``n`` (kept in step with it)."""
    return f"value-{n}-".encode() * 8


def _pump(stream: Iterable[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.strip())
    lines.put(None)


def _run_and_kill(data_dir: Path, durability: Durability) -> list[int]:
    """Start the writer, SIGKILL it after enough acks, return the acked keys."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), durability.value],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    pump.start()
    acked: list[int] = []
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        assert lines.get(timeout=WAIT_SECONDS) == "ready"
        # While it runs, the folder is locked by the writer's pid.
        with pytest.raises(DataDirLockedError, match=f"pid {proc.pid}"):
            DataDirLock.acquire(data_dir)
        while len(acked) < ACKS_BEFORE_KILL:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "writer exited early"
            acked.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_SECONDS)
    # Lines flushed before the kill but not yet read are acknowledgements too.
    while (line := lines.get(timeout=WAIT_SECONDS)) is not None:
        acked.append(int(line))
    pump.join(WAIT_SECONDS)
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("durability", [Durability.SYNC, Durability.RELAXED])
def test_acknowledged_commits_survive_sigkill(tmp_path: Path, durability: Durability) -> None:
    acked = _run_and_kill(tmp_path, durability)
    assert len(acked) >= ACKS_BEFORE_KILL
    # The lock died with the writer, so reopening succeeds.
    with Storage.open(tmp_path, tables=["kv", "log"], durability=durability) as storage:
        with storage.read() as view:
            values = view.get_many("kv", [u64_key(n) for n in acked])
            logs = view.get_many("log", [u64_key(n) for n in acked])
        missing = [n for n, v in zip(acked, values, strict=True) if v != value_for(n)]
        assert not missing, f"{len(missing)} acknowledged keys lost, e.g. {missing[:5]}"
        assert all(v == b"1" for v in logs)
        # Each batch was atomic: the two tables agree on what was committed.
        assert storage.count("kv") == storage.count("log") >= len(acked)
