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


def test_a_status_quoting_huge_input_stays_within_the_clients_metadata_limit() -> None:
    """A 1 MiB id quoted back must not push the trailers past gRPC's 8 KiB metadata limit.

    Before the bound, the client's transport refused the trailers and the caller saw
    RESOURCE_EXHAUSTED ("received metadata size exceeds hard limit") instead of the status.
    """
    from google.rpc import error_details_pb2, status_pb2

    from sidecar._status import status_trailers

    huge = "w" * (1 << 20)
    trailers = status_trailers(
        grpc.StatusCode.NOT_FOUND,
        f"workflow {huge!r} does not exist; naïve \u00e9",
        reason="WORKFLOW_NOT_FOUND",
        metadata={"workflow_id": huge},
        field_violations=[("workflow_id", huge)],
    )
    assert sum(len(key) + len(value) for key, value in trailers) < 8 * 1024
    (raw,) = [value for key, value in trailers if key == "grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    assert status.message.startswith("workflow 'www")
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    status.details[0].Unpack(info)
    status.details[1].Unpack(bad)
    assert info.reason == "WORKFLOW_NOT_FOUND"
    assert len(info.metadata["workflow_id"]) <= 256
    assert [v.field for v in bad.field_violations] == ["workflow_id"]
