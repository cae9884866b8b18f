"""Reading a worker's Usage: negative counters are refused naming the field, never clamped."""

from __future__ import annotations

import pytest

from are_core.scheduler import SpecError, Usage
from are_sdk._proto.are.v1 import common_pb2
from sidecar._conventions import INT64_MAX, USAGE_FIELDS, usage_problem
from sidecar._scheduler_convert import usage_from_proto


def test_the_usage_fields_are_the_messages_fields() -> None:
    assert tuple(f.name for f in common_pb2.Usage.DESCRIPTOR.fields) == USAGE_FIELDS


def test_nothing_reported_is_none_and_counters_are_taken_as_sent() -> None:
    assert usage_from_proto(common_pb2.Usage(), "completion.usage") is None
    most = common_pb2.Usage(**dict.fromkeys(USAGE_FIELDS, INT64_MAX))
    assert usage_from_proto(most, "completion.usage") == Usage(**dict.fromkeys(USAGE_FIELDS, INT64_MAX))
    one = common_pb2.Usage(tool_calls=1)
    assert usage_from_proto(one, "completion.usage") == Usage(tool_calls=1)


@pytest.mark.parametrize("name", USAGE_FIELDS)
@pytest.mark.parametrize("value", [-1, -(2**63)])
def test_a_negative_counter_is_refused_naming_its_path(name: str, value: int) -> None:
    usage = common_pb2.Usage(**dict.fromkeys(USAGE_FIELDS, INT64_MAX))
    setattr(usage, name, value)
    with pytest.raises(SpecError) as caught:
        usage_from_proto(usage, "fail.failures[3].usage")
    error = caught.value
    assert (error.reason, error.field) == ("INVALID_ARGUMENT", f"fail.failures[3].usage.{name}")
    assert error.message == f"must be at least 0, got {value}"
    assert usage_problem(usage) == (name, error.message)


def test_the_first_negative_counter_is_named() -> None:
    usage = common_pb2.Usage(input_tokens=5, output_tokens=-1, llm_calls=-2)
    assert usage_problem(usage) == ("output_tokens", "must be at least 0, got -1")
    assert usage_problem(common_pb2.Usage(input_tokens=5)) is None
