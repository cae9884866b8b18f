"""Intent routing on ARE: tasks say what they need, the router picks the cheapest class of workers that fits.

Three classes of workers connect, each declaring its card (what it does, what
a call costs): a small summariser, a large summariser and a translator.
Tasks are submitted with an ``intent`` (free text) instead of a capability.
At dispatch the router ranks the cards against the intent, cost-biased: the
cheapest class whose card clears the similarity threshold gets the task, and
the decision is recorded in the trace (a TASK_ROUTED event naming the card).

The script prints, for each task, the class it went to and why, then the
router's view of the classes (``are agents`` shows the same).

The capabilities and cards are named ``example.worker-classes.<class>`` so
that no other worker on the same sidecar serving ``translate`` (or
registering a card ``class-translate``) takes these tasks or replaces these
cards. The router still weighs every card it holds: a cheaper card of yours
that fits an intent just as well would win it.

    python examples/worker_classes.py                            # starts and stops its own sidecar
    python examples/worker_classes.py --target 127.0.0.1:50051   # a sidecar you run
"""

# An example script prints its progress, and examples/ is a folder of scripts, not a package:
# ruff: noqa: T201, INP001

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack

from are_sdk import AgentCard, Client, TaskContext, Worker, WorkflowSpec

# The example's own names: plain ones ("translate") are likely served by other workers on a shared
# sidecar, which would take these tasks, and a card registered under an existing id replaces it.
PREFIX = "example.worker-classes."

# Each class: its name, its card's description and its cost per call (micro-USD).
CLASSES = {
    "summarize-small": ("summarise short notes and emails into a few lines", 200),
    "summarize-large": ("summarise short notes and emails into a few lines, and long reports too", 9_000),
    "translate": ("translate documents between languages", 1_500),
}
INTENTS = {
    "inbox": "summarise short emails into a few lines",
    "manual": "translate documents into french",
}


def build_workers(client: Client) -> Iterator[Worker]:
    """One worker per class; each answers with its class name (a real one would call its model)."""
    for name, (description, cost) in CLASSES.items():
        capability = PREFIX + name
        card = AgentCard(
            f"{PREFIX}class-{name}",
            description=description,
            capabilities=(capability,),
            cost_per_call_micro_usd=cost,
        )
        worker = Worker(client, name=f"{name}-worker", card=card, shutdown_grace=5)

        async def handle(ctx: TaskContext, served: str = capability) -> str:
            ctx.report_llm_call(f"{served}-model", input_tokens=100, output_tokens=20)
            return served

        worker.register(capability, handle)
        yield worker


async def run(target: str) -> dict[str, str]:
    """Connects the worker classes, submits the intent tasks and returns which class served each."""
    async with await Client.connect(target) as client, AsyncExitStack() as stack:
        for worker in build_workers(client):
            await stack.enter_async_context(worker)  # serves in the background until the block ends
        spec = WorkflowSpec("worker-classes")
        for task_id, intent in INTENTS.items():
            spec = spec.task(task_id, intent=intent)
        handle = await client.submit_workflow(spec)
        await handle.wait(timeout=30)
        served: dict[str, str] = {}
        for task_id, intent in INTENTS.items():
            task = await handle.task(task_id)
            served[task_id] = task.capability
            print(f"{task_id:<7} {intent!r} -> {task.capability}")
        wid = handle.workflow_id
        routed = await client.trace.list_events(workflow_ids=[wid], event_types=["TASK_ROUTED"])
        for event in routed.events:  # the trace records each decision
            attributes = {k: getattr(v, v.WhichOneof("value")) for k, v in event.attributes.items()}
            print(f"  {event.task_id}: {attributes['are.route.agent_id']} ({attributes['are.route.reason']})")
        print("classes:")
        async for card in client.router.iter_agents():
            if card.agent_id.startswith(PREFIX):
                price = card.cost_per_call_micro_usd / 1e6
                print(f"  {card.agent_id:<46} ${price:.4f}/call  load {card.running}/{card.capacity}")
        return served


def main() -> None:
    """Parses the command line and runs the example, starting a sidecar unless --target is given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", help="a running sidecar (host:port or unix:PATH); default: start one")
    args = parser.parse_args()
    if args.target:
        asyncio.run(run(args.target))
        return
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - only when starting our own sidecar

    with SidecarProcess.start() as sidecar:
        asyncio.run(run(sidecar.target))


if __name__ == "__main__":
    main()
