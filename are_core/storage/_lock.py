"""Exclusive ownership of a data folder across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Self

from ._errors import DataDirLockedError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DataDirLock"]

LOCK_FILE_NAME = "LOCK"

_HELD: set[int] = set()
"""Descriptors of the locks this process holds, closed in every child it forks.

A ``flock`` belongs to the open file: a forked child's copy of the
descriptor keeps the lock held after the holder releases it, or dies. The
sidecar forks children that write index files (seconds for a large one); a
restart right after a crash, or a reopen in the same process, then found
the folder locked by a child writing an index.
"""


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/LOCK`` holding the owner's pid.

    Only one holder may own a data folder: a second process, or a second
    acquire in the same process (``flock`` locks belong to each open file),
    gets ``DataDirLockedError`` naming the folder and the holder's pid. The
    kernel drops the lock when the holder closes it or dies, even by SIGKILL,
    so a stale ``LOCK`` file never blocks a restart. A child the holder
    forks does not inherit it (its copy of the descriptor is closed).
    """

    __slots__ = ("_fd", "data_dir", "path")

    def __init__(self, data_dir: Path, fd: int) -> None:
        """Wrap an already locked descriptor; use ``DataDirLock.acquire``."""
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE_NAME
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: str | os.PathLike[str]) -> DataDirLock:
        """Lock ``data_dir`` (created if missing) without waiting.

        Raises:
            DataDirLockedError: another holder owns the folder.
        """
        folder = Path(data_dir).absolute()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new one is its owner's alone
        fd = os.open(folder / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirLockedError(folder, pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _HELD.add(fd)
        return cls(folder, fd)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock; calling it again does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.discard(fd)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid for the next reader
        os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<DataDirLock {str(self.data_dir)!r} {state}>"


def _read_pid(fd: int) -> int | None:
    """Return the pid written by the current holder, or None if unreadable."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
