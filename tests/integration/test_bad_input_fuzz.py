"""Bad input never hurts: a seeded, bounded fuzz of every unary RPC against one real sidecar.

The rule (DESIGN.md, contract conventions): every bad input gets a clear gRPC
status naming the field, and changes nothing. For every unary RPC of every
``are.v1`` service (and ``grpc.health.v1.Health/Check``) this module builds a
small valid request, checks that it succeeds, then applies one or two random
mutations (empty, huge, NUL and odd-unicode strings; negative, huge, NaN and
infinite numbers; unknown enum values; wrong-dimension, zero and NaN vectors;
non-JSON bytes and invalid JSON Pointers; too many or duplicated repeated
items; unset messages and oneofs; ids that name nothing) and asserts:

* the status is OK or a client error (INVALID_ARGUMENT, OUT_OF_RANGE,
  NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ABORTED,
  PERMISSION_DENIED), never UNKNOWN, INTERNAL, UNAVAILABLE or a timeout;
* every error carries a ``google.rpc.ErrorInfo`` reason, and INVALID_ARGUMENT /
  OUT_OF_RANGE a ``BadRequest`` whose fields exist in the request message;
* a refused call changed nothing: what it could touch (the workflows it names
  with their tasks, state, checkpoints, memory and events; the workflow, pool,
  namespace, agent and catalog listings; the events it would have recorded) is
  the same before and after.

The run is deterministic for a seed; ``ARE_FUZZ_SEED``, ``ARE_FUZZ_COUNT`` and
``ARE_FUZZ_SECONDS`` override the seed, the number of mutated calls and the
time they may take (the loop stops at whichever bound comes first), and
``ARE_FUZZ_VERBOSE=1`` prints what the run covered. A problem report names the
seed and the call's index, so a finding replays exactly.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from are_sdk._errors import error_from_rpc
from are_sdk._proto.are.v1 import (
    agent_pb2,
    cache_service_pb2,
    cache_service_pb2_grpc,
    common_pb2,
    event_pb2,
    router_service_pb2,
    router_service_pb2_grpc,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
    state_pb2,
    state_service_pb2,
    state_service_pb2_grpc,
    task_pb2,
    trace_service_pb2,
    trace_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_pb2,
)
from are_sdk.testing import SidecarProcess

if TYPE_CHECKING:
    from google._upb import _message as _upb

# The protobuf stubs type a message's DESCRIPTOR (and what it leads to) as either the pure-Python
# class or the upb one; both have the attributes used here.
AnyDescriptor: TypeAlias = "Descriptor | _upb.Descriptor"
AnyFieldDescriptor: TypeAlias = "FieldDescriptor | _upb.FieldDescriptor"
AnyEnumDescriptor: TypeAlias = "EnumDescriptor | _upb.EnumDescriptor"

_Resource = TypeVar("_Resource")  # what a World resource's make() returns

SEED = int(os.environ.get("ARE_FUZZ_SEED", "20250611"))
COUNT = int(os.environ.get("ARE_FUZZ_COUNT", "1000"))
SECONDS = float(os.environ.get("ARE_FUZZ_SECONDS", "45"))
VERBOSE = os.environ.get("ARE_FUZZ_VERBOSE", "") not in ("", "0")

CALL_TIMEOUT_S = 5.0
# A long poll answers a quarter of its deadline early (at least 1 s): 2.5 s makes an empty poll 1.5 s.
POLL_TIMEOUT_S = 2.5
MAX_REQUEST_BYTES = 40 << 20  # below the sidecar's 64 MiB message bound
BULK_BYTES = 24 << 20  # the most bytes a "too many items" mutation adds
MiB = 1 << 20

CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
NAMED_FIELD = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})
# Events only a call records (never a timer or a background job): one of these
# appearing while a refused call ran means the call changed something.
CALL_EVENTS = frozenset(
    event_pb2.EventType.Value(f"EVENT_TYPE_{name}")
    for name in [
        "WORKFLOW_SUBMITTED",
        "WORKFLOW_CANCEL_REQUESTED",
        "WORKFLOW_FORKED",
        "WORKFLOW_DELETED",
        "TASKS_SPAWNED",
        "TASK_APPROVED",
        "STATE_PATCHED",
        "MEMORY_ADDED",
        "CACHE_STORED",
        "MODEL_ROUTED",
        "ROUTE_OUTCOME_REPORTED",
        "AGENT_REGISTERED",
        "AGENT_DEREGISTERED",
        "LLM_CALL",
        "TOOL_CALL",
        "WORKER_CUSTOM",
    ]
)
# Cache removals are recorded with their commit (CACHE_HIT and CACHE_MISS are flushed a second
# later, so they may come from an earlier lookup; the lookup counters cover those).
CACHE_NAMESPACE_EVENTS = frozenset({event_pb2.EVENT_TYPE_CACHE_INVALIDATED})

NOBODY = "fz-nobody"  # a capability no worker serves: its tasks wait, and nothing times out
POOL = "fz-pool"
NS_LOOKUP = "fz-look"  # LookupCache's namespace (one entry)
NS_TASKS = "fz-ns"  # the namespace of submitted tasks' cache keys
NS_STORE = "fz-store"  # StoreCache's namespace, emptied after each stored entry
NS_CALLER = "fz-caller"  # caller vectors of dimension 8
NS_INVALIDATE = "fz-inv"
ROUTER_DIMENSION = 256  # the sidecar's default --router-dimension
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# ---------------------------------------------------------------- helpers


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def _timestamp(offset_s: float = 0.0) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(int((time.time() + offset_s) * 1e9))
    return value


def _json(data: bytes) -> common_pb2.Payload:
    return common_pb2.Payload(data=data, content_type="application/json")


def _router_vector(seed: int = 1) -> common_pb2.Vector:
    return common_pb2.Vector(values=[float((i * seed) % 7 + 1) for i in range(ROUTER_DIMENSION)])


def _code(call: Callable[[], Any]) -> tuple[str, Any]:
    """(status code name, the value) of a read, so that a snapshot records refusals too."""
    try:
        return "OK", call()
    except grpc.RpcError as error:
        return error.code().name, None


# ---------------------------------------------------------------- the world


class World:
    """The sidecar's stubs and the entities the valid requests name.

    Entities that a successful call uses up (a held attempt completed, an
    approval resolved, a workflow cancelled) are made again on demand: a
    request is always valid before it is mutated.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        self.worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        self.state = state_service_pb2_grpc.StateServiceStub(channel)
        self.cache = cache_service_pb2_grpc.CacheServiceStub(channel)
        self.router = router_service_pb2_grpc.RouterServiceStub(channel)
        self.trace = trace_service_pb2_grpc.TraceServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self._ids = itertools.count()
        self._resources: dict[str, Any] = {}
        self.head = 0  # the trace cursor: every event up to it has been seen
        self.catalog = router_service_pb2.ModelCatalog(
            models=[
                router_service_pb2.ModelSpec(
                    model_id="fz-small",
                    tier=1,
                    input_cost_per_million_tokens_micro_usd=150_000,
                    output_cost_per_million_tokens_micro_usd=600_000,
                    prior_success_rate=0.6,
                    context_window_tokens=128_000,
                    labels={"family": "fz"},
                ),
                router_service_pb2.ModelSpec(
                    model_id="fz-large", tier=5, input_cost_per_million_tokens_micro_usd=5_000_000
                ),
            ]
        )
        self._setup()

    def uid(self, prefix: str) -> str:
        """A new id in the id alphabet."""
        return f"fz-{prefix}-{next(self._ids)}"

    # -- setup

    def _setup(self) -> None:
        t = CALL_TIMEOUT_S
        self.scheduler.PutPool(
            scheduler_service_pb2.PutPoolRequest(
                pool=scheduler_service_pb2.Pool(name=POOL, max_concurrency=10)
            ),
            timeout=t,
        )
        for name in (NS_LOOKUP, NS_TASKS, NS_STORE, NS_INVALIDATE):
            self.cache.PutNamespace(
                cache_service_pb2.PutNamespaceRequest(namespace=cache_service_pb2.CacheNamespace(name=name)),
                timeout=t,
            )
        self.cache.PutNamespace(
            cache_service_pb2.PutNamespaceRequest(
                namespace=cache_service_pb2.CacheNamespace(name=NS_CALLER, embedder="caller", dimension=8)
            ),
            timeout=t,
        )
        self.cache.StoreCache(
            cache_service_pb2.StoreCacheRequest(
                namespace=NS_LOOKUP, prompt="what is the capital of france", response=_json(b'"paris"')
            ),
            timeout=t,
        )
        self.router.RegisterAgent(
            router_service_pb2.RegisterAgentRequest(
                agent=agent_pb2.AgentCard(
                    agent_id="fz-agent",
                    description="translate documents between languages",
                    capabilities=["fz-translate"],
                    cost_per_call_micro_usd=100,
                    labels={"tier": "base"},
                )
            ),
            timeout=t,
        )
        self.router.PutModelCatalog(
            router_service_pb2.PutModelCatalogRequest(catalog=self.catalog), timeout=t
        )
        blob = b"fuzz blob bytes"
        header = state_service_pb2.BlobHeader(content_type="text/plain", size_bytes=len(blob))
        put = self.state.PutBlob(
            iter(
                [
                    state_service_pb2.PutBlobRequest(header=header),
                    state_service_pb2.PutBlobRequest(chunk=blob),
                ]
            ),
            timeout=t,
        )
        self.blob = put.blob
        # The main workflow: read by the read RPCs, heartbeated and reported on by the worker RPCs.
        self.main = "fz-main"
        self.submit(
            self.main,
            [
                task_pb2.TaskSpec(task_id="hold", capability="fz-main-hold", input=_json(b'{"q":1}')),
                task_pb2.TaskSpec(
                    task_id="gate", capability=NOBODY, requires_approval=True, labels={"gate": "yes"}
                ),
                task_pb2.TaskSpec(task_id="after", capability=NOBODY, depends_on=["hold"]),
            ],
            initial_state=b'{"k":1,"arr":[1,2],"o":{"x":"y"}}',
            labels={"fz": "main"},
        )
        self.main_attempt = self.poll_one("fz-main-hold")
        self.state.AddMemory(
            state_service_pb2.AddMemoryRequest(
                workflow_id=self.main,
                entries=[
                    state_service_pb2.MemoryEntry(
                        text="the plan is to book flights", metadata={"kind": "plan"}
                    ),
                    state_service_pb2.MemoryEntry(text="the budget is small", metadata={"kind": "fact"}),
                ],
            ),
            timeout=t,
        )
        self.state.PatchState(
            state_service_pb2.PatchStateRequest(
                workflow_id=self.main, patch=state_pb2.StatePatch(merge_patch_json=b'{"p":1}')
            ),
            timeout=t,
        )
        self.sync_head()

    def submit(
        self,
        workflow_id: str,
        tasks: list[task_pb2.TaskSpec],
        *,
        initial_state: bytes = b"",
        labels: dict[str, str] | None = None,
    ) -> None:
        """Submits a workflow of these tasks."""
        spec = workflow_pb2.WorkflowSpec(workflow_id=workflow_id, tasks=tasks, labels=labels or {})
        if initial_state:
            spec.initial_state.CopyFrom(_json(initial_state))
        self.scheduler.SubmitWorkflow(
            scheduler_service_pb2.SubmitWorkflowRequest(spec=spec), timeout=CALL_TIMEOUT_S
        )

    def poll_one(self, capability: str) -> int:
        """Takes the one ready task of a capability; returns its attempt."""
        request = worker_service_pb2.PollTaskRequest(worker_name="fz-setup", capabilities=[capability])
        for _ in range(10):
            response = self.worker.PollTask(request, timeout=POLL_TIMEOUT_S)
            if response.assignments:
                return int(response.assignments[0].attempt)
        raise AssertionError(f"no task of {capability} was assigned")

    # -- resources, made again after a call used them up

    def resource(self, name: str, make: Callable[[], _Resource]) -> _Resource:
        """The current resource ``name``, made by ``make`` when there is none."""
        if name not in self._resources:
            self._resources[name] = make()
        return self._resources[name]  # type: ignore[no-any-return]  # a name always comes from one make()

    def drop(self, name: str) -> None:
        """Forgets a resource that a successful call used up."""
        self._resources.pop(name, None)

    def held(self, name: str) -> tuple[str, str, int]:
        """A running workflow whose task ``hold`` this test holds: (workflow, task, attempt)."""

        def make() -> tuple[str, str, int]:
            workflow_id = self.uid(name)
            capability = f"{workflow_id}-cap"
            self.submit(
                workflow_id,
                [
                    task_pb2.TaskSpec(task_id="hold", capability=capability),
                    task_pb2.TaskSpec(task_id="after", capability=NOBODY, depends_on=["hold"]),
                ],
                initial_state=b'{"k":1,"arr":[1]}',
            )
            return workflow_id, "hold", self.poll_one(capability)

        return self.resource(name, make)

    def running(self, name: str) -> str:
        """A running workflow whose one task waits for nobody."""

        def make() -> str:
            workflow_id = self.uid(name)
            self.submit(workflow_id, [task_pb2.TaskSpec(task_id="wait", capability=NOBODY)])
            return workflow_id

        return self.resource(name, make)

    def approval(self) -> str:
        """A workflow whose task ``gate`` awaits approval."""

        def make() -> str:
            workflow_id = self.uid("gate")
            self.submit(
                workflow_id, [task_pb2.TaskSpec(task_id="gate", capability=NOBODY, requires_approval=True)]
            )
            request = scheduler_service_pb2.GetTaskRequest(workflow_id=workflow_id, task_id="gate")
            for _ in range(100):
                task = self.scheduler.GetTask(request, timeout=CALL_TIMEOUT_S).task
                if task.state == task_pb2.TASK_STATE_AWAITING_APPROVAL:
                    return workflow_id
                time.sleep(0.01)
            raise AssertionError("the gate never opened")

        return self.resource("approval", make)

    def closed(self) -> str:
        """A cancelled workflow."""

        def make() -> str:
            workflow_id = self.uid("closed")
            self.submit(workflow_id, [task_pb2.TaskSpec(task_id="wait", capability=NOBODY)])
            self.scheduler.CancelWorkflow(
                scheduler_service_pb2.CancelWorkflowRequest(workflow_id=workflow_id), timeout=CALL_TIMEOUT_S
            )
            return workflow_id

        return self.resource("closed", make)

    def poll_capability(self) -> str:
        """A capability with ready tasks for PollTask."""

        def make() -> list[Any]:
            workflow_id = self.uid("poll")
            capability = f"{workflow_id}-cap"
            self.submit(
                workflow_id, [task_pb2.TaskSpec(task_id=f"t{i}", capability=capability) for i in range(40)]
            )
            return [capability, 40]

        return str(self.resource("poll", make)[0])

    def polled(self, count: int) -> None:
        """Counts tasks a poll took from the stock."""
        stock = self._resources.get("poll")
        if stock is not None:
            stock[1] -= count
            if stock[1] <= 0:
                self.drop("poll")

    def route_id(self) -> str:
        """A model route not reported yet."""

        def make() -> str:
            request = router_service_pb2.RouteModelRequest(prompt="summarise this contract")
            return str(self.router.RouteModel(request, timeout=CALL_TIMEOUT_S).route_id)

        return self.resource("route", make)

    def cache_entry(self) -> str:
        """An entry of the namespace InvalidateCache removes from."""

        def make() -> str:
            request = cache_service_pb2.StoreCacheRequest(
                namespace=NS_INVALIDATE, prompt=self.uid("prompt"), response=_json(b"1"), metadata={"k": "v"}
            )
            return str(self.cache.StoreCache(request, timeout=CALL_TIMEOUT_S).entry_id)

        return self.resource("entry", make)

    def doomed_namespace(self) -> str:
        """A namespace of one entry for DeleteNamespace."""

        def make() -> str:
            name = self.uid("del-ns")
            namespace = cache_service_pb2.CacheNamespace(name=name, embedder="lexical")
            self.cache.PutNamespace(
                cache_service_pb2.PutNamespaceRequest(namespace=namespace), timeout=CALL_TIMEOUT_S
            )
            request = cache_service_pb2.StoreCacheRequest(
                namespace=name, prompt="doomed", response=_json(b"1")
            )
            self.cache.StoreCache(request, timeout=CALL_TIMEOUT_S)
            return name

        return self.resource("doomed", make)

    def agent(self) -> str:
        """A registered agent for DeregisterAgent."""

        def make() -> str:
            agent_id = self.uid("agent")
            card = agent_pb2.AgentCard(
                agent_id=agent_id, description="a spare agent", capabilities=["fz-spare"]
            )
            self.router.RegisterAgent(
                router_service_pb2.RegisterAgentRequest(agent=card), timeout=CALL_TIMEOUT_S
            )
            return agent_id

        return self.resource("agent", make)

    # -- observation

    def sync_head(self) -> list[event_pb2.Event]:
        """Reads the events recorded since the cursor and moves it to the end of the log."""
        events: list[event_pb2.Event] = []
        for _ in range(1000):
            page = self.trace.ListEvents(
                trace_service_pb2.ListEventsRequest(after_sequence=self.head, page_size=1000),
                timeout=CALL_TIMEOUT_S,
            )
            events.extend(page.events)
            self.head = max(self.head, page.last_sequence)
            if not page.next_page_token:
                break
        return events

    def probe_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Everything a call could change about one workflow, read without changing it."""
        s, t = self.scheduler, CALL_TIMEOUT_S

        def workflow() -> bytes:
            found = s.GetWorkflow(
                scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id), timeout=t
            )
            return bytes(found.workflow.SerializeToString(deterministic=True))

        def tasks() -> list[bytes]:
            request = scheduler_service_pb2.ListTasksRequest(
                workflow_id=workflow_id, include_payloads=True, page_size=100
            )
            return [
                task.SerializeToString(deterministic=True) for task in s.ListTasks(request, timeout=t).tasks
            ]

        def state() -> tuple[int, bytes]:
            found = self.state.GetState(state_service_pb2.GetStateRequest(workflow_id=workflow_id), timeout=t)
            return found.version, found.values[0].value_json if found.values else b""

        def checkpoints() -> tuple[int, int, int]:
            request = state_service_pb2.ListCheckpointsRequest(workflow_id=workflow_id, page_size=1000)
            page = self.state.ListCheckpoints(request, timeout=t)
            return page.oldest_version, page.latest_version, len(page.checkpoints)

        def memory() -> list[str]:
            request = state_service_pb2.HydrateMemoryRequest(
                workflow_id=workflow_id, text="probe", top_k=100, max_bytes=4 * MiB
            )
            return sorted(hit.entry.memory_id for hit in self.state.HydrateMemory(request, timeout=t).hits)

        return {
            "workflow": _code(workflow),
            "tasks": _code(tasks),
            "state": _code(state),
            "checkpoints": _code(checkpoints),
            "memory": _code(memory),
        }

    def listings(self, service: str) -> dict[str, Any]:
        """The listings a call of ``service`` could change."""
        t = CALL_TIMEOUT_S
        out: dict[str, Any] = {}
        workflows = self.scheduler.ListWorkflows(
            scheduler_service_pb2.ListWorkflowsRequest(page_size=1000), timeout=t
        ).workflows
        out["workflow_ids"] = sorted(w.workflow_id for w in workflows)
        if service in ("scheduler", "worker"):
            pools = self.scheduler.ListPools(
                scheduler_service_pb2.ListPoolsRequest(page_size=1000), timeout=t
            )
            out["pools"] = [p.pool.SerializeToString(deterministic=True) for p in pools.pools]
            approvals = self.scheduler.ListApprovals(
                scheduler_service_pb2.ListApprovalsRequest(page_size=100), timeout=t
            )
            out["approvals"] = sorted((a.workflow_id, a.task_id, a.state) for a in approvals.tasks)
        if service == "cache":
            namespaces = self.cache.ListNamespaces(
                cache_service_pb2.ListNamespacesRequest(page_size=1000), timeout=t
            )
            out["namespaces"] = [n.SerializeToString(deterministic=True) for n in namespaces.namespaces]
            stats = self.cache.GetCacheStats(cache_service_pb2.GetCacheStatsRequest(), timeout=t).stats
            out["cache"] = sorted(
                (
                    s.namespace,
                    s.lookups,
                    s.exact_hits,
                    s.semantic_hits,
                    s.misses,
                    s.entries,
                    s.size_bytes,
                    s.saved_tokens,
                )
                for s in stats
                if s.namespace.startswith("fz-")
            )
        if service == "router":
            agents = self.router.ListAgents(router_service_pb2.ListAgentsRequest(page_size=1000), timeout=t)
            out["agents"] = [_card_without_live_fields(a) for a in agents.agents]
            catalog = self.router.GetModelCatalog(
                router_service_pb2.GetModelCatalogRequest(), timeout=t
            ).catalog
            out["catalog"] = [m.SerializeToString(deterministic=True) for m in catalog.models]
        return out


def _card_without_live_fields(card: agent_pb2.AgentCard) -> bytes:
    copy = agent_pb2.AgentCard()
    copy.CopyFrom(card)
    for name in ("available", "running", "worker_ids"):
        copy.ClearField(name)
    return bytes(copy.SerializeToString(deterministic=True))


# ---------------------------------------------------------------- the RPCs


@dataclass(frozen=True)
class Rpc:
    """One unary RPC: how to call it, a valid request, and what a success uses up."""

    service: str
    method: str
    build: Callable[[World, random.Random], Message]
    consumes: tuple[str, ...] = ()  # resources a successful call uses up
    after_ok: Callable[[World, Message, Any], None] | None = None
    timeout: float = CALL_TIMEOUT_S

    @property
    def name(self) -> str:
        """``Service.Method``."""
        return f"{self.service}.{self.method}"

    def call(self, world: World, request: Message) -> Any:
        """Calls the RPC (a server stream is read to its end)."""
        stub = {
            "scheduler": world.scheduler,
            "worker": world.worker,
            "state": world.state,
            "cache": world.cache,
            "router": world.router,
            "trace": world.trace,
            "health": world.health,
        }[self.service]
        if self.method == "GetBlob":
            return list(stub.GetBlob(request, timeout=self.timeout))
        return getattr(stub, self.method)(request, timeout=self.timeout)


def _submit(world: World, _rng: random.Random) -> Message:
    blob = world.blob
    spec = workflow_pb2.WorkflowSpec(
        workflow_id=world.uid("sub"),
        name="fuzz submit",
        tasks=[
            task_pb2.TaskSpec(
                task_id="t1",
                capability=NOBODY,
                input=_json(b'{"q":1}'),
                retry_policy=common_pb2.RetryPolicy(
                    initial_interval=_duration(1),
                    backoff_coefficient=2.0,
                    maximum_interval=_duration(10),
                    maximum_attempts=3,
                    non_retryable_failure_types=["Fatal"],
                ),
                schedule_to_start_timeout=_duration(3600),
                start_to_close_timeout=_duration(60),
                heartbeat_timeout=_duration(30),
                schedule_to_close_timeout=_duration(7200),
                pool=POOL,
                priority=2,
                labels={"team": "fuzz"},
                estimated_tokens=100,
                output_state_pointer="/out/t1",
                display_name="first",
            ),
            task_pb2.TaskSpec(
                task_id="t2",
                capability=NOBODY,
                input=common_pb2.Payload(
                    blob=common_pb2.BlobRef(sha256=blob.sha256, size_bytes=blob.size_bytes),
                    content_type="text/plain",
                ),
                depends_on=["t1"],
                trigger_rule=task_pb2.TRIGGER_RULE_ALL_DONE,
                conditions=[
                    task_pb2.Condition(
                        task_id="t1",
                        pointer="/score",
                        operator=task_pb2.COMPARISON_OPERATOR_GREATER_THAN,
                        value_json="0.5",
                    )
                ],
                requires_approval=True,
                approval_timeout=_duration(3600),
                exclude_dependency_outputs=True,
            ),
            task_pb2.TaskSpec(
                task_id="t3",
                intent="translate the documents",
                depends_on=["t1", "t2"],
                trigger_rule=task_pb2.TRIGGER_RULE_ONE_SUCCESS,
                cache_key=task_pb2.TaskCacheKey(
                    namespace=NS_TASKS, prompt="translate the documents", ttl=_duration(3600)
                ),
            ),
        ],
        initial_state=_json(b'{"out":{}}'),
        budget=workflow_pb2.WorkflowBudget(
            max_tasks=100,
            max_cost_micro_usd=1_000_000,
            max_duration=_duration(86_400),
            max_tokens=1_000_000,
            max_attempts=500,
            max_spawn_depth=4,
        ),
        labels={"fz": "submit"},
        default_retry_policy=common_pb2.RetryPolicy(maximum_attempts=2),
        default_pool=POOL,
        result_task_id="t3",
        trace_context=common_pb2.TraceContext(traceparent=TRACEPARENT, tracestate="a=b"),
        state_retention=workflow_pb2.StateRetention(keep_versions=10, keep_duration=_duration(3600)),
    )
    return scheduler_service_pb2.SubmitWorkflowRequest(spec=spec, request_id=world.uid("rq"))


def _spawn(world: World, _rng: random.Random) -> Message:
    workflow_id, parent, attempt = world.held("spawn")
    first, second = world.uid("s"), world.uid("s")
    return scheduler_service_pb2.SpawnTasksRequest(
        workflow_id=workflow_id,
        parent_task_id=parent,
        parent_attempt=attempt,
        tasks=[
            task_pb2.TaskSpec(task_id=first, capability=NOBODY, input=_json(b"[1]"), labels={"k": "v"}),
            task_pb2.TaskSpec(task_id=second, capability=NOBODY, depends_on=[first, parent]),
        ],
        dependents_wait=True,
        request_id=world.uid("rq"),
    )


def _patch_state(world: World, rng: random.Random) -> Message:
    workflow_id, task_id, attempt = world.held("patch")
    if rng.random() < 0.5:
        return state_service_pb2.PatchStateRequest(
            workflow_id=workflow_id,
            patch=state_pb2.StatePatch(merge_patch_json=b'{"a":{"b":[1,2]},"k":null}'),
            expected_version=1,
            writer="fuzzer",
        )
    operations = state_pb2.PatchOperationList(
        operations=[
            state_pb2.PatchOperation(
                op=state_pb2.PATCH_OPERATION_TYPE_SET, path="/arr/-", value_json=b'{"x":1}'
            ),
            state_pb2.PatchOperation(op=state_pb2.PATCH_OPERATION_TYPE_SET, path="/new", value_json=b'"v"'),
            state_pb2.PatchOperation(op=state_pb2.PATCH_OPERATION_TYPE_REMOVE, path="/k"),
        ]
    )
    return state_service_pb2.PatchStateRequest(
        workflow_id=workflow_id,
        patch=state_pb2.StatePatch(operations=operations),
        task_id=task_id,
        attempt=attempt,
    )


def _complete(world: World, _rng: random.Random) -> Message:
    workflow_id, task_id, attempt = world.held("complete")
    return worker_service_pb2.CompleteTaskRequest(
        completion=worker_service_pb2.TaskCompletion(
            workflow_id=workflow_id,
            task_id=task_id,
            attempt=attempt,
            output=_json(b'{"ok":true}'),
            usage=common_pb2.Usage(
                input_tokens=10, output_tokens=5, cost_micro_usd=7, llm_calls=1, tool_calls=2
            ),
            state_patch=state_pb2.StatePatch(merge_patch_json=b'{"done":true}'),
        )
    )


def _fail(world: World, _rng: random.Random) -> Message:
    workflow_id, task_id, attempt = world.held("fail")
    return worker_service_pb2.FailTaskRequest(
        failure=worker_service_pb2.TaskFailure(
            workflow_id=workflow_id,
            task_id=task_id,
            attempt=attempt,
            failure=common_pb2.Failure(
                message="the model refused",
                type="Transient",
                details=_json(b'{"why":1}'),
                cause=common_pb2.Failure(message="root cause"),
                kind=common_pb2.FAILURE_KIND_APPLICATION,
                stack_trace="line 1",
            ),
            usage=common_pb2.Usage(input_tokens=3),
            retry_after=_duration(1),
        )
    )


def _report_events(world: World, _rng: random.Random) -> Message:
    llm = event_pb2.ReportedEvent(
        workflow_id=world.main,
        task_id="hold",
        attempt=world.main_attempt,
        event_type=event_pb2.EVENT_TYPE_LLM_CALL,
        event_time=_timestamp(),
        name="gpt-fuzz",
        duration=_duration(1.5),
        usage=common_pb2.Usage(input_tokens=10, output_tokens=3, cost_micro_usd=5, llm_calls=1),
        span_id="00f067aa0ba902b7",
    )
    llm.attributes["gen_ai.system"].string_value = "openai"
    llm.attributes["n"].int_value = 3
    llm.attributes["f"].double_value = 0.5
    llm.attributes["b"].bool_value = True
    tool = event_pb2.ReportedEvent(
        workflow_id=world.main,
        task_id="hold",
        attempt=world.main_attempt,
        event_type=event_pb2.EVENT_TYPE_TOOL_CALL,
        name="search",
        failure=common_pb2.Failure(message="boom"),
    )
    return worker_service_pb2.ReportEventsRequest(events=[llm, tool])


def _lookup(_world: World, rng: random.Random) -> Message:
    if rng.random() < 0.5:
        return cache_service_pb2.LookupCacheRequest(
            namespace=NS_CALLER, prompt="p", vector=common_pb2.Vector(values=[0.1 * i for i in range(1, 9)])
        )
    return cache_service_pb2.LookupCacheRequest(
        namespace=NS_LOOKUP, prompt="what is the capital of france", threshold=0.9, max_age=_duration(3600)
    )


def _store(world: World, rng: random.Random) -> Message:
    request = cache_service_pb2.StoreCacheRequest(
        namespace=NS_STORE,
        prompt=world.uid("prompt"),
        response=_json(b'"an answer"'),
        ttl=_duration(3600),
        metadata={"model": "m"},
        usage=common_pb2.Usage(input_tokens=10, output_tokens=2, cost_micro_usd=30),
    )
    if rng.random() < 0.3:
        request.namespace = NS_CALLER
        request.vector.values.extend([0.5] * 8)
    return request


def _emptied_store(world: World, request: Message, _response: Any) -> None:
    """An entry stored by the fuzz is removed at once: no TTL expires in a later call's window."""
    assert isinstance(request, cache_service_pb2.StoreCacheRequest)
    world.cache.InvalidateCache(
        cache_service_pb2.InvalidateCacheRequest(namespace=request.namespace, all=True),
        timeout=CALL_TIMEOUT_S,
    )


def _restore_catalog(world: World, _request: Message, _response: Any) -> None:
    world.router.PutModelCatalog(
        router_service_pb2.PutModelCatalogRequest(catalog=world.catalog), timeout=CALL_TIMEOUT_S
    )


def _counted_poll(world: World, _request: Message, response: Any) -> None:
    world.polled(len(response.assignments))


def _event_filter(world: World) -> event_pb2.EventFilter:
    return event_pb2.EventFilter(
        workflow_ids=[world.main],
        task_ids=["hold"],
        event_types=[event_pb2.EVENT_TYPE_TASK_DISPATCHED, event_pb2.EVENT_TYPE_LLM_CALL],
        start_time=_timestamp(-86_400),
        end_time=_timestamp(86_400),
    )


S, W, ST = scheduler_service_pb2, worker_service_pb2, state_service_pb2
C, R = cache_service_pb2, router_service_pb2

RPCS: tuple[Rpc, ...] = (
    Rpc("scheduler", "SubmitWorkflow", _submit),
    Rpc("scheduler", "GetWorkflow", lambda w, _r: S.GetWorkflowRequest(workflow_id=w.main)),
    Rpc(
        "scheduler",
        "ListWorkflows",
        lambda _w, _r: S.ListWorkflowsRequest(
            page_size=10,
            states=[workflow_pb2.WORKFLOW_STATE_RUNNING],
            labels={"fz": "main"},
            start_time=_timestamp(-86_400),
            end_time=_timestamp(86_400),
        ),
    ),
    Rpc(
        "scheduler",
        "CancelWorkflow",
        lambda w, _r: S.CancelWorkflowRequest(
            workflow_id=w.running("cancel"), reason="fuzz", requested_by="me"
        ),
        consumes=("cancel",),
    ),
    Rpc(
        "scheduler",
        "DeleteWorkflow",
        lambda w, _r: S.DeleteWorkflowRequest(workflow_id=w.closed()),
        consumes=("closed",),
    ),
    Rpc("scheduler", "GetTask", lambda w, _r: S.GetTaskRequest(workflow_id=w.main, task_id="hold")),
    Rpc(
        "scheduler",
        "ListTasks",
        lambda w, _r: S.ListTasksRequest(
            workflow_id=w.main,
            page_size=10,
            states=[task_pb2.TASK_STATE_RUNNING, task_pb2.TASK_STATE_PENDING],
            include_payloads=True,
        ),
    ),
    Rpc("scheduler", "SpawnTasks", _spawn, consumes=("spawn",)),
    Rpc(
        "scheduler",
        "ResolveApproval",
        lambda w, _r: S.ResolveApprovalRequest(
            workflow_id=w.approval(),
            task_id="gate",
            decision=task_pb2.APPROVAL_DECISION_APPROVE,
            approver="fuzzer",
            comment="fine",
        ),
        consumes=("approval",),
    ),
    Rpc(
        "scheduler",
        "ListApprovals",
        lambda w, _r: S.ListApprovalsRequest(page_size=10, workflow_id=w.main, labels={"gate": "yes"}),
    ),
    Rpc(
        "scheduler",
        "PutPool",
        lambda _w, _r: S.PutPoolRequest(
            pool=S.Pool(
                name="fz-put-pool",
                max_concurrency=4,
                requests_per_second=10.0,
                burst=5,
                llm_tokens_per_minute=10_000,
                max_queue_length=1000,
                description="fuzz",
            )
        ),
    ),
    Rpc("scheduler", "GetPool", lambda _w, _r: S.GetPoolRequest(name=POOL)),
    Rpc("scheduler", "ListPools", lambda _w, _r: S.ListPoolsRequest(page_size=5)),
    Rpc(
        "scheduler",
        "GetUsage",
        lambda _w, _r: S.GetUsageRequest(
            start_time=_timestamp(-86_400),
            end_time=_timestamp(3600),
            labels={"fz": "main"},
            group_by_label="fz",
        ),
    ),
    Rpc(
        "worker",
        "PollTask",
        lambda w, _r: W.PollTaskRequest(
            worker_name="fz-poller", capabilities=[w.poll_capability()], max_tasks=1, identity="fuzz"
        ),
        after_ok=_counted_poll,
        timeout=POLL_TIMEOUT_S,
    ),
    Rpc("worker", "CompleteTask", _complete, consumes=("complete",)),
    Rpc("worker", "FailTask", _fail, consumes=("fail",)),
    Rpc(
        "worker",
        "RecordHeartbeat",
        lambda w, _r: W.RecordHeartbeatRequest(
            heartbeat=W.TaskHeartbeat(
                workflow_id=w.main, task_id="hold", attempt=w.main_attempt, details=_json(b'{"progress":0.5}')
            )
        ),
    ),
    Rpc("worker", "ReportEvents", _report_events),
    Rpc(
        "state",
        "GetState",
        lambda w, _r: ST.GetStateRequest(
            workflow_id=w.main, paths=["/k", "/arr/0", "/nope/deeper"], version=1
        ),
    ),
    Rpc("state", "PatchState", _patch_state, consumes=("patch",)),
    Rpc(
        "state", "ListCheckpoints", lambda w, _r: ST.ListCheckpointsRequest(workflow_id=w.main, page_size=10)
    ),
    Rpc(
        "state",
        "ForkWorkflow",
        lambda w, _r: ST.ForkWorkflowRequest(
            workflow_id=w.main,
            version=0,
            new_workflow_id=w.uid("fork"),
            rerun_task_ids=["hold"],
            labels={"fz": "fork"},
            request_id=w.uid("rq"),
        ),
    ),
    Rpc(
        "state",
        "AddMemory",
        lambda w, _r: ST.AddMemoryRequest(
            workflow_id=w.running("memory"),
            entries=[
                ST.MemoryEntry(
                    text="the plan is to book flights", metadata={"kind": "plan"}, content=_json(b"{}")
                ),
                ST.MemoryEntry(text="a second note"),
            ],
        ),
        consumes=("memory",),
    ),
    Rpc(
        "state",
        "HydrateMemory",
        lambda w, _r: ST.HydrateMemoryRequest(
            workflow_id=w.main,
            text="plan",
            top_k=5,
            metadata_match={"kind": "plan"},
            max_bytes=10_000,
            min_similarity=-1.0,
            include_vectors=True,
        ),
    ),
    Rpc("state", "CheckBlobs", lambda w, _r: ST.CheckBlobsRequest(sha256s=[w.blob.sha256, "0" * 64])),
    Rpc("state", "GetBlob", lambda w, _r: ST.GetBlobRequest(sha256=w.blob.sha256, offset=1, length=3)),
    Rpc("cache", "LookupCache", _lookup),
    Rpc("cache", "StoreCache", _store, after_ok=_emptied_store),
    Rpc(
        "cache",
        "InvalidateCache",
        lambda w, _r: C.InvalidateCacheRequest(namespace=NS_INVALIDATE, entry_ids=[w.cache_entry()]),
        consumes=("entry",),
    ),
    Rpc("cache", "GetCacheStats", lambda _w, _r: C.GetCacheStatsRequest(namespace=NS_LOOKUP)),
    Rpc(
        "cache",
        "PutNamespace",
        lambda _w, _r: C.PutNamespaceRequest(
            namespace=C.CacheNamespace(
                name="fz-put-ns",
                embedder="lexical",
                similarity_threshold=0.9,
                default_ttl=_duration(3600),
                max_entries=1000,
                max_bytes=10_000_000,
                vector_dtype=C.VECTOR_DTYPE_F32,
                description="fuzz",
                search_expansion=64,
                recall_target=0.99,
            )
        ),
    ),
    Rpc("cache", "ListNamespaces", lambda _w, _r: C.ListNamespacesRequest(page_size=5)),
    Rpc(
        "cache",
        "DeleteNamespace",
        lambda w, _r: C.DeleteNamespaceRequest(namespace=w.doomed_namespace()),
        consumes=("doomed",),
    ),
    Rpc(
        "router",
        "RegisterAgent",
        lambda _w, _r: R.RegisterAgentRequest(
            agent=agent_pb2.AgentCard(
                agent_id="fz-reg-agent",
                display_name="Summariser",
                description="summarise legal documents",
                capabilities=["fz-summarise", "fz-translate"],
                vector=_router_vector(3),
                cost_per_call_micro_usd=1000,
                typical_latency=_duration(2),
                capacity=4,
                labels={"tier": "gold"},
            )
        ),
    ),
    Rpc(
        "router",
        "DeregisterAgent",
        lambda w, _r: R.DeregisterAgentRequest(agent_id=w.agent()),
        consumes=("agent",),
    ),
    Rpc(
        "router",
        "ListAgents",
        lambda _w, _r: R.ListAgentsRequest(page_size=5, capability="fz-translate", labels={"tier": "base"}),
    ),
    Rpc(
        "router",
        "RouteTask",
        lambda _w, _r: R.RouteTaskRequest(
            text="translate documents",
            top_k=3,
            mode=R.ROUTE_MODE_COST_BIASED,
            threshold=0.1,
            cost_weight=0.5,
            exclude_agent_ids=["fz-other"],
            required_capabilities=["fz-translate"],
            labels={"tier": "base"},
            include_unavailable=True,
            include_below_threshold=True,
        ),
    ),
    Rpc(
        "router",
        "PutModelCatalog",
        lambda w, _r: R.PutModelCatalogRequest(catalog=w.catalog),
        after_ok=_restore_catalog,
    ),
    Rpc("router", "GetModelCatalog", lambda _w, _r: R.GetModelCatalogRequest()),
    Rpc(
        "router",
        "RouteModel",
        lambda _w, _r: R.RouteModelRequest(
            prompt="summarise this contract",
            quality_target=0.7,
            exclude_model_ids=["fz-none"],
            estimated_input_tokens=1000,
            estimated_output_tokens=200,
        ),
    ),
    Rpc(
        "router",
        "ReportOutcome",
        lambda w, _r: R.ReportOutcomeRequest(
            route_id=w.route_id(),
            success=True,
            usage=common_pb2.Usage(input_tokens=100, output_tokens=20, cost_micro_usd=50),
            latency=_duration(1.2),
        ),
        consumes=("route",),
    ),
    Rpc(
        "trace",
        "ListEvents",
        lambda w, _r: trace_service_pb2.ListEventsRequest(
            filter=_event_filter(w), after_sequence=0, page_size=10
        ),
    ),
    Rpc("health", "Check", lambda _w, _r: health_pb2.HealthCheckRequest(service="are.v1.SchedulerService")),
)


# ---------------------------------------------------------------- mutations

_BIG_STRING = "w" * (MiB + 1)
_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "x" * 129,
    "x" * 257,
    "x" * 1025,
    "y" * (8 * 1024 + 1),
    "z" * (64 * 1024 + 1),
    _BIG_STRING,
    "\u202e\u0301e\U0001f600",
    "名前",
    "a b",
    "a/b",
    "../..",
    "\ufeff",
    "\U0010ffff",
    "\t\n",
)
_POINTERS = ("a", "/~2", "~", "/a~", "#/a", "/" * 2000, "/a/" + "b" * 1100, "/\x00", "/-/-", "/0/01")
# JSON that json.loads takes but that a stored spec or a state document cannot keep (tests/
# integration/test_json_values.py): integers past 64 bits, NaN and Infinity, a number past a
# double, lone surrogate escapes, nesting past 512 levels (and 200, within it).
_UNKEEPABLE_JSON = (
    "123456789012345678901234567890",
    str(2**64),
    str(-(2**63) - 1),
    "[1, Infinity]",
    "-Infinity",
    "1e400",
    '"\\ud800"',
    '{"\\udc00": 1}',
    '["a\\udfffb"]',
    "[" * 200 + "]" * 200,
    "[" * 513 + "]" * 513,
    '{"a":' * 600 + "1" + "}" * 600,
)
_JSON_STRINGS = (
    "",
    "{",
    "nan",
    "NaN",
    "1e999",
    "[" * 10_000,
    "'single'",
    "\x00",
    '{"a":1}x',
    "[" * 200_000,
    *_UNKEEPABLE_JSON,
)
_JSON_BYTES = (
    b"",
    b"\xff\xfe\x00",
    b"{",
    b"not json",
    b"[1,2]",
    b"null",
    b"1e999",
    b"NaN",
    b'{"a":1,"a":2}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"\x00" * 16,
    b"x" * (4 * MiB + 1),
    b'"' + b"y" * MiB + b'"',
    *(b'{"k":' + value.encode() + b"}" for value in _UNKEEPABLE_JSON),
)
_ID_FIELDS = frozenset(
    [
        "workflow_id",
        "task_id",
        "new_workflow_id",
        "parent_task_id",
        "request_id",
        "result_task_id",
        "name",
        "worker_name",
        "namespace",
        "capability",
        "pool",
        "default_pool",
        "agent_id",
        "model_id",
        "route_id",
        "entry_ids",
        "rerun_task_ids",
        "depends_on",
        "capabilities",
        "exclude_agent_ids",
        "required_capabilities",
        "exclude_model_ids",
        "workflow_ids",
        "task_ids",
        "worker_id",
        "sha256",
        "sha256s",
        "embedder",
    ]
)
_POINTER_FIELDS = frozenset({"pointer", "path", "paths", "output_state_pointer"})
_INT32 = (-1, 0, 1, 2**31 - 1, -(2**31), 999, 101, 1001, 10_001)
_UINT32 = (0, 1, 2**32 - 1)
_INT64 = (-1, 0, 2**63 - 1, -(2**63), 10**12, 10**18, 1)
_UINT64 = (0, 1, 2**64 - 1, 2**63, 10**12)
_DOUBLES = (math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1e308, 5e-324, 1.5, 100.0, 1.0000001)
_FLOATS = (math.nan, math.inf, -math.inf, -1.0, 0.0, 3.4e38, 1e-45)
_COUNTS = (2, 17, 65, 101, 257, 1001, 10_001)
_INT_TYPES = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
_INT64_TYPES = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64)
_UINT32_TYPES = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
_UINT64_TYPES = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
_MAX_DEPTH = 5


@dataclass
class Site:
    """A place in a request that a mutation can change."""

    parent: Message
    fd: AnyFieldDescriptor
    index: int | None  # an element of a repeated field, or None for the field itself
    path: str


def _message_type(fd: AnyFieldDescriptor) -> AnyDescriptor:
    """The type of a message (or map) field; the stubs allow None, which only scalar fields have."""
    assert fd.message_type is not None, fd.full_name
    return fd.message_type


def _enum_type(fd: AnyFieldDescriptor) -> AnyEnumDescriptor:
    """The type of an enum field; the stubs allow None, which only non-enum fields have."""
    assert fd.enum_type is not None, fd.full_name
    return fd.enum_type


def _is_map(fd: AnyFieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and _message_type(fd).GetOptions().map_entry


def _sites(message: Message, prefix: str = "", depth: int = 0) -> Iterator[Site]:
    for fd in message.DESCRIPTOR.fields:
        path = f"{prefix}{fd.name}"
        if _is_map(fd):
            yield Site(message, fd, None, path)
        elif fd.is_repeated:
            yield Site(message, fd, None, path)
            values = getattr(message, fd.name)
            for i in range(min(len(values), 3)):
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    if depth < _MAX_DEPTH:
                        yield from _sites(values[i], f"{path}[{i}].", depth + 1)
                else:
                    yield Site(message, fd, i, f"{path}[{i}]")
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            yield Site(message, fd, None, path)
            if message.HasField(fd.name) and depth < _MAX_DEPTH:
                yield from _sites(getattr(message, fd.name), f"{path}.", depth + 1)
        else:
            yield Site(message, fd, None, path)


def _string_value(fd: AnyFieldDescriptor, rng: random.Random, world: World) -> str:
    roll = rng.random()
    if fd.name in _ID_FIELDS and roll < 0.4:
        # Well-formed ids are new ones: a success must not create one that a later refusal names.
        return rng.choice(
            (
                world.uid("nothing"),
                (world.uid("long") + "a" * 128)[:128],
                world.uid("odd") + ":.-_",
                "bad id!",
            )
        )
    if fd.name in _POINTER_FIELDS and roll < 0.5:
        return rng.choice(_POINTERS)
    if fd.name == "value_json" and roll < 0.5:
        return rng.choice(_JSON_STRINGS)
    return rng.choice(_STRINGS)


def _scalar_value(fd: AnyFieldDescriptor, rng: random.Random, world: World, current: Any) -> Any:  # noqa: PLR0911
    kind = fd.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string_value(fd, rng, world)
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.choice(_JSON_BYTES)
    if kind in _INT_TYPES:
        return rng.choice(_INT32)
    if kind in _INT64_TYPES:
        return rng.choice(_INT64)
    if kind in _UINT32_TYPES:
        return rng.choice(_UINT32)
    if kind in _UINT64_TYPES:
        return rng.choice(_UINT64)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return rng.choice(_DOUBLES)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return rng.choice(_FLOATS)
    if kind == FieldDescriptor.TYPE_ENUM:
        valid = [v.number for v in _enum_type(fd).values]
        return rng.choice((999, -1, 2**31 - 1, 0, rng.choice(valid)))
    if kind == FieldDescriptor.TYPE_BOOL:
        return not current
    raise AssertionError(f"unhandled field type {kind} of {fd.full_name}")


def _bounded_count(rng: random.Random, element_bytes: int) -> int:
    return max(2, min(rng.choice(_COUNTS), BULK_BYTES // max(1, element_bytes + 8)))


def _mutate_repeated(site: Site, rng: random.Random, world: World) -> str:
    values = getattr(site.parent, site.fd.name)
    is_message = site.fd.type == FieldDescriptor.TYPE_MESSAGE
    choice = rng.randrange(4)
    if choice == 0 or (not values and choice != 3):
        site.parent.ClearField(site.fd.name)
        return f"{site.path}: cleared"
    if choice == 1:  # a duplicate (duplicate ids)
        if is_message:
            values.add().CopyFrom(values[0])
        else:
            values.append(values[rng.randrange(len(values))])
        return f"{site.path}: first element duplicated"
    if choice == 2:  # too many
        if is_message:
            first = values[0]
            count = _bounded_count(rng, first.ByteSize())
            values.extend([first] * count)
        else:
            first = values[0]
            size = len(first) if isinstance(first, str | bytes) else 8
            count = _bounded_count(rng, size)
            values.extend([first] * count)
        return f"{site.path}: {count} more copies of the first element"
    if is_message:  # a new empty element
        values.add()
        return f"{site.path}: empty element appended"
    value = _scalar_value(site.fd, rng, world, None)
    values.append(value)
    return f"{site.path}: appended {_short(value)}"


def _mutate_map(site: Site, rng: random.Random) -> str:
    entries = getattr(site.parent, site.fd.name)
    value_fd = _message_type(site.fd).fields_by_name["value"]
    is_message = value_fd.type == FieldDescriptor.TYPE_MESSAGE

    def put(key: str, text: str) -> None:
        if is_message:
            entries[key].string_value = text
        else:
            entries[key] = text

    choice = rng.randrange(5)
    if choice == 0:
        site.parent.ClearField(site.fd.name)
        return f"{site.path}: cleared"
    if choice == 1:
        count = rng.choice((9, 33, 65, 1001))
        for i in range(count):
            put(f"k{i}", "v")
        return f"{site.path}: {count} entries"
    if choice == 2:
        key = rng.choice(("", " ", "ключ", "a" * 129, "a b", "\x00", "k=v"))
        put(key, "v")
        return f"{site.path}: key {_short(key)}"
    if choice == 3 and is_message:
        entries["nan"].double_value = math.nan
        return f"{site.path}: a NaN double value"
    value = rng.choice(("x" * 257, "x" * (16 * 1024 + 1), _BIG_STRING, ""))
    put("k", value)
    return f"{site.path}: value {_short(value)}"


def _mutate_vector(vector: common_pb2.Vector, rng: random.Random, path: str) -> str:
    choice = rng.randrange(6)
    dimension = len(vector.values) or 8
    vector.ClearField("values")
    if choice == 0:
        size = rng.choice((1, 3, dimension - 1, dimension + 1, 4097, 5000))
        vector.values.extend([0.5] * max(size, 1))
        return f"{path}: dimension {max(size, 1)}"
    if choice == 1:
        vector.values.extend([0.0] * dimension)
        return f"{path}: all zeros"
    if choice == 2:
        vector.values.extend([0.5] * (dimension - 1) + [math.nan])
        return f"{path}: a NaN component"
    if choice == 3:
        vector.values.extend([math.inf] + [0.5] * (dimension - 1))
        return f"{path}: an infinite component"
    if choice == 4:
        vector.values.extend([3.4e38] * dimension)
        return f"{path}: huge components"
    return f"{path}: empty"


def _mutate_message_field(site: Site, rng: random.Random) -> str:
    parent, fd = site.parent, site.fd
    child = getattr(parent, fd.name)
    full_name = _message_type(fd).full_name
    choice = rng.randrange(4)
    if full_name == "are.v1.Vector" and choice < 3:
        child.SetInParent()
        return _mutate_vector(child, rng, site.path)
    if full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp") and choice < 2:
        child.seconds = rng.choice((-1, -(10**12), 10**12, 2**63 - 1, 315_576_000_001, 0))
        child.nanos = rng.choice((0, -1, 999_999_999, 2**31 - 1, 1))
        return f"{site.path}: seconds={child.seconds} nanos={child.nanos}"
    if fd.containing_oneof is not None and choice == 2:
        parent.ClearField(fd.containing_oneof.name)
        return f"{site.path}: oneof {fd.containing_oneof.name} unset"
    if choice % 2 == 0:
        parent.ClearField(fd.name)
        return f"{site.path}: unset"
    child.Clear()
    child.SetInParent()
    return f"{site.path}: set empty"


def _mutate_site(site: Site, rng: random.Random, world: World) -> str:
    fd = site.fd
    if _is_map(fd):
        return _mutate_map(site, rng)
    if fd.is_repeated and site.index is None:
        return _mutate_repeated(site, rng, world)
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _mutate_message_field(site, rng)
    if fd.containing_oneof is not None and site.index is None and rng.random() < 0.15:
        site.parent.ClearField(fd.containing_oneof.name)
        return f"{site.path}: oneof {fd.containing_oneof.name} unset"
    current = getattr(site.parent, fd.name) if site.index is None else None
    value = _scalar_value(fd, rng, world, current)
    if site.index is None:
        setattr(site.parent, fd.name, value)
    else:
        getattr(site.parent, fd.name)[site.index] = value
    return f"{site.path} = {_short(value)}"


def mutate(request: Message, rng: random.Random, world: World) -> list[str]:
    """Applies one or two random mutations to ``request``; returns what they were."""
    done: list[str] = []
    for _ in range(rng.choice((1, 1, 2))):
        for _attempt in range(10):
            sites = list(_sites(request))
            if not sites:
                return done
            backup = request.SerializeToString()
            what = _mutate_site(rng.choice(sites), rng, world)
            if request.ByteSize() <= MAX_REQUEST_BYTES:
                done.append(what)
                break
            request.Clear()
            request.MergeFromString(backup)
    return done


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} chars)"


# ---------------------------------------------------------------- checks

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[(?:\d+|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\])*)")
_INDEX = re.compile(r"\[(?:\d+|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def field_exists(descriptor: AnyDescriptor, path: str) -> bool:  # noqa: PLR0911 - one answer per way to fail
    """Whether ``path`` (``tasks[2].retry_policy.maximum_attempts``, ``labels['k']``) names a field."""
    if not path:
        return False
    current: AnyDescriptor | None = descriptor
    position = 0
    while position < len(path):
        if current is None:
            return False  # a scalar has no fields
        match = _SEGMENT.match(path, position)
        if match is None:
            return False
        name, indexes = match.group(1), match.group(2)
        position = match.end()
        fd = current.fields_by_name.get(name)
        if fd is None:
            # a oneof's name (`query`, `tasks[0].target`) names the choice itself; nothing follows it
            return not indexes and position == len(path) and name in current.oneofs_by_name
        count = len(_INDEX.findall(indexes))
        if count > 1 or (count and not fd.is_repeated):
            return False
        if _is_map(fd):
            entry = _message_type(fd)
            current = entry.fields_by_name["value"].message_type if count else entry
        else:
            current = fd.message_type if fd.type == FieldDescriptor.TYPE_MESSAGE else None
            if fd.is_repeated and not count and position < len(path):
                return False
        if position < len(path):
            if path[position] != ".":
                return False
            position += 1
            if position == len(path):
                return False
    return True


def _ids_in(message: Message, names: frozenset[str], out: list[str], limit: int = 4) -> None:
    """Collects the workflow ids a request names (valid shapes only, at most ``limit``)."""
    for fd, value in message.ListFields():
        if len(out) >= limit:
            return
        if fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(fd):
            for child in value if fd.is_repeated else (value,):
                _ids_in(child, names, out, limit)
        elif fd.name in names:
            for text in value if fd.is_repeated else (value,):
                if re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", text) and text not in out and len(out) < limit:
                    out.append(text)


_WORKFLOW_FIELDS = frozenset({"workflow_id", "new_workflow_id", "workflow_ids"})
_NAMESPACE_FIELDS = frozenset({"namespace", "name"})


@dataclass
class Report:
    """What a run did and what it found."""

    problems: list[str] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    mutated: int = 0


def _snapshot(world: World, rpc: Rpc, workflow_ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = world.listings(rpc.service)
    for workflow_id in workflow_ids:
        out[f"workflow {workflow_id}"] = world.probe_workflow(workflow_id)
    return out


def _documented_change(rpc: Rpc, reason: str) -> bool:
    """Refusals that change something by design (scheduler_service.proto, pool queues)."""
    if reason == "POOL_QUEUE_FULL":  # a POOL_QUEUE_FULL event and the pool's rejected_total
        return True
    # SpawnTasks past max_tasks or max_spawn_depth fails the workflow (WorkflowBudget comments).
    return rpc.method == "SpawnTasks" and reason == "BUDGET_EXCEEDED"


def _check_error(rpc: Rpc, request: Message, error: grpc.RpcError) -> tuple[list[str], str]:
    """Problems with a refusal's status; and its reason."""
    problems: list[str] = []
    code = error.code()
    if code not in CLIENT_ERRORS:
        problems.append(f"status {code.name}: {error.details()}")
        return problems, ""
    if rpc.service == "health":  # the standard health service sends no rich status
        return problems, ""
    rich = error_from_rpc(error)
    if not rich.reason:
        problems.append(f"{code.name} without an ErrorInfo reason: {rich.message}")
    if code in NAMED_FIELD:
        if not rich.field_violations:
            problems.append(f"{code.name} ({rich.reason}) names no field: {rich.message}")
        problems.extend(
            f"{code.name} ({rich.reason}) names {violation.field!r}, not a field of "
            f"{request.DESCRIPTOR.name}: {rich.message}"
            for violation in rich.field_violations
            if not field_exists(request.DESCRIPTOR, violation.field)
        )
    return problems, rich.reason


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            if isinstance(before.get(key), dict) and isinstance(after.get(key), dict):
                inner = [k for k in before[key] if before[key].get(k) != after[key].get(k)]
                out.append(f"{key}: {', '.join(inner)}")
            else:
                out.append(key)
    return out


def _recorded(
    world: World, workflow_ids: list[str], namespaces: list[str], reason: str
) -> list[event_pb2.Event]:
    """Events recorded while a refused call ran that only a call (or this call's workflows) records."""
    out = []
    for event in world.sync_head():
        if event.event_type == event_pb2.EVENT_TYPE_POOL_QUEUE_FULL and reason == "POOL_QUEUE_FULL":
            continue
        if event.event_type in CALL_EVENTS or event.workflow_id in workflow_ids:
            out.append(event)
        elif event.event_type in CACHE_NAMESPACE_EVENTS:
            attributes = event.attributes
            namespace = (
                attributes["are.cache.namespace"].string_value if "are.cache.namespace" in attributes else ""
            )
            cause = attributes["are.cache.reason"].string_value if "are.cache.reason" in attributes else ""
            if namespace in namespaces and cause not in ("EXPIRED", "EVICTED"):
                out.append(event)
    return out


Mutation: TypeAlias = Callable[[Message], list[str]]


def _one_call(
    world: World,
    rpc: Rpc,
    rng: random.Random,
    report: Report,
    label: str,
    *,
    mutated: bool,
    mutation: Mutation | None = None,
) -> None:
    """Calls ``rpc`` with its valid request, mutated (by ``mutation``, else at random) when asked."""
    base = rpc.build(world, rng)
    request = type(base)()
    request.CopyFrom(base)
    if not mutated:
        what = ["(the valid request)"]
    else:
        what = mutation(request) if mutation is not None else mutate(request, rng, world)
    workflow_ids: list[str] = []
    _ids_in(base, _WORKFLOW_FIELDS, workflow_ids)
    _ids_in(request, _WORKFLOW_FIELDS, workflow_ids)
    namespaces: list[str] = []
    if rpc.service == "cache":
        _ids_in(base, _NAMESPACE_FIELDS, namespaces)
        _ids_in(request, _NAMESPACE_FIELDS, namespaces)
    world.sync_head()
    before = _snapshot(world, rpc, workflow_ids) if mutated else {}
    report.calls[rpc.name] += 1
    report.mutated += mutated
    where = f"{label} {rpc.name} [{'; '.join(what)}]"
    try:
        response = rpc.call(world, request)
    except grpc.RpcError as error:
        report.codes[error.code().name] += 1
        problems, reason = _check_error(rpc, request, error)
        report.problems.extend(f"{where}: {p}" for p in problems)
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return
        if not mutated:
            report.problems.append(
                f"{where}: the valid request failed: {error.code().name} {error.details()}"
            )
            return
        if _documented_change(rpc, reason):
            world.sync_head()
            return
        try:
            after = _snapshot(world, rpc, workflow_ids)
        except grpc.RpcError as failed:  # a read that fails after a refusal: the refusal broke something
            report.problems.append(
                f"{where}: the reads after it failed: {failed.code().name} {failed.details()}"
            )
            return
        changed = _changed(before, after)
        if changed:
            report.problems.append(f"{where}: refused ({error.code().name}, {reason}) but changed {changed}")
        events = _recorded(world, workflow_ids, namespaces, reason)
        if events:
            kinds = sorted({event_pb2.EventType.Name(e.event_type) for e in events})
            report.problems.append(f"{where}: refused ({error.code().name}, {reason}) but recorded {kinds}")
        return
    report.codes["OK"] += 1
    for name in rpc.consumes:
        world.drop(name)
    if rpc.after_ok is not None:
        rpc.after_ok(world, request, response)


def run_fuzz(world: World, seed: int, count: int, seconds: float) -> Report:
    """Calls each RPC with its valid request, then ``count`` mutated ones round-robin, in ``seconds``."""
    rng = random.Random(seed)
    report = Report()
    for rpc in RPCS:
        _one_call(world, rpc, rng, report, f"seed={seed} base", mutated=False)
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            break
        rpc = RPCS[i % len(RPCS)]
        _one_call(world, rpc, rng, report, f"seed={seed} call={i}", mutated=True)
    return report


def _json_sites(request: Message) -> list[Site]:
    """The fields of ``request`` holding JSON the sidecar parses and keeps.

    Every ``*_json`` field, and the inline payloads that become state: an
    initial state, an output written at ``output_state_pointer``.
    """
    return [
        site
        for site in _sites(request)
        if site.index is None
        and site.fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
        and (site.fd.name.endswith("_json") or site.path.endswith(("initial_state.data", "output.data")))
    ]


def _set_json(position: int, value: str) -> Mutation:
    """Sets the request's ``position``-th JSON field to ``value`` (in an object, for bytes fields)."""

    def apply(request: Message) -> list[str]:
        sites = _json_sites(request)
        if position >= len(sites):
            return []
        site = sites[position]
        data: str | bytes = value
        if site.fd.type == FieldDescriptor.TYPE_BYTES:  # a merge patch or an initial state is an object
            data = b'{"k":' + value.encode() + b"}"
        setattr(site.parent, site.fd.name, data)
        return [f"{site.path} = {_short(data)}"]

    return apply


def run_json_sweep(world: World, seed: int) -> Report:
    """Each JSON field of each RPC's valid request, set to each of :data:`_UNKEEPABLE_JSON` once."""
    rng = random.Random(seed)
    report = Report()
    for rpc in RPCS:
        for position in range(len(_json_sites(rpc.build(world, rng)))):
            for value in _UNKEEPABLE_JSON:
                mutation = _set_json(position, value)
                _one_call(world, rpc, rng, report, f"seed={seed} json", mutated=True, mutation=mutation)
    return report


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def fuzz_sidecar() -> Iterator[SidecarProcess]:
    """A sidecar of its own: the fuzz changes pools, namespaces, agents and the model catalog."""
    with SidecarProcess.start() as process:
        yield process


@pytest.fixture(scope="module")
def world(fuzz_sidecar: SidecarProcess) -> Iterator[World]:
    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]
    with grpc.insecure_channel(fuzz_sidecar.target, options=options) as channel:
        yield World(channel)


def test_every_unary_rpc_is_covered() -> None:
    """The fuzz table lists every unary RPC of every are.v1 service (streams have their own tests)."""
    from sidecar._server import service_descriptors

    unary = {
        f"{service.name}.{method.name}"
        for service in service_descriptors()
        for method in service.methods
        if not method.client_streaming and not method.server_streaming
    }
    stub_names = {
        "scheduler": "SchedulerService",
        "worker": "WorkerService",
        "state": "StateService",
        "cache": "CacheService",
        "router": "RouterService",
        "trace": "TraceService",
    }
    covered = {f"{stub_names[r.service]}.{r.method}" for r in RPCS if r.service in stub_names}
    assert unary - covered == set()


def test_field_paths_are_checked_against_the_request() -> None:
    request = scheduler_service_pb2.SubmitWorkflowRequest.DESCRIPTOR
    assert field_exists(request, "spec.tasks[2].retry_policy.maximum_attempts")
    assert field_exists(request, "spec.tasks[0].target")
    assert field_exists(request, "spec.labels['a.b]']")
    assert field_exists(request, "spec.tasks[0].input.blob.sha256")
    assert not field_exists(request, "spec.tasks[0].nope")
    assert not field_exists(request, "spec.name.more")
    assert not field_exists(request, "spec.tasks.task_id")
    assert not field_exists(request, "")
    assert field_exists(worker_service_pb2.ReportEventsRequest.DESCRIPTOR, "events[3].attributes['k']")


def test_bad_input_fuzz(world: World, fuzz_sidecar: SidecarProcess) -> None:
    report = run_fuzz(world, SEED, COUNT, SECONDS)
    if VERBOSE:
        print(f"\nseed {SEED}: {sum(report.calls.values())} calls, {report.mutated} mutated")
        print("codes:", dict(report.codes.most_common()))
        print("calls:", dict(sorted(report.calls.items())))
    assert fuzz_sidecar.returncode is None, "the sidecar exited"
    health = world.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert all(report.calls[rpc.name] >= 2 for rpc in RPCS), report.calls  # the base call and a mutation
    assert not report.problems, "\n".join(report.problems[:50])


def test_json_that_cannot_be_kept_is_refused_in_every_json_field(
    world: World, fuzz_sidecar: SidecarProcess
) -> None:
    """The random fuzz rarely reaches a condition's value_json; this sweep reaches every JSON field
    with every value of _UNKEEPABLE_JSON (a big int there was UNKNOWN and left rows behind)."""
    report = run_json_sweep(world, SEED)
    if VERBOSE:
        print(f"\njson sweep: {sum(report.calls.values())} calls", dict(sorted(report.calls.items())))
        print("codes:", dict(report.codes.most_common()))
    assert fuzz_sidecar.returncode is None, "the sidecar exited"
    assert report.calls["scheduler.SubmitWorkflow"] >= 2 * len(_UNKEEPABLE_JSON), report.calls
    assert not report.problems, "\n".join(report.problems[:50])
