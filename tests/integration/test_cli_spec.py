"""``are submit``: a spec's inputs and initial state are sent as written, or refused naming their path.

Defects: any mapping whose keys were among ``data``, ``blob`` and
``content_type`` was taken for a Payload, so ``input: {data: abcd}`` went out
as the bytes base64 decodes it to and ``{content_type: text/plain}`` as an
empty payload; a spec in the proto's canonical JSON mapping (a Payload with
``contentType``, as ``MessageToJson`` writes it) was wrapped a second time;
``initialState`` (lowerCamelCase) was refused; NaN, YAML dates and
``!!binary`` values, and ``tasks: 5``, ended in a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from google.protobuf import json_format

from are_sdk import Client
from are_sdk._proto.are.v1 import common_pb2, scheduler_service_pb2, task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess
from sidecar.cli import main


class Ran(msgspec.Struct):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def are(
    sidecar: SidecarProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Ran]:
    """Runs ``are ARGS`` in this process against the session's sidecar."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("ARE_TOKEN", raising=False)
    monkeypatch.setenv("ARE_TARGET", sidecar.target)

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def _submitted(ran: Ran) -> str:
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.split()[1]


async def _inputs(target: str, workflow_id: str, *task_ids: str) -> list[common_pb2.Payload]:
    async with await Client.connect(target) as client:
        payloads = []
        for task_id in task_ids:
            response = await client.raw.scheduler.GetTask(
                scheduler_service_pb2.GetTaskRequest(workflow_id=workflow_id, task_id=task_id)
            )
            payloads.append(response.task.spec.input)
        return payloads


def _json(payload: common_pb2.Payload) -> object:
    assert payload.content_type == "application/json"
    return json.loads(payload.data)


def test_mappings_that_only_look_like_payloads_are_sent_as_json(
    sidecar: SidecarProcess, are: Callable[..., Ran], tmp_path: Path
) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text(
        "name: lookalikes\n"
        "tasks:\n"
        "  - {task_id: a, capability: nobody-cli-spec, input: {data: abcd}}\n"
        "  - {task_id: b, capability: nobody-cli-spec, input: {content_type: text/plain}}\n"
        "  - {task_id: c, capability: nobody-cli-spec, input: {data: abcd, contentType: application/json}}\n"
        "  - {task_id: d, capability: nobody-cli-spec, input: {data: aGk=, content_type: text/plain, x: 1}}\n"
    )
    workflow_id = _submitted(are("submit", str(spec)))
    payloads = asyncio.run(_inputs(sidecar.target, workflow_id, "a", "b", "c", "d"))
    assert [_json(payload) for payload in payloads] == [
        {"data": "abcd"},
        {"content_type": "text/plain"},
        {"data": "abcd", "contentType": "application/json"},  # "abcd" decodes to bytes that are not JSON
        {"data": "aGk=", "content_type": "text/plain", "x": 1},
    ]


def test_a_spec_in_the_canonical_json_mapping_is_sent_as_it_is(
    sidecar: SidecarProcess, are: Callable[..., Ran], tmp_path: Path
) -> None:
    spec = workflow_pb2.WorkflowSpec(
        name="roundtrip",
        initial_state=common_pb2.Payload(data=b'{"count":1}', content_type="application/json"),
        tasks=[
            task_pb2.TaskSpec(
                task_id="a",
                capability="nobody-cli-spec",
                input=common_pb2.Payload(data=b'{"topic":"x"}', content_type="application/json"),
            ),
            task_pb2.TaskSpec(
                task_id="b",
                capability="nobody-cli-spec",
                input=common_pb2.Payload(data=b"plain words", content_type="text/plain"),
            ),
        ],
    )
    path = tmp_path / "wf.json"
    path.write_text(json_format.MessageToJson(spec))
    assert base64.b64encode(b'{"topic":"x"}').decode() in path.read_text()
    workflow_id = _submitted(are("submit", str(path)))
    first, second = asyncio.run(_inputs(sidecar.target, workflow_id, "a", "b"))
    assert _json(first) == {"topic": "x"}
    assert (second.data, second.content_type) == (b"plain words", "text/plain")
    assert asyncio.run(_state(sidecar.target, workflow_id)) == {"count": 1}


async def _state(target: str, workflow_id: str) -> object:
    async with await Client.connect(target) as client:
        return (await client.state.get(workflow_id)).values[""]


@pytest.mark.parametrize("key", ["initial_state", "initialState"])
def test_initial_state_takes_either_spelling(
    sidecar: SidecarProcess, are: Callable[..., Ran], tmp_path: Path, key: str
) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text(
        f"name: state\n{key}: {{count: 1, data: abcd}}\ntasks:\n  - {{taskId: a, capability: nobody}}\n"
    )
    workflow_id = _submitted(are("submit", str(spec)))
    assert asyncio.run(_state(sidecar.target, workflow_id)) == {"count": 1, "data": "abcd"}


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        (
            "nan.json",
            '{"tasks": [{"task_id": "a", "capability": "c", "input": {"x": NaN}}]}',
            "`tasks[0].input.x`",
        ),
        ("inf.json", '{"tasks": [{"task_id": "a", "capability": "c", "input": 1e999}]}', "`tasks[0].input`"),
        ("nan.yaml", "tasks:\n  - {task_id: a, capability: c, input: [1, .nan]}\n", "`tasks[0].input[1]`"),
        ("date.yaml", "tasks:\n  - {task_id: a, capability: c, input: {when: 2024-01-01}}\n", "date"),
        ("binary.yaml", "initial_state: !!binary aGVsbG8=\ntasks: []\n", "`initial_state` is binary data"),
        ("key.yaml", "tasks:\n  - {task_id: a, capability: c, input: {1: one}}\n", "the key 1"),
        ("tasks.yaml", "name: x\ntasks: 5\n", "`tasks` must be a list"),
        ("task.yaml", "name: x\ntasks: [5]\n", "`tasks[0]` must be a mapping"),
        (
            "both.yaml",
            "initial_state: {}\ninitialState: {}\ntasks: []\n",
            "both initial_state and initialState",
        ),
        ("latin1.yaml", "name: caf\xe9\n", "cannot read"),
    ],
)
def test_values_json_cannot_carry_are_refused_naming_their_path(
    are: Callable[..., Ran], tmp_path: Path, name: str, text: str, named: str
) -> None:
    spec = tmp_path / name
    spec.write_bytes(text.encode("latin-1"))
    result = are("submit", str(spec))
    assert result.returncode == 2, result.stderr
    assert named in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
