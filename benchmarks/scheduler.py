"""Suite ``scheduler``: workflows end to end, against the echo floor and LangGraph.

Every ARE contender runs a real sidecar (sync durability: every acknowledged
transition is fsynced through group commit) and, in the client process, a
``Worker`` with a no-op async handler on the same event loop as the
submitting client. One operation submits a workflow and waits for the client
to learn that it closed (``WatchWorkflow``):

* ``are-noop``: one no-op task; submit -> dispatch -> worker -> completion ->
  result known to the client. Its latency is the scheduler's end-to-end cost.
* ``are-fanout-10k``: 10,000 independent tasks; figures are per task, so
  req/s is tasks/s.
* ``are-chain-1k``: 1,000 tasks each depending on the previous one; figures
  are per step, so the median is one chain step, to compare with one echo
  round trip.

The ``langgraph-*`` contenders run the same DAGs in LangGraph with its SQLite
checkpointer (``durability="sync"``: a checkpoint is written before each next
step), in-process, with no-op nodes; they need the optional ``bench`` extra
and are reported as skipped without it.

Ratios are against the bare grpc.aio echo (16 B) measured in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import sqlite3
import tempfile
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from benchmarks._echo import echo_contender
from benchmarks._harness import Contender, Operation, Suite
from benchmarks._process import sidecar_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = ["SUITE"]

SIDECAR_REQUIRES = ("are_sdk.testing", "sidecar")
LANGGRAPH_REQUIRES = ("langgraph", "langgraph.checkpoint.sqlite")
FANOUT = 10_000
CHAIN = 1_000


@contextlib.contextmanager
def sidecar_server() -> Iterator[str]:
    """Start a real sidecar (default config: sync durability) in a temporary folder."""
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - an optional dependency

    with SidecarProcess.start(env=sidecar_env()) as sidecar:
        yield sidecar.target


def _are_spec(shape: str, size: int) -> Any:
    from are_sdk import Budget, WorkflowSpec  # noqa: PLC0415 - an optional dependency

    spec = WorkflowSpec(f"bench-{shape}", budget=Budget(max_tasks=max(size, 1)))
    for i in range(size):
        depends = [f"t{i - 1}"] if shape == "chain" and i else []
        spec.task(f"t{i}", capability="noop", depends_on=depends)
    return spec.to_proto()


@contextlib.asynccontextmanager
async def are_client(target: str | None, *, shape: str, size: int) -> AsyncIterator[Operation]:
    """Connect, run a no-op worker on this loop, and yield "submit one workflow and await its close"."""
    if target is None:
        msg = "the ARE client needs a sidecar target"
        raise ValueError(msg)
    from are_sdk import Client, TaskContext, Worker, WorkflowState  # noqa: PLC0415 - optional

    spec = _are_spec(shape, size)  # built once, outside the timed loop
    async with await Client.connect(target) as client:
        worker = Worker(client, name="bench", max_concurrency=min(max(size, 1), 4096))

        @worker.handler("noop")
        async def noop(ctx: TaskContext) -> None:
            del ctx

        async with worker:

            async def operation() -> object:
                handle = await client.submit_workflow(spec)
                workflow = await handle.wait()
                if workflow.state is not WorkflowState.COMPLETED:
                    msg = f"workflow {handle.workflow_id} ended {workflow.state.name}: {workflow.failure}"
                    raise RuntimeError(msg)
                return workflow

            await operation()  # fail fast, before the warmup, if anything is wrong
            yield operation


class _ChainState(TypedDict):
    n: int


class _FanState(TypedDict):
    results: Annotated[list[int], operator.add]


def _langgraph_graph(shape: str, size: int) -> Any:
    from langgraph.graph import END, START, StateGraph  # noqa: PLC0415 - an optional peer
    from langgraph.types import Send  # noqa: PLC0415 - an optional peer

    if shape == "fanout":
        fan = StateGraph(_FanState)

        def work(state: dict[str, int]) -> dict[str, list[int]]:
            return {"results": [state["i"]]}

        def spread(state: _FanState) -> list[Any]:
            del state
            return [Send("work", {"i": i}) for i in range(size)]

        fan.add_node("work", work)
        fan.add_conditional_edges(START, spread, ["work"])
        fan.add_edge("work", END)
        return fan

    chain = StateGraph(_ChainState)

    def step(state: _ChainState) -> dict[str, int]:
        return {"n": state["n"] + 1}

    previous = START
    for i in range(size):
        chain.add_node(f"t{i}", step)
        chain.add_edge(previous, f"t{i}")
        previous = f"t{i}"
    chain.add_edge(previous, END)
    return chain


@contextlib.asynccontextmanager
async def langgraph_client(target: str | None, *, shape: str, size: int) -> AsyncIterator[Operation]:
    """Compile the DAG with a SQLite checkpointer in a temporary file; yield "run it once"."""
    del target
    from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: PLC0415 - an optional peer

    with tempfile.TemporaryDirectory(prefix="are-bench-langgraph-") as folder:
        connection = sqlite3.connect(f"{folder}/checkpoints.sqlite", check_same_thread=False)
        try:
            graph = _langgraph_graph(shape, size).compile(checkpointer=SqliteSaver(connection))
            threads = itertools.count()
            initial: dict[str, Any] = {"results": []} if shape == "fanout" else {"n": 0}

            async def operation() -> object:
                config = {
                    "configurable": {"thread_id": f"t{next(threads)}"},
                    "recursion_limit": 2 * size + 10,
                }
                result = graph.invoke(initial, config, durability="sync")
                if shape == "chain" and result["n"] != size:
                    msg = f"chain ended at {result['n']}"
                    raise RuntimeError(msg)
                return result

            await operation()
            yield operation
        finally:
            connection.close()


def _are(name: str, shape: str, size: int, description: str, **kwargs: Any) -> Contender:
    return Contender(
        name=name,
        client=functools.partial(are_client, shape=shape, size=size),
        server=sidecar_server,
        description=description,
        requires=SIDECAR_REQUIRES,
        **kwargs,
    )


def _langgraph(name: str, shape: str, size: int, description: str, **kwargs: Any) -> Contender:
    return Contender(
        name=name,
        client=functools.partial(langgraph_client, shape=shape, size=size),
        description=description,
        requires=LANGGRAPH_REQUIRES,
        **kwargs,
    )


SUITE = Suite(
    name="scheduler",
    description="workflows end to end (sync durability): one no-op task, a 10k fan-out, a 1k chain",
    baseline=echo_contender("echo", payload_bytes=16),
    contenders=(
        _are("are-noop", "single", 1, "submit a 1-task workflow, no-op worker, await its close"),
        _are(
            "are-fanout-10k",
            "fanout",
            FANOUT,
            "10,000 independent no-op tasks; per task",
            units=FANOUT,
            max_requests=3,
        ),
        _are(
            "are-chain-1k",
            "chain",
            CHAIN,
            "1,000 no-op tasks in a chain; per step",
            units=CHAIN,
            max_requests=5,
        ),
        _langgraph("langgraph-noop", "chain", 1, "LangGraph, 1 node, SQLite checkpointer (sync)"),
        _langgraph(
            "langgraph-fanout-10k",
            "fanout",
            FANOUT,
            "LangGraph, Send() to 10,000 no-op nodes, SQLite checkpointer (sync); per task",
            units=FANOUT,
            max_requests=2,
        ),
        _langgraph(
            "langgraph-chain-1k",
            "chain",
            CHAIN,
            "LangGraph, 1,000 no-op nodes in a chain, SQLite checkpointer (sync); per step",
            units=CHAIN,
            max_requests=5,
        ),
    ),
)
