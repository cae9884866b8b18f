import datetime

from are_sdk._proto.are.v1 import agent_pb2 as _agent_pb2
from are_sdk._proto.are.v1 import common_pb2 as _common_pb2
from are_sdk._proto.are.v1 import errors_pb2 as _errors_pb2
from are_sdk._proto.are.v1 import event_pb2 as _event_pb2
from are_sdk._proto.are.v1 import state_pb2 as _state_pb2
from are_sdk._proto.are.v1 import task_pb2 as _task_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AckSubject(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_SUBJECT_UNSPECIFIED: _ClassVar[AckSubject]
    ACK_SUBJECT_COMPLETION: _ClassVar[AckSubject]
    ACK_SUBJECT_FAILURE: _ClassVar[AckSubject]
    ACK_SUBJECT_HEARTBEAT: _ClassVar[AckSubject]
    ACK_SUBJECT_EVENT: _ClassVar[AckSubject]

class TaskCancelReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_CANCEL_REASON_UNSPECIFIED: _ClassVar[TaskCancelReason]
    TASK_CANCEL_REASON_WORKFLOW_CANCELLED: _ClassVar[TaskCancelReason]
    TASK_CANCEL_REASON_BUDGET_EXCEEDED: _ClassVar[TaskCancelReason]
    TASK_CANCEL_REASON_TIMED_OUT: _ClassVar[TaskCancelReason]
    TASK_CANCEL_REASON_WORKFLOW_CLOSED: _ClassVar[TaskCancelReason]
ACK_SUBJECT_UNSPECIFIED: AckSubject
ACK_SUBJECT_COMPLETION: AckSubject
ACK_SUBJECT_FAILURE: AckSubject
ACK_SUBJECT_HEARTBEAT: AckSubject
ACK_SUBJECT_EVENT: AckSubject
TASK_CANCEL_REASON_UNSPECIFIED: TaskCancelReason
TASK_CANCEL_REASON_WORKFLOW_CANCELLED: TaskCancelReason
TASK_CANCEL_REASON_BUDGET_EXCEEDED: TaskCancelReason
TASK_CANCEL_REASON_TIMED_OUT: TaskCancelReason
TASK_CANCEL_REASON_WORKFLOW_CLOSED: TaskCancelReason

class WorkerRegistration(_message.Message):
    __slots__ = ("worker_name", "capabilities", "max_concurrency", "identity", "sdk", "labels", "agent_card")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SDK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_CARD_FIELD_NUMBER: _ClassVar[int]
    worker_name: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    max_concurrency: int
    identity: str
    sdk: str
    labels: _containers.ScalarMap[str, str]
    agent_card: _agent_pb2.AgentCard
    def __init__(self, worker_name: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., max_concurrency: _Optional[int] = ..., identity: _Optional[str] = ..., sdk: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_card: _Optional[_Union[_agent_pb2.AgentCard, _Mapping]] = ...) -> None: ...

class WorkerRegistered(_message.Message):
    __slots__ = ("worker_id", "heartbeat_interval", "max_assignments_per_batch", "server_time")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_ASSIGNMENTS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    heartbeat_interval: _duration_pb2.Duration
    max_assignments_per_batch: int
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, worker_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_assignments_per_batch: _Optional[int] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TaskAssignment(_message.Message):
    __slots__ = ("workflow_id", "task_id", "attempt", "idempotency_key", "capability", "input", "dependencies", "deadline_time", "heartbeat_timeout", "trace_context", "last_failure", "last_heartbeat_details", "state_version", "labels", "maximum_attempts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_TIME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_DETAILS_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    attempt: int
    idempotency_key: str
    capability: str
    input: _common_pb2.Payload
    dependencies: _containers.RepeatedCompositeFieldContainer[_task_pb2.DependencyResult]
    deadline_time: _timestamp_pb2.Timestamp
    heartbeat_timeout: _duration_pb2.Duration
    trace_context: _common_pb2.TraceContext
    last_failure: _common_pb2.Failure
    last_heartbeat_details: _common_pb2.Payload
    state_version: int
    labels: _containers.ScalarMap[str, str]
    maximum_attempts: int
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., capability: _Optional[str] = ..., input: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., dependencies: _Optional[_Iterable[_Union[_task_pb2.DependencyResult, _Mapping]]] = ..., deadline_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trace_context: _Optional[_Union[_common_pb2.TraceContext, _Mapping]] = ..., last_failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., last_heartbeat_details: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., state_version: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., maximum_attempts: _Optional[int] = ...) -> None: ...

class TaskCompletion(_message.Message):
    __slots__ = ("workflow_id", "task_id", "attempt", "output", "usage", "state_patch")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_PATCH_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    attempt: int
    output: _common_pb2.Payload
    usage: _common_pb2.Usage
    state_patch: _state_pb2.StatePatch
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., output: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., state_patch: _Optional[_Union[_state_pb2.StatePatch, _Mapping]] = ...) -> None: ...

class TaskFailure(_message.Message):
    __slots__ = ("workflow_id", "task_id", "attempt", "failure", "usage", "retry_after")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    attempt: int
    failure: _common_pb2.Failure
    usage: _common_pb2.Usage
    retry_after: _duration_pb2.Duration
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TaskHeartbeat(_message.Message):
    __slots__ = ("workflow_id", "task_id", "attempt", "details")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    attempt: int
    details: _common_pb2.Payload
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., details: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ...) -> None: ...

class HeartbeatBatch(_message.Message):
    __slots__ = ("heartbeats",)
    HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    heartbeats: _containers.RepeatedCompositeFieldContainer[TaskHeartbeat]
    def __init__(self, heartbeats: _Optional[_Iterable[_Union[TaskHeartbeat, _Mapping]]] = ...) -> None: ...

class CompletionBatch(_message.Message):
    __slots__ = ("completions",)
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    completions: _containers.RepeatedCompositeFieldContainer[TaskCompletion]
    def __init__(self, completions: _Optional[_Iterable[_Union[TaskCompletion, _Mapping]]] = ...) -> None: ...

class FailureBatch(_message.Message):
    __slots__ = ("failures",)
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    failures: _containers.RepeatedCompositeFieldContainer[TaskFailure]
    def __init__(self, failures: _Optional[_Iterable[_Union[TaskFailure, _Mapping]]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.ReportedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.ReportedEvent, _Mapping]]] = ...) -> None: ...

class WorkerDrain(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("register", "heartbeat", "complete", "fail", "report_events", "drain")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIELD_NUMBER: _ClassVar[int]
    REPORT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    register: WorkerRegistration
    heartbeat: HeartbeatBatch
    complete: CompletionBatch
    fail: FailureBatch
    report_events: EventBatch
    drain: WorkerDrain
    def __init__(self, register: _Optional[_Union[WorkerRegistration, _Mapping]] = ..., heartbeat: _Optional[_Union[HeartbeatBatch, _Mapping]] = ..., complete: _Optional[_Union[CompletionBatch, _Mapping]] = ..., fail: _Optional[_Union[FailureBatch, _Mapping]] = ..., report_events: _Optional[_Union[EventBatch, _Mapping]] = ..., drain: _Optional[_Union[WorkerDrain, _Mapping]] = ...) -> None: ...

class AssignmentBatch(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[TaskAssignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[TaskAssignment, _Mapping]]] = ...) -> None: ...

class TaskAck(_message.Message):
    __slots__ = ("workflow_id", "task_id", "attempt", "subject", "accepted", "reason", "message", "will_retry")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WILL_RETRY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    attempt: int
    subject: AckSubject
    accepted: bool
    reason: _errors_pb2.ErrorReason
    message: str
    will_retry: bool
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., subject: _Optional[_Union[AckSubject, str]] = ..., accepted: _Optional[bool] = ..., reason: _Optional[_Union[_errors_pb2.ErrorReason, str]] = ..., message: _Optional[str] = ..., will_retry: _Optional[bool] = ...) -> None: ...

class TaskAckBatch(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[TaskAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[TaskAck, _Mapping]]] = ...) -> None: ...

class TaskCancellation(_message.Message):
    __slots__ = ("workflow_id", "task_id", "attempt", "reason", "message")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    attempt: int
    reason: TaskCancelReason
    message: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[_Union[TaskCancelReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class TaskCancellationBatch(_message.Message):
    __slots__ = ("cancellations",)
    CANCELLATIONS_FIELD_NUMBER: _ClassVar[int]
    cancellations: _containers.RepeatedCompositeFieldContainer[TaskCancellation]
    def __init__(self, cancellations: _Optional[_Iterable[_Union[TaskCancellation, _Mapping]]] = ...) -> None: ...

class DrainNotice(_message.Message):
    __slots__ = ("grace_period", "reason")
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    grace_period: _duration_pb2.Duration
    reason: str
    def __init__(self, grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("registered", "assignments", "acks", "cancellations", "drain")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    CANCELLATIONS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    registered: WorkerRegistered
    assignments: AssignmentBatch
    acks: TaskAckBatch
    cancellations: TaskCancellationBatch
    drain: DrainNotice
    def __init__(self, registered: _Optional[_Union[WorkerRegistered, _Mapping]] = ..., assignments: _Optional[_Union[AssignmentBatch, _Mapping]] = ..., acks: _Optional[_Union[TaskAckBatch, _Mapping]] = ..., cancellations: _Optional[_Union[TaskCancellationBatch, _Mapping]] = ..., drain: _Optional[_Union[DrainNotice, _Mapping]] = ...) -> None: ...

class PollTaskRequest(_message.Message):
    __slots__ = ("worker_name", "capabilities", "max_tasks", "identity")
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    worker_name: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    max_tasks: int
    identity: str
    def __init__(self, worker_name: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., max_tasks: _Optional[int] = ..., identity: _Optional[str] = ...) -> None: ...

class PollTaskResponse(_message.Message):
    __slots__ = ("assignments", "worker_id")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[TaskAssignment]
    worker_id: str
    def __init__(self, assignments: _Optional[_Iterable[_Union[TaskAssignment, _Mapping]]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class CompleteTaskRequest(_message.Message):
    __slots__ = ("completion",)
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    completion: TaskCompletion
    def __init__(self, completion: _Optional[_Union[TaskCompletion, _Mapping]] = ...) -> None: ...

class CompleteTaskResponse(_message.Message):
    __slots__ = ("state_version",)
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    state_version: int
    def __init__(self, state_version: _Optional[int] = ...) -> None: ...

class FailTaskRequest(_message.Message):
    __slots__ = ("failure",)
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    failure: TaskFailure
    def __init__(self, failure: _Optional[_Union[TaskFailure, _Mapping]] = ...) -> None: ...

class FailTaskResponse(_message.Message):
    __slots__ = ("will_retry", "next_attempt_time", "task_state")
    WILL_RETRY_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    will_retry: bool
    next_attempt_time: _timestamp_pb2.Timestamp
    task_state: _task_pb2.TaskState
    def __init__(self, will_retry: _Optional[bool] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., task_state: _Optional[_Union[_task_pb2.TaskState, str]] = ...) -> None: ...

class RecordHeartbeatRequest(_message.Message):
    __slots__ = ("heartbeat",)
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    heartbeat: TaskHeartbeat
    def __init__(self, heartbeat: _Optional[_Union[TaskHeartbeat, _Mapping]] = ...) -> None: ...

class RecordHeartbeatResponse(_message.Message):
    __slots__ = ("cancel_requested",)
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    cancel_requested: bool
    def __init__(self, cancel_requested: _Optional[bool] = ...) -> None: ...

class ReportEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.ReportedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.ReportedEvent, _Mapping]]] = ...) -> None: ...

class ReportEventsResponse(_message.Message):
    __slots__ = ("sequences",)
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sequences: _Optional[_Iterable[int]] = ...) -> None: ...
