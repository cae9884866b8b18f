"""Span export at shutdown is bounded by the grace; export can be turned off; a bad endpoint is refused.

Defects: with the OTLP collector down or stalled, SIGTERM took about 30 s
whatever ``--shutdown-grace-s`` said (the SDK's default shutdown wait), and
the data folder stayed locked all that time, so a restart failed;
``--otlp-endpoint off`` was taken as a host name, so export could not be
turned off where ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set for every container;
an endpoint that is no URL or HOST:PORT was accepted.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from are_core.trace import EventDraft
from are_sdk.testing import SidecarProcess
from sidecar._trace import TEST_HOOK_ENV, TEST_HOOK_METHOD

_GRACE_S = 1.0
_WORKFLOWS = 3  # each is two spans: the workflow's and its task attempt's


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts the spans exported to it."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the collector's RPC name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collector = Receiver()
    # grpcio's generated helper has no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(grace=None)


@pytest.fixture
def stalled_collector() -> Iterator[int]:
    """A port whose listener never accepts: connections open, and nothing is ever answered."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


@pytest.fixture
def down_collector() -> int:
    """A port nobody listens on: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _record_workflows(target: str, count: int) -> None:
    """Records ``count`` finished one-task workflows through the test hook: two ended spans each."""
    with grpc.insecure_channel(target) as channel:
        record = channel.unary_unary(TEST_HOOK_METHOD)
        for index in range(count):
            wf = f"wf-lifecycle-{index}"
            drafts = [
                EventDraft(event_type="WORKFLOW_SUBMITTED", workflow_id=wf),
                EventDraft(
                    event_type="TASK_DISPATCHED", workflow_id=wf, task_id="t", attempt=1, worker_id="w"
                ),
                EventDraft(
                    event_type="TASK_COMPLETED",
                    workflow_id=wf,
                    task_id="t",
                    attempt=1,
                    task_state="COMPLETED",
                ),
                EventDraft(event_type="WORKFLOW_COMPLETED", workflow_id=wf, workflow_state="COMPLETED"),
            ]
            for draft in drafts:  # one batch each, as producers record them
                record(msgspec.msgpack.encode([draft]), timeout=10)


def _env(**extra: str) -> dict[str, str]:
    return {TEST_HOOK_ENV: "1", **extra}


@pytest.mark.parametrize("collector", ["stalled_collector", "down_collector"])
def test_sigterm_with_an_unreachable_collector_exits_within_the_grace(
    collector: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    port = request.getfixturevalue(collector)
    data = tmp_path / "data"
    args = ["--otlp-endpoint", f"http://127.0.0.1:{port}", "--shutdown-grace-s", str(_GRACE_S)]
    with SidecarProcess.start(data_dir=data, env=_env(), args=args) as process:
        _record_workflows(process.target, _WORKFLOWS)
        status = process.stop(timeout=60)  # a hang guard; no timing asserted (shared, noisy machines)
        log = process.log_text()
    assert status == 0, log[-3000:]
    # The export was cut off within the grace rather than waited for: it says what it dropped.
    dropped = re.findall(r"(\d+) spans were not exported", log)
    assert dropped == [str(2 * _WORKFLOWS)], log[-3000:]
    # The data folder is free again: a restart right away serves.
    with SidecarProcess.start(data_dir=data, env=_env(), args=["--otlp-endpoint", "off"]) as restarted:
        assert restarted.stop() == 0


@pytest.mark.parametrize("value", ["off", "None"])
def test_the_option_turns_off_the_export_the_environment_turns_on(
    value: str, receiver: tuple[Receiver, int]
) -> None:
    collector, port = receiver
    env = _env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_BSP_SCHEDULE_DELAY="50")
    with SidecarProcess.start(env=env, args=["--otlp-endpoint", value]) as process:
        _record_workflows(process.target, 1)
        assert process.stop() == 0  # a clean stop flushes any exporter there is
        log = process.log_text()
    assert "exporting traces with OTLP" not in log
    assert collector.spans == 0


def test_the_environment_still_turns_export_on(receiver: tuple[Receiver, int]) -> None:
    collector, port = receiver
    env = _env(OTEL_EXPORTER_OTLP_ENDPOINT=f"127.0.0.1:{port}", OTEL_BSP_SCHEDULE_DELAY="50")
    with SidecarProcess.start(env=env) as process:
        _record_workflows(process.target, 1)
        assert process.stop() == 0  # shutdown flushes the queued spans
    assert collector.spans == 2


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--otlp-endpoint", "collector"], {}, "--otlp-endpoint"),
        (["--otlp-endpoint", "grpc://collector:4317"], {}, "--otlp-endpoint"),
        (["--otlp-endpoint", "http://collector:99999"], {}, "--otlp-endpoint"),
        ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_an_endpoint_that_is_no_url_or_host_port_is_refused_at_start(
    flags: list[str], env: dict[str, str], named: str, tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("ARE_", "OTEL_"))}
    argv = [sys.executable, "-m", "sidecar", "serve", "--listen", "127.0.0.1:0"]
    argv += ["--data-dir", str(tmp_path / "data"), "--ready-file", str(ready), *flags]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env | env
    )
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the sidecar started with {flags or env}:\n{output.decode(errors='replace')[-2000:]}")
    text = output.decode(errors="replace")
    assert process.returncode == 2, text[-2000:]
    assert f"invalid value for {named}: expected http://HOST[:PORT]" in text
    assert "Traceback" not in text
    assert not ready.exists()
    assert not (tmp_path / "data").exists()  # refused before the data folder is touched
