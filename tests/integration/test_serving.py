"""The sidecar serves health, reflection, and an honest UNIMPLEMENTED for unbuilt RPCs."""

from __future__ import annotations

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


def _all_methods() -> list[tuple[str, bool, bool]]:
    from sidecar._server import service_descriptors

    return [
        (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for service in service_descriptors()
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
    methods = _all_methods()
    assert len(methods) > 30
    for path, client_streaming, server_streaming in methods:
        code, details, trailers = await _call_raw(client.channel, path, client_streaming, server_streaming)
        assert code == grpc.StatusCode.UNIMPLEMENTED, path
        assert path.lstrip("/") in details, details
        assert "not implemented" in details
        assert any(key == "grpc-status-details-bin" for key, _ in trailers), path


async def test_sdk_maps_unimplemented_to_its_exception(client: Client) -> None:
    from are_sdk._proto.are.v1 import scheduler_service_pb2

    with pytest.raises(UnimplementedError) as caught:
        await client.raw.scheduler.GetWorkflow(scheduler_service_pb2.GetWorkflowRequest(workflow_id="wf-1"))
    assert caught.value.reason == "NOT_IMPLEMENTED"
    assert "are.v1.SchedulerService/GetWorkflow" in caught.value.message


async def _call_raw(
    channel: grpc.aio.Channel, path: str, client_streaming: bool, server_streaming: bool
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes | str], ...]]:
    """Calls any method with an empty message and returns its status."""
    identity = {"request_serializer": None, "response_deserializer": None}
    try:
        if client_streaming and server_streaming:
            call = channel.stream_stream(path, **identity)(iter([b""]))
            async for _ in call:
                pass
        elif client_streaming:
            await channel.stream_unary(path, **identity)(iter([b""]))
        elif server_streaming:
            async for _ in channel.unary_stream(path, **identity)(b""):
                pass
        else:
            await channel.unary_unary(path, **identity)(b"", timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
    return grpc.StatusCode.OK, "", ()
