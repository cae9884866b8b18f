"""Waiting for a forked child from the event loop, with no thread blocked on it.

An index forks children to write itself (:meth:`VectorIndex.save_in_child`),
to measure its recall (:meth:`VectorIndex.search_in_child`) and to find
unreachable nodes (:meth:`VectorIndex.sweep_in_child`); the last two run at
idle priority, so on a busy host they may take minutes. Waiting for one in a
worker thread (``asyncio.to_thread``) held that thread for as long: a few
such children took every thread of the loop's default executor (six on two
CPUs), and everything else that uses it (embedding a lookup's prompt,
coalesced searches) queued behind them. Here the loop watches the child's
pipe and its exit (a pidfd on Linux, else a poll with backoff) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from ._errors import VectorError

__all__ = ["child_exit_code", "child_output"]

_POLL_FIRST_S = 0.001  # without a pidfd: the first wait between two reaping attempts
_POLL_MAX_S = 0.05  # and the longest (the backoff doubles up to it)
_READ_CHUNK = 1 << 20


async def child_exit_code(pid: int) -> int:
    """The exit code of the child ``pid`` once it ended and was reaped (negative: killed by that signal).

    Awaited on the running loop: a pidfd (Linux 5.3 and later) turns
    readable when the child ends; elsewhere ``waitpid(WNOHANG)`` is tried
    every 1 ms, backing off to every 50 ms. Cancelling kills the child
    (SIGKILL) and reaps it in the background.
    """
    try:
        return await _exit_code(pid)
    except ChildProcessError:
        raise  # not (or no longer) a child of ours: its pid may be another process's now
    except BaseException:
        _abandon(pid)
        raise


async def child_output(pid: int, fd: int, what: str) -> bytes:
    """Everything the child ``pid`` wrote to the pipe ``fd`` (closed here), once it ended and was reaped.

    Cancelling kills the child and reaps it in the background.

    Raises:
        VectorError: The child failed or was killed (its output is
            incomplete); ``what`` names it in the message.
    """
    try:
        data = await _read_to_end(fd)
        code = await _exit_code(pid)
    except ChildProcessError:
        raise  # not (or no longer) a child of ours: its pid may be another process's now
    except BaseException:
        _abandon(pid)
        raise
    finally:
        os.close(fd)
    if code != 0:
        raise VectorError(f"the {what} child failed (exit status {code})")
    return data


async def _read_to_end(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            await _readable(fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _exit_code(pid: int) -> int:
    code = _reaped(pid)
    if code is not None:
        return code
    pidfd = _pidfd(pid)
    if pidfd is not None:
        try:
            await _readable(pidfd)  # readable once the child has ended
        finally:
            os.close(pidfd)
    delay = _POLL_FIRST_S
    while (code := _reaped(pid)) is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)
    return code


def _reaped(pid: int) -> int | None:
    """The child's exit code if it ended (it is reaped now), else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done == pid else None


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:  # an older kernel (ENOSYS), or a child already reaped elsewhere
        return None
    return fd


def _abandon(pid: int) -> None:
    """Nobody waits for the child any more: kill it, and reap it once it is gone (no zombie stays)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(RuntimeError):  # no loop running: the process's exit reaps it
        _reap_later(asyncio.get_running_loop(), pid, _POLL_FIRST_S)


def _reap_later(loop: asyncio.AbstractEventLoop, pid: int, delay: float) -> None:
    """Reaps ``pid`` once it has ended, from callbacks that the loop holds (no task to keep alive)."""
    try:
        if _reaped(pid) is not None:
            return
    except ChildProcessError:
        return
    pidfd = _pidfd(pid)
    if pidfd is None:
        loop.call_later(delay, _reap_later, loop, pid, min(delay * 2, _POLL_MAX_S))
        return

    def ended() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            _reaped(pid)

    loop.add_reader(pidfd, ended)
