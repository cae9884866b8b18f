"""A sidecar removes only the files it created: its Unix socket and its ready file.

Defects: a start that failed (the data folder locked by a running sidecar,
or its TCP port taken) deleted the running sidecar's ready file and Unix
socket on its way out; a second sidecar given the same ``--uds`` path
silently took the socket over (and deleted it when it stopped); any file at
the ``--uds`` path was deleted; and the ready file of a sidecar that was
killed stayed until the next one was serving, so a supervisor watching for
it took the next one for ready while it was still starting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

_START_TIMEOUT_S = 30.0
_EXIT_TIMEOUT_S = 20.0


@dataclass
class Running:
    """A sidecar started by the test, with the paths it was given."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    ready_file: Path
    socket_path: Path
    log_path: Path

    @property
    def tcp_target(self) -> str:
        return str(json.loads(self.ready_file.read_text())["targets"][0])


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ARE_", "OTEL_"))}


def _spawn(log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_env(),
        )


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def _exit_status(process: subprocess.Popen[bytes], log_path: Path) -> int:
    """Waits (bounded) for a start that must fail; kills a sidecar that started instead."""
    try:
        return process.wait(_EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the sidecar did not exit; its log:\n{log_path.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _health(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as error:
            return f"error {error.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary folder: a Unix socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="are-lc-") as folder:
        yield Path(folder)


@pytest.fixture
def running(short_tmp: Path) -> Iterator[Running]:
    """A sidecar on TCP and a Unix socket, with a ready file; stopped at the end."""
    data_dir, ready_file, socket_path = short_tmp / "a-data", short_tmp / "ready.json", short_tmp / "are.sock"
    log_path = short_tmp / "a.log"
    process = _spawn(
        log_path,
        *("--data-dir", str(data_dir), "--ready-file", str(ready_file)),
        *("--listen", "127.0.0.1:0", "--uds", str(socket_path)),
    )
    first = Running(process, data_dir, ready_file, socket_path, log_path)
    try:
        _until(
            lambda: first.ready_file.exists() or first.process.poll() is not None,
            _START_TIMEOUT_S,
            "the first sidecar is ready",
        )
        assert first.process.poll() is None, first.log_path.read_text()
        yield first
    finally:
        _stop(first.process)


def _still_serving(first: Running, ready_text: str) -> None:
    assert first.process.poll() is None
    assert first.ready_file.read_text() == ready_text
    assert first.socket_path.is_socket()
    assert _health(f"unix:{first.socket_path}") == "SERVING"
    assert _health(first.tcp_target) == "SERVING"


def test_a_start_refused_by_the_lock_leaves_the_running_sidecars_files(running: Running) -> None:
    ready_text = running.ready_file.read_text()
    log = running.ready_file.parent / "b.log"
    second = _spawn(
        log,
        *("--data-dir", str(running.data_dir), "--ready-file", str(running.ready_file)),
        *("--listen", "127.0.0.1:0", "--uds", str(running.socket_path)),
    )
    assert _exit_status(second, log) == 1
    lines = log.read_text().splitlines()
    reason = next(i for i, line in enumerate(lines) if "is locked by" in line)
    # The reason first, then the unwinding's "stopped" (it read as if the stop came first).
    assert all(i > reason for i, line in enumerate(lines) if line.endswith("are.sidecar: stopped")), lines
    _still_serving(running, ready_text)
    assert _stop(running.process) == 0
    assert not running.ready_file.exists()  # the sidecar that made them removes them
    assert not running.socket_path.exists()


def test_a_start_whose_port_is_taken_leaves_the_running_sidecars_socket(running: Running) -> None:
    ready_text = running.ready_file.read_text()
    folder = running.ready_file.parent
    log = folder / "b.log"
    second = _spawn(
        log,
        *("--data-dir", str(folder / "b-data"), "--ready-file", str(folder / "b-ready.json")),
        *("--listen", running.tcp_target, "--uds", str(running.socket_path)),
    )
    assert _exit_status(second, log) == 1
    assert f"could not listen on {running.tcp_target}" in log.read_text()
    _still_serving(running, ready_text)


def test_a_socket_path_a_live_sidecar_listens_on_is_refused(running: Running) -> None:
    ready_text = running.ready_file.read_text()
    folder = running.ready_file.parent
    log = folder / "b.log"
    second = _spawn(
        log,
        *("--data-dir", str(folder / "b-data"), "--ready-file", str(folder / "b-ready.json")),
        *("--listen", "off", "--uds", str(running.socket_path)),
    )
    assert _exit_status(second, log) == 1
    text = log.read_text()
    assert f"could not listen on unix:{running.socket_path}: a process is listening on it" in text
    assert "Traceback" not in text
    assert not (folder / "b-ready.json").exists()
    _still_serving(running, ready_text)


def test_a_stale_socket_file_is_replaced(short_tmp: Path) -> None:
    path = short_tmp / "are.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))  # bound, never listening, closed: the file a crash leaves behind
    crashed.close()
    ready = short_tmp / "ready.json"
    log = short_tmp / "a.log"
    process = _spawn(
        log,
        "--data-dir",
        str(short_tmp / "data"),
        "--ready-file",
        str(ready),
        "--listen",
        "off",
        "--uds",
        str(path),
    )
    try:
        _until(lambda: ready.exists() or process.poll() is not None, _START_TIMEOUT_S, "the sidecar is ready")
        assert process.poll() is None, log.read_text()
        assert _health(f"unix:{path}") == "SERVING"
    finally:
        assert _stop(process) == 0
    assert not path.exists()


def test_a_file_at_the_socket_path_that_is_no_socket_is_left_alone(short_tmp: Path) -> None:
    path = short_tmp / "are.sock"
    path.write_text("not a socket")
    log = short_tmp / "a.log"
    process = _spawn(log, "--data-dir", str(short_tmp / "data"), "--listen", "off", "--uds", str(path))
    assert _exit_status(process, log) == 1
    assert "exists and is not a socket" in log.read_text()
    assert path.read_text() == "not a socket"


def test_a_killed_sidecars_ready_file_is_gone_before_the_next_one_writes_its_own(short_tmp: Path) -> None:
    data, ready = short_tmp / "data", short_tmp / "ready.json"
    args = ("--data-dir", str(data), "--ready-file", str(ready), "--listen", "127.0.0.1:0")
    first = _spawn(short_tmp / "a.log", *args)
    try:
        _until(lambda: ready.exists() or first.poll() is not None, _START_TIMEOUT_S, "the first is ready")
    finally:
        first.kill()
        first.wait()
    assert json.loads(ready.read_text())["pid"] == first.pid  # stale now
    # The next sidecar writes its ready file through `<name>.tmp`: a FIFO there holds it at that
    # write, after it has started, for as long as the test does not read the FIFO.
    held = ready.with_name(ready.name + ".tmp")
    os.mkfifo(held)
    second = _spawn(short_tmp / "b.log", *args)
    try:
        _until(
            lambda: not ready.exists() or second.poll() is not None,
            _START_TIMEOUT_S,
            "the stale ready file is removed while the next sidecar starts",
        )
        assert second.poll() is None, (short_tmp / "b.log").read_text()
        written = json.loads(_read_fifo(held, timeout=_START_TIMEOUT_S))
        assert written["pid"] == second.pid
        _until(ready.exists, _START_TIMEOUT_S, "the new ready file is in place")
    finally:
        assert _stop(second) == 0
    assert not ready.exists()


def _read_fifo(path: Path, timeout: float) -> bytes:
    """What a writer writes to the FIFO at ``path`` before closing it, bounded in time."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:  # the writer is there and has not written yet
                chunk = None
            if chunk:
                data += chunk
            elif chunk == b"" and data:
                return data  # the writer wrote and closed
            else:
                time.sleep(0.01)
    finally:
        os.close(fd)
    pytest.fail(f"nothing written to {path} in {timeout} s")
