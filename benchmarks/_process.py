"""Helpers to run a contender's server as a separate Python process."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from typing import IO, TYPE_CHECKING

from benchmarks._harness import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["python_server", "sidecar_env", "stop_process"]


def sidecar_env(**extra: str) -> dict[str, str]:
    """The sidecar settings of this environment, for a benchmark's sidecar.

    ``SidecarProcess`` starts its child without the caller's ``ARE_*``
    variables (so that tests are not configured by accident); a benchmark
    passes them on on purpose, so that ``ARE_CACHE_SEARCH=coalesced python -m
    benchmarks cache`` times what it says. The benchmarks' own
    ``ARE_BENCH_*`` variables stay behind.
    """
    env = {k: v for k, v in os.environ.items() if k.startswith("ARE_") and not k.startswith("ARE_BENCH_")}
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop ``proc`` with SIGTERM, then SIGKILL after ``timeout``; return its code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _tail(stream: IO[bytes], limit: int = 2_000) -> str:
    stream.seek(0)
    text = stream.read().decode(errors="replace").strip()
    lines = text.splitlines()
    return lines[-1][-limit:] if lines else "no output"


def _read_port(proc: subprocess.Popen[bytes], stderr: IO[bytes], timeout: float) -> int:
    if proc.stdout is None:
        msg = "server was started without stdout=PIPE"
        raise RuntimeError(msg)
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            msg = f"server printed no port within {timeout:g} s"
            raise TimeoutError(msg)
        readable, _, _ = select.select([fd], [], [], min(remaining, 0.1))
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = proc.wait()
            msg = f"server exited {code} before printing its port: {_tail(stderr)}"
            raise RuntimeError(msg)
        buffer += chunk
    line = buffer.split(b"\n", 1)[0].strip()
    try:
        return int(line)
    except ValueError:
        msg = f"server printed {line!r}, expected a port number"
        raise RuntimeError(msg) from None


@contextlib.contextmanager
def python_server(module: str, *args: str, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m module *args`` and yield ``host:PORT`` once it listens.

    The server must bind an ephemeral port, print that port on one line of
    stdout, and exit on SIGTERM. It runs in its own session so that a Ctrl-C in
    the terminal reaches only the runner, which then stops it in order.

    Args:
        module: Dotted module name to run with ``python -m``.
        *args: Extra command-line arguments for the server.
        host: Host the server binds, used to build the target.
        timeout: Seconds to wait for the port.

    Yields:
        The gRPC target of the running server.
    """
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            port = _read_port(proc, stderr, timeout)
            yield f"{host}:{port}"
        finally:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
