"""The ``are serve`` command line: options, exit statuses, the data-folder lock, shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pytest

from are_core.storage import Storage
from are_sdk.testing import SidecarProcess, SidecarStartError
from sidecar._config import OPTIONS
from sidecar._server import TABLES, BootRecord


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_")}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", *args],
        capture_output=True, text=True, timeout=60, env=child_env, check=False,
    )  # fmt: skip


def test_help_lists_every_option_with_its_default() -> None:
    result = _serve("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert option.flag in text
        assert option.env_var in text
        assert f"default: {'none' if option.default is None else option.default}" in text


def test_console_script_and_module_agree() -> None:
    script = Path(sys.executable).parent / "are"
    result = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "--data-dir" in result.stdout


def test_unknown_flag_exits_2_naming_it() -> None:
    result = _serve("--bogus-flag", "1")
    assert result.returncode == 2
    assert "--bogus-flag" in result.stderr


def test_an_abbreviated_flag_is_unknown_and_its_value_not_echoed(tmp_path: Path) -> None:
    # `--token` (the client commands' flag) was taken as --token-file, and its value, a secret,
    # printed in the error; `--data` was taken as --data-dir.
    secret = "hunter2-secret-token"
    result = _serve("--token", secret, "--listen", "off", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert "unrecognized arguments: --token" in result.stderr
    assert secret not in result.stderr
    result = _serve("--data", str(tmp_path / "data"), "--listen", "off", f"--token={secret}")
    assert result.returncode == 2
    assert "unrecognized arguments: --data --token" in result.stderr
    assert secret not in result.stderr
    assert not (tmp_path / "data").exists()


def test_invalid_flag_value_exits_2_naming_it() -> None:
    result = _serve("--durability", "sometimes")
    assert result.returncode == 2
    assert "--durability" in result.stderr
    assert "sometimes" in result.stderr


def test_invalid_environment_value_exits_2_naming_it() -> None:
    result = _serve(env={"ARE_LISTEN": "no-port-here"})
    assert result.returncode == 2
    assert "ARE_LISTEN" in result.stderr


def test_unknown_toml_key_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "are.toml"
    config.write_text('listen = "127.0.0.1:0"\nlistne = "typo"\n')
    result = _serve("--config", str(config))
    assert result.returncode == 2
    assert "listne" in result.stderr


def test_second_sidecar_on_the_same_folder_is_refused(sidecar: SidecarProcess) -> None:
    with pytest.raises(SidecarStartError) as caught:
        SidecarProcess.start(data_dir=sidecar.data_dir, timeout=20)
    message = str(caught.value)
    assert "status 1" in message
    assert str(sidecar.pid) in message
    assert str(sidecar.data_dir.absolute()) in message


def test_a_taken_port_exits_1_with_a_message_not_a_traceback(sidecar: SidecarProcess, tmp_path: Path) -> None:
    result = _serve("--listen", sidecar.target, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert f"could not listen on {sidecar.target}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sidecar_that_fails_to_start_leaves_no_temporary_folder(
    sidecar: SidecarProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(SidecarStartError):
        SidecarProcess.start(data_dir=sidecar.data_dir, timeout=20)
    assert list(scratch.iterdir()) == []


def _boot_count(data_dir: Path) -> int:
    storage = Storage.open(data_dir, tables=TABLES)
    try:
        raw = storage.get("meta", b"boot")
    finally:
        storage.close()
    assert raw is not None
    return msgspec.msgpack.decode(raw, type=BootRecord).boot_count


def test_sigterm_exits_0_and_keeps_the_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with SidecarProcess.start(data_dir=data) as first:
        assert first.stop() == 0
        assert "stopped" in first.log_text()
    assert _boot_count(data) == 1
    with SidecarProcess.start(data_dir=data) as second:  # the lock was released
        assert second.stop() == 0
    assert _boot_count(data) == 2


def test_sigint_exits_0(tmp_path: Path) -> None:
    import signal

    with SidecarProcess.start() as process:
        os.kill(process.pid, signal.SIGINT)
        assert process._process.wait(20) == 0
