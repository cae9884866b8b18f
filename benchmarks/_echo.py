"""The baseline of every suite: a bare grpc.aio echo server on uvloop.

Run as ``python -m benchmarks._echo``, the server binds 127.0.0.1 on an
ephemeral port, prints the port on stdout and serves one unary method,
``/are.bench.v1.EchoService/Echo``, that returns its request bytes. There is no
protobuf: the generic handler uses identity (de)serializers, so this is the
cost of grpc.aio itself, the floor under any sidecar RPC.

:func:`echo_contender` builds the matching :class:`~benchmarks._harness.Contender`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import uvloop

from benchmarks._harness import Contender, Operation
from benchmarks._process import python_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["ECHO_METHOD", "echo_client", "echo_contender", "echo_server", "serve"]

SERVICE = "are.bench.v1.EchoService"
ECHO_METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    del context
    return request


async def serve(host: str = "127.0.0.1") -> None:
    """Serve the echo method until SIGTERM or SIGINT, printing the port first."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(port, flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


def echo_server() -> contextlib.AbstractContextManager[str]:
    """Start the echo server in its own process; yields its target."""
    return python_server("benchmarks._echo")


@contextlib.asynccontextmanager
async def echo_client(target: str | None, *, payload_bytes: int) -> AsyncIterator[Operation]:
    """Connect to an echo server and yield an operation doing one Echo RPC.

    Args:
        target: The echo server's gRPC target.
        payload_bytes: Size of the request (and so of the response).

    Raises:
        ValueError: If there is no target or the server does not echo.
    """
    if target is None:
        msg = "the echo client needs a server target"
        raise ValueError(msg)
    payload = bytes(range(256)) * (payload_bytes // 256) + bytes(payload_bytes % 256)
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(ECHO_METHOD, None, None)
        await channel.channel_ready()
        if await call(payload) != payload:
            msg = f"{target} did not echo the request"
            raise ValueError(msg)

        async def operation() -> bytes:
            response: bytes = await call(payload)
            return response

        yield operation


def echo_contender(name: str = "echo", *, payload_bytes: int = 16, description: str = "") -> Contender:
    """Return an echo contender: the bare grpc.aio round trip with a payload.

    Args:
        name: Contender name; ``"echo"`` is the conventional baseline.
        payload_bytes: Request and response size in bytes.
        description: Shown by ``--list``; a default names the payload size.
    """
    return Contender(
        name=name,
        client=functools.partial(echo_client, payload_bytes=payload_bytes),
        server=echo_server,
        description=description or f"bare grpc.aio unary echo on uvloop, {payload_bytes} B payload",
    )


if __name__ == "__main__":
    uvloop.run(serve())
