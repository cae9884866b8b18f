"""How the cache servicer maps an engine error to a status (errors a real sidecar cannot be made to raise)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from are_core.cache import NamespaceUnavailableError
from sidecar._cache import _fail_cache


class _AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, trailers: Any) -> None:
        self.code, self.message, self.trailers = code, message, trailers


class _Context:
    async def abort(self, code: grpc.StatusCode, message: str, *, trailing_metadata: Any) -> None:
        raise _AbortedError(code, message, trailing_metadata)


async def test_a_namespace_out_of_service_is_unavailable_with_its_name_and_a_retry_delay() -> None:
    """Its reload after a failed commit failed: retryable, nothing changed (see test_reload.py)."""
    with pytest.raises(_AbortedError) as aborted:
        await _fail_cache(_Context(), NamespaceUnavailableError("a", "MDB_READERS_FULL"))
    assert aborted.value.code == grpc.StatusCode.UNAVAILABLE
    assert "'a'" in aborted.value.message
    assert "MDB_READERS_FULL" in aborted.value.message
    status = status_pb2.Status.FromString(dict(aborted.value.trailers)["grpc-status-details-bin"])
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == ("NAMESPACE_UNAVAILABLE", {"namespace": "a"})
    assert any(detail.Unpack(retry) for detail in status.details)
    assert retry.retry_delay.seconds == 1
