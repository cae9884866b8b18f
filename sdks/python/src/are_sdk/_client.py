"""The async client: one channel to a sidecar, error mapping, and auth metadata.

The SDK has three layers, as Temporal's does: the generated stubs in
``are_sdk._proto``; a raw service layer (:class:`ServiceClient`) that calls a
stub with the bearer token and turns every gRPC error into the SDK's exception
tree; and the typed facade (:class:`Client` and, as capabilities land, its
handles) on top.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from are_sdk._cache import Cache
from are_sdk._errors import UnavailableError, call_errors
from are_sdk._proto.are.v1 import (
    cache_service_pb2_grpc,
    router_service_pb2_grpc,
    scheduler_service_pb2_grpc,
    state_service_pb2_grpc,
    trace_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from are_sdk._router import Router
from are_sdk._state import StateClient
from are_sdk._trace import Trace
from are_sdk._workflow import Pools, Workflows

__all__ = ["Client", "RawServices", "ServiceClient"]

# The sidecar's default bound on one message; the client accepts the same.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_KEEPALIVE = 30.0
"""Seconds of quiet on an open call before the client pings the sidecar."""
DEFAULT_KEEPALIVE_TIMEOUT = 10.0
"""Seconds a keepalive ping waits for its answer before the connection is dropped."""
DEFAULT_RECONNECT_WINDOW = 60.0
"""Seconds a workflow wait keeps resuming while the sidecar does not answer, before it raises."""
DEFAULT_TLS_SERVER_NAME = "localhost"
"""The name a TLS certificate is checked against for a ``unix:`` target, which names no host."""

# What the sidecar accepts as a bearer token (and a header value can carry): printable ASCII, no spaces.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def _checked_token(token: str | None) -> str | None:
    """The bearer token with surrounding whitespace (a token file's newline) stripped; None for none.

    Raises:
        ValueError: What remains is blank, or not printable ASCII without
            spaces: grpc cannot send it in a header (every call failed with
            a grpc internal error), and the sidecar refuses such tokens.
    """
    if token is None or token == "":
        return None
    stripped = token.strip()
    if not stripped:
        raise ValueError("`token` is blank; pass None to connect without one")
    if not _TOKEN.fullmatch(stripped):
        index, char = next((i, c) for i, c in enumerate(stripped) if not "\x21" <= c <= "\x7e")
        raise ValueError(
            f"`token` must be printable ASCII without spaces (the sidecar accepts [\\x21-\\x7e]+); "
            f"it has {char!r} at index {index} (after stripping surrounding whitespace)"
        )
    return stripped


class ServiceClient:
    """The raw service layer: every method of one generated stub, made safe.

    Attribute access returns the stub's method wrapped so that it sends the
    bearer token, applies a default timeout to unary calls, and raises the
    SDK's exceptions (:mod:`are_sdk._errors`) instead of ``grpc.RpcError``.
    Unary calls are coroutines; server-streaming calls are async iterators.
    """

    def __init__(
        self, stub: object, metadata: Sequence[tuple[str, str]], closed: Callable[[], bool] = lambda: False
    ) -> None:
        self._stub = stub
        self._metadata = tuple(metadata)
        self._closed = closed

    def client_closed(self) -> bool:
        """Whether the client was closed (for the facades that map the errors of streams they write)."""
        return self._closed()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        metadata = self._metadata
        closed = self._closed
        if isinstance(method, grpc.aio.UnaryStreamMultiCallable):

            async def stream(request: Any, *, timeout: float | None = None) -> AsyncIterator[Any]:
                with call_errors(name, closed):
                    call = method(request, metadata=metadata, timeout=timeout)
                    try:
                        async for response in call:
                            yield response
                    finally:
                        call.cancel()

            return stream
        if isinstance(method, grpc.aio.StreamStreamMultiCallable | grpc.aio.StreamUnaryMultiCallable):

            def open_stream(*args: Any, **kwargs: Any) -> Any:
                # Streams that the client writes to are returned as grpc calls;
                # the typed facades that use them map errors themselves.
                return method(*args, metadata=metadata, **kwargs)

            return open_stream

        async def unary(request: Any, *, timeout: float | None = 30.0) -> Any:
            with call_errors(name, closed):
                return await method(request, metadata=metadata, timeout=timeout)

        return unary


class RawServices:
    """The raw service layer of every ``are.v1`` service, one attribute each.

    Methods take and return the generated protobuf messages; errors are the
    SDK's exceptions. Prefer the typed facades on :class:`Client`.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]],
        *,
        watch_channel: grpc.aio.Channel | None = None,
        closed: Callable[[], bool] = lambda: False,
    ) -> None:
        # ``closed``: whether the client was closed (its calls then raise ClientClosedError).
        def service(stub: object) -> ServiceClient:
            return ServiceClient(stub, metadata, closed)

        self.scheduler = service(scheduler_service_pb2_grpc.SchedulerServiceStub(channel))
        self.watches = service(scheduler_service_pb2_grpc.SchedulerServiceStub(watch_channel or channel))
        """The scheduler again, for the WatchWorkflow streams behind workflow handles' waits: on a
        connection of its own when the client opened one (see :class:`Client`)."""
        self.worker = service(worker_service_pb2_grpc.WorkerServiceStub(channel))
        self.state = service(state_service_pb2_grpc.StateServiceStub(channel))
        self.cache = service(cache_service_pb2_grpc.CacheServiceStub(channel))
        self.router = service(router_service_pb2_grpc.RouterServiceStub(channel))
        self.trace = service(trace_service_pb2_grpc.TraceServiceStub(channel))


class Client:
    """An async connection to one ARE sidecar.

    Create it with :meth:`connect`; use it as an async context manager or call
    :meth:`close`. ``client.raw`` holds the raw service layer
    (:class:`RawServices`) for every RPC of the contract.

    Waits on workflows (a handle's ``wait``, ``result`` and ``watch``) go over
    a second connection that :meth:`connect` opens. Each holds a stream open
    for as long as its workflow runs, and the sidecar serves 1,024 streams at
    once on a connection: on one connection, a thousand pending waits held up
    every other call of the client, a worker's stream included. Past 1,024
    waits, the next ones queue until streams free.
    """

    def __init__(
        self,
        target: str,
        channel: grpc.aio.Channel,
        token: str | None,
        *,
        watch_channel: grpc.aio.Channel | None = None,
        reconnect_window: float | None = DEFAULT_RECONNECT_WINDOW,
    ) -> None:
        self._target = target
        self._channel = channel
        self._watch_channel = watch_channel
        metadata: list[tuple[str, str]] = []
        token = _checked_token(token)
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._closed = False
        self.raw = RawServices(channel, self._metadata, watch_channel=watch_channel, closed=self._is_closed)
        # The scheduler: workflows and approvals, pools, and two shortcuts.
        self.workflows = Workflows(self.raw, reconnect_window=reconnect_window)
        self.pools = Pools(self.raw)
        self.submit_workflow = self.workflows.submit
        self.get_workflow_handle = self.workflows.get_handle
        # The flight recorder: list and follow events.
        self.trace = Trace(self.raw.trace)
        # State: documents, checkpoints and forks, memory, blobs.
        self.state = StateClient(self.raw)
        # Agent cards, task routing and model routing.
        self.router = Router(self.raw.router)
        # The semantic cache: lookup, store, invalidate, stats, namespaces, get_or_call.
        self.cache = Cache(self.raw.cache, self.state.blobs)
        # Typed facades (client.cache, client.state, ...) are added here as
        # their capabilities land; each wraps the matching raw service.

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive: float = DEFAULT_KEEPALIVE,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        server_name: str | None = None,
        reconnect_window: float | None = DEFAULT_RECONNECT_WINDOW,
    ) -> Self:
        """Opens a channel to a sidecar and waits until it is reachable.

        Args:
            target: ``host:port`` (TCP) or ``unix:PATH`` (a Unix socket).
            token: The bearer token, when the sidecar was started with one;
                surrounding whitespace (a token file's newline) is stripped.
            root_certificates: PEM roots to trust for TLS (implies ``tls``).
            tls: Use TLS with the system's roots when no roots are given.
            timeout: Seconds to wait for the channel to become ready.
            max_message_bytes: The largest message sent or received.
            keepalive: Ping the sidecar after this many quiet seconds while a
                call is open (a worker's stream, a long wait); 0 turns pings
                off. The sidecar accepts one a second at most.
            keepalive_timeout: Seconds a ping waits for its answer; without
                one the connection is closed and open calls fail with
                UNAVAILABLE, so a worker notices a hung sidecar and reconnects.
            server_name: With TLS, the name the sidecar's certificate is
                checked against instead of the target's host (sent as the
                call's authority too); ``"localhost"`` for a ``unix:`` target,
                which names no host.
            reconnect_window: Seconds a workflow handle's ``wait``,
                ``result`` or ``watch`` keeps resuming its dropped stream
                while the sidecar does not answer (a restart shorter than
                this goes unnoticed); after it the call raises the
                :class:`UnavailableError`. None resumes for as long as it takes.

        Raises:
            UnavailableError: The sidecar did not answer within ``timeout``.
            ValueError: ``keepalive`` is negative or between 0 and 1 second,
                ``keepalive_timeout`` or ``reconnect_window`` is not positive,
                or ``token`` is not printable ASCII without spaces.
        """
        if keepalive < 0 or 0 < keepalive < 1 or not keepalive_timeout > 0:
            raise ValueError(
                f"keepalive must be 0 (off) or at least 1 s and keepalive_timeout positive, "
                f"got {keepalive!r} and {keepalive_timeout!r}"
            )
        if reconnect_window is not None and not reconnect_window > 0:
            raise ValueError(f"reconnect_window must be positive or None, got {reconnect_window!r}")
        token = _checked_token(token)  # before any channel is opened: every call would fail
        secure = tls or root_certificates is not None
        if server_name is None and secure and target.startswith(("unix:", "unix-abstract:")):
            server_name = DEFAULT_TLS_SERVER_NAME
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if secure and server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if keepalive:
            options += [
                ("grpc.keepalive_time_ms", int(keepalive * 1000)),
                ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
                # What C-core enforces today is the ping timeout (1 min by default).
                ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
                ("grpc.keepalive_permit_without_calls", 0),
                # C-core stops pinging after two pings without data unless told
                # otherwise; a worker's stream can be quiet for hours.
                ("grpc.http2.max_pings_without_data", 0),
            ]

        def open_channel(*extra: tuple[str, int]) -> grpc.aio.Channel:
            if secure:
                credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
                return grpc.aio.secure_channel(target, credentials, options=[*options, *extra])
            return grpc.aio.insecure_channel(target, options=[*options, *extra])

        channel = open_channel()
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except TimeoutError:
            await channel.close()
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE,
                f"no ARE sidecar answered at {target!r} within {timeout:g}s",
            ) from None
        except BaseException:  # cancelled (an outer timeout, say): the channel is nobody's to close
            await asyncio.shield(channel.close())
            raise
        # Connected at the first wait (see the class docstring); a subchannel pool of its own
        # keeps grpc from putting both channels on one connection, as it does for equal ones.
        watch_channel = open_channel(("grpc.use_local_subchannel_pool", 1))
        return cls(target, channel, token, watch_channel=watch_channel, reconnect_window=reconnect_window)

    @property
    def target(self) -> str:
        """The gRPC target this client is connected to."""
        return self._target

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, for generated stubs of your own."""
        return self._channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata (bearer token) sent with every call."""
        return self._metadata

    async def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """Returns the sidecar's health status name, ``"SERVING"`` when ready.

        Args:
            service: A service name such as ``"are.v1.SchedulerService"``, or
                "" for the sidecar as a whole.
            timeout: Seconds to wait for the answer.
        """
        with call_errors("Health.Check", self._is_closed):
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Closes the channels. Calls in flight, waits included, raise :class:`ClientClosedError`.

        So do calls made after it. Closing twice does nothing more.
        """
        self._closed = True
        if self._watch_channel is not None:
            await self._watch_channel.close()
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
