"""The DAG builder: what it sends, and the mistakes it catches before sending."""

from __future__ import annotations

from datetime import timedelta

import pytest

from are_sdk import (
    AreError,
    Budget,
    ComparisonOperator,
    Condition,
    FieldViolation,
    RetryPolicy,
    TaskSpec,
    TriggerRule,
    WorkflowSpec,
    WorkflowSpecError,
)
from are_sdk._proto.are.v1 import common_pb2, task_pb2, workflow_pb2


def pipeline() -> WorkflowSpec:
    return (
        WorkflowSpec("research-pipeline", labels={"team": "docs"})
        .task("research", capability="research", input={"topic": "tides"})
        .task("write", capability="write", depends_on=["research"])
        .task("design", capability="design", depends_on=["research"])
        .task("review", capability="review", depends_on=["write", "design"], requires_approval=True)
        .task("publish", capability="publish", depends_on=["review"])
    )


def test_builder_produces_the_proto_spec() -> None:
    message = pipeline().to_proto()
    assert isinstance(message, workflow_pb2.WorkflowSpec)
    assert message.name == "research-pipeline"
    assert dict(message.labels) == {"team": "docs"}
    assert [t.task_id for t in message.tasks] == ["research", "write", "design", "review", "publish"]
    research, _, _, review, _ = message.tasks
    assert research.capability == "research"
    assert research.input.data == b'{"topic":"tides"}'
    assert research.input.content_type == "application/json"
    assert list(review.depends_on) == ["write", "design"]
    assert review.requires_approval
    assert not message.tasks[1].HasField("input")


def test_every_task_option_reaches_the_message() -> None:
    spec = WorkflowSpec(
        "w",
        workflow_id="wf-1",
        budget=Budget(max_tasks=50, max_cost_micro_usd=1_000_000, max_duration=3600),
        default_retry_policy=RetryPolicy(maximum_attempts=2),
        default_pool="llm",
        result_task_id="b",
        initial_state={"k": 1},
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    spec.task("a", intent="summarise the findings", input=b"raw", content_type="text/plain")
    spec.task(
        "b",
        capability="check",
        depends_on=["a"],
        trigger_rule="one_failed",
        conditions=[Condition("a", "/score", ">=", 0.7), Condition("a", "", "truthy")],
        retry_policy=RetryPolicy(
            maximum_attempts=5,
            initial_interval=0.5,
            backoff_coefficient=3.0,
            maximum_interval=timedelta(seconds=30),
            non_retryable_failure_types=("ValueError",),
        ),
        schedule_to_start_timeout=5,
        start_to_close_timeout=timedelta(minutes=2),
        heartbeat_timeout=10,
        schedule_to_close_timeout=600,
        pool="gpu",
        priority=1,
        approval_timeout=60,
        labels={"stage": "check"},
        estimated_tokens=1200,
        output_state_pointer="/check",
        exclude_dependency_outputs=True,
        display_name="Check",
    )
    message = spec.to_proto()
    assert message.workflow_id == "wf-1"
    assert message.budget.max_tasks == 50
    assert message.budget.max_duration.seconds == 3600
    assert message.default_retry_policy.maximum_attempts == 2
    assert message.default_pool == "llm"
    assert message.initial_state.data == b'{"k":1}'
    assert message.trace_context.traceparent.startswith("00-4bf9")
    a, b = message.tasks
    assert a.WhichOneof("target") == "intent"
    assert (a.input.data, a.input.content_type) == (b"raw", "text/plain")
    assert b.trigger_rule == task_pb2.TRIGGER_RULE_ONE_FAILED
    first, second = b.conditions
    assert (first.task_id, first.pointer, first.value_json) == ("a", "/score", "0.7")
    assert first.operator == task_pb2.COMPARISON_OPERATOR_GREATER_THAN_OR_EQUAL
    assert second.operator == task_pb2.COMPARISON_OPERATOR_TRUTHY
    policy = b.retry_policy
    assert policy.maximum_attempts == 5
    assert policy.initial_interval.nanos == 500_000_000
    assert policy.backoff_coefficient == 3.0
    assert policy.maximum_interval.seconds == 30
    assert list(policy.non_retryable_failure_types) == ["ValueError"]
    assert b.start_to_close_timeout.seconds == 120
    assert b.heartbeat_timeout.seconds == 10
    assert (b.pool, b.priority, b.estimated_tokens) == ("gpu", 1, 1200)
    assert dict(b.labels) == {"stage": "check"}
    assert b.output_state_pointer == "/check"
    assert b.exclude_dependency_outputs
    assert b.display_name == "Check"


def test_enums_accept_names_and_symbols() -> None:
    for rule in ("all_success", "ALL_DONE", TriggerRule.NONE_FAILED):
        WorkflowSpec().task("a", capability="c", trigger_rule=rule).to_proto()
    for operator in ("==", "!=", "<", "<=", ">", ">=", "contains", "IN", ComparisonOperator.EXISTS):
        message = Condition("a", "/x", operator, 1).to_proto()
        assert message.operator != task_pb2.COMPARISON_OPERATOR_UNSPECIFIED


def test_add_takes_ready_made_tasks() -> None:
    spec = WorkflowSpec().add(TaskSpec("a", capability="c"), TaskSpec("b", capability="c", depends_on=("a",)))
    assert [t.task_id for t in spec.tasks] == ["a", "b"]


def violations(spec: WorkflowSpec) -> list[FieldViolation]:
    with pytest.raises(WorkflowSpecError) as caught:
        spec.to_proto()
    assert isinstance(caught.value, AreError)
    assert isinstance(caught.value, ValueError)
    return list(caught.value.field_violations)


def test_duplicate_ids_name_the_second_task() -> None:
    spec = WorkflowSpec().task("a", capability="c").task("a", capability="c")
    assert violations(spec) == [FieldViolation("spec.tasks[1].task_id", "duplicate task id 'a'")]


def test_unknown_dependency_names_the_edge() -> None:
    spec = WorkflowSpec().task("a", capability="c").task("b", capability="c", depends_on=["a", "zz"])
    assert violations(spec) == [FieldViolation("spec.tasks[1].depends_on[1]", "unknown dependency 'zz'")]


def test_cycles_are_named_in_the_message() -> None:
    spec = (
        WorkflowSpec()
        .task("a", capability="c", depends_on=["c"])
        .task("b", capability="c", depends_on=["a"])
        .task("c", capability="c", depends_on=["b"])
        .task("d", capability="c")
    )
    (violation,) = violations(spec)
    assert violation.field == "spec.tasks[0].depends_on"
    assert violation.description == "dependency cycle: a -> c -> b -> a"


def test_self_dependency() -> None:
    spec = WorkflowSpec().task("a", capability="c", depends_on=["a"])
    assert violations(spec) == [
        FieldViolation("spec.tasks[0].depends_on[0]", "a task cannot depend on itself")
    ]


def test_target_ids_priority_conditions_and_result_task() -> None:
    spec = (
        WorkflowSpec(workflow_id="bad id", result_task_id="nope")
        .task("ok", capability="c")
        .task("both", capability="c", intent="x")
        .task("neither")
        .task("bad id!", capability="c")
        .task("p", capability="c", priority=9)
        .task("cond", capability="c", depends_on=["ok"], conditions=[Condition("p", "/x", "==", 1)])
        .task("op", capability="c", depends_on=["ok"], conditions=[Condition("ok", "/x", "~", 1)])
        .task("rule", capability="c", trigger_rule="sometimes")
    )
    fields = [v.field for v in violations(spec)]
    assert fields == [
        "spec.workflow_id",
        "spec.tasks[1].target",
        "spec.tasks[2].target",
        "spec.tasks[3].task_id",
        "spec.tasks[4].priority",
        "spec.tasks[7].trigger_rule",
        "spec.tasks[5].conditions[0].task_id",
        "spec.tasks[6].conditions[0].operator",
        "spec.result_task_id",
    ]


def test_an_empty_spec_is_refused() -> None:
    assert [v.field for v in violations(WorkflowSpec("empty"))] == ["spec.tasks"]


def test_validation_can_be_left_to_the_sidecar() -> None:
    message = WorkflowSpec().task("a", capability="c", depends_on=["zz"]).to_proto(validate=False)
    assert list(message.tasks[0].depends_on) == ["zz"]


def test_durations_are_seconds_or_timedeltas() -> None:
    message = RetryPolicy(initial_interval=timedelta(milliseconds=250), maximum_interval=2).to_proto()
    assert isinstance(message, common_pb2.RetryPolicy)
    assert message.initial_interval.ToTimedelta() == timedelta(milliseconds=250)
    assert message.maximum_interval.ToTimedelta() == timedelta(seconds=2)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_duration_no_protobuf_duration_holds_is_named_by_its_field(value: float) -> None:
    """It raised OverflowError or ValueError at submit ("cannot convert float infinity to integer")."""
    spec = WorkflowSpec().task(
        "a", capability="c", start_to_close_timeout=value, retry_policy=RetryPolicy(initial_interval=value)
    )
    assert [v.field for v in violations(spec)] == [
        "spec.tasks[0].start_to_close_timeout",
        "spec.tasks[0].retry_policy.initial_interval",
    ]
