"""A max_duration budget failure reports seconds to the millisecond (engine over real LMDB, no server).

The message truncated both sides to whole seconds: a 1.5 s budget read
"budget max_duration exceeded: 1 > 1", and the details' numbers said the
same. Both sides are now seconds with millisecond precision (the details
keep their keys and their unit, seconds).
"""

from __future__ import annotations

import asyncio
import json
import re

from are_core.scheduler import Budget, Scheduler, TaskSpec, WorkflowSpec

_HANG_GUARD_S = 10.0


async def test_the_max_duration_failure_names_both_sides_to_the_millisecond(engine: Scheduler) -> None:
    budget = Budget(max_duration_s=0.25)
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(TaskSpec(task_id="a", capability="nobody"),), budget=budget)
    )
    async with asyncio.timeout(_HANG_GUARD_S):
        while engine.get_workflow(record.workflow_id).record.state == "RUNNING":
            await asyncio.sleep(0.01)
    failure = engine.get_workflow(record.workflow_id).record.failure
    assert failure is not None
    assert failure.kind == "BUDGET_EXCEEDED"
    found = re.fullmatch(r"budget max_duration exceeded: (\d+(?:\.\d{1,3})?)s > 0\.25s", failure.message)
    assert found is not None, failure.message
    details = json.loads(failure.details or b"")
    assert details["budget"] == "max_duration"
    assert details["limit"] == 0.25
    assert details["value"] == float(found.group(1))
    assert details["value"] >= 0.25  # it ran at least its budget: the timer fires at the deadline
