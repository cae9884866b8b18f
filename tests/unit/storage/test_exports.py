"""The public surface of are_core.storage is curated and grpc-free."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import are_core.storage

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_exported_members() -> None:
    exported = set(are_core.storage.__all__)
    public = {name for name in vars(are_core.storage) if not name.startswith("_")}
    assert exported == public
    for name in exported:
        member = getattr(are_core.storage, name)
        if isinstance(member, type):
            assert member.__module__.startswith("are_core.storage")


def test_storage_imports_no_grpc_or_protobuf() -> None:
    code = (
        "import sys, are_core, are_core.storage\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
