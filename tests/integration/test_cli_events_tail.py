"""``are events --limit N`` shows the most recent N matching events, oldest first, as ``tail`` does.

It showed the oldest N: ``are events`` (100 by default) printed the first
events the flight recorder still held, never the ones a user looks for.
With ``--follow``, ``--limit`` now bounds the retained events shown before
following (``tail -f -n N``), rather than ending the follow.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

from are_sdk import Client
from are_sdk._proto.are.v1 import task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess
from tests.integration.test_cli_follow import _are, _start, finish


def _spec(tasks: int) -> workflow_pb2.WorkflowSpec:
    """A workflow that stays open: its tasks wait for a capability no worker serves."""
    capability = f"nobody-serves-{uuid.uuid4().hex[:8]}"
    return workflow_pb2.WorkflowSpec(
        name="cli-events-tail",
        tasks=[task_pb2.TaskSpec(task_id=f"t{i}", capability=capability) for i in range(tasks)],
        budget=workflow_pb2.WorkflowBudget(max_tasks=max(tasks, 1)),
    )


async def _submit(target: str, tasks: int) -> str:
    async with await Client.connect(target) as client:
        return (await client.workflows.submit(_spec(tasks))).workflow_id


async def _sequences(target: str, *, workflow_id: str = "", after: int = 0, kind: str = "") -> list[int]:
    """The sequences of the retained events after a cursor (of one workflow, of one type), ascending."""
    async with await Client.connect(target) as client:
        return [
            event.sequence
            async for event in client.trace.iter_events(
                workflow_ids=[workflow_id] if workflow_id else [],
                event_types=[kind] if kind else [],
                after_sequence=after,
            )
        ]


async def _settled(target: str, workflow_id: str = "") -> list[int]:
    """The event sequences (of a workflow, or all) once two reads 0.2 s apart agree: events come late."""
    every = await _sequences(target, workflow_id=workflow_id)
    for _ in range(50):
        await asyncio.sleep(0.2)
        again = await _sequences(target, workflow_id=workflow_id)
        if again == every:
            return every
        every = again
    raise AssertionError(f"the events of {workflow_id or 'the log'} kept coming: {every[-20:]}")


def _shown(stdout: str) -> list[int]:
    """The sequences of the event lines printed (``time #seq TYPE ...``)."""
    return [int(line.split()[1].removeprefix("#")) for line in stdout.splitlines() if line.strip()]


async def _events(target: str, *args: str) -> tuple[list[int], str]:
    result = await asyncio.to_thread(_are, target, "events", *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return _shown(result.stdout), result.stderr


async def test_limit_shows_the_most_recent_events_oldest_first(sidecar: SidecarProcess) -> None:
    workflow_id = await _submit(sidecar.target, 6)
    every = await _settled(sidecar.target, workflow_id)
    assert len(every) >= 7

    shown, stderr = await _events(sidecar.target, "--workflow", workflow_id, "--limit", "3")
    assert shown == every[-3:]
    assert "--limit 0" in stderr  # the note that earlier events were left out
    shown, stderr = await _events(sidecar.target, "--workflow", workflow_id, "--limit", "0")
    assert shown == every
    assert "--limit 0" not in stderr
    shown, stderr = await _events(sidecar.target, "--workflow", workflow_id, "--limit", str(len(every) + 5))
    assert shown == every
    assert "--limit 0" not in stderr

    # --after bounds the listing from below: the last N of the events after the cursor.
    cursor = every[2]
    after = ("--workflow", workflow_id, "--after", str(cursor))
    shown, _ = await _events(sidecar.target, *after, "--limit", "2")
    assert shown == every[-2:]
    shown, _ = await _events(sidecar.target, *after, "--limit", "100")
    assert shown == every[3:]


async def test_each_line_names_its_workflow_unless_one_workflow_is_asked_for(sidecar: SidecarProcess) -> None:
    """Events of several workflows were printed by task id only, which does not say whose they are."""
    first, second = await _submit(sidecar.target, 1), await _submit(sidecar.target, 1)
    after = (await _settled(sidecar.target, first))[0] - 1
    result = await asyncio.to_thread(
        _are, sidecar.target, "events", "--type", "WORKFLOW_SUBMITTED", "--after", str(after), "--limit", "0"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[3] for line in lines] == [first, second]
    result = await asyncio.to_thread(_are, sidecar.target, "events", "--workflow", first, "--limit", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert first not in result.stdout  # said once, by --workflow: not repeated on every line


async def test_the_default_is_the_last_100_of_every_workflow(sidecar: SidecarProcess) -> None:
    await _submit(sidecar.target, 150)  # more events than the default shows
    every = await _settled(sidecar.target)
    shown, stderr = await _events(sidecar.target)
    assert shown == every[-100:]
    assert "(the last 100 events shown" in stderr


async def test_a_filter_whose_events_are_far_back_is_read_back_to_them(sidecar: SidecarProcess) -> None:
    """More than a first window (1,000 sequences) of other events were recorded after the workflow's."""
    workflow_id = await _submit(sidecar.target, 3)
    mine = await _settled(sidecar.target, workflow_id)
    await _submit(sidecar.target, 1200)
    await _submit(sidecar.target, 1200)
    assert (await _sequences(sidecar.target, after=mine[-1]))[1100:], "too few newer events to test with"

    shown, stderr = await _events(sidecar.target, "--workflow", workflow_id, "--limit", "2")
    assert shown == mine[-2:]
    shown, stderr = await _events(sidecar.target, "--workflow", workflow_id, "--limit", "50")
    assert shown == mine
    assert "--limit 0" not in stderr
    submitted, _ = await _events(sidecar.target, "--type", "WORKFLOW_SUBMITTED", "--limit", "3")
    assert submitted == (await _sequences(sidecar.target, kind="WORKFLOW_SUBMITTED"))[-3:]
    assert submitted[0] in mine  # its submit, then the two newer ones'


async def test_follow_shows_the_last_n_then_follows_live_until_stopped(sidecar: SidecarProcess) -> None:
    workflow_id = await _submit(sidecar.target, 4)
    every = await _settled(sidecar.target, workflow_id)
    follower = await _start(sidecar.target, "events", "--workflow", workflow_id, "--limit", "2", "--follow")
    assert follower.stdout is not None
    try:
        lines = [await asyncio.wait_for(follower.stdout.readline(), 60) for _ in range(2)]
        assert _shown(b"".join(lines).decode()) == every[-2:], (lines, every)
        async with await Client.connect(sidecar.target) as client:
            await client.workflows.get_handle(workflow_id).cancel()  # live events: the limit does not end it
            live = [await asyncio.wait_for(follower.stdout.readline(), 60) for _ in range(3)]
        assert all(sequence > every[-1] for sequence in _shown(b"".join(live).decode())), (live, every)
        assert follower.returncode is None  # still following: only a signal (or Ctrl-C) ends it
    finally:
        if follower.returncode is None:
            follower.send_signal(signal.SIGTERM)
    code, stdout, stderr = await finish(follower)
    assert code == 128 + signal.SIGTERM, (code, stdout, stderr)


async def test_follow_goes_on_past_the_end_of_a_workflow(sidecar: SidecarProcess) -> None:
    """``events --follow`` stopped at the first terminal workflow event it read, of any workflow."""
    cursor = max(await _sequences(sidecar.target), default=0)  # earlier tests' ends are not shown
    only_new_ends = ("--type", "WORKFLOW_CANCELLED", "--after", str(cursor), "--limit", "0")
    follower = await _start(sidecar.target, "events", *only_new_ends, "--follow")
    assert follower.stdout is not None
    try:
        async with await Client.connect(sidecar.target) as client:
            for _ in range(2):  # each cancelled workflow's end is shown, and following goes on
                workflow_id = (await client.workflows.submit(_spec(1))).workflow_id
                await client.workflows.get_handle(workflow_id).cancel()
                line = await asyncio.wait_for(follower.stdout.readline(), 60)
                assert workflow_id in line.decode(), (line, workflow_id)
        assert follower.returncode is None
    finally:
        if follower.returncode is None:
            follower.send_signal(signal.SIGTERM)
    code, stdout, stderr = await finish(follower)
    assert code == 128 + signal.SIGTERM, (code, stdout, stderr)


def test_a_cursor_beyond_the_log_is_still_refused(sidecar: SidecarProcess) -> None:
    result = _are(sidecar.target, "events", "--after", str(2**62), "--limit", "5")
    assert result.returncode == 1, result.stderr
    assert "SEQUENCE_BEYOND_LOG" in result.stderr
    assert "Traceback" not in result.stderr
