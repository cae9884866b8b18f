"""``are serve`` options checked before anything is opened, and a data folder it cannot open.

Defects: a TOML ``token_file`` beat ``ARE_TOKEN``, against the documented
precedence (flag, environment, TOML file); a token no gRPC client can send (a
token file's byte order mark, a non-ASCII ``ARE_TOKEN``) was taken, and every
call then failed; a ``--ready-file`` whose folder is missing was found only
once the sidecar served; a damaged LMDB environment ended the start in a
traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from are_sdk import Client, UnauthenticatedError
from are_sdk._proto.are.v1 import cache_service_pb2
from are_sdk.testing import SidecarProcess
from tests.integration.test_config_files import serve

pytestmark = pytest.mark.timeout(120)


async def _token_works(sidecar: SidecarProcess, token: str) -> bool:
    async with await Client.connect(sidecar.target, token=token) as client:
        try:
            await client.raw.cache.ListNamespaces(cache_service_pb2.ListNamespacesRequest())
        except UnauthenticatedError:
            return False
        return True


async def test_the_token_follows_the_documented_precedence(tmp_path: Path) -> None:
    toml_token = tmp_path / "toml-token"
    toml_token.write_text("from-the-toml-file\n")
    config = tmp_path / "are.toml"
    config.write_text(f"token_file = {str(toml_token)!r}\n")
    with SidecarProcess.start(args=["--config", str(config)], env={"ARE_TOKEN": "from-the-env"}) as sidecar:
        assert await _token_works(sidecar, "from-the-env")
        assert not await _token_works(sidecar, "from-the-toml-file")
    flag_token = tmp_path / "flag-token"
    flag_token.write_text("from-the-flag\n")
    with SidecarProcess.start(
        args=["--config", str(config), "--token-file", str(flag_token)], env={"ARE_TOKEN": "from-the-env"}
    ) as sidecar:
        assert await _token_works(sidecar, "from-the-flag")
        assert not await _token_works(sidecar, "from-the-env")


async def test_a_token_file_a_windows_editor_wrote_gives_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\r\n", encoding="utf-8-sig")  # EF BB BF, then CRLF
    with SidecarProcess.start(args=["--token-file", str(token_file)]) as sidecar:
        assert await _token_works(sidecar, "s3cret")


@pytest.mark.parametrize(
    ("how", "named"),
    [("env", "ARE_TOKEN"), ("flag", "(--token-file)"), ("toml", "('token_file' in ")],
)
def test_a_token_no_client_can_send_exits_2_naming_its_source(tmp_path: Path, how: str, named: str) -> None:
    secret = "pässwörd"
    token_file = tmp_path / "token"
    token_file.write_text(f"{secret}\n")
    config = tmp_path / "are.toml"
    config.write_text(f"token_file = {str(token_file)!r}\n")
    data = ["--data-dir", str(tmp_path / "data")]
    if how == "env":
        ended = serve(tmp_path, "--listen", "127.0.0.1:0", *data, env={"ARE_TOKEN": secret})
    elif how == "flag":
        ended = serve(tmp_path, "--listen", "127.0.0.1:0", *data, "--token-file", str(token_file))
    else:
        ended = serve(tmp_path, "--listen", "127.0.0.1:0", *data, "--config", str(config))
    assert ended.returncode == 2, ended.log[-2000:]
    assert ended.ready is None
    assert named in ended.log
    assert "printable ASCII" in ended.log
    assert secret not in ended.log
    assert "Traceback" not in ended.log
    assert not (tmp_path / "data").exists()


def test_a_ready_file_in_a_missing_folder_exits_2_before_anything_is_opened(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "ready.json"
    data = ["--data-dir", str(tmp_path / "data")]
    ended = serve(tmp_path, "--listen", "127.0.0.1:0", *data, "--ready-file", str(missing))
    assert ended.returncode == 2, ended.log[-2000:]
    assert "--ready-file" in ended.log
    assert str(missing.parent) in ended.log
    assert "Traceback" not in ended.log
    assert not (tmp_path / "data").exists()  # refused before the data folder was opened
    ended = serve(tmp_path, "--listen", "127.0.0.1:0", *data, env={"ARE_READY_FILE": str(missing)})
    assert ended.returncode == 2, ended.log[-2000:]
    assert "ARE_READY_FILE" in ended.log
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("damage", ["not an LMDB file", "a folder"])
def test_a_damaged_lmdb_environment_exits_1_in_one_line_naming_the_folder(
    tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "data"
    (data / "lmdb").mkdir(parents=True)
    mdb = data / "lmdb" / "data.mdb"
    if damage == "a folder":
        mdb.mkdir()
    else:
        mdb.write_bytes(b"not an LMDB file\n" * 256)
    ended = serve(tmp_path, "--listen", "127.0.0.1:0", "--data-dir", str(data))
    assert ended.returncode == 1, ended.log[-2000:]
    assert ended.ready is None
    assert "Traceback" not in ended.log, ended.log[-2000:]
    errors = [line for line in ended.log.splitlines() if "ERROR" in line]
    assert len(errors) == 1, ended.log[-2000:]
    assert "cannot start" in errors[0]
    assert repr(str(data)) in errors[0]
