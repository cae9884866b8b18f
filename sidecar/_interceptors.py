"""Server-wide concerns applied to every call: bearer-token authentication.

When a token is configured, every call must carry ``authorization: Bearer
<token>``; anything else is refused with UNAUTHENTICATED before the servicer
runs. The health service stays open so that supervisors and load balancers can
probe the sidecar without the secret. The token is compared in constant time
and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

import grpc

from sidecar._status import refusing_handler

__all__ = ["BearerTokenInterceptor"]

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_log = logging.getLogger("are.auth")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (see the mypy overrides)
    """Refuses every call (but health checks) that lacks the configured token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(presented, self._expected):
            return handler
        _log.warning(
            "refused an unauthenticated call",
            extra={"fields": {"method": method, "had_token": bool(presented)}},
        )
        return _refusal(handler, "missing bearer token" if not presented else "wrong bearer token")


def _refusal(handler: grpc.RpcMethodHandler, why: str) -> grpc.RpcMethodHandler:
    return refusing_handler(
        grpc.StatusCode.UNAUTHENTICATED,
        f"{why}: this sidecar requires 'authorization: Bearer <token>' metadata on every call",
        reason="UNAUTHENTICATED",
        request_streaming=handler.request_streaming,
        response_streaming=handler.response_streaming,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
