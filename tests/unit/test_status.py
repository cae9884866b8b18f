"""The one mapping of storage errors to statuses, shared by every service."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from are_core.storage import (
    BatchTooLargeError,
    KeyExistsError,
    StorageBusyError,
    StorageClosedError,
    StorageError,
    StorageFullError,
)
from sidecar._status import StorageStatus, storage_status

BUSY = StorageBusyError(limit_name="max_pending_mutations", limit=10, pending=9, incoming=2)
FULL = StorageFullError(Path("/data"), 1 << 30)
TOO_LARGE = BatchTooLargeError(limit_name="max_pending_bytes", limit=1000, size=2000)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            BUSY,
            (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RESOURCE_LIMIT",
                {"limit": "storage_pending_writes", "bound": "max_pending_mutations"},
                timedelta(milliseconds=100),
            ),
        ),
        (
            FULL,
            (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RESOURCE_LIMIT",
                {"limit": "storage_size", "max_map_size_bytes": str(1 << 30)},
                timedelta(seconds=60),
            ),
        ),
        (
            TOO_LARGE,
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "LIMIT_EXCEEDED",
                {"limit": "1000", "limit_name": "max_pending_bytes"},
                None,
            ),
        ),
        (
            StorageClosedError("group committer"),
            (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", {}, timedelta(seconds=1)),
        ),
        (StorageError("disk I/O error"), (grpc.StatusCode.INTERNAL, "STORAGE_FAILURE", {}, None)),
        (KeyExistsError("t", b"k"), (grpc.StatusCode.INTERNAL, "STORAGE_FAILURE", {}, None)),
    ],
    ids=["busy", "full", "too-large", "closed", "failed", "conflict"],
)
def test_each_storage_error_has_one_status(error: StorageError, expected: tuple[object, ...]) -> None:
    status = storage_status(error)
    assert isinstance(status, StorageStatus)
    assert (status.code, status.reason, status.metadata, status.retry_after) == expected
    assert str(error) in status.message
