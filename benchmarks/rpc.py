"""Suite ``rpc``: the cost of one round trip to the sidecar against bare grpc.aio.

Baseline ``echo`` is a bare grpc.aio echo server (16 B payload); ``echo-4k``
shows what a 4 KiB payload adds; ``sidecar-health`` and ``sidecar-health-uds``
call ``grpc.health.v1.Health/Check`` on a real ARE sidecar over loopback TCP
and over a Unix socket. The health check does no work, so its ratio to the
baseline is the sidecar's fixed per-RPC overhead (interceptors, auth, limits).
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING

import grpc.aio
from grpc_health.v1 import health_pb2

from benchmarks._echo import echo_contender
from benchmarks._harness import Contender, Operation, Suite
from benchmarks._process import sidecar_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = ["SUITE"]

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SIDECAR_REQUIRES = ("are_sdk.testing", "sidecar")


@contextlib.contextmanager
def sidecar_server(*, uds: bool = False) -> Iterator[str]:
    """Start a real sidecar in a temporary data directory; yields its target.

    ``are_sdk.testing`` is imported here, not at module level, so that the
    suite still loads (and the contender is skipped) where it is not installed.
    """
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - an optional dependency

    with SidecarProcess.start(uds=uds, env=sidecar_env()) as sidecar:
        yield sidecar.target


@contextlib.asynccontextmanager
async def health_client(target: str | None) -> AsyncIterator[Operation]:
    """Connect to ``target`` and yield an operation doing one ``Health/Check``.

    Raises:
        ValueError: If there is no target or the server is not SERVING.
    """
    if target is None:
        msg = "the health client needs a server target"
        raise ValueError(msg)
    request = health_pb2.HealthCheckRequest(service="")
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        await channel.channel_ready()
        response = await call(request)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            msg = f"{target} health is {response.status}, not SERVING"
            raise ValueError(msg)

        async def operation() -> object:
            return await call(request)

        yield operation


SUITE = Suite(
    name="rpc",
    description="one unary round trip: bare grpc.aio echo vs the ARE sidecar",
    baseline=echo_contender("echo", payload_bytes=16),
    contenders=(
        echo_contender("echo-4k", payload_bytes=4096),
        Contender(
            name="sidecar-health",
            client=health_client,
            server=sidecar_server,
            description="ARE sidecar grpc.health.v1.Health/Check over 127.0.0.1 TCP",
            requires=SIDECAR_REQUIRES,
        ),
        Contender(
            name="sidecar-health-uds",
            client=health_client,
            server=functools.partial(sidecar_server, uds=True),
            description="ARE sidecar grpc.health.v1.Health/Check over a Unix socket",
            requires=SIDECAR_REQUIRES,
        ),
    ),
)
