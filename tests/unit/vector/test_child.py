"""Waiting for forked children on the event loop: no thread held, output whole, every child reaped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from are_core.vector import VectorError, child_exit_code, child_output

_SLEEPER = "import time; time.sleep(60)"  # ended by the test well before
_DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default


def _spawn(code: str) -> tuple[int, int]:
    """A Python child running ``code`` with its stdout on a pipe; returns (pid, read end)."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-c", code],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1), (os.POSIX_SPAWN_CLOSE, read_fd)],
        )
    finally:
        os.close(write_fd)
    return pid, read_fd


def _reaped(pid: int) -> bool:
    """Whether ``pid`` was reaped (WNOWAIT: a zombie stays for the code under test to reap)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


async def _until_reaped(pid: int) -> None:
    deadline = time.monotonic() + 10
    while not _reaped(pid):
        assert time.monotonic() < deadline, f"child {pid} was never reaped"
        await asyncio.sleep(0.01)


async def test_children_waited_for_hold_no_thread_of_the_default_executor() -> None:
    # More slow children than the default executor has threads: waiting for
    # each in a worker thread (as before) took them all, and this to_thread
    # call would have waited for the children to end.
    children = [_spawn(_SLEEPER) for _ in range(_DEFAULT_EXECUTOR_THREADS + 2)]
    outputs = [asyncio.create_task(child_output(pid, fd, "test")) for pid, fd in children[::2]]
    exits = [asyncio.create_task(child_exit_code(pid)) for pid, fd in children[1::2]]
    for _, fd in children[1::2]:
        os.close(fd)
    try:
        await asyncio.sleep(0.2)  # every wait has started
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), timeout=10) == 42
        assert not any(task.done() for task in [*outputs, *exits])
    finally:
        for pid, _ in children:
            os.kill(pid, signal.SIGTERM)
    assert await asyncio.wait_for(asyncio.gather(*exits), timeout=30) == [-signal.SIGTERM] * len(exits)
    for task in outputs:
        with pytest.raises(VectorError, match=rf"the test child failed \(exit status {-signal.SIGTERM}\)"):
            await asyncio.wait_for(task, timeout=30)
    assert all(_reaped(pid) for pid, _ in children)


async def test_the_output_is_read_whole_past_what_a_pipe_holds() -> None:
    size = 3 * 1024 * 1024  # a pipe holds 64 KiB: the child blocks until the loop reads
    pid, fd = _spawn(f"import sys; sys.stdout.buffer.write(bytes(range(256)) * {size // 256})")
    data = await asyncio.wait_for(child_output(pid, fd, "writer"), timeout=30)
    assert data == bytes(range(256)) * (size // 256)
    assert _reaped(pid)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


async def test_a_failed_child_raises_with_its_exit_status_and_is_reaped() -> None:
    pid, fd = _spawn("import sys; sys.stdout.write('partial'); sys.exit(3)")
    with pytest.raises(VectorError, match=r"the sweep child failed \(exit status 3\)"):
        await asyncio.wait_for(child_output(pid, fd, "sweep"), timeout=30)
    assert _reaped(pid)


@pytest.mark.parametrize("pidfd", [True, False])
@pytest.mark.parametrize("waiting_for", ["output", "exit"])
async def test_cancelling_a_wait_kills_the_child_and_reaps_it(
    waiting_for: str, pidfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pidfd:  # as on kernels before 5.3: the reaping polls
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    pid, fd = _spawn(_SLEEPER)
    task: asyncio.Task[bytes | int]
    if waiting_for == "output":
        task = asyncio.create_task(child_output(pid, fd, "test"))
    else:
        os.close(fd)
        task = asyncio.create_task(child_exit_code(pid))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until_reaped(pid)  # killed (no 60 s sleep) and no zombie left


async def test_without_a_pidfd_the_exit_is_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    pid, fd = _spawn("import time, sys; time.sleep(0.2); sys.exit(5)")
    os.close(fd)
    assert await asyncio.wait_for(child_exit_code(pid), timeout=30) == 5
    assert _reaped(pid)


async def test_waiting_again_for_a_reaped_child_raises() -> None:
    pid, fd = _spawn("pass")
    os.close(fd)
    assert await asyncio.wait_for(child_exit_code(pid), timeout=30) == 0
    with pytest.raises(ChildProcessError):  # and kills nothing: the pid may be another process's by now
        await child_exit_code(pid)
