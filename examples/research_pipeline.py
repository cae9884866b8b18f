"""A research pipeline on ARE: research -> [write, design] -> review (approval) -> publish.

Five agents run as handlers of one worker in this script: ``research``
gathers notes, ``write`` (a plain function, run in a thread) and ``design``
(async) work in parallel on those notes, ``review`` waits at an approval
gate until someone approves it through the API, and ``publish`` puts the
pieces together. The script follows the workflow's changes in the order
they happened and approves the gate as soon as it opens, as a human reviewer
would from a dashboard.

The capabilities are named ``example.research-pipeline.<agent>`` so that no
other worker on the same sidecar (say one serving ``research`` for a DAG of
your own) gets these tasks, nor this worker yours.

Run it against a sidecar it starts for the occasion (a temporary data
folder, an ephemeral port)::

    python examples/research_pipeline.py

or against a sidecar you run yourself (``are serve``)::

    python examples/research_pipeline.py --target 127.0.0.1:50051
"""

# An example script prints its progress, and examples/ is a folder of scripts, not a package:
# ruff: noqa: T201, INP001

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from are_sdk import Client, RetryPolicy, TaskContext, Worker, WorkflowSpec

# The example's own capability names: plain ones ("research", "write") are likely served by other
# workers on a shared sidecar, which would take these tasks (and this worker theirs).
CAP = "example.research-pipeline."

# The task state each printed event leaves its task in. An update's `task` is the task as it was
# when the message was sent, possibly some changes later, so the story is told from the events,
# which arrive in the order they were recorded. TASK_SCHEDULED (a few milliseconds in a queue
# here) and the rest (LLM calls, TASK_APPROVED) are not printed.
STATE_AFTER = {
    "TASK_DISPATCHED": "RUNNING",
    "TASK_AWAITING_APPROVAL": "AWAITING_APPROVAL",
    "TASK_COMPLETED": "COMPLETED",
    "TASK_ATTEMPT_FAILED": "attempt failed",  # retried by the policy, up to 3 attempts
    "TASK_REJECTED": "REJECTED",
    "TASK_CANCELLED": "CANCELLED",
}


def build_spec(topic: str) -> WorkflowSpec:
    """The pipeline's DAG: one research task, two parallel drafts, a gated review, a publish."""
    return (
        WorkflowSpec(
            "research-pipeline",
            labels={"example": "research-pipeline"},
            default_retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.1),
        )
        .task("research", capability=CAP + "research", input={"topic": topic}, start_to_close_timeout=30)
        .task("write", capability=CAP + "write", depends_on=["research"])
        .task("design", capability=CAP + "design", depends_on=["research"])
        .task("review", capability=CAP + "review", depends_on=["write", "design"], requires_approval=True)
        .task("publish", capability=CAP + "publish", depends_on=["review"])
    )


def build_worker(client: Client) -> Worker:
    """One worker serving the five capabilities; real agents would call LLMs here."""
    worker = Worker(client, name="pipeline-agents", max_concurrency=8, shutdown_grace=5)

    @worker.handler(CAP + "research")
    async def research(ctx: TaskContext) -> dict[str, Any]:
        topic = ctx.input["topic"]
        await asyncio.sleep(0.05)  # an LLM call would go here
        ctx.report_llm_call("example-model", input_tokens=420, output_tokens=180, cost_micro_usd=900)
        return {"topic": topic, "facts": [f"{topic} follow the moon", f"{topic} repeat twice a day"]}

    @worker.handler(CAP + "write")
    def write(ctx: TaskContext) -> dict[str, Any]:
        # A plain function: the worker runs it in its thread pool.
        notes = ctx.dependency_outputs["research"]
        time.sleep(0.05)
        return {"text": f"{notes['topic'].title()}: " + "; ".join(notes["facts"]) + "."}

    @worker.handler(CAP + "design")
    async def design(ctx: TaskContext) -> dict[str, Any]:
        notes = ctx.dependency_outputs["research"]
        await asyncio.sleep(0.05)
        return {"cover": f"a blue wave over the word {notes['topic']!r}"}

    @worker.handler(CAP + "review")
    async def review(ctx: TaskContext) -> dict[str, Any]:
        outputs = ctx.dependency_outputs
        return {"approved_text": outputs["write"]["text"], "cover": outputs["design"]["cover"]}

    @worker.handler(CAP + "publish")
    async def publish(ctx: TaskContext) -> dict[str, Any]:
        reviewed = ctx.dependency_outputs["review"]
        return {"url": f"https://example.invalid/{ctx.workflow_id}", **reviewed}

    return worker


async def run(target: str, topic: str) -> dict[str, Any]:
    """Submits the pipeline, prints its tasks' changes, approves the gate as it opens; returns the result."""
    async with await Client.connect(target) as client:
        worker = build_worker(client)
        async with worker:  # serves tasks in the background until the block ends
            handle = await client.submit_workflow(build_spec(topic))
            print(f"submitted {handle.workflow_id}")
            # One update per recorded change, in sequence order, until the workflow closes;
            # after_sequence=0 replays them from the submission, so the changes made before the
            # watch opened (research starts at once) are told too.
            async for update in handle.watch(include_tasks=True, after_sequence=0):
                task = update.task
                if task is None or update.event_type not in STATE_AFTER:
                    continue
                print(f"  {task.task_id:<9} {STATE_AFTER[update.event_type]}")
                if update.event_type == "TASK_AWAITING_APPROVAL":
                    print(f"  waiting for approval: {task.task_id} (after {', '.join(task.depends_on)})")
                    await handle.approve(task.task_id, approver="example-script", comment="looks good")
                    print(f"  approved {task.task_id}")
            result: dict[str, Any] = await handle.result(timeout=30)
            described = await handle.describe()
            print(f"{described.state.name}: cost {described.usage.cost_micro_usd} micro-USD")
            print(f"published: {result['url']}")
            return result


def main() -> None:
    """Parses the command line and runs the pipeline, starting a sidecar unless --target is given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", help="a running sidecar (host:port or unix:PATH); default: start one")
    parser.add_argument("--topic", default="tides")
    args = parser.parse_args()
    if args.target:
        asyncio.run(run(args.target, args.topic))
        return
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - only when starting our own sidecar

    with SidecarProcess.start() as sidecar:
        asyncio.run(run(sidecar.target, args.topic))


if __name__ == "__main__":
    main()
