"""DataDirLock: one holder per data folder, released even by SIGKILL."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from are_core.storage import DataDirLock, DataDirLockedError

pytestmark = pytest.mark.timeout(30)
REPO_ROOT = Path(__file__).resolve().parents[3]

_TRY_LOCK = textwrap.dedent(
    """
    import sys
    from are_core.storage import DataDirLock, DataDirLockedError
    try:
        DataDirLock.acquire(sys.argv[1])
    except DataDirLockedError as exc:
        print(exc)
        sys.exit(3)
    print("acquired")
    """
)
_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from are_core.storage import DataDirLock
    lock = DataDirLock.acquire(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Popen's overloads cannot be matched with **kwargs of unknown keys; text=True makes it Popen[str].
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def test_lock_writes_pid_and_releases(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path / "data")
    assert (tmp_path / "data" / "LOCK").read_text().strip() == str(os.getpid())
    assert repr(lock).endswith(" held>")
    lock.release()
    lock.release()
    assert not lock.held
    with DataDirLock.acquire(tmp_path / "data") as again:
        assert again.held


def test_second_acquire_in_same_process_names_folder_and_pid(tmp_path: Path) -> None:
    with DataDirLock.acquire(tmp_path), pytest.raises(DataDirLockedError) as info:
        DataDirLock.acquire(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert f"pid {os.getpid()}" in message
    assert info.value.pid == os.getpid()


def test_second_process_is_refused_with_holder_pid(tmp_path: Path) -> None:
    with DataDirLock.acquire(tmp_path):
        proc = _python(_TRY_LOCK, str(tmp_path))
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 3
    assert f"pid {os.getpid()}" in out
    assert str(tmp_path) in out


def test_lock_is_released_when_holder_is_sigkilled(tmp_path: Path) -> None:
    proc = _python(_HOLD_LOCK, str(tmp_path))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLockedError, match=f"pid {proc.pid}"):
            DataDirLock.acquire(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL
    with DataDirLock.acquire(tmp_path) as lock:
        assert lock.held


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path: Path) -> None:
    """The sidecar forks children that write index files for seconds: their copy of the lock's
    descriptor kept the folder locked after the holder released it (or died), so a reopen, or a
    restart right after a crash, found it 'locked by another process'."""
    lock = DataDirLock.acquire(tmp_path)
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: says it runs, waits until the parent is done (bounded), exits
        os.close(write_end)
        os.write(ready_write, b"x")
        select.select([read_end], [], [], 30)
        os._exit(0)
    os.close(read_end)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"x"  # the child is past its fork
        os.close(ready_read)
        lock.release()
        again = DataDirLock.acquire(tmp_path)  # the child is still alive
        again.release()
    finally:
        os.close(write_end)  # ends the child
        os.waitpid(pid, 0)
