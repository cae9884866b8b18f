"""A fork cut short between two pages of its copy of notes is undone at the next start.

ForkWorkflow now copies its source's notes a page at a time, a commit each
(it read them all into one list first). Its all-or-nothing guarantee still
comes from its pending record, committed with its document before any
note: here the "crash" lands after the second page's commit, and the
restart removes every note copied so far, the record with them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from are_core.state import NoteInput
from are_core.state import _memory as memory_module
from are_core.storage import Batch
from sidecar._state import ForkPlan
from tests.unit.state.test_fork_recovery import _left, _sidecar, _source

_WAIT_S = 10.0


async def test_a_fork_cut_short_between_pages_of_notes_is_undone_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_module, "_COPY_PAGE_BYTES", 1500)  # pages of some 20 notes
    monkeypatch.setattr(memory_module, "_COPY_SCAN", 8)
    data = tmp_path / "data"
    reached = asyncio.Event()
    crash = asyncio.Event()

    async def unused(plan: ForkPlan) -> None:
        raise AssertionError(plan)

    async with _sidecar(data, known=lambda wid: wid == "src", hook=unused) as (state, client):
        await state.memory.add("src", [NoteInput(text=f"n{i}", vector=[1.0, 0.5 + i]) for i in range(200)])
        await _source(state)
        committer = state.runtime.committer
        submit = committer.submit
        pages = 0

        async def crash_after_the_second_page(batch: Batch) -> None:
            nonlocal pages
            await submit(batch)
            if any(m.table == "memory_notes" and m.key.startswith(b"copy\x00") for m in batch.mutations):
                pages += 1
                if pages == 2:
                    reached.set()
                    await crash.wait()
                    raise RuntimeError("the process died here")

        monkeypatch.setattr(committer, "submit", crash_after_the_second_page)
        fork = asyncio.ensure_future(client.state.fork("src", new_workflow_id="copy", request_id="r1"))
        await asyncio.wait_for(reached.wait(), _WAIT_S)
        left = _left(state, "copy")
        assert 0 < left["memory_notes"] < 202  # copied in part
        assert (left["memory_spaces"], left["state_heads"], left["pending"]) == (0, 1, 1)
        await committer.aclose()  # nothing commits after the "crash"
        crash.set()
        await asyncio.wait({fork}, timeout=_WAIT_S)
        fork.cancel()
        monkeypatch.setattr(committer, "submit", submit)
        assert _left(state, "copy")["memory_notes"] == left["memory_notes"]

    async with _sidecar(data, known=lambda wid: wid == "src", hook=unused) as (state, client):
        await asyncio.wait_for(state.recovered(), _WAIT_S)
        left = _left(state, "copy")
        assert left == dict.fromkeys(left, 0)
        assert len(state.runtime.storage.scan("memory_notes", prefix=b"src\x00")) == 202
