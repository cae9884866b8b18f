"""The ``are`` client commands against a real sidecar (events recorded through the test hook)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from are_core.trace import EventDraft, EventUsage
from are_sdk import AgentCard, Client, TaskContext, TaskInfo, Worker
from are_sdk._proto.are.v1 import task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess
from sidecar._trace import TEST_HOOK_ENV, TEST_HOOK_METHOD
from sidecar.cli import main
from tests.integration.test_cli_follow import finish


@pytest.fixture(scope="module")
def traced() -> Iterator[SidecarProcess]:
    with SidecarProcess.start(env={TEST_HOOK_ENV: "1"}) as process:
        yield process


class Ran(msgspec.Struct):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def are(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """Runs ``are ARGS`` in this process (the console script's ``main``) against a target."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("ARE_TOKEN", raising=False)

    def run(target: str, *args: str) -> Ran:
        capsys.readouterr()
        monkeypatch.setenv("ARE_TARGET", target)
        code = main(list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


async def record(target: str, *drafts: EventDraft) -> list[int]:
    async with await Client.connect(target) as client:
        call = client.channel.unary_unary(TEST_HOOK_METHOD)
        reply = await call(msgspec.msgpack.encode(list(drafts)), timeout=30)
    return msgspec.msgpack.decode(reply, type=list[int])


def test_events_and_trace_print_the_recorded_events(traced: SidecarProcess, are: Callable[..., Ran]) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    recorded = record(
        traced.target,
        EventDraft(event_type="WORKFLOW_SUBMITTED", workflow_id=wf),
        EventDraft(event_type="TASK_DISPATCHED", workflow_id=wf, task_id="plan", attempt=1, worker_id="w7"),
        EventDraft(
            event_type="LLM_CALL",
            workflow_id=wf,
            task_id="plan",
            attempt=1,
            name="gpt-4o",
            usage=EventUsage(input_tokens=12, output_tokens=3, cost_micro_usd=50),
        ),
    )
    asyncio.run(recorded)
    result = are(traced.target, "trace", wf)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["WORKFLOW_SUBMITTED", "TASK_DISPATCHED", "LLM_CALL"]
    assert "plan#1" in lines[1]
    assert "worker=w7" in lines[1]
    assert "tokens=12/3" in lines[2]

    result = are(traced.target, "events", "--workflow", wf, "--type", "llm_call")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1

    result = are(traced.target, "events", "--type", "NOT_A_TYPE")
    assert result.returncode == 2
    assert "NOT_A_TYPE" in result.stderr


async def test_trace_follow_streams_until_the_workflow_ends(traced: SidecarProcess) -> None:
    capability = f"cli-follow-{uuid.uuid4().hex[:8]}"
    spec = workflow_pb2.WorkflowSpec(
        name="cli-follow",
        tasks=[
            task_pb2.TaskSpec(task_id="draft", capability=capability),
            task_pb2.TaskSpec(
                task_id="publish", capability=capability, depends_on=["draft"], requires_approval=True
            ),
        ],
    )
    async with await Client.connect(traced.target) as client:
        worker = Worker(client, name="cli-follow", max_concurrency=2)

        @worker.handler(capability)
        async def echo(ctx: TaskContext) -> dict[str, object]:
            return {"echo": ctx.task_id}

        async with worker:
            handle = await client.workflows.submit(spec)
            env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_")}
            env.update({"ARE_TARGET": traced.target, "COLUMNS": "200", "NO_COLOR": "1"})
            follower = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar.cli", "trace", handle.workflow_id, "--follow",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            assert follower.stdout is not None
            try:
                first = await asyncio.wait_for(follower.stdout.readline(), 60)  # it has joined
                for _ in range(600):  # bounded: until the approval gate opens
                    if await client.workflows.list_approvals():
                        break
                    await asyncio.sleep(0.05)
                await handle.approve("publish")
                stdout, stderr = await asyncio.wait_for(follower.communicate(), 60)
            finally:
                if follower.returncode is None:
                    follower.kill()
                    await follower.wait()
    assert follower.returncode == 0, stderr.decode()
    kinds = [line.split()[2] for line in (first + stdout).decode().splitlines() if line.strip()]
    assert kinds[-1] == "WORKFLOW_COMPLETED"
    assert "WORKFLOW_SUBMITTED" in kinds and "TASK_APPROVED" in kinds and "TASK_COMPLETED" in kinds


async def _are_async(target: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_")}
    env.update({"ARE_TARGET": target, "COLUMNS": "200", "NO_COLOR": "1"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    return await finish(process)


SPEC = """
name: cli-demo
tasks:
  - task_id: draft
    capability: cli-echo
    input: {question: hi}
  - task_id: publish
    capability: cli-echo
    depends_on: [draft]
    requires_approval: true
    start_to_close_timeout: 30s
"""


async def test_submit_wait_approve_status_and_trace_with_a_real_worker(
    traced: SidecarProcess, tmp_path: Path
) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text(SPEC)
    async with await Client.connect(traced.target) as client:
        worker = Worker(client, name="cli-test", max_concurrency=4)

        @worker.handler("cli-echo")
        async def echo(ctx: TaskContext) -> dict[str, object]:
            ctx.report_llm_call("test-model", input_tokens=7, output_tokens=2, cost_micro_usd=3)
            return {"echo": ctx.task_id}

        async with worker:
            submitting = asyncio.create_task(_are_async(traced.target, "submit", str(spec), "--wait"))
            gates: list[TaskInfo] = []
            for _ in range(600):  # bounded: until the approval gate opens
                gates = list(await client.workflows.list_approvals())
                if gates or submitting.done():
                    break
                await asyncio.sleep(0.05)
            assert gates, "the approval gate never opened"
            gate = gates[0]
            workflow_id = gate.workflow_id
            code, stdout, stderr = await _are_async(traced.target, "status", workflow_id)
            assert code == 0, stderr
            assert "draft COMPLETED" in stdout
            assert "publish AWAITING_APPROVAL" in stdout
            code, stdout, stderr = await _are_async(
                traced.target, "approve", workflow_id, "publish", "--approver", "me", "--comment", "ok"
            )
            assert code == 0, stderr
            code, stdout, stderr = await submitting
            assert code == 0, stderr
            assert f"submitted {workflow_id}" in stdout
            assert f"workflow {workflow_id} COMPLETED" in stdout.splitlines()  # then its result
    code, stdout, stderr = await _are_async(traced.target, "status", workflow_id)
    assert code == 0, stderr
    assert "publish COMPLETED" in stdout
    code, stdout, stderr = await _are_async(traced.target, "trace", workflow_id)
    assert code == 0, stderr
    kinds = [line.split()[2] for line in stdout.splitlines() if line.strip()]
    assert (
        kinds.index("WORKFLOW_SUBMITTED") < kinds.index("TASK_APPROVED") < kinds.index("WORKFLOW_COMPLETED")
    )
    assert kinds.count("LLM_CALL") == 2
    code, _, stderr = await _are_async(traced.target, "reject", workflow_id, "publish")
    assert code == 1
    assert "error:" in stderr


def test_pools_and_cache_stats_print_tables(traced: SidecarProcess, are: Callable[..., Ran]) -> None:
    result = are(traced.target, "pools")
    assert result.returncode == 0, result.stderr
    assert "pool" in result.stdout
    asyncio.run(_put_namespace(traced.target, f"cli-stats-{os.getpid()}"))
    result = are(traced.target, "cache", "stats")
    assert result.returncode == 0, result.stderr
    assert "hit rate" in result.stdout and f"cli-stats-{os.getpid()}" in result.stdout


def test_empty_listings_say_so_and_piped_tables_keep_their_width(
    are: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SidecarProcess.start() as fresh:
        result = are(fresh.target, "cache", "stats")
        assert (result.returncode, result.stdout) == (0, "")
        assert "no cache namespaces yet" in result.stderr
        result = are(fresh.target, "agents", "--capability", "nothing-here", "--available")
        assert (result.returncode, result.stdout.strip()) == (0, "")
        assert "no agent cards serving 'nothing-here' available now" in " ".join(result.stderr.split())
        result = are(fresh.target, "route", "translate a manifest")
        assert result.returncode == 1
        assert "no agent to route to" in result.stderr
        assert "┃" not in result.stdout  # no empty table

        name = "a-namespace-with-a-rather-long-descriptive-name"
        asyncio.run(_put_namespace(fresh.target, name))
        monkeypatch.delenv("COLUMNS")  # as in a pipe: rich would squeeze the table into 80 columns
        result = are(fresh.target, "cache", "stats")
        assert result.returncode == 0, result.stderr
        header = next(line for line in result.stdout.splitlines() if "namespace" in line)
        assert "saved tokens" in header and "ef (recall@1)" in header, result.stdout
        assert any(name in line for line in result.stdout.splitlines()), result.stdout


def test_cache_delete_asks_for_yes_then_deletes_the_namespace(
    traced: SidecarProcess, are: Callable[..., Ran]
) -> None:
    name = f"cli-delete-{os.getpid()}"
    asyncio.run(_put_namespace(traced.target, name, entries=3))
    result = are(traced.target, "cache", "delete", name)  # stdin is no terminal: no one to ask
    assert result.returncode == 2
    assert "pass --yes" in result.stderr
    assert name in are(traced.target, "cache", "stats").stdout  # nothing deleted
    result = are(traced.target, "cache", "delete", name, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["deleted", name, "(3", "entries)"]
    assert name not in are(traced.target, "cache", "stats").stdout
    result = are(traced.target, "cache", "delete", name, "--yes")
    assert result.returncode == 1
    assert "NAMESPACE_NOT_FOUND" in result.stderr or "does not exist" in result.stderr


async def _put_namespace(target: str, name: str, *, entries: int = 0) -> None:
    async with await Client.connect(target) as client:
        await client.cache.put_namespace(name)
        for i in range(entries):
            await client.cache.store(name, f"question {i}", f"answer {i}")


def test_agents_and_route_show_the_cards_and_the_ranking(
    traced: SidecarProcess, are: Callable[..., Ran]
) -> None:
    n = os.getpid()
    words = f"translate shipping manifests into welsh zq{n}x"

    async def register() -> None:
        async with await Client.connect(traced.target) as client:
            for name, cost in (("cheap", 2_000), ("dear", 90_000)):
                await client.router.register_agent(
                    AgentCard(
                        f"cli-{name}-{n}",
                        description=words,
                        capabilities=(f"cli-cap-{n}",),
                        cost_per_call_micro_usd=cost,
                    )
                )

    asyncio.run(register())
    result = are(traced.target, "agents", "--capability", f"cli-cap-{n}")
    assert result.returncode == 0, result.stderr
    assert f"cli-cheap-{n}" in result.stdout and f"cli-dear-{n}" in result.stdout
    assert "0.002000" in result.stdout and "0.090000" in result.stdout
    result = are(traced.target, "route", words)
    assert result.returncode == 0, result.stderr
    assert "cost_biased" in result.stdout
    first = next(line for line in result.stdout.splitlines() if "cli-" in line)
    assert f"cli-cheap-{n}" in first  # cost-biased: the cheaper one first
    result = are(traced.target, "route", f"welsh manifests zq{n}x", "--threshold", "0.999")
    assert result.returncode == 1
    assert "no agent reaches the threshold" in result.stderr
    assert "the default, lexical, matches shared words" in result.stderr  # what a text matches by
    assert "cli-" in result.stdout  # the best below it are shown


def test_submit_refuses_an_invalid_spec_naming_it(
    traced: SidecarProcess, tmp_path: Path, are: Callable[..., Ran]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": [{"task_id": "a", "no_such_field": 1}]}')
    result = are(traced.target, "submit", str(bad))
    assert result.returncode == 2
    assert "no_such_field" in result.stderr


def test_an_unreachable_sidecar_is_a_clear_error(are: Callable[..., Ran]) -> None:
    result = are("127.0.0.1:9", "events", "--connect-timeout", "0.5")
    assert result.returncode == 1
    assert "no ARE sidecar answered" in result.stderr
