"""Start a real ARE sidecar for tests: a temporary folder, an ephemeral port.

This is the helper ARE's own test-suite uses, shipped so that your tests talk
to the same real process over real gRPC instead of a mock::

    from are_sdk.testing import SidecarProcess

    with SidecarProcess.start() as sidecar:
        async with await Client.connect(sidecar.target) as client:
            ...

The sidecar runs as ``python -m sidecar serve`` with the current interpreter
(the ``are`` distribution must be installed), or as the command given in
``command=`` or the ``ARE_SIDECAR_COMMAND`` environment variable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from are_sdk._client import DEFAULT_TLS_SERVER_NAME

__all__ = ["SidecarProcess", "SidecarStartError"]


class SidecarStartError(RuntimeError):
    """The sidecar exited or did not become ready in time; the message has its log."""


class SidecarProcess:
    """A sidecar child process with its own data folder and endpoint.

    Attributes:
        target: The gRPC target to connect to (``127.0.0.1:PORT`` or ``unix:PATH``).
        data_dir: The data folder the sidecar owns.
        log_path: The file receiving the sidecar's log (stderr and stdout).
        token: The bearer token the sidecar requires, or None.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        target: str,
        data_dir: Path,
        log_path: Path,
        workdir: Path,
        owns_workdir: bool,
        token: str | None,
    ) -> None:
        self._process = process
        self.target = target
        self.data_dir = data_dir
        self.log_path = log_path
        self.token = token
        self._workdir = workdir
        self._owns_workdir = owns_workdir

    @classmethod
    def start(
        cls,
        *,
        data_dir: Path | None = None,
        uds: bool = False,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        token: str | None = None,
        command: Sequence[str] | None = None,
        root_certificates: bytes | None = None,
        server_name: str | None = None,
        timeout: float = 30.0,
    ) -> Self:
        """Starts a sidecar and blocks until its health check says SERVING.

        Args:
            data_dir: The data folder; a new temporary one when None. Reuse a
                folder to restart a sidecar on the same data.
            uds: Listen on a Unix socket in the temporary folder instead of TCP.
            args: More command-line options for ``serve``.
            env: Extra environment variables for the child.
            token: Require this bearer token (passed through ``ARE_TOKEN``).
            command: The command that runs the sidecar, before ``serve``.
            root_certificates: PEM roots to check a TLS sidecar's health with.
            server_name: The name its TLS certificate is checked against
                instead of the target's host; ``"localhost"`` for a Unix
                socket (as in ``Client.connect``).
            timeout: Seconds to wait for SERVING.

        Raises:
            SidecarStartError: The sidecar exited or was not ready in time.
        """
        workdir = Path(tempfile.mkdtemp(prefix="are-test-"))
        owns_workdir = True
        data = data_dir if data_dir is not None else workdir / "data"
        ready_file = workdir / "ready.json"
        log_path = workdir / "sidecar.log"
        if command is None:
            configured = os.environ.get("ARE_SIDECAR_COMMAND")
            command = shlex.split(configured) if configured else [sys.executable, "-m", "sidecar"]
        argv = [*command, "serve", "--data-dir", str(data), "--ready-file", str(ready_file)]
        if uds:
            argv += ["--listen", "off", "--uds", str(workdir / "are.sock")]
        else:
            argv += ["--listen", "127.0.0.1:0"]
        argv += list(args)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_")}
        child_env.update(env or {})
        if token is not None:
            child_env["ARE_TOKEN"] = token
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: S603 - argv is built above, no shell
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env
            )
        deadline = time.monotonic() + timeout
        try:
            target = _wait_ready_file(ready_file, deadline, process, log_path)
            _wait_serving(target, deadline, process, log_path, (root_certificates, server_name))
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait()
            # The error quotes the log's tail, so nothing is lost with the folder.
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return cls(
            process,
            target=target,
            data_dir=data,
            log_path=log_path,
            workdir=workdir,
            owns_workdir=owns_workdir,
            token=token,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited, else None."""
        return self._process.poll()

    def log_text(self) -> str:
        """Everything the sidecar has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """Asks the sidecar to shut down (SIGTERM) and returns its exit status.

        Raises:
            subprocess.TimeoutExpired: It did not exit within ``timeout``; it
                is then killed.
        """
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self._process.returncode

    def kill(self) -> None:
        """Kills the sidecar at once (SIGKILL), as a crash would."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()

    def cleanup(self) -> None:
        """Stops the sidecar if needed and removes its temporary folder."""
        if self._process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
        if self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def _wait_ready_file(
    ready_file: Path, deadline: float, process: subprocess.Popen[bytes], log_path: Path
) -> str:
    while not ready_file.exists():
        if process.poll() is not None:
            raise SidecarStartError(f"sidecar exited with status {process.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise SidecarStartError(f"sidecar wrote no ready file in time:\n{_tail(log_path)}")
        time.sleep(0.02)
    return str(json.loads(ready_file.read_text())["targets"][0])


def _wait_serving(
    target: str,
    deadline: float,
    process: subprocess.Popen[bytes],
    log_path: Path,
    tls: tuple[bytes | None, str | None],
) -> None:
    root_certificates, server_name = tls  # PEM roots (None: plaintext) and the name to check
    if root_certificates is None:
        channel = grpc.insecure_channel(target)
    else:
        if server_name is None and target.startswith("unix:"):
            server_name = DEFAULT_TLS_SERVER_NAME
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        credentials = grpc.ssl_channel_credentials(root_certificates)
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise SidecarStartError(
                    f"sidecar exited with status {process.returncode}:\n{_tail(log_path)}"
                )
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise SidecarStartError(f"sidecar never reported SERVING:\n{_tail(log_path)}")
            time.sleep(0.02)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
