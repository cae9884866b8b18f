"""The Python SDK's client at its edges, against a real sidecar: defects a review of it reproduced.

Tokens that grpc cannot send, a SyncClient called on its own loop thread, blocking
functions in the cache, a hung sidecar under a wait, TLS over a Unix socket, a
zero timeout on a closed workflow, and a lone surrogate or a NaN in a state value. Each
test failed on the SDK before its fix.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from are_sdk import (
    CacheUsage,
    Client,
    InternalError,
    InvalidArgumentError,
    SyncClient,
    UnavailableError,
    WaitTimeoutError,
    WorkflowFailedError,
    WorkflowSpec,
    WorkflowState,
)
from are_sdk._client import RawServices
from are_sdk._proto.are.v1 import scheduler_service_pb2
from are_sdk.testing import SidecarProcess
from tests.integration._tls import self_signed

_HANG_GUARD_S = 20.0  # far past any answer; only a hang reaches it


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _nobody() -> WorkflowSpec:
    """A workflow whose one task no worker takes: it stays open until cancelled."""
    return WorkflowSpec("edge").task("a", capability=f"nobody-{_suffix()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_token_file_newline_is_stripped_and_an_unsendable_token_refused_at_connect() -> None:
    """A token read with its newline connected (health carries no token), then every call raised a
    raw grpc ExecuteBatchError ("Illegal header value"), not an AreError."""
    with SidecarProcess.start(token="s3cret-token") as sidecar:
        async with await Client.connect(sidecar.target, token="s3cret-token\n", timeout=10) as client:
            handle = await client.submit_workflow(_nobody())
            assert (await handle.cancel()).state is WorkflowState.CANCELLED
            assert client.metadata == (("authorization", "Bearer s3cret-token"),)
        for bad in ("s3cret token", "s3cret-tökén", "a\nb", "\t\n"):
            with pytest.raises(ValueError, match="`token`"):
                await Client.connect(sidecar.target, token=bad, timeout=10)


async def test_a_grpc_error_without_a_status_is_an_are_error(client: Client) -> None:
    """grpc refusing to send a call (here a header it cannot carry) escaped as its own exception."""
    raw = RawServices(client.channel, [("authorization", "Bearer bad\ntoken")])
    request = scheduler_service_pb2.GetWorkflowRequest(workflow_id="wf-none")
    with pytest.raises(InternalError) as caught:
        await raw.scheduler.GetWorkflow(request)
    assert caught.value.code is grpc.StatusCode.INTERNAL
    assert "GetWorkflow" in str(caught.value)


def _in_thread(function: Callable[[], Any]) -> Any:
    """``function()`` in a thread of its own: its result or its error, or a failure if it hangs.

    A SyncClient whose loop thread waits for itself is stuck for good, closing included: on a
    hang the test fails without closing it.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(_HANG_GUARD_S)
    if thread.is_alive():
        pytest.fail("the SyncClient deadlocked: a call waited for its own loop thread")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_sync_client_call_on_its_own_loop_thread_raises_instead_of_deadlocking(
    sidecar: SidecarProcess,
) -> None:
    """An async get_or_call function that used the SyncClient blocked the loop thread on itself:
    that call, and every later call of the client from any thread, hung for good."""
    client = SyncClient.connect(sidecar.target)
    namespace = f"edge-{_suffix()}"
    client.cache.put_namespace(namespace)

    async def llm() -> str:
        client.health()  # on the SDK's loop thread
        return "Paris"

    with pytest.raises(RuntimeError, match="own event loop thread"):
        _in_thread(lambda: client.cache.get_or_call(namespace, "capital of France?", llm))
    try:
        assert client.health() == "SERVING"  # the client still works
    finally:
        client.close()


def test_the_sync_clients_cache_takes_blocking_functions(sidecar: SidecarProcess) -> None:
    """A plain function given to SyncClient.cache.get_or_call was called on the loop thread, then
    awaited (TypeError, the answer lost; a deadlock if it used the client); one decorated with
    cache.cached returned a coroutine."""
    calls: list[str] = []
    client = SyncClient.connect(sidecar.target)
    namespace = f"edge-{_suffix()}"
    client.cache.put_namespace(namespace)

    def llm(question: str) -> str:
        calls.append(question)
        assert client.health() == "SERVING"  # off the loop thread: the SyncClient works here
        return f"answer to {question}"

    def usage(value: str) -> CacheUsage:
        return CacheUsage(input_tokens=len(value), output_tokens=int(client.health() == "SERVING"))

    def exercise() -> None:
        first = client.cache.get_or_call(namespace, "q1", lambda: llm("q1"), usage=usage)
        assert (first.value, first.from_cache) == ("answer to q1", False)
        assert first.stored is not None
        again = client.cache.get_or_call(namespace, "q1", lambda: llm("q1"))
        assert (again.value, again.from_cache) == ("answer to q1", True)
        assert again.hit is not None and again.hit.usage.output_tokens == 1
        ask: Callable[[str], str] = client.cache.cached(namespace, prompt=lambda question: question)(llm)
        assert ask("q2") == "answer to q2"
        assert ask("q2") == "answer to q2"

    _in_thread(exercise)
    try:
        assert calls == ["q1", "q2"]
    finally:
        client.close()


async def test_the_async_clients_cache_runs_a_blocking_function_off_the_loop(client: Client) -> None:
    """Such a function was called on the event loop, then awaited: TypeError after the paid call."""
    namespace = f"edge-{_suffix()}"
    await client.cache.put_namespace(namespace)
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def blocking() -> str:
        threads.append(threading.get_ident())
        return "blocking"

    async def coroutine() -> str:
        threads.append(threading.get_ident())
        return "coroutine"

    result = await client.cache.get_or_call(namespace, "plain", blocking)
    assert (result.value, threads) == ("blocking", [threads[0]])
    assert threads[0] != loop_thread
    # Async callables work as before: an async function, and a lambda around one.
    assert (await client.cache.get_or_call(namespace, "async", coroutine)).value == "coroutine"
    around = lambda: coroutine()  # noqa: E731, PLW0108 - not a coroutine function, yet it makes one
    assert (await client.cache.get_or_call(namespace, "lambda", around)).value == "coroutine"
    assert threads[1:] == [loop_thread, loop_thread]

    @client.cache.cached(namespace, prompt=lambda question: question)
    def ask(question: str) -> str:
        threads.append(threading.get_ident())
        return question.upper()

    assert await ask("decorated") == "DECORATED"
    assert threads[-1] != loop_thread


async def test_a_wait_on_a_hung_sidecar_raises_unavailable_after_the_reconnect_window() -> None:
    """With no timeout, wait(), result() and watch() resumed forever against a stopped sidecar,
    although the README says a hung sidecar fails the call with UNAVAILABLE."""
    with SidecarProcess.start() as sidecar:
        async with await Client.connect(
            sidecar.target, keepalive=1, keepalive_timeout=1, reconnect_window=2
        ) as client:
            handle = await client.submit_workflow(_nobody())
            updates = handle.watch()
            first = await anext(updates)  # the watch channel is connected and its stream open
            assert not first.workflow.state.closed
            result = asyncio.ensure_future(handle.result())

            async def rest_of_watch() -> None:
                async for _ in updates:
                    pass

            watch = asyncio.ensure_future(rest_of_watch())
            os.kill(sidecar.pid, signal.SIGSTOP)
            try:
                done, _ = await asyncio.wait({result, watch}, timeout=_HANG_GUARD_S)
                assert done == {result, watch}, "a wait on a hung sidecar never ended"
                for task in (result, watch):
                    assert isinstance(task.exception(), UnavailableError), task.exception()
            finally:
                os.kill(sidecar.pid, signal.SIGCONT)
                for task in (result, watch):
                    task.cancel()


async def test_a_wait_resumes_across_a_restart_within_the_reconnect_window(tmp_path: Path) -> None:
    """The window bounds a silent sidecar, not a restart: a wait resumes on the new process."""
    args = ["--listen", f"127.0.0.1:{_free_port()}"]
    first = SidecarProcess.start(data_dir=tmp_path / "data", args=args)
    try:
        async with await Client.connect(first.target, reconnect_window=20) as client:
            handle = await client.submit_workflow(_nobody())
            await handle.describe()
            waiting = asyncio.ensure_future(handle.wait(timeout=_HANG_GUARD_S))
            await asyncio.sleep(0.5)  # its stream opens (not asserted: it resumes either way)
            first.kill()
            await asyncio.sleep(1.0)
            with SidecarProcess.start(data_dir=tmp_path / "data", args=args):
                await handle.cancel()
                assert (await waiting).state is WorkflowState.CANCELLED
    finally:
        first.cleanup()


async def test_tls_over_a_unix_socket_checks_the_certificate_against_localhost(tmp_path: Path) -> None:
    """A unix: target names no host and no option set the TLS server name: no TLS sidecar on a Unix
    socket could be reached, by Client.connect or by SidecarProcess."""
    cert, key = self_signed(tmp_path)
    roots = cert.read_bytes()
    with SidecarProcess.start(
        uds=True, args=["--tls-cert", str(cert), "--tls-key", str(key)], root_certificates=roots, timeout=15
    ) as sidecar:
        assert sidecar.target.startswith("unix:")
        async with await Client.connect(sidecar.target, root_certificates=roots, timeout=10) as client:
            assert await client.health() == "SERVING"
            assert await client.state.blobs.put(b"over tls", workflow_id="")
        named = await Client.connect(sidecar.target, root_certificates=roots, server_name="localhost")
        await named.close()
        with pytest.raises(UnavailableError):  # the certificate does not name it
            await Client.connect(sidecar.target, root_certificates=roots, server_name="other.test", timeout=2)


async def test_a_zero_timeout_answers_a_closed_workflow(client: Client) -> None:
    """asyncio.timeout(0) cancelled the wait before its first status: a closed workflow "did not
    close within 0s"."""
    handle = await client.submit_workflow(_nobody())
    with pytest.raises(WaitTimeoutError):
        await handle.wait(timeout=0)  # open: the status read once says so
    await handle.cancel()
    assert (await handle.wait(timeout=0)).state is WorkflowState.CANCELLED
    with pytest.raises(WorkflowFailedError):
        await handle.result(timeout=0)


async def test_a_lone_surrogate_in_a_state_value_is_refused_naming_its_path(client: Client) -> None:
    """A bare UnicodeEncodeError, naming neither the value nor where it was."""
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.patch("wf-none", {"plan": {"steps": ["ok", "\ud800"]}})
    assert caught.value.reason == "INVALID_JSON"
    [violation] = caught.value.field_violations
    assert violation.field == "merge"
    assert "'/plan/steps/1'" in violation.description
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.patch("wf-none", set={"/notes": {"a/b": "\udfff"}})
    [violation] = caught.value.field_violations
    assert violation.field == "set['/notes']"
    assert "'/notes/a~1b'" in violation.description


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_a_number_json_cannot_write_in_a_state_value_is_refused_naming_its_path(
    client: Client, number: float
) -> None:
    """A bare ValueError ("Out of range float values are not JSON compliant"), not an AreError."""
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.patch("wf-none", {"scores": [1.0, {"x": number}]})
    assert caught.value.reason == "INVALID_JSON"
    [violation] = caught.value.field_violations
    assert violation.field == "merge"
    assert f"the number at '/scores/1/x' is {number!r}" in violation.description
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.patch("wf-none", set={"/s": number})
    [violation] = caught.value.field_violations
    assert (violation.field, violation.description.split(",")[0]) == (
        "set['/s']",
        f"the number at '/s' is {number!r}",
    )


@pytest.mark.parametrize("window", [0.0, -1.0, float("nan")])
async def test_a_reconnect_window_not_positive_is_refused_before_anything_opens(window: float) -> None:
    with pytest.raises(ValueError, match="reconnect_window"):
        await Client.connect("127.0.0.1:1", reconnect_window=window)  # no sidecar needed: refused first
