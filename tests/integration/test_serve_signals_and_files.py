"""An operator's sidecar: a second signal ends it, its files are its owner's, a taken port fails fast.

Defects an operations review reproduced:

- A second SIGTERM or SIGINT did nothing: a stuck shutdown (an upload held
  open) ran its whole grace period (up to an hour) whatever the operator did.
- The data folder was created 0755 and the vector index files 0644 (only
  LMDB's folder was private): any local user could read embeddings of
  prompts and memory notes, and namespace names and workflow ids.
- A taken port was found only after the start's recovery, and its reason
  only in gRPC's own log line (not JSON under ``--log-format json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import stat
import subprocess
from pathlib import Path

from are_sdk import Client, TaskContext, Worker, WorkflowSpec
from tests.integration.test_lifecycle_files import (
    _START_TIMEOUT_S,
    _exit_status,
    _spawn,
    _stop,
    _until,
    short_tmp,  # noqa: F401 - the fixture
)


def _start(folder: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """A sidecar on 127.0.0.1 with a ready file; (its process, its target)."""
    ready = folder / "ready.json"
    process = _spawn(
        folder / "sidecar.log", "--data-dir", str(folder / "data"), "--ready-file", str(ready), *args
    )
    _until(lambda: ready.exists() or process.poll() is not None, _START_TIMEOUT_S, "the sidecar is ready")
    assert process.poll() is None, (folder / "sidecar.log").read_text()
    return process, str(json.loads(ready.read_text())["targets"][0])


async def test_a_second_signal_ends_a_shutdown_that_waits_for_its_grace(short_tmp: Path) -> None:  # noqa: F811
    """A worker holds an attempt it never finishes: a drain waits for it until the grace (120 s) ends."""
    process, target = _start(short_tmp, "--listen", "127.0.0.1:0", "--shutdown-grace-s", "120")
    log = short_tmp / "sidecar.log"
    try:
        async with await Client.connect(target) as client:
            worker = Worker(client, name="holder", shutdown_grace=1)
            started, release = asyncio.Event(), asyncio.Event()

            @worker.handler("hold")
            async def hold(ctx: TaskContext) -> None:
                started.set()
                await release.wait()

            running = asyncio.create_task(worker.run(handle_signals=False))
            try:
                await client.submit_workflow(WorkflowSpec("held").task("held", capability="hold"))
                await asyncio.wait_for(started.wait(), _START_TIMEOUT_S)  # an attempt is held
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(_START_TIMEOUT_S):
                    while "shutdown requested" not in log.read_text():
                        await asyncio.sleep(0.05)
                process.send_signal(signal.SIGTERM)
                status = await asyncio.to_thread(_exit_status, process, log)
            finally:
                release.set()
                worker.shutdown()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running, _START_TIMEOUT_S)
        assert status == 128 + signal.SIGTERM, log.read_text()[-2000:]
        assert "second signal: exiting now" in log.read_text()
    finally:
        _stop(process)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


async def test_what_the_sidecar_writes_is_its_owner_s_alone(short_tmp: Path) -> None:  # noqa: F811
    process, target = _start(short_tmp, "--listen", "127.0.0.1:0")
    try:
        async with await Client.connect(target) as client:
            await client.cache.put_namespace("private", similarity_threshold=0.9)
            for i in range(20):
                await client.cache.store("private", f"a confidential prompt {i}", {"answer": i})
            handle = await client.submit_workflow(WorkflowSpec("notes").task("a", capability="nobody"))
            await client.state.memory.add(handle.workflow_id, [f"a private note {i}" for i in range(5)])
    finally:
        assert _stop(process) == 0  # a clean stop saves the index files
    modes = _modes(short_tmp / "data")
    assert any(name.endswith(".usearch") for name in modes), modes  # the files this is about exist
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not loose, loose


def test_a_taken_port_fails_before_the_start_naming_why(short_tmp: Path) -> None:  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = short_tmp / "sidecar.log"
        process = _spawn(
            log,
            "--data-dir",
            str(short_tmp / "data"),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
        )
        assert _exit_status(process, log) == 1
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line JSON
    errors = [line["message"] for line in lines if line["level"] == "error"]
    assert errors == [f"cannot start: could not listen on 127.0.0.1:{port}: Address already in use"], lines
    assert not (short_tmp / "data").exists()  # refused before anything was opened
