"""The cache's events of a cache-keyed task belong to its workflow (real sidecar, real gRPC).

A task that declares a cache key is looked up when it is scheduled and, on
a miss, its output is stored after it completes. The cache records its own
CACHE_MISS, CACHE_HIT and CACHE_STORED for these; they named no workflow and
no task, so a reader of the workflow's events (ListEvents or StreamEvents
filtered by workflow, ``are trace``, the OpenTelemetry export) never saw
them, and an unfiltered reader could not tell whose they were. A lookup's
event (before any attempt) names the workflow and the task, and comes
before the TASK_CACHE_MISS or TASK_CACHE_HIT it leads to; the store's also
names the attempt that completed the task and that attempt's span.
LookupCache and StoreCache still name no workflow.
"""

from __future__ import annotations

import asyncio
import json
import os
from itertools import count
from typing import Any

from opentelemetry.proto.trace.v1 import trace_pb2

from are_sdk import Client
from are_sdk._proto.are.v1 import cache_service_pb2 as cs
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import event_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import trace_service_pb2 as ts
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from are_sdk.testing import SidecarProcess
from tests.integration._events import retained_events
from tests.integration.test_scheduler import completion, submit, task, unique_capability, wait_closed
from tests.integration.test_trace_otlp import Receiver, receiver

__all__ = ["receiver"]  # the fixture, used by name

_ids = count()
_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


def _name(kind: int) -> str:
    return event_pb2.EventType.Name(kind).removeprefix("EVENT_TYPE_")


def _attributes(event: event_pb2.Event) -> dict[str, Any]:
    return {k: getattr(v, v.WhichOneof("value")) for k, v in event.attributes.items()}


def _span_event_attributes(event: trace_pb2.Span.Event) -> dict[str, Any]:
    return {
        kv.key: getattr(kv.value, kv.value.WhichOneof("value") or "string_value") for kv in event.attributes
    }


async def _namespace(client: Client) -> str:
    name = f"taskev{next(_ids)}-{os.getpid()}"
    await client.raw.cache.PutNamespace(cs.PutNamespaceRequest(namespace=cs.CacheNamespace(name=name)))
    return name


async def _poll_one(client: Client, capability: str) -> w.TaskAssignment:
    async with asyncio.timeout(20):
        while True:
            response: w.PollTaskResponse = await client.raw.worker.PollTask(
                w.PollTaskRequest(worker_name="cache-events", capabilities=[capability], max_tasks=1),
                timeout=5,
            )
            if response.assignments:
                return response.assignments[0]


async def _workflow_events(client: Client, workflow_id: str, *until: str) -> list[event_pb2.Event]:
    """The workflow's events (ListEvents filtered by it), once those of the types ``until`` are there.

    Bounded: ListEvents shows an event once every one before it settled, and the
    store follows the durable completion.
    """
    request = ts.ListEventsRequest(filter=event_pb2.EventFilter(workflow_ids=[workflow_id]), page_size=1000)
    async with asyncio.timeout(20):
        while True:
            response: ts.ListEventsResponse = await client.raw.trace.ListEvents(
                request
            )  # one page holds them
            events = list(response.events)
            kinds = {_name(e.event_type) for e in events}
            if set(until) <= kinds:
                return events
            await asyncio.sleep(0.05)


def _one(events: list[event_pb2.Event], kind: str) -> event_pb2.Event:
    (found,) = [e for e in events if _name(e.event_type) == kind]
    return found


def _position(events: list[event_pb2.Event], kind: str) -> int:
    return [_name(e.event_type) for e in events].index(kind)


async def _miss_then_store(
    client: Client, namespace: str, prompt: str, cap: str
) -> tuple[str, w.TaskAssignment]:
    """A workflow whose cache-keyed task ``a`` misses, runs and completes (its output is then stored)."""
    key = t.TaskCacheKey(namespace=namespace, prompt=prompt)
    workflow_id = await submit(client, task("a", cap, cache_key=key))
    assignment = await _poll_one(client, cap)
    spent = c.Usage(input_tokens=120, output_tokens=30, cost_micro_usd=4_500, llm_calls=1)
    await client.raw.worker.CompleteTask(
        w.CompleteTaskRequest(completion=completion(assignment, "Paris", usage=spent))
    )
    return workflow_id, assignment


async def test_a_tasks_cache_miss_store_and_hit_are_events_of_its_workflow(client: Client) -> None:
    namespace = await _namespace(client)
    cap = unique_capability("cached")
    prompt = "what is the capital of france"
    first, assignment = await _miss_then_store(client, namespace, prompt, cap)
    await wait_closed(client, first)
    events = await _workflow_events(client, first, "CACHE_MISS", "CACHE_STORED", "WORKFLOW_COMPLETED")
    assert all(e.workflow_id == first for e in events)
    kinds = [_name(e.event_type) for e in events]
    assert "CACHE_HIT" not in kinds
    # The lookup came before any attempt (as TASK_CACHE_MISS): workflow and task, no attempt or span.
    miss = _one(events, "CACHE_MISS")
    assert (miss.task_id, miss.attempt, miss.span_id) == ("a", 0, "")
    assert _attributes(miss)["are.cache.namespace"] == namespace
    assert (
        _position(events, "CACHE_MISS")
        < _position(events, "TASK_CACHE_MISS")
        < _position(events, "TASK_DISPATCHED")
    )
    # The store follows the attempt that completed the task: it names that attempt and its span.
    dispatched = _one(events, "TASK_DISPATCHED")
    stored = _one(events, "CACHE_STORED")
    assert (stored.task_id, stored.attempt) == ("a", assignment.attempt)
    assert stored.span_id == dispatched.span_id == assignment.trace_context.traceparent.split("-")[2]
    assert _position(events, "TASK_COMPLETED") < _position(events, "CACHE_STORED")
    stored_attributes = _attributes(stored)
    assert stored_attributes["are.cache.namespace"] == namespace

    # A second workflow's task is answered from the cache: its CACHE_HIT is the second workflow's.
    second = await submit(
        client, task("a", cap, cache_key=t.TaskCacheKey(namespace=namespace, prompt=prompt))
    )
    closed = await wait_closed(client, second)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert json.loads(closed.result.data) == "Paris"
    events = await _workflow_events(client, second, "CACHE_HIT", "TASK_CACHE_HIT", "WORKFLOW_COMPLETED")
    kinds = [_name(e.event_type) for e in events]
    assert "CACHE_MISS" not in kinds
    assert "CACHE_STORED" not in kinds
    hit = _one(events, "CACHE_HIT")
    assert (hit.workflow_id, hit.task_id, hit.attempt, hit.span_id) == (second, "a", 0, "")
    hit_attributes = _attributes(hit)
    assert hit_attributes["are.cache.tier"] == "EXACT"
    assert hit_attributes["are.cache.entry_id"] == stored_attributes["are.cache.entry_id"]
    assert (
        _attributes(_one(events, "TASK_CACHE_HIT"))["are.cache.entry_id"]
        == hit_attributes["are.cache.entry_id"]
    )
    # The cache's decision first, then what it led to.
    assert (
        _position(events, "CACHE_HIT")
        < _position(events, "TASK_CACHE_HIT")
        < _position(events, "WORKFLOW_COMPLETED")
    )

    # Filtered by task and type, unfiltered by workflow: each names whose it was.
    ours = [
        e
        for e in await retained_events(client, event_types=["CACHE_MISS", "CACHE_HIT", "CACHE_STORED"])
        if _attributes(e).get("are.cache.namespace") == namespace
    ]
    assert sorted((_name(e.event_type), e.workflow_id, e.task_id) for e in ours) == sorted(
        [("CACHE_MISS", first, "a"), ("CACHE_STORED", first, "a"), ("CACHE_HIT", second, "a")]
    )


async def test_lookup_and_store_cache_calls_name_no_workflow(client: Client) -> None:
    namespace = await _namespace(client)
    await client.raw.cache.StoreCache(
        cs.StoreCacheRequest(
            namespace=namespace,
            prompt="plain prompt",
            response=c.Payload(data=b'"x"', content_type="application/json"),
        )
    )
    found = await client.raw.cache.LookupCache(
        cs.LookupCacheRequest(namespace=namespace, prompt="plain prompt")
    )
    assert found.hit
    missed = await client.raw.cache.LookupCache(cs.LookupCacheRequest(namespace=namespace, prompt="unknown"))
    assert not missed.hit
    wanted = {"CACHE_STORED", "CACHE_HIT", "CACHE_MISS"}
    async with asyncio.timeout(20):  # lookup events are committed with the counters, once a second
        while True:
            ours = [
                e
                for e in await retained_events(client, event_types=sorted(wanted))
                if _attributes(e).get("are.cache.namespace") == namespace
            ]
            if {_name(e.event_type) for e in ours} == wanted:
                break
            await asyncio.sleep(0.1)
    assert len(ours) == 3
    assert all((e.workflow_id, e.task_id, e.attempt, e.span_id) == ("", "", 0, "") for e in ours)


async def test_a_tasks_cache_events_are_span_events_of_its_workflows_trace(
    receiver: tuple[Receiver, int],
) -> None:
    collector, port = receiver
    with SidecarProcess.start(env=_ENV, args=["--otlp-endpoint", f"http://127.0.0.1:{port}"]) as process:
        async with await Client.connect(process.target) as client:
            namespace = await _namespace(client)
            cap, later = unique_capability("cached"), unique_capability("later")
            key = t.TaskCacheKey(namespace=namespace, prompt="a question")
            # The first workflow stays open (task b waits) until the store of a's output is recorded.
            first = await submit(client, task("a", cap, cache_key=key), task("b", later, "a"))
            assignment = await _poll_one(client, cap)
            await client.raw.worker.CompleteTask(
                w.CompleteTaskRequest(completion=completion(assignment, "answer"))
            )
            await _workflow_events(client, first, "CACHE_STORED")
            b = await _poll_one(client, later)
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(b, "done")))
            await wait_closed(client, first)
            second = await submit(client, task("a", cap, cache_key=key))
            await wait_closed(client, second)
            roots: dict[str, trace_pb2.Span] = {}
            async with asyncio.timeout(20):  # bounded wait for the batch processor
                while len(roots) < 2:
                    for workflow_id in (first, second):
                        described = await client.raw.scheduler.GetWorkflow(
                            s.GetWorkflowRequest(workflow_id=workflow_id)
                        )
                        for span in collector.of_trace(int(described.workflow.trace_id, 16)):
                            if span.name.startswith("workflow "):
                                roots[workflow_id] = span
                    await asyncio.sleep(0.05)
    # Before the attempt: the lookup's miss is an event of the workflow's span, before its outcome.
    names = [e.name for e in roots[first].events]
    assert names.index("are.cache_miss") < names.index("are.task_cache_miss")
    miss = next(e for e in roots[first].events if e.name == "are.cache_miss")
    assert _span_event_attributes(miss)["are.task.id"] == "a"
    # After the attempt (its span ended at the completion): the store, naming the task and the attempt.
    stored = next(e for e in roots[first].events if e.name == "are.cache_stored")
    stored_attributes = _span_event_attributes(stored)
    assert (stored_attributes["are.task.id"], stored_attributes["are.attempt"]) == ("a", 1)
    assert stored_attributes["are.cache.namespace"] == namespace
    # The hit, before the TASK_CACHE_HIT that completed the task (and the workflow, and its span).
    names = [e.name for e in roots[second].events]
    assert names.index("are.cache_hit") < names.index("are.task_cache_hit")
    hit = next(e for e in roots[second].events if e.name == "are.cache_hit")
    assert _span_event_attributes(hit)["are.task.id"] == "a"
    assert _span_event_attributes(hit)["are.cache.tier"] == "EXACT"
