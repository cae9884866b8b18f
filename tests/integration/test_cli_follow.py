"""``are trace --follow`` and ``are events``: following ends when it should, limits hold, signals end it.

Defects: ``trace W --follow`` stopped only on reading a terminal workflow
event, so it hung for good when ``--type`` filtered that event out, when
retention had dropped it, or when W did not exist; ``trace`` of a missing
workflow said "no events" and exited 0; ``events --after -1`` was a
traceback, ``--limit 0`` and negative limits still printed an event, and
``--limit`` was ignored with ``--follow`` (it now bounds the retained events
shown before following, as ``tail -f -n N`` does: test_cli_events_tail.py);
SIGTERM during ``--follow`` killed the command with the terminal's cursor
still hidden.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from are_sdk import Client
from are_sdk._proto.are.v1 import task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess

_HIDE_CURSOR, _SHOW_CURSOR = b"\x1b[?25l", b"\x1b[?25h"


def _env(target: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_") and k != "COLUMNS"}
    env.update({"ARE_TARGET": target, "NO_COLOR": "1"})
    return env


def _are(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``are ARGS`` to its end; a command that hangs fails the test after a minute."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True, text=True, timeout=60, env=_env(target), check=False,
    )  # fmt: skip


async def _start(target: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(target),
    )  # fmt: skip


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Waits (a minute at most) for ``process`` to end on its own; kills it if it does not."""
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _kinds(stdout: str) -> list[str]:
    return [line.split()[2] for line in stdout.splitlines() if line.strip()]


def _open_spec() -> workflow_pb2.WorkflowSpec:
    """A workflow that stays open: its one task waits for a capability no worker serves."""
    return workflow_pb2.WorkflowSpec(
        name="cli-follow",
        tasks=[task_pb2.TaskSpec(task_id="wait", capability=f"nobody-serves-{uuid.uuid4().hex[:8]}")],
    )


async def _open_workflow(target: str) -> str:
    async with await Client.connect(target) as client:
        return (await client.workflows.submit(_open_spec())).workflow_id


async def _cancelled_workflow(target: str) -> str:
    async with await Client.connect(target) as client:
        handle = await client.workflows.submit(_open_spec())
        await handle.cancel()
        await handle.wait(timeout=30)
        return handle.workflow_id


async def test_follow_with_a_type_filter_still_ends_with_the_workflow(sidecar: SidecarProcess) -> None:
    async with await Client.connect(sidecar.target) as client:
        handle = await client.workflows.submit(_open_spec())
        follower = await _start(
            sidecar.target, "trace", handle.workflow_id, "--follow", "--type", "WORKFLOW_SUBMITTED"
        )
        assert follower.stdout is not None
        try:
            first = await asyncio.wait_for(follower.stdout.readline(), 60)  # following has started
        finally:
            await handle.cancel()
        code, rest, stderr = await finish(follower)
    assert code == 0, stderr
    assert _kinds(first.decode() + rest) == ["WORKFLOW_SUBMITTED"]  # the end was read, not shown


def test_follow_of_an_ended_workflow_shows_what_is_retained_and_stops(sidecar: SidecarProcess) -> None:
    workflow_id = asyncio.run(_cancelled_workflow(sidecar.target))
    result = _are(sidecar.target, "trace", workflow_id, "--follow", "--type", "WORKFLOW_SUBMITTED")
    assert result.returncode == 0, result.stderr
    assert _kinds(result.stdout) == ["WORKFLOW_SUBMITTED"]


@pytest.fixture(scope="module")
def forgetful() -> Iterator[SidecarProcess]:
    """A sidecar whose flight recorder keeps one event."""
    with SidecarProcess.start(args=["--event-retention-count", "1"]) as process:
        yield process


async def test_follow_of_a_workflow_whose_end_retention_dropped_stops(forgetful: SidecarProcess) -> None:
    workflow_id = await _cancelled_workflow(forgetful.target)
    async with await Client.connect(forgetful.target) as client:
        for _ in range(600):  # bounded: pruning runs once a second
            page = await client.trace.list_events(workflow_ids=[workflow_id])
            if not page.events:
                break
            await client.workflows.submit(_open_spec())  # newer events push the workflow's out
            await asyncio.sleep(0.1)
        assert not page.events, "retention never dropped the workflow's events"
    result = await asyncio.to_thread(_are, forgetful.target, "trace", workflow_id, "--follow")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "no events" in result.stderr


def test_trace_of_a_missing_workflow_is_not_found(sidecar: SidecarProcess) -> None:
    missing = f"wf-missing-{uuid.uuid4().hex[:8]}"
    for follow in ((), ("--follow",)):
        result = _are(sidecar.target, "trace", missing, *follow)
        assert result.returncode == 1, (follow, result.stderr)
        assert "NOT_FOUND" in result.stderr and missing in result.stderr
        assert "Traceback" not in result.stderr


async def test_trace_of_a_deleted_workflow_shows_its_retained_events(sidecar: SidecarProcess) -> None:
    async with await Client.connect(sidecar.target) as client:
        handle = await client.workflows.submit(_open_spec())
        await handle.cancel()
        await handle.wait(timeout=30)
        await handle.delete()
    for follow in ((), ("--follow",)):
        result = await asyncio.to_thread(_are, sidecar.target, "trace", handle.workflow_id, *follow)
        assert result.returncode == 0, result.stderr
        assert "WORKFLOW_SUBMITTED" in _kinds(result.stdout)
        assert "retained events are shown" in result.stderr


def test_events_refuses_a_negative_cursor_or_limit(sidecar: SidecarProcess) -> None:
    for option in ("--after", "--limit"):
        result = _are(sidecar.target, "events", option, "-1")
        assert result.returncode == 2, result.stderr
        assert option in result.stderr
        assert "Traceback" not in result.stderr


async def test_events_limit_bounds_the_events_shown(sidecar: SidecarProcess) -> None:
    """``--limit N`` shows the most recent N (test_cli_events_tail.py: which ones, and with --follow)."""
    workflow_id = await _open_workflow(sidecar.target)
    async with await Client.connect(sidecar.target) as client:
        retained = len((await client.trace.list_events(workflow_ids=[workflow_id])).events)
        assert retained >= 2
        result = await asyncio.to_thread(
            _are, sidecar.target, "events", "--workflow", workflow_id, "--limit", "1"
        )
        assert (result.returncode, len(result.stdout.splitlines())) == (0, 1), result.stderr
        result = await asyncio.to_thread(
            _are, sidecar.target, "events", "--workflow", workflow_id, "--limit", "0"
        )
        assert (result.returncode, len(result.stdout.splitlines())) == (0, retained), (
            result.stderr
        )  # no limit
        await client.workflows.get_handle(workflow_id).cancel()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_follow_shows_the_cursor_again(sidecar: SidecarProcess, signum: int) -> None:
    workflow_id = asyncio.run(_open_workflow(sidecar.target))
    env = _env(sidecar.target)
    env["TERM"] = "xterm"
    primary, secondary = os.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "trace", workflow_id, "--follow"],
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, start_new_session=True,
    ) as follower:  # fmt: skip
        os.close(secondary)
        try:
            output = _read_until(primary, lambda seen: _HIDE_CURSOR in seen)
            assert _HIDE_CURSOR in output, output  # the live status is up
            follower.send_signal(signum)
            code = follower.wait(60)
            output += _read_until(primary, lambda _: False)
        finally:
            if follower.poll() is None:
                follower.kill()
            os.close(primary)
    assert code == 128 + signum
    assert output.rfind(_SHOW_CURSOR) > output.find(_HIDE_CURSOR), output[-300:]


def _read_until(fd: int, done: Callable[[bytes], bool]) -> bytes:
    """Reads a pseudo-terminal until ``done`` says so, its writer is gone, or a minute has passed."""
    seen = b""
    deadline = time.monotonic() + 60
    while not done(seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen
