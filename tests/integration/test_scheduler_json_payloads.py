"""Payloads the scheduler parses or keeps, over real gRPC: initial state, output pointer, heartbeats.

* workflow.proto: ``initial_state`` is a JSON object of at most 16 MiB, a
  Payload: inline, or by blob reference. Refusals name
  ``spec.initial_state.data`` (or ``.blob``, ``.content_type``) and speak of
  the initial state.
* task.proto ``output_state_pointer``: the output must then be JSON; common.proto
  Payload: the sidecar parses a payload only when its content type is JSON.
* worker_service.proto: heartbeat details are inline (at most 1 MiB); a blob
  reference is refused naming ``details.blob``, never dropped in silence.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from are_sdk import Client, InvalidArgumentError, NotFoundError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import errors_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_service_pb2 as st
from are_sdk._proto.are.v1 import worker_service_pb2 as w

from .test_scheduler import StreamWorker, expect_error, submit, task, unique_capability

_MiB = 1 << 20


def _big_state(size: int) -> bytes:
    """A JSON object of about ``size`` bytes."""
    return b'{"doc":{},"big":"' + b"y" * size + b'"}'


async def _state(client: Client, workflow_id: str) -> tuple[int, dict[str, object]]:
    got = await client.raw.state.GetState(st.GetStateRequest(workflow_id=workflow_id))
    return got.version, json.loads(got.values[0].value_json)


async def _gone(client: Client, workflow_id: str) -> None:
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )


# ------------------------------------------------------------- initial state


async def test_an_inline_initial_state_over_4_mib_and_within_16_is_stored(client: Client) -> None:
    document = _big_state(5 * _MiB)
    wf_id = await submit(
        client, task("a", unique_capability("never")), initial_state=c.Payload(data=document)
    )
    version, value = await _state(client, wf_id)
    assert version == 1
    assert value == json.loads(document)
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


async def test_an_initial_state_by_blob_reference_is_read_into_the_document(client: Client) -> None:
    document = _big_state(15 * _MiB)
    ref = await client.state.blobs.put(document, content_type="application/json")
    wf_id = await submit(
        client,
        task("a", unique_capability("never")),
        initial_state=c.Payload(blob=c.BlobRef(sha256=ref.sha256, size_bytes=len(document))),
    )
    version, value = await _state(client, wf_id)
    assert version == 1
    assert value == json.loads(document)
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


async def test_an_initial_state_over_16_mib_is_limit_exceeded_naming_its_field(client: Client) -> None:
    wf_id = f"init17-{unique_capability('x')}"
    document = _big_state(17 * _MiB)
    error = await expect_error(
        submit(client, task("a", "never"), workflow_id=wf_id, initial_state=c.Payload(data=document)),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "spec.initial_state.data",
    )
    assert "initial state" in error.message and "operations" not in error.message, error
    ref = await client.state.blobs.put(document, content_type="application/json")
    error = await expect_error(
        submit(
            client,
            task("a", "never"),
            workflow_id=wf_id,
            initial_state=c.Payload(blob=c.BlobRef(sha256=ref.sha256)),
        ),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "spec.initial_state.blob",
    )
    assert "initial state" in error.message, error
    await _gone(client, wf_id)


async def test_an_initial_state_of_a_missing_blob_is_blob_not_found(client: Client) -> None:
    wf_id = f"initmiss-{unique_capability('x')}"
    missing = hashlib.sha256(wf_id.encode()).hexdigest()
    await expect_error(
        submit(
            client,
            task("a", "never"),
            workflow_id=wf_id,
            initial_state=c.Payload(blob=c.BlobRef(sha256=missing)),
        ),
        NotFoundError,
        "BLOB_NOT_FOUND",
        "spec.initial_state.blob",
    )
    await _gone(client, wf_id)


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        pytest.param(
            c.Payload(data=b'{"a":1}', content_type="text/plain"),
            "spec.initial_state.content_type",
            "INVALID_ARGUMENT",
            id="inline-text",
        ),
        pytest.param(
            c.Payload(data=b"[1, 2]"), "spec.initial_state.data", "INVALID_JSON", id="not-an-object"
        ),
        pytest.param(c.Payload(data=b"{nope"), "spec.initial_state.data", "INVALID_JSON", id="not-json"),
    ],
)
async def test_an_initial_state_that_is_not_a_json_object_is_refused_naming_it(
    client: Client, payload: c.Payload, field: str, reason: str
) -> None:
    wf_id = f"initbad-{unique_capability('x')}"
    error = await expect_error(
        submit(client, task("a", "never"), workflow_id=wf_id, initial_state=payload),
        InvalidArgumentError,
        reason,
        field,
    )
    assert "operations" not in error.message, error
    await _gone(client, wf_id)


# ---------------------------------------------------- output_state_pointer


async def _held_with_pointer(client: Client) -> tuple[str, w.TaskAssignment]:
    cap = unique_capability("osp")
    wf_id = await submit(
        client,
        task("t", cap, output_state_pointer="/doc/out"),
        initial_state=c.Payload(data=b'{"doc":{}}'),
    )
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="osp", capabilities=[cap]), timeout=10
    )
    (a,) = polled.assignments
    return wf_id, a


def _complete(a: w.TaskAssignment, data: bytes, content_type: str = "") -> w.CompleteTaskRequest:
    return w.CompleteTaskRequest(
        completion=w.TaskCompletion(
            workflow_id=a.workflow_id,
            task_id=a.task_id,
            attempt=a.attempt,
            output=c.Payload(data=data, content_type=content_type),
        )
    )


async def test_an_output_for_the_state_document_must_have_a_json_content_type(client: Client) -> None:
    wf_id, a = await _held_with_pointer(client)
    error = await expect_error(
        client.raw.worker.CompleteTask(_complete(a, b'"hello"', "text/plain")),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "completion.output.content_type",
    )
    assert "text/plain" in error.message, error
    assert await _state(client, wf_id) == (1, {"doc": {}})  # nothing changed; the attempt is still held
    done = await client.raw.worker.CompleteTask(_complete(a, b'"hello"', "application/json; charset=utf-8"))
    assert done.state_version == 2
    assert await _state(client, wf_id) == (2, {"doc": {"out": "hello"}})


async def test_an_output_for_the_state_document_that_is_not_json_speaks_of_the_output(client: Client) -> None:
    wf_id, a = await _held_with_pointer(client)
    error = await expect_error(
        client.raw.worker.CompleteTask(_complete(a, b"not json")),
        InvalidArgumentError,
        "INVALID_JSON",
        "completion.output.data",
    )
    assert error.message.startswith("completion.output.data: the output is not valid JSON"), error
    assert "operations" not in error.message and "value_json" not in error.message, error
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


# --------------------------------------------------------------- heartbeats


async def test_heartbeat_details_by_blob_reference_are_refused_naming_details_blob(client: Client) -> None:
    cap = unique_capability("hb")
    wf_id = await submit(client, task("t", cap))
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="hb", capabilities=[cap]), timeout=10
    )
    (a,) = polled.assignments
    ref = await client.state.blobs.put(b"progress", content_type="text/plain")
    missing = hashlib.sha256(b"no such progress " + wf_id.encode()).hexdigest()
    for sha256 in (ref.sha256, missing):
        await expect_error(
            client.raw.worker.RecordHeartbeat(
                w.RecordHeartbeatRequest(
                    heartbeat=w.TaskHeartbeat(
                        workflow_id=wf_id,
                        task_id="t",
                        attempt=a.attempt,
                        details=c.Payload(blob=c.BlobRef(sha256=sha256)),
                    )
                )
            ),
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            "heartbeat.details.blob",
        )
    await client.raw.worker.RecordHeartbeat(
        w.RecordHeartbeatRequest(
            heartbeat=w.TaskHeartbeat(
                workflow_id=wf_id, task_id="t", attempt=a.attempt, details=c.Payload(data=b'{"step":3}')
            )
        )
    )
    await client.raw.worker.FailTask(
        w.FailTaskRequest(
            failure=w.TaskFailure(
                workflow_id=wf_id,
                task_id="t",
                attempt=a.attempt,
                failure=c.Failure(message="again"),
            )
        )
    )
    async with asyncio.timeout(20):  # the retry resumes from the last inline details accepted
        while True:
            polled = await client.raw.worker.PollTask(
                w.PollTaskRequest(worker_name="hb", capabilities=[cap]), timeout=10
            )
            if polled.assignments:
                break
    (retry,) = polled.assignments
    assert retry.attempt == a.attempt + 1
    assert retry.last_heartbeat_details.data == b'{"step":3}'
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


async def test_a_stream_heartbeat_with_blob_details_is_refused_in_its_ack(client: Client) -> None:
    cap = unique_capability("hbs")
    ref = await client.state.blobs.put(b"stream progress", content_type="text/plain")
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        wf_id = await submit(client, task("t", cap))
        async with asyncio.timeout(10):
            while not worker.held:
                await asyncio.sleep(0.01)
        a = worker.held[(wf_id, "t")]
        beat = w.TaskHeartbeat(
            workflow_id=wf_id,
            task_id="t",
            attempt=a.attempt,
            details=c.Payload(blob=c.BlobRef(sha256=ref.sha256)),
        )
        await worker.send(w.ConnectRequest(heartbeat=w.HeartbeatBatch(heartbeats=[beat])))
        (ack,) = await worker.wait_acks(1)
        assert not ack.accepted
        assert ack.subject == w.ACK_SUBJECT_HEARTBEAT
        assert ack.reason == errors_pb2.ERROR_REASON_INVALID_ARGUMENT
        assert ack.message.startswith("heartbeat.heartbeats[0].details.blob"), ack
        await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))
