"""Bearer-token auth on every service, Unix sockets, TLS and JSON logs."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from are_sdk import Client, UnauthenticatedError
from are_sdk.testing import SidecarProcess
from tests.integration._tls import self_signed

from .test_serving import _all_methods, _call_raw

TOKEN = "s3cret-token-for-tests-7c1e"


@pytest.fixture(scope="module")
def guarded() -> Iterator[SidecarProcess]:
    with SidecarProcess.start(token=TOKEN) as process:
        yield process


async def test_every_service_refuses_calls_without_the_token(guarded: SidecarProcess) -> None:
    async with await Client.connect(guarded.target) as client:
        seen_services = set()
        for path, client_streaming, server_streaming in _all_methods():
            code, details, _ = await _call_raw(client.channel, path, client_streaming, server_streaming)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (path, code, details)
            seen_services.add(path.split("/")[1])
        assert len(seen_services) == 6


async def test_a_wrong_token_is_refused_with_the_sdk_exception(guarded: SidecarProcess) -> None:
    from are_sdk._proto.are.v1 import cache_service_pb2

    async with await Client.connect(guarded.target, token="not-the-token") as client:
        with pytest.raises(UnauthenticatedError) as caught:
            await client.raw.cache.ListNamespaces(cache_service_pb2.ListNamespacesRequest())
        assert caught.value.reason == "UNAUTHENTICATED"
        assert "wrong bearer token" in caught.value.message


async def test_the_right_token_passes_and_health_stays_open(guarded: SidecarProcess) -> None:
    async with await Client.connect(guarded.target) as anonymous:
        assert await anonymous.health() == "SERVING"
    async with await Client.connect(guarded.target, token=TOKEN) as client:
        # Past auth, each RPC answers for itself: never UNAUTHENTICATED.
        for path, client_streaming, server_streaming in _all_methods():
            code, details, _ = await _call_raw(
                client.channel, path, client_streaming, server_streaming, metadata=client.metadata
            )
            assert code != grpc.StatusCode.UNAUTHENTICATED, (path, details)


def test_the_token_never_reaches_the_log(guarded: SidecarProcess) -> None:
    log = guarded.log_text()
    assert "refused an unauthenticated call" in log
    assert TOKEN not in log


def test_token_file_is_read_and_not_logged(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with SidecarProcess.start(args=["--token-file", str(token_file), "--log-level", "debug"]) as process:
        channel = grpc.insecure_channel(process.target)
        with channel:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary("/are.v1.CacheService/GetCacheStats")(b"", timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert TOKEN not in process.log_text()


async def test_unix_socket_is_owner_only() -> None:
    with SidecarProcess.start(uds=True) as process:
        assert process.target.startswith("unix:")
        mode = stat.S_IMODE(Path(process.target.removeprefix("unix:")).stat().st_mode)
        assert mode == 0o600
        async with await Client.connect(process.target) as client:
            assert await client.health() == "SERVING"


def test_json_logs_are_one_object_per_line() -> None:
    with SidecarProcess.start(args=["--log-format", "json"]) as process:
        assert process.stop() == 0
        lines = [line for line in process.log_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(r["message"] == "serving" for r in records)
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)


async def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with SidecarProcess.start(
        args=["--tls-cert", str(cert), "--tls-key", str(key)], root_certificates=cert.read_bytes()
    ) as process:
        async with await Client.connect(process.target, root_certificates=cert.read_bytes()) as client:
            assert await client.health() == "SERVING"
        # A plaintext client cannot talk to a TLS sidecar.
        with grpc.insecure_channel(process.target) as plain, pytest.raises(grpc.RpcError):
            plain.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=3)
