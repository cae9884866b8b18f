"""An honest UNIMPLEMENTED for every ``are.v1`` RPC this sidecar does not serve yet.

The contract is designed whole, ahead of the engine. Rather than let grpc
answer "Method not found!" (or worse, a servicer return a fake empty answer),
every RPC of a service without a real servicer is registered here and ends with
UNIMPLEMENTED, reason ``NOT_IMPLEMENTED``, and a message naming the method.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from sidecar._status import refusing_handler

__all__ = ["unimplemented_handler"]


def unimplemented_handler(services: Iterable[ServiceDescriptor], version: str) -> grpc.GenericRpcHandler:
    """Returns one generic handler answering UNIMPLEMENTED for every method of ``services``."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for service in services:
        for method in service.methods:
            full = f"/{service.full_name}/{method.name}"
            # Requests stay bytes: nothing is decoded for a call that is refused.
            handlers[full] = refusing_handler(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{service.full_name}/{method.name} is not implemented by this sidecar (ARE {version}) yet",
                reason="NOT_IMPLEMENTED",
                request_streaming=method.client_streaming,
                response_streaming=method.server_streaming,
            )
    return _Generic(handlers)


class _Generic(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped (see the mypy overrides)
    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)
