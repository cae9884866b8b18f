"""``are serve`` and the files and variables it is given: refused with exit 2 naming them, never a traceback.

Defects: a config file or token file that is not UTF-8 text ended the start in
a UnicodeDecodeError traceback (exit 1); a TLS key that does not match the
certificate (or is not a key) was reported as "could not listen ... is the
address taken?"; an empty ``ARE_*`` variable was taken as a value:
``ARE_DATA_DIR=`` put the data in the working folder and ``ARE_LISTEN=``
turned TCP off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration._tls import self_signed

_NOT_UTF8 = b'listen = "127.0.0.1:0"\n# caf\xe9\n'


class ServeRun:
    """How an ``are serve`` run ended: its status, its log, and the ready file it wrote, if any."""

    def __init__(self, returncode: int, log: str, ready: dict[str, object] | None) -> None:
        self.returncode = returncode
        self.log = log
        self.ready = ready


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> ServeRun:
    """Runs ``are serve ARGS``; one that gets as far as serving is stopped at once with SIGTERM."""
    ready = tmp_path / "ready.json"
    ready.unlink(missing_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_")}
    child_env.update(env or {})
    given = "--ready-file" in args or "ARE_READY_FILE" in child_env  # a test of the option itself
    argv = [sys.executable, "-m", "sidecar", "serve", *([] if given else ["--ready-file", str(ready)]), *args]
    log_path = tmp_path / "sidecar.log"  # a file, not a pipe: a full pipe would stall the child
    with (
        log_path.open("w") as log,
        subprocess.Popen(argv, stdout=log, stderr=log, env=child_env, cwd=cwd or tmp_path) as child,
    ):
        deadline = time.monotonic() + 60.0
        while child.poll() is None and not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        written = json.loads(ready.read_text()) if ready.exists() else None
        if child.poll() is None:
            child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return ServeRun(child.returncode, log_path.read_text(errors="replace"), written)


def _refused(run: ServeRun, *named: str) -> None:
    assert run.returncode == 2, run.log[-2000:]
    assert run.ready is None, "the sidecar started serving"
    assert "Traceback" not in run.log, run.log[-2000:]
    for text in named:
        assert text in run.log, (text, run.log[-2000:])


def test_a_config_file_that_is_not_utf8_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "are.toml"
    config.write_bytes(_NOT_UTF8)
    data = ["--data-dir", str(tmp_path / "data")]
    _refused(serve(tmp_path, "--config", str(config), *data), "--config", str(config), "UTF-8")
    _refused(serve(tmp_path, *data, env={"ARE_CONFIG": str(config)}), "ARE_CONFIG", str(config), "UTF-8")


def test_a_token_file_that_is_not_utf8_exits_2_naming_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"s3cret\xff\n")
    run = serve(
        tmp_path, "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--token-file", str(token)
    )
    _refused(run, "--token-file", str(token), "UTF-8")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed(tmp_path)


def test_tls_files_that_are_not_a_certificate_and_its_key_exit_2_naming_them(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    other = tmp_path / "other-key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    listen = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")]
    for wrong in (other, garbage, cert):
        run = serve(tmp_path, *listen, "--tls-cert", str(cert), "--tls-key", str(wrong))
        _refused(run, "--tls-cert", "--tls-key", str(wrong))
        assert "is the address taken" not in run.log
    run = serve(tmp_path, *listen, "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key))
    _refused(run, "--tls-cert", "missing.pem", "No such file")
    run = serve(tmp_path, *listen, "--tls-cert", str(cert), "--tls-key", str(key))  # the right pair serves
    assert run.returncode == 0, run.log[-2000:]
    assert run.ready is not None


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    config = tmp_path / "are.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    work = tmp_path / "work"
    work.mkdir()
    run = serve(
        tmp_path,
        "--config",
        str(config),
        env={"ARE_LISTEN": "", "ARE_DATA_DIR": "", "ARE_DURABILITY": "", "ARE_LOG_LEVEL": ""},
        cwd=work,
    )
    assert run.returncode == 0, run.log[-2000:]
    assert run.ready is not None
    targets = run.ready["targets"]
    assert isinstance(targets, list) and targets[0].startswith("127.0.0.1:")  # the TOML's listen, not 'off'
    assert sorted(path.name for path in work.iterdir()) == [
        ".are-data"
    ]  # the default, not the working folder
