"""How the OTLP endpoint is resolved: the option, then the OTEL_* variables; off wins; bad syntax fails."""

from __future__ import annotations

import pytest

from sidecar._config import ConfigError
from sidecar._trace import otlp_endpoint

_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}


@pytest.mark.parametrize("value", ["off", "OFF", "none", "None", " off "])
def test_off_or_none_turns_export_off_whatever_the_variables_say(value: str) -> None:
    environ = {**_ENV, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317"}
    assert otlp_endpoint(value, environ) is None


def test_off_in_a_variable_turns_export_off() -> None:
    assert otlp_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "none"}) is None


def test_the_option_then_the_traces_variable_then_the_general_one() -> None:
    environ = {**_ENV, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317"}
    assert otlp_endpoint("http://option:4317", environ) == "http://option:4317"
    assert otlp_endpoint(None, environ) == "http://traces:4317"
    assert otlp_endpoint(None, _ENV) == "http://collector:4317"
    assert otlp_endpoint("", {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None
    assert otlp_endpoint(None, {}) is None


@pytest.mark.parametrize(
    "value",
    [
        "http://collector:4317",
        "https://collector.example.com:4317",
        "http://collector",
        "HTTP://Collector:4317/",
        "http://10.0.0.1:4317",
        "http://[::1]:4317",
        "collector:4317",
        "otel-collector.observability.svc.cluster.local:4317",
        "127.0.0.1:4317",
        "[::1]:4317",
    ],
)
def test_urls_and_host_port_are_accepted(value: str) -> None:
    assert otlp_endpoint(value, {}) == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("collector", "no port"),
        ("grpc://collector:4317", "the scheme must be http or https"),
        ("unix:///run/otel.sock", "the scheme must be http or https"),
        ("http://collector:0", "the port must be"),
        ("http://collector:99999", "the port must be"),
        ("http://collector:43l7", "the port must be"),
        ("collector:99999", "the port must be"),
        ("collector:", "the port must be"),
        ("http://", "no valid host"),
        ("http://exa mple:4317", "no valid host"),
        (":4317", "no valid host"),
        ("::1:4317", "no valid host"),
        ("[collector]:4317", "no valid host"),
        ("http://[10.0.0.1]:4317", "not a URL"),
        ("http://[::1:4317", "not a URL"),
    ],
)
def test_anything_else_is_refused_naming_the_option(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        otlp_endpoint(value, _ENV)
    message = str(caught.value)
    assert message.startswith("invalid value for --otlp-endpoint: expected http://HOST[:PORT]")
    assert repr(value) in message
    assert problem in message


def test_a_bad_variable_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^invalid value for OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "):
        otlp_endpoint(None, {**_ENV, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "not a url"})
