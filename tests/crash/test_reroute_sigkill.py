"""SIGKILL the sidecar after it re-routed a waiting intent task: the restart keeps it in its new queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

from are_sdk import Client
from are_sdk._proto.are.v1 import agent_pb2, event_pb2, router_service_pb2, trace_service_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from are_sdk.testing import SidecarProcess

WORDS = "appraise antique clocks from geneva workshops"


async def _submit(client: Client, spec: t.TaskSpec) -> str:
    response = await client.raw.scheduler.SubmitWorkflow(
        s.SubmitWorkflowRequest(spec=wf.WorkflowSpec(tasks=[spec]))
    )
    return str(response.workflow_id)


async def _routed(client: Client, workflow_id: str) -> list[event_pb2.Event]:
    response = await client.raw.trace.ListEvents(
        trace_service_pb2.ListEventsRequest(
            filter=event_pb2.EventFilter(
                workflow_ids=[workflow_id], event_types=[event_pb2.EVENT_TYPE_TASK_ROUTED]
            )
        )
    )
    return list(response.events)


async def _capability(client: Client, workflow_id: str) -> str:
    response = await client.raw.scheduler.GetTask(s.GetTaskRequest(workflow_id=workflow_id, task_id="a"))
    return str(response.task.capability)


async def test_a_rerouted_task_stays_in_its_new_queue_after_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = SidecarProcess.start(data_dir=data, args=["--router-reroute-grace-s", "0"])
    try:
        async with await Client.connect(process.target) as client:
            # The cheap class: a registered card nobody serves.
            await client.raw.router.RegisterAgent(
                router_service_pb2.RegisterAgentRequest(
                    agent=agent_pb2.AgentCard(
                        agent_id="clock-cheap",
                        description=WORDS,
                        capabilities=["cheap"],
                        cost_per_call_micro_usd=3,
                    )
                )
            )
            blocker = await _submit(client, t.TaskSpec(task_id="block", capability="dear"))
            wid = await _submit(client, t.TaskSpec(task_id="a", intent=WORDS))
            assert await _capability(client, wid) == "cheap"
            # The dear class connects with one slot, which the blocker takes: the task moves and waits.
            stream = client.raw.worker.Connect()
            card = agent_pb2.AgentCard(
                agent_id="clock-dear", description=WORDS, capabilities=["dear"], cost_per_call_micro_usd=900
            )
            await stream.write(
                w.ConnectRequest(
                    register=w.WorkerRegistration(
                        worker_name="dear", capabilities=["dear"], max_concurrency=1, agent_card=card
                    )
                )
            )
            assert (await stream.read()).WhichOneof("message") == "registered"
            async with asyncio.timeout(20):
                while (message := await stream.read()).WhichOneof("message") != "assignments":
                    pass
                assert [a.task_id for a in message.assignments.assignments] == ["block"]
                while len(await _routed(client, wid)) < 2:
                    await asyncio.sleep(0.02)
            assert await _capability(client, wid) == "dear"
    finally:
        process.kill()
        process.cleanup()

    process = SidecarProcess.start(data_dir=data, args=["--router-reroute-grace-s", "0"])
    try:
        async with await Client.connect(process.target) as client:
            assert await _capability(client, wid) == "dear"
            seen: dict[str, w.TaskAssignment] = {}
            async with asyncio.timeout(30):
                while "a" not in seen:
                    response = await client.raw.worker.PollTask(
                        w.PollTaskRequest(worker_name="dear", capabilities=["dear"], max_tasks=2), timeout=5
                    )
                    seen.update((a.task_id, a) for a in response.assignments)
            assert (seen["a"].workflow_id, seen["a"].capability, seen["a"].attempt) == (wid, "dear", 1)
            [first, again] = await _routed(client, wid)
            assert first.attributes["are.route.capability"].string_value == "cheap"
            assert again.attributes["are.route.rerouted"].bool_value is True
            assert again.attributes["are.route.previous_capability"].string_value == "cheap"
            await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=blocker))
    finally:
        process.kill()
        process.cleanup()
