"""WorkflowSpec's W3C ``tracestate``: sent beside the traceparent, checked like the W3C header."""

from __future__ import annotations

import pytest

from are_sdk import WorkflowSpec, WorkflowSpecError

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _spec(tracestate: str, traceparent: str = TRACEPARENT) -> WorkflowSpec:
    return WorkflowSpec("w", traceparent=traceparent, tracestate=tracestate).task("a", capability="c")


@pytest.mark.parametrize(
    "tracestate",
    [
        "congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        " rojo=00f067aa0ba902b7 ,\tcongo=t61rcWkgMzE ",  # optional whitespace around members
        "rojo=1,,congo=2",  # empty list-members are allowed
        "fw529a3039@dt=ZmY0Mw,123tenant@sys-1=x y",  # multi-tenant keys; a space inside a value
        ",".join(f"k{i}=v" for i in range(32)),
        "k=" + "v" * 256,
    ],
)
def test_a_well_formed_tracestate_reaches_the_message(tracestate: str) -> None:
    message = _spec(tracestate).to_proto()
    assert message.trace_context.traceparent == TRACEPARENT
    assert message.trace_context.tracestate == tracestate


def test_no_tracestate_leaves_the_field_empty() -> None:
    assert _spec("").to_proto().trace_context.tracestate == ""


@pytest.mark.parametrize(
    ("tracestate", "why"),
    [
        ("k=" + "v" * 511, "at most 512 characters"),
        (",".join(f"k{i}=v" for i in range(33)), "at most 32 members"),
        ("novalue", "member 0"),
        ("Upper=1", "member 0"),
        ("rojo=1,=2", "member 1"),
        ("rojo=a=b", "member 0"),
        ("rojo=tab\tinside", "member 0"),
        ("rojo=", "member 0"),
        ("rojo=caf\u00e9", "member 0"),
        ("rojo=1,rojo=2", "repeats the key 'rojo'"),
        ("k=" + "v" * 257, "member 0"),
    ],
)
def test_a_malformed_tracestate_is_refused_naming_the_field(tracestate: str, why: str) -> None:
    with pytest.raises(WorkflowSpecError) as caught:
        _spec(tracestate).to_proto()
    [violation] = caught.value.field_violations
    assert violation.field == "spec.trace_context.tracestate"
    assert why in violation.description


def test_a_tracestate_needs_a_traceparent() -> None:
    with pytest.raises(WorkflowSpecError) as caught:
        _spec("rojo=1", traceparent="").validate()
    [violation] = caught.value.field_violations
    assert violation.field == "spec.trace_context.tracestate"
    assert "needs a traceparent" in violation.description
