"""The contract gates: buf lint, buf breaking, and fresh generated code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_buf_lint_is_clean() -> None:
    result = _run(str(BIN / "buf"), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_against_the_last_contract() -> None:
    result = subprocess.run(
        ["bash", "tools/buf_breaking.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"BUF": str(BIN / "buf"), "PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_fresh() -> None:
    result = _run(sys.executable, "tools/gen_proto.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_and_message_is_documented() -> None:
    """A full-sentence comment on every service, RPC, message and enum."""
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(subprocess.run(
        [str(BIN / "buf"), "build", "--as-file-descriptor-set", "-o", "-"],
        cwd=ROOT, capture_output=True, timeout=300, check=True,
    ).stdout)  # fmt: skip
    missing: list[str] = []
    for file in files.file:
        if not file.name.startswith("are/"):
            continue
        comments = {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}
        for i, service in enumerate(file.service):
            if not comments.get((6, i)):
                missing.append(service.name)
            for j, method in enumerate(service.method):
                if not comments.get((6, i, 2, j)):
                    missing.append(f"{service.name}.{method.name}")
        for i, message in enumerate(file.message_type):
            if not comments.get((4, i)):
                missing.append(message.name)
        for i, enum in enumerate(file.enum_type):
            if not comments.get((5, i)):
                missing.append(enum.name)
    assert missing == []
