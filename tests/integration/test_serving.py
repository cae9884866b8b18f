"""The sidecar serves health, reflection, and an honest UNIMPLEMENTED for unbuilt RPCs."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import are_sdk._proto.are.v1 as _generated  # noqa: F401 - registers the descriptors
from are_sdk import Client, SyncClient, UnimplementedError
from are_sdk.testing import SidecarProcess

SERVICES = [
    "are.v1.SchedulerService",
    "are.v1.WorkerService",
    "are.v1.StateService",
    "are.v1.CacheService",
    "are.v1.RouterService",
    "are.v1.TraceService",
]


def _all_methods(*, unbuilt_only: bool = False) -> list[tuple[str, bool, bool]]:
    """Every RPC of the contract (or only those of services no capability serves)."""
    from sidecar._capabilities import CAPABILITIES
    from sidecar._server import service_descriptors

    served = {name for capability in CAPABILITIES for name in capability.services} if unbuilt_only else set()
    return [
        (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for service in service_descriptors()
        if service.full_name not in served
        for method in service.methods
    ]


async def test_health_is_serving(client: Client) -> None:
    assert await client.health() == "SERVING"
    for service in SERVICES:
        assert await client.health(service) == "SERVING"


def test_sync_client_shares_the_async_logic(sidecar: SidecarProcess) -> None:
    with SyncClient.connect(sidecar.target) as client:
        assert client.health() == "SERVING"
        assert client.target == sidecar.target


async def test_reflection_lists_the_six_services(client: Client) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)

    async def ask() -> reflection_pb2.ServerReflectionRequest:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for response in stub.ServerReflectionInfo(ask()):
        names |= {s.name for s in response.list_services_response.service}
    assert set(SERVICES) <= names
    assert "grpc.health.v1.Health" in names


def test_the_contract_has_the_six_services() -> None:
    pool = descriptor_pool.Default()
    for name in SERVICES:
        assert pool.FindServiceByName(name).methods, name


async def test_every_unbuilt_rpc_is_unimplemented_with_a_clear_message(client: Client) -> None:
    methods = _all_methods(unbuilt_only=True)
    for path, client_streaming, server_streaming in methods:
        code, details, trailers = await _call_raw(client.channel, path, client_streaming, server_streaming)
        assert code == grpc.StatusCode.UNIMPLEMENTED, path
        assert path.lstrip("/") in details, details
        assert "not implemented" in details
        assert any(key == "grpc-status-details-bin" for key, _ in trailers), path


def test_the_contract_has_every_rpc() -> None:
    assert len(_all_methods()) == 47  # DeleteNamespace made 47


async def test_sdk_maps_unimplemented_to_its_exception(client: Client) -> None:
    methods = _all_methods(unbuilt_only=True)
    if not methods:
        pytest.skip("every service is implemented")
    path = next(
        p for p, client_streaming, server_streaming in methods if not (client_streaming or server_streaming)
    )
    service, method = path.strip("/").split("/")
    raw = {
        "are.v1.SchedulerService": "scheduler",
        "are.v1.WorkerService": "worker",
        "are.v1.StateService": "state",
        "are.v1.CacheService": "cache",
        "are.v1.RouterService": "router",
        "are.v1.TraceService": "trace",
    }[service]
    request_type = descriptor_pool.Default().FindMethodByName(f"{service}.{method}").input_type
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(request_type)()
    with pytest.raises(UnimplementedError) as caught:
        await getattr(getattr(client.raw, raw), method)(request)
    assert caught.value.reason == "NOT_IMPLEMENTED"
    assert f"{service}/{method}" in caught.value.message


async def _call_raw(
    channel: grpc.aio.Channel,
    path: str,
    client_streaming: bool,
    server_streaming: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes | str], ...]]:
    """Calls any method with an empty message and returns its status.

    Streams are given a short deadline: an implemented stream may wait for
    more input or events, which ends as DEADLINE_EXCEEDED. Client streams
    send nothing: a refusal that arrives while a message is still being
    written can surface as INTERNAL in grpc's client (a transport race, not
    the server's answer).
    """
    identity = {"request_serializer": None, "response_deserializer": None}
    options = {"metadata": metadata, "timeout": 3}
    try:
        if client_streaming and server_streaming:
            call = channel.stream_stream(path, **identity)(iter(()), **options)
            async for _ in call:
                pass
        elif client_streaming:
            await channel.stream_unary(path, **identity)(iter(()), **options)
        elif server_streaming:
            async for _ in channel.unary_stream(path, **identity)(b"", **options):
                pass
        else:
            await channel.unary_unary(path, **identity)(b"", **options)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
    return grpc.StatusCode.OK, "", ()


def test_cpu_affinity_pins_every_thread_of_the_sidecar() -> None:
    cpu = max(os.sched_getaffinity(0))
    with SidecarProcess.start(args=["--cpu-affinity", str(cpu)]) as pinned:
        assert SyncClient.connect(pinned.target).health() == "SERVING"
        threads = list(Path(f"/proc/{pinned.pid}/task").iterdir())
        assert len(threads) > 1  # grpc's threads and the committer's, started after the pinning
        assert {frozenset(os.sched_getaffinity(int(t.name))) for t in threads} == {frozenset({cpu})}
