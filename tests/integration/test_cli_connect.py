"""How the client commands reach a sidecar: TLS, and targets checked before connecting.

Defects: no client command could reach a TLS sidecar (there was no way to
ask for TLS); ``--target ""`` (and ``dns:``, ``dns:///``) printed an error
and then hung for good, a grpc channel's finalizer waiting on a thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from are_sdk.testing import SidecarProcess
from tests.integration._tls import self_signed


def _are(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``are ARGS`` to its end; a command that hangs fails the test after a minute."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_")}
    child_env.update({"NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True, text=True, timeout=60, env=child_env, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SidecarProcess, Path]]:
    """A sidecar serving TLS with a self-signed certificate for 127.0.0.1, and that certificate."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with SidecarProcess.start(
        args=["--tls-cert", str(cert), "--tls-key", str(key)], root_certificates=cert.read_bytes()
    ) as process:
        yield process, cert


def test_client_commands_reach_a_tls_sidecar(tls: tuple[SidecarProcess, Path]) -> None:
    process, cert = tls
    result = _are("pools", "--target", process.target, "--ca-file", str(cert))
    assert result.returncode == 0, result.stderr
    assert "pool" in result.stdout
    result = _are("pools", env={"ARE_TARGET": process.target, "ARE_CA_FILE": str(cert)})
    assert result.returncode == 0, result.stderr
    # The system's roots do not trust a self-signed certificate; plaintext does not reach TLS.
    for flags in (["--tls"], []):
        result = _are("pools", "--target", process.target, "--connect-timeout", "1", *flags)
        assert result.returncode == 1, result.stderr
        assert "no ARE sidecar answered" in result.stderr


def test_a_ca_file_that_is_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    result = _are("pools", "--ca-file", str(bogus))
    assert result.returncode == 2
    assert "--ca-file" in result.stderr


@pytest.mark.parametrize(
    "target",
    [
        "",
        " ",
        "dns:",
        "dns:///",
        "unix:",
        "unix://",
        "no-port",
        "h:99999",
        "ipv4:abc",
        "ipv4:127.0.0.1",
        "ipv6:::1",
    ],
)
def test_a_malformed_target_is_refused_before_connecting(target: str) -> None:
    result = _are("pools", "--target", target, "--connect-timeout", "2")
    assert result.returncode == 2, result.stderr
    assert "--target" in result.stderr
    assert "Traceback" not in result.stderr
    if target:  # an empty ARE_TARGET counts as unset
        result = _are("pools", "--connect-timeout", "2", env={"ARE_TARGET": target})
        assert result.returncode == 2, result.stderr
        assert "ARE_TARGET" in result.stderr


def test_the_target_forms_grpc_takes_still_connect(sidecar: SidecarProcess) -> None:
    port = sidecar.target.rpartition(":")[2]
    for target in (sidecar.target, f"dns:///127.0.0.1:{port}", f"ipv4:127.0.0.1:{port}"):
        result = _are("pools", "--target", target)
        assert result.returncode == 0, (target, result.stderr)


def test_a_command_ends_even_when_grpc_would_hold_it(tmp_path: Path) -> None:
    """A target grpc refuses, were one to pass the checks, still ends the command after its error."""
    script = tmp_path / "unchecked.py"
    script.write_text(
        "import sys\n"
        "import sidecar._cli_client\n"
        "from sidecar.cli import main\n"
        "sidecar._cli_client._target_problem = lambda target: None\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_")}
    result = subprocess.run(
        [sys.executable, str(script), "pools", "--target", "ipv4:abc", "--connect-timeout", "1"],
        capture_output=True, text=True, timeout=60, env=child_env, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no ARE sidecar answered at 'ipv4:abc'" in result.stderr
