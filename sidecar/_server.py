"""The composition root: builds the sidecar from its configuration and runs it.

Order matters and is the contract with supervisors: take the data-folder lock
and open storage, remove a ready file left by a sidecar that crashed, record
this boot durably, bind the endpoints, start serving, report SERVING on
``grpc.health.v1``, then write the ready file. On SIGTERM or SIGINT the
reverse: report NOT_SERVING, stop accepting, give in-flight calls the grace
period, flush the group committer, close storage, release the lock.

A sidecar removes only the files it created: its Unix socket and its ready
file, and those only while they are still the ones it created. A start that
fails (the data folder is locked, the port or the socket is taken) leaves
another sidecar's files alone. A socket path that a live process listens on
is refused, as a taken TCP port is; a socket file nobody listens on (left by
a crash) is replaced.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import msgspec
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from are_core.storage import DataDirLockedError, Durability, GroupCommitter, Storage, StorageOpenError
from are_sdk._proto.are.v1 import (
    cache_service_pb2,
    router_service_pb2,
    scheduler_service_pb2,
    state_service_pb2,
    trace_service_pb2,
    worker_service_pb2,
)
from sidecar._capabilities import CAPABILITIES
from sidecar._capability import Capability, Runtime
from sidecar._config import Config, ConfigError
from sidecar._grpc_cycles import break_handler_lookup_cycle
from sidecar._interceptors import BearerTokenInterceptor
from sidecar._status import releasing_handler
from sidecar._trace import otlp_endpoint
from sidecar._unimplemented import unimplemented_handler

__all__ = ["TABLES", "BootRecord", "Sidecar", "service_descriptors"]

VERSION = "0.1.0"

# The sidecar's own LMDB table; each capability declares its own tables.
TABLES = ("meta", *(t for c in CAPABILITIES for t in c.tables))
_BOOT_KEY = b"boot"
# The shortest interval between client keepalive pings the sidecar accepts;
# a client pinging faster is sent GOAWAY (too_many_pings) by gRPC.
_MIN_CLIENT_PING_INTERVAL_MS = 1000
# How long the probe of an existing socket file waits for its listener to accept.
_SOCKET_PROBE_TIMEOUT_S = 1.0

_log = logging.getLogger("are.sidecar")


class BootRecord(msgspec.Struct, frozen=True):
    """What the sidecar records about itself on every start."""

    boot_count: int
    started_unix_ms: int
    version: str


_boot_encoder = msgspec.msgpack.Encoder()
_boot_decoder = msgspec.msgpack.Decoder(BootRecord)


def service_descriptors() -> Iterator[ServiceDescriptor]:
    """Every service of the ``are.v1`` contract, in a stable order."""
    for module in (
        scheduler_service_pb2,
        worker_service_pb2,
        state_service_pb2,
        cache_service_pb2,
        router_service_pb2,
        trace_service_pb2,
    ):
        yield from module.DESCRIPTOR.services_by_name.values()


class _OwnedFile(msgspec.Struct, frozen=True):
    """A file this sidecar created, known by its inode so that another's file at the path is left alone."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> _OwnedFile:
        """The file now at ``path`` (not following a symbolic link)."""
        status = path.lstat()
        return cls(path=path, device=status.st_dev, inode=status.st_ino)

    def remove(self) -> None:
        """Unlinks the path if it is still this file (another process may have replaced it since)."""
        try:
            status = self.path.lstat()
        except FileNotFoundError:
            return
        if (status.st_dev, status.st_ino) == (self.device, self.inode):
            self.path.unlink(missing_ok=True)


def start_failure(error: DataDirLockedError | StorageOpenError | OSError) -> str:
    """The one log line of a start that failed for its data folder or an endpoint."""
    if isinstance(error, DataDirLockedError):
        return str(error)  # it says whose lock it is and what to do
    return f"cannot start: {error}"  # a damaged LMDB environment, an endpoint that cannot be bound


class Sidecar:
    """One running sidecar: storage, the gRPC server and its lifecycle."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._storage: Storage | None = None
        self._committer: GroupCommitter | None = None
        self._server: grpc.aio.Server | None = None
        self._capabilities: list[Capability] = []
        self._health = HealthServicer()
        self._stopping = asyncio.Event()
        self._credentials: grpc.ServerCredentials | None = None
        # The Unix socket and the ready file, once this sidecar has created them.
        self._socket_file: _OwnedFile | None = None
        self._ready_file: _OwnedFile | None = None

    async def run(self) -> int:
        """Serves until SIGTERM or SIGINT, then shuts down gracefully.

        Returns:
            0 after a clean shutdown; 2, with nothing opened, when the OTLP
            endpoint (resolved here, from the option or the ``OTEL_*``
            variables) is invalid: the log line names where it came from;
            2, with nothing opened, when ``--tls-cert`` and ``--tls-key``
            cannot be read or are not a certificate and its private key;
            2, after closing what it opened, when a capability refuses its
            settings as it starts (a model directory that cannot be loaded);
            1, after closing what it opened, when another sidecar owns the
            data folder, its LMDB environment cannot be opened, or an
            endpoint cannot be bound: the reason is logged before the
            unwinding's "stopped".

        Raises:
            OSError: The ``--listen`` port is taken (probed before anything
                is opened: see :func:`start_failure` for its message).
        """
        try:
            otlp_endpoint(self._config.otlp_endpoint)
            self._credentials = _server_credentials(self._config)
        except ConfigError as error:
            _log.error(f"invalid configuration: {error}")
            return 2
        if self._config.listen is not None:
            _probe_listen(self._config.listen)  # before a start's recovery: a taken port fails at once
        # What the sidecar writes (index files, memory notes' files, the ready file) is
        # its owner's alone, as LMDB's folder is: the files hold embeddings of prompts.
        os.umask(0o077)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self._start()
            await self._stopping.wait()
        except ConfigError as error:  # a capability refused its settings (a model that cannot load)
            _log.error(f"invalid configuration: {error}")
            return 2
        except (DataDirLockedError, StorageOpenError, OSError) as error:
            _log.error(start_failure(error))  # before the unwinding logs "stopped"
            return 1
        finally:
            await self._shutdown()
        return 0

    async def _signalled(self) -> bool:
        """Whether a stop was asked for, the signals that arrived meanwhile included.

        A start's recovery can hold the event loop for seconds; a signal that
        arrived meanwhile is handled once the loop gets a turn (its wake-up
        read, then the handler's callback), which these yields give it.
        """
        for _ in range(3):
            await asyncio.sleep(0)
        return self._stopping.is_set()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            # A second signal: the operator will not wait for the grace period. What was
            # acknowledged is committed (as after SIGKILL, which a start recovers from).
            _log.warning("second signal: exiting now", extra={"fields": {"signal": name}})
            logging.shutdown()
            os._exit(128 + signum)
        _log.info("shutdown requested", extra={"fields": {"signal": name}})
        self._stopping.set()

    async def _start(self) -> None:
        config = self._config
        started = time.perf_counter()
        durability = Durability.SYNC if config.durability == "sync" else Durability.RELAXED
        # Storage.open takes the data-folder lock before anything else.
        self._storage = Storage.open(config.data_dir, tables=TABLES, durability=durability)
        # The lock is ours, so a ready file already there is a crashed sidecar's: remove it now,
        # or a supervisor watching for the file would take this sidecar for ready while it starts.
        if config.ready_file is not None:
            config.ready_file.unlink(missing_ok=True)
        self._committer = GroupCommitter(self._storage)
        boot = await self._record_boot()
        runtime = Runtime(config=config, storage=self._storage, committer=self._committer)
        for kind in CAPABILITIES:
            capability = kind(runtime)
            runtime.capabilities.append(capability)
            self._capabilities.append(capability)
            await capability.start()
            if await self._signalled():  # a signal during the start: stop, never serve
                return

        options = [
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_concurrent_streams", config.max_concurrent_streams),
            ("grpc.so_reuseport", 0),
            # Keepalive both ways: the sidecar pings quiet connections (a hung
            # or vanished worker's stream ends and frees its slot), and accepts
            # the SDKs' pings (which detect a hung sidecar) as often as 1/s.
            ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            # What C-core enforces today is the ping timeout (1 min by default).
            ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", _MIN_CLIENT_PING_INTERVAL_MS),
        ]
        interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
        break_handler_lookup_cycle()
        server = grpc.aio.server(interceptors=interceptors, options=options)
        self._server = server
        services = list(service_descriptors())
        served = {name for capability in self._capabilities for name in capability.services}
        registrar = cast("grpc.aio.Server", _GenericHandlersOnly(server))
        for capability in self._capabilities:
            capability.add_to_server(registrar)
        unbuilt = [s for s in services if s.full_name not in served]
        server.add_generic_rpc_handlers((unimplemented_handler(unbuilt, VERSION),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, registrar)
        reflection.enable_server_reflection(
            [s.full_name for s in services]
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            registrar,
        )
        if await self._signalled():
            return
        targets = self._bind(server)
        _tune_garbage_collector()
        await server.start()
        for name in ["", *(s.full_name for s in services)]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._write_ready_file(targets)
        if config.listen and not _is_loopback(config.listen) and not config.token:
            _log.warning(
                "listening beyond loopback without a bearer token; "
                "anyone who reaches the port can drive the sidecar",
                extra={"fields": {"listen": config.listen}},
            )
        _log.info(
            "serving",
            extra={
                "fields": {
                    "targets": ",".join(targets),
                    "boot_count": boot.boot_count,
                    "startup_ms": round((time.perf_counter() - started) * 1000, 1),
                    "config": json.dumps(config.loggable(), sort_keys=True),
                }
            },
        )

    async def _record_boot(self) -> BootRecord:
        assert self._storage is not None
        assert self._committer is not None
        previous = self._storage.get("meta", _BOOT_KEY)
        count = _boot_decoder.decode(previous).boot_count + 1 if previous else 1
        boot = BootRecord(boot_count=count, started_unix_ms=int(time.time() * 1000), version=VERSION)
        batch = self._storage.batch().put("meta", _BOOT_KEY, _boot_encoder.encode(boot))
        await self._committer.submit(batch)
        return boot

    def _bind(self, server: grpc.aio.Server) -> list[str]:
        config = self._config
        credentials = self._credentials
        targets: list[str] = []
        if config.listen is not None:
            port = _add_port(server, config.listen, credentials)
            host = config.listen.rpartition(":")[0]
            targets.append(f"{host}:{port}")
        if config.uds is not None:
            path = config.uds.absolute()
            address = f"unix:{path}"
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(path, address)
            old_umask = os.umask(0o177)  # the socket is born owner-only (0600)
            try:
                _add_port(server, address, credentials)
            finally:
                os.umask(old_umask)
            self._socket_file = _OwnedFile.of(path)
            path.chmod(0o600)
            targets.append(address)
        return targets

    def _write_ready_file(self, targets: list[str]) -> None:
        if self._config.ready_file is None:
            return
        path = self._config.ready_file
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps({"targets": targets, "pid": os.getpid(), "version": VERSION}))
        written = _OwnedFile.of(temporary)
        temporary.replace(path)  # atomic: readers never see half a file
        self._ready_file = _OwnedFile(path=path, device=written.device, inode=written.inode)

    async def _shutdown(self) -> None:
        config = self._config
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            for capability in self._capabilities:
                await capability.drain()
            await self._server.stop(config.shutdown_grace_s)
            if self._socket_file is not None:
                self._socket_file.remove()
        for capability in reversed(self._capabilities):
            try:
                await capability.stop()
            except Exception:  # noqa: BLE001 - one failing stop must not skip the others' or the commit flush
                _log.exception(
                    "a capability failed to stop", extra={"fields": {"capability": type(capability).__name__}}
                )
        if self._committer is not None:
            await self._committer.aclose()
        if self._storage is not None:
            self._storage.close()  # also releases the data-folder lock
        if self._ready_file is not None:
            self._ready_file.remove()
        _log.info("stopped")


class _GenericHandlersOnly:
    """A server as the generated ``add_*_to_server`` functions see it: generic handlers only.

    Those functions add each service twice: as a generic handler and as
    "registered methods". For registered methods grpc.aio keeps one pending
    request future per method and, for every incoming call, waits on all of
    them (``asyncio.wait`` over the whole set): with our 51 methods that wait
    costs about 26 µs per call against 6 µs over one future (measured in
    isolation on uvloop). The generic handlers serve the same methods from
    one future.

    Every method handler served is a releasing one (see
    :func:`sidecar._status.releasing_handler`), so that a refused call frees its
    request when it ends.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Releasing(handler) for handler in handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        """Ignored: the service's generic handler (added with it) serves these methods."""
        del service_name, method_handlers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


# Methods whose releasing handler a _Releasing remembers, at most (a service has a few dozen).
_MAX_RELEASED_METHODS = 1024


class _Releasing(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped (see the mypy overrides)
    """A generic handler serving releasing versions of another's method handlers, each made once."""

    def __init__(self, handlers: grpc.GenericRpcHandler) -> None:
        self._handlers = handlers
        # method -> (the handler it was served by, its releasing version)
        self._released: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        known = self._released.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        released = releasing_handler(handler)
        if len(self._released) < _MAX_RELEASED_METHODS:
            self._released[method] = (handler, released)
        return released


# Generation 0 (new containers), then 1 and 2 (collections of the younger).
_GC_THRESHOLDS = (50_000, 20, 10)


def _tune_garbage_collector() -> None:
    """Freezes start-up objects and makes cyclic collections rarer.

    A 10,000-task fan-out allocates container objects (tasks, dependents
    lists, batch rows) by the hundred thousand; with CPython's default
    thresholds every 700 of them start a collection that walks the young
    heap, about a sixth of the scheduler's CPU (profiled). Objects alive once
    the sidecar has started are frozen out of collections, and collections
    start after 50,000 new containers; cyclic garbage is still collected,
    only less often. So nothing large may wait in a cycle: calls that few
    containers pass through (a flood of refused 10 MiB requests) would not
    start a collection for gigabytes. Served calls leave no cycle, refused
    ones included (see ``_grpc_cycles`` and ``_status.releasing_handler``).
    """
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load (grpc cannot use one) instead of prompting


def _server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """The TLS credentials of ``--tls-cert`` and ``--tls-key``, checked to be a certificate and its key.

    grpc reads them only when the port is bound, and then says no more than
    that the port could not be bound: a wrong or mismatched file is found
    here, before anything is opened, by loading the pair as a TLS server would.

    Raises:
        ConfigError: A file cannot be read, or the pair is not a PEM
            certificate chain and its unencrypted private key; the message
            names both files.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    cert_path, key_path = config.tls_cert, config.tls_key
    named = f"--tls-cert {str(cert_path)!r} and --tls-key {str(key_path)!r}"
    try:
        cert, key = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {str(error.filename)!r} ({named}): {error.strerror}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as error:
        raise ConfigError(
            f"{named} are not a PEM certificate chain and its unencrypted private key "
            f"({error.reason or error})"
        ) from None
    return grpc.ssl_server_credentials([(key, cert)])


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remove_stale_socket(path: Path, address: str) -> None:
    """Clears the way to bind a Unix socket at ``path``: removes a stale socket file, refuses a live one.

    A socket file whose listener is gone (a crashed sidecar's) refuses
    connections and is removed. One that accepts a connection belongs to a
    live process (grpc would replace it silently, and its clients would then
    reach this sidecar); anything else at the path is not ours to delete.

    Raises:
        OSError: The path is a live socket, or not a socket, or cannot be probed
            (the CLI's exit 1, as for a taken TCP port).
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(
            f"could not listen on {address}: the path exists and is not a socket; "
            "remove it or choose another --uds path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_SOCKET_PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        # Stale: nobody listens. (Gone in between: nothing to remove.)
        path.unlink(missing_ok=True)
        _log.info("removed a stale socket file", extra={"fields": {"path": str(path)}})
        return
    except OSError as error:
        raise OSError(
            f"could not listen on {address}: cannot tell whether a process listens on it ({error})"
        ) from None
    finally:
        probe.close()
    raise OSError(
        f"could not listen on {address}: a process is listening on it (another sidecar?); "
        "stop it or choose another --uds path"
    )


def _probe_listen(listen: str) -> None:
    """Binds ``listen`` with a plain socket for a moment; raises OSError saying why it cannot be.

    gRPC reports a failed bind as "could not listen" with its reason only in
    a log line of its own (not JSON under ``--log-format json``), and only
    once the start's recovery is done. Port 0 (any free port) is not probed.
    """
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        return  # the configuration checked it; gRPC's own error then says more
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(f"could not listen on {listen}: cannot resolve {host!r} ({error.strerror})") from None
    errors: list[str] = []
    for family, kind, proto, _, address in infos:  # gRPC listens if any of them binds
        probe = socket.socket(family, kind, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(address)
        except OSError as error:
            errors.append(error.strerror or str(error))
        else:
            return
        finally:
            probe.close()
    raise OSError(f"could not listen on {listen}: {errors[0] if errors else 'no address to bind'}")


def _add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Binds ``address``; returns the port. A taken or bad address raises OSError (the CLI's exit 1).

    grpcio returns 0 for an address it cannot bind, or (recent releases) raises
    RuntimeError: that ended the sidecar with a traceback instead of a message.
    """
    try:
        if credentials is not None:
            port = int(server.add_secure_port(address, credentials))
        else:
            port = int(server.add_insecure_port(address))
    except RuntimeError as error:
        raise OSError(f"could not listen on {address} ({error}): is the address taken?") from None
    if port == 0:
        raise OSError(f"could not listen on {address}: is the address taken?")
    return port
