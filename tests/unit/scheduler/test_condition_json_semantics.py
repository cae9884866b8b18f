"""Conditions compare JSON as JSON, and only parse outputs that are JSON (engine and evaluator, no server).

- Equality fell back to Python's ``==`` for arrays and objects, where
  ``True == 1``: ``[true]`` equalled ``[1]``, and CONTAINS and IN, which
  compare elements with the same equality, matched a boolean against a
  number inside them. JSON has no such equality: booleans are never numbers,
  at any depth; numbers still compare by value (1 equals 1.0).
- An output whose content type is not JSON was parsed anyway. common.proto
  Payload: the sidecar parses a payload for a trigger condition only when its
  content type is JSON (empty, application/json, or ``*+json``, parameters
  allowed); task.proto Condition: an output that is not JSON makes every
  operator false except NOT_EXISTS and NOT_EQUAL.
"""

from __future__ import annotations

import asyncio

import pytest

from are_core.scheduler import Condition, Scheduler, TaskSpec, WorkflowSpec, evaluate
from tests.unit.scheduler.test_engine import FakeWorker

_HANG_GUARD_S = 10.0
_OUTPUT = b'{"t": true, "one": 1, "arr": [1, "a", [true]], "o": {"a": 1, "b": [1, 2]}, "f": [false, 0.0]}'


@pytest.mark.parametrize(
    ("pointer", "operator", "value", "expected"),
    [
        ("/arr/2", "EQUAL", [1], False),  # [true] is not [1]
        ("/arr/2", "EQUAL", [True], True),
        ("/arr/2", "NOT_EQUAL", [1], True),
        ("/arr", "EQUAL", [1.0, "a", [True]], True),  # numbers by value at any depth
        ("/arr", "EQUAL", [1, "a"], False),
        ("/arr", "CONTAINS", [1], False),  # the element [true] is not [1]
        ("/arr", "CONTAINS", [True], True),
        ("/arr", "CONTAINS", True, False),  # no element is true itself
        ("/arr", "CONTAINS", 1.0, True),
        ("/o", "EQUAL", {"b": [1, 2], "a": 1.0}, True),
        ("/o", "EQUAL", {"b": [True, 2], "a": 1}, False),
        ("/o", "EQUAL", {"a": True, "b": [1, 2]}, False),
        ("/o", "EQUAL", {"a": 1}, False),  # the same keys, not a subset
        ("/o", "EQUAL", {"a": 1, "b": [1, 2], "c": None}, False),
        ("/f", "EQUAL", [0, False], False),  # [false, 0.0] is not [0, false]
        ("/f", "EQUAL", [False, 0], True),
        ("/arr/2", "IN", [[1], [0]], False),
        ("/arr/2", "IN", [[1], [True]], True),
        ("/o", "IN", [{"a": True, "b": [True, 2]}], False),
        ("/t", "EQUAL", 1, False),  # the top level, as before
        ("/one", "EQUAL", 1.0, True),
    ],
)
def test_equality_is_json_equality_at_every_depth(
    pointer: str, operator: str, value: object, expected: bool
) -> None:
    condition = Condition(task_id="t", pointer=pointer, operator=operator, value=value)
    assert evaluate(condition, _OUTPUT) is expected


async def _outcomes(engine: Scheduler, content_type: str, *, blob: bool = False) -> dict[str, str]:
    """Completes ``src`` with the JSON bytes ``{"a": 42}`` under ``content_type``; its dependents' states."""
    conditions = {
        "exists": Condition(task_id="src", pointer="/a", operator="EXISTS"),
        "equal": Condition(task_id="src", pointer="/a", operator="EQUAL", value=42),
        "not_exists": Condition(task_id="src", pointer="/a", operator="NOT_EXISTS"),
        "not_equal": Condition(task_id="src", pointer="/a", operator="NOT_EQUAL", value=42),
    }
    tasks = [TaskSpec(task_id="src", capability="src")] + [
        TaskSpec(task_id=name, capability="sink", depends_on=("src",), conditions=(condition,))
        for name, condition in conditions.items()
    ]
    record, _ = await engine.submit(WorkflowSpec(tasks=tuple(tasks)))
    worker = FakeWorker()
    handle = engine.connect_worker("src-worker", ["src"], 1, worker.assign, worker.cancel)
    async with asyncio.timeout(_HANG_GUARD_S):
        while not worker.assignments:
            await asyncio.sleep(0.005)
    await engine.complete(
        record.workflow_id,
        "src",
        1,
        output=b"" if blob else b'{"a": 42}',
        content_type=content_type,
        usage=None,
        blob_sha256="ab" * 32 if blob else "",
        blob_size=9 if blob else 0,
    )
    engine.disconnect_worker(handle)
    states = {name: engine.get_task(record.workflow_id, name).record.state for name in conditions}
    await engine.cancel(record.workflow_id, "done", "test")
    return states


_PARSED = {"exists": "SCHEDULED", "equal": "SCHEDULED", "not_exists": "SKIPPED", "not_equal": "SKIPPED"}
_NOT_JSON = {"exists": "SKIPPED", "equal": "SKIPPED", "not_exists": "SCHEDULED", "not_equal": "SCHEDULED"}


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("", _PARSED),  # empty means application/json (common.proto)
        ("application/json", _PARSED),
        ("Application/JSON; charset=utf-8", _PARSED),
        ("application/ld+json", _PARSED),
        ("text/plain", _NOT_JSON),
        ("application/octet-stream", _NOT_JSON),
        ("text/json-ish", _NOT_JSON),
    ],
)
async def test_conditions_parse_an_output_only_when_its_content_type_is_json(
    engine: Scheduler, content_type: str, expected: dict[str, str]
) -> None:
    assert await _outcomes(engine, content_type) == expected


async def test_a_blob_output_is_not_parsed_whatever_its_content_type(engine: Scheduler) -> None:
    assert await _outcomes(engine, "application/json", blob=True) == _NOT_JSON
