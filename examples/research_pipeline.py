"""A research pipeline on ARE: research -> [write, design] -> review (approval) -> publish.

Five agents run as handlers of one worker in this script: ``research``
gathers notes, ``write`` (a plain function, run in a thread) and ``design``
(async) work in parallel on those notes, ``review`` waits at an approval
gate until someone approves it through the API, and ``publish`` puts the
pieces together. The script approves the gate itself after printing what
waits, as a human reviewer would from a dashboard.

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


def build_spec(topic: str) -> WorkflowSpec:
    """The pipeline's DAG: one research task, two parallel drafts, a gated review, a publish."""
    return (
        WorkflowSpec(
            "research-pipeline",
            labels={"example": "research-pipeline"},
            default_retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.1),
        )
        .task("research", capability="research", input={"topic": topic}, start_to_close_timeout=30)
        .task("write", capability="write", depends_on=["research"])
        .task("design", capability="design", depends_on=["research"])
        .task("review", capability="review", depends_on=["write", "design"], requires_approval=True)
        .task("publish", capability="publish", depends_on=["review"])
    )


def build_worker(client: Client) -> Worker:
    """One worker serving the five capabilities; real agents would call LLMs here."""
    worker = Worker(client, name="pipeline-agents", max_concurrency=8, shutdown_grace=5)

    @worker.handler("research")
    async def research(ctx: TaskContext) -> dict[str, Any]:
        topic = ctx.input["topic"]
        await asyncio.sleep(0.05)  # an LLM call would go here
        ctx.report_llm_call("example-model", input_tokens=420, output_tokens=180, cost_micro_usd=900)
        return {"topic": topic, "facts": [f"{topic} follow the moon", f"{topic} repeat twice a day"]}

    @worker.handler("write")
    def write(ctx: TaskContext) -> dict[str, Any]:
        # A plain function: the worker runs it in its thread pool.
        notes = ctx.dependency_outputs["research"]
        time.sleep(0.05)
        return {"text": f"{notes['topic'].title()}: " + "; ".join(notes["facts"]) + "."}

    @worker.handler("design")
    async def design(ctx: TaskContext) -> dict[str, Any]:
        notes = ctx.dependency_outputs["research"]
        await asyncio.sleep(0.05)
        return {"cover": f"a blue wave over the word {notes['topic']!r}"}

    @worker.handler("review")
    async def review(ctx: TaskContext) -> dict[str, Any]:
        outputs = ctx.dependency_outputs
        return {"approved_text": outputs["write"]["text"], "cover": outputs["design"]["cover"]}

    @worker.handler("publish")
    async def publish(ctx: TaskContext) -> dict[str, Any]:
        reviewed = ctx.dependency_outputs["review"]
        return {"url": f"https://example.invalid/{ctx.workflow_id}", **reviewed}

    return worker


async def run(target: str, topic: str) -> dict[str, Any]:
    """Submits the pipeline, approves its gate when it opens, and returns the published result."""
    async with await Client.connect(target) as client:
        worker = build_worker(client)
        async with worker:  # serves tasks in the background until the block ends
            handle = await client.submit_workflow(build_spec(topic))
            print(f"submitted {handle.workflow_id}")
            approved: set[str] = set()
            shown: dict[str, str] = {}  # the state last printed for each task
            async for update in handle.watch(include_tasks=True):
                # A task's change need not be one of state (its usage, a heartbeat): print transitions.
                if update.task is not None and shown.get(update.task.task_id) != update.task.state.name:
                    shown[update.task.task_id] = update.task.state.name
                    print(f"  {update.task.task_id:<9} {update.task.state.name}")
                if update.workflow.task_counts.awaiting_approval > len(approved):
                    for gate in await client.workflows.list_approvals(workflow_id=handle.workflow_id):
                        if gate.task_id in approved:
                            continue
                        after = ", ".join(gate.depends_on)
                        print(f"  waiting for approval: {gate.task_id} (after {after})")
                        await handle.approve(gate.task_id, approver="example-script", comment="looks good")
                        approved.add(gate.task_id)
                        print(f"  approved {gate.task_id}")
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
