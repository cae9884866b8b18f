"""GetTask returns a task's spec as submitted, though the sidecar keeps its big fields once.

A task's inline input (4 MiB at most) and its cache key's prompt (1 MiB at
most) are held once, beside the engine's other fields, and taken out of the
serialized spec kept for readers; GetTask puts them back, before and after a
restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from are_sdk import Client
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk.testing import SidecarProcess
from sidecar._scheduler_convert import task_spec_from_proto
from tests.integration.test_scheduler import get_task, submit, task, unique_capability

pytestmark = pytest.mark.timeout(120)

_PROMPT = "Summarise the quarterly report in three bullet points. " * 200  # about 11 KiB


def _spec(cap: str, namespace: str) -> t.TaskSpec:
    return task(
        "a",
        cap,
        input=c.Payload(data=b'{"report": "q3"}', content_type="application/json"),
        cache_key=t.TaskCacheKey(namespace=namespace, prompt=_PROMPT, read_only=True),
        labels={"team": "finance"},
    )


def test_the_kept_spec_holds_neither_the_input_nor_the_prompt() -> None:
    converted = task_spec_from_proto(_spec("cap", "ns"), "spec.tasks[0]", frozenset({"cache"}))
    assert converted.cache_key is not None
    assert converted.cache_key.prompt == _PROMPT
    assert converted.input == b'{"report": "q3"}'
    kept = t.TaskSpec.FromString(converted.raw)
    assert (kept.cache_key.prompt, kept.input.data) == ("", b"")
    assert (kept.cache_key.namespace, kept.labels["team"]) == ("ns", "finance")
    assert len(converted.raw) < 200


async def test_get_task_returns_the_prompt_and_input_as_submitted_before_and_after_a_restart(
    tmp_path: Path,
) -> None:
    restartable = tmp_path / "data"
    cap = unique_capability("readback")
    submitted = _spec(cap, "readback")
    with SidecarProcess.start(data_dir=restartable) as sidecar:
        async with await Client.connect(sidecar.target) as client:
            await client.cache.put_namespace("readback")
            workflow_id = await submit(client, submitted)
            before = await get_task(client, workflow_id, "a")
    with SidecarProcess.start(data_dir=restartable) as sidecar:
        async with await Client.connect(sidecar.target) as client:
            after = await get_task(client, workflow_id, "a")
    for read in (before, after):
        assert read.spec.cache_key.prompt == _PROMPT
        assert read.spec.input.data == submitted.input.data
        assert read.spec == submitted
