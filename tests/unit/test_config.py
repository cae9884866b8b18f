"""Configuration precedence and validation, without starting a server."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from sidecar._config import (
    OPTIONS,
    ConfigError,
    LogFormat,
    load_config,
    options_table_markdown,
    parse_cache_models,
)


def test_defaults_are_the_embedded_ones() -> None:
    config = load_config({}, environ={})
    assert config.listen == "127.0.0.1:50051"
    assert config.data_dir == Path("./.are-data")
    assert config.durability == "sync"
    assert config.token is None
    assert config.log_format is LogFormat.TEXT


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    toml = tmp_path / "are.toml"
    toml.write_text('listen = "127.0.0.1:7001"\ndurability = "relaxed"\nlog_format = "json"\n')
    env = {"ARE_CONFIG": str(toml), "ARE_LISTEN": "127.0.0.1:7002", "ARE_LOG_FORMAT": "text"}
    config = load_config({"listen": "127.0.0.1:7003"}, environ=env)
    assert config.listen == "127.0.0.1:7003"  # flag
    assert config.log_format is LogFormat.TEXT  # environment over file
    assert config.durability == "relaxed"  # file over default
    assert config.config_file == toml
    assert load_config({}, environ=env).listen == "127.0.0.1:7002"


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        ({"listen": "localhost"}, {}, "--listen"),
        ({"durability": "maybe"}, {}, "--durability"),
        ({}, {"ARE_MAX_MESSAGE_BYTES": "12"}, "ARE_MAX_MESSAGE_BYTES"),
        ({}, {"ARE_SHUTDOWN_GRACE_S": "-1"}, "ARE_SHUTDOWN_GRACE_S"),
        ({"tls_cert": "cert.pem"}, {}, "--tls-key"),
        ({"listen": "off"}, {}, "--uds"),
        ({"cpu_affinity": "3-1"}, {}, "--cpu-affinity"),
        ({}, {"ARE_CPU_AFFINITY": "4096"}, "ARE_CPU_AFFINITY"),
        ({"cache_hot_bytes": "-1"}, {}, "--cache-hot-bytes"),
        ({"cache_index_at_start": "-5"}, {}, "--cache-index-at-start"),
        ({}, {"ARE_CACHE_CHECKPOINT_CHANGES": "many"}, "ARE_CACHE_CHECKPOINT_CHANGES"),
        ({"cache_huge_pages": "yes"}, {}, "--cache-huge-pages"),
        ({"cache_repair_changes": "-1"}, {}, "--cache-repair-changes"),
        ({}, {"ARE_CACHE_REPAIR_CHANGES": "often"}, "ARE_CACHE_REPAIR_CHANGES"),
        ({"router_model_exploration": "1.5"}, {}, "--router-model-exploration"),
        ({"router_reroute_grace_s": "-1"}, {}, "--router-reroute-grace-s"),
        ({}, {"ARE_ROUTER_REROUTE_GRACE_S": "3601"}, "ARE_ROUTER_REROUTE_GRACE_S"),
        ({"max_open_tasks": "0"}, {}, "--max-open-tasks"),
        ({"max_open_tasks": "1000000001"}, {}, "--max-open-tasks"),
        ({}, {"ARE_MAX_OPEN_TASKS": "lots"}, "ARE_MAX_OPEN_TASKS"),
        ({"max_open_bytes": "0"}, {}, "--max-open-bytes"),
        ({"max_open_bytes": str((1 << 40) + 1)}, {}, "--max-open-bytes"),
        ({}, {"ARE_MAX_OPEN_BYTES": "1GiB"}, "ARE_MAX_OPEN_BYTES"),
        ({"otlp_max_export_bytes": "65535"}, {}, "--otlp-max-export-bytes"),
        ({}, {"ARE_OTLP_MAX_EXPORT_BYTES": str((64 << 20) + 1)}, "ARE_OTLP_MAX_EXPORT_BYTES"),
        ({"otlp_max_queue_bytes": str((1 << 20) - 1)}, {}, "--otlp-max-queue-bytes"),
        ({}, {"ARE_OTLP_MAX_QUEUE_BYTES": str((16 << 30) + 1)}, "ARE_OTLP_MAX_QUEUE_BYTES"),
        ({}, {"ARE_OTLP_MAX_QUEUE_BYTES": "64MiB"}, "ARE_OTLP_MAX_QUEUE_BYTES"),
    ],
)
def test_invalid_settings_name_the_setting(flags: dict[str, str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(flags, environ=env)


def test_cpu_affinity_takes_lists_and_ranges_of_available_cpus() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert load_config({}, environ={}).cpu_affinity == ()
    assert load_config({"cpu_affinity": str(allowed[-1])}, environ={}).cpu_affinity == (allowed[-1],)
    spelled = f"{allowed[0]}-{allowed[-1]}" if len(allowed) > 1 else str(allowed[0])
    assert load_config({"cpu_affinity": spelled}, environ={}).cpu_affinity == tuple(
        range(allowed[0], allowed[-1] + 1)
    )


def test_max_open_bytes_defaults_to_a_gibibyte_and_is_read_from_flag_or_environment() -> None:
    assert load_config({}, environ={}).max_open_bytes == 1 << 30
    assert load_config({}, environ={"ARE_MAX_OPEN_BYTES": "4096"}).max_open_bytes == 4096
    config = load_config({"max_open_bytes": "1"}, environ={"ARE_MAX_OPEN_BYTES": "4096"})
    assert config.max_open_bytes == 1
    assert config.loggable()["max_open_bytes"] == 1


def test_max_open_tasks_bounds_the_scheduler_from_flag_environment_or_file(tmp_path: Path) -> None:
    assert load_config({}, environ={}).max_open_tasks == 1_000_000
    toml = tmp_path / "are.toml"
    toml.write_text("max_open_tasks = 5000\n")
    assert load_config({"config": str(toml)}, environ={}).max_open_tasks == 5000
    env = {"ARE_CONFIG": str(toml), "ARE_MAX_OPEN_TASKS": "2000"}
    assert load_config({}, environ=env).max_open_tasks == 2000
    config = load_config({"max_open_tasks": "1"}, environ=env)
    assert config.max_open_tasks == 1
    assert config.loggable()["max_open_tasks"] == 1
    assert "ARE_MAX_OPEN_TASKS" in options_table_markdown()


def test_toml_rejects_unknown_keys_and_bad_types(tmp_path: Path) -> None:
    toml = tmp_path / "are.toml"
    toml.write_text("listne = 1\n")
    with pytest.raises(ConfigError, match="listne"):
        load_config({"config": str(toml)}, environ={})
    toml.write_text("durability = true\n")
    with pytest.raises(ConfigError, match="durability"):
        load_config({"config": str(toml)}, environ={})


def test_token_comes_from_file_or_environment_and_is_never_in_repr(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    config = load_config({"token_file": str(token_file)}, environ={"ARE_TOKEN": "from-env"})
    assert config.token == "from-file"
    assert "from-file" not in repr(config)
    assert "from-file" not in str(config.loggable())
    assert load_config({}, environ={"ARE_TOKEN": "from-env"}).token == "from-env"
    token_file.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config({"token_file": str(token_file)}, environ={})


def test_token_sources_follow_the_documented_precedence(tmp_path: Path) -> None:
    # Highest first: --token-file, ARE_TOKEN_FILE, ARE_TOKEN, the TOML file's token_file.
    files = {}
    for name in ("flag", "env", "toml"):
        files[name] = tmp_path / f"{name}-token"
        files[name].write_text(f"from-{name}-file\n")
    toml = tmp_path / "are.toml"
    toml.write_text(f"token_file = {str(files['toml'])!r}\n")
    flag = {"config": str(toml), "token_file": str(files["flag"])}
    env = {"ARE_TOKEN_FILE": str(files["env"]), "ARE_TOKEN": "from-env"}
    assert load_config({"config": str(toml)}, environ={}).token == "from-toml-file"
    assert load_config({"config": str(toml)}, environ={"ARE_TOKEN": "from-env"}).token == "from-env"
    assert load_config({"config": str(toml)}, environ=env).token == "from-env-file"
    assert load_config(flag, environ=env).token == "from-flag-file"
    assert load_config({"config": str(toml), "token_file": ""}, environ={}).token == "from-toml-file"
    # An error names the source the token came from.
    files["toml"].unlink()
    for flags in ({"config": str(toml)}, {"config": str(toml), "token_file": ""}):
        with pytest.raises(ConfigError, match=f"'token_file' in {str(toml)!r}"):
            load_config(flags, environ={})
    assert load_config({"config": str(toml)}, environ={"ARE_TOKEN": "from-env"}).token == "from-env"
    with pytest.raises(ConfigError, match="ARE_TOKEN_FILE"):
        load_config({}, environ={"ARE_TOKEN_FILE": str(files["toml"]), "ARE_TOKEN": "from-env"})


@pytest.mark.parametrize(
    ("token", "line", "kind"),
    [  # ARE_TOKEN's value, a token file's first line (a newline would end it; a leading BOM is dropped)
        ("pässwörd", "pässwörd", "not ASCII"),
        ("a\nb", "a\x01b", "control character"),
        ("two words", "two words", "space"),
        ("tab\there", "tab\there", "control character"),
        ("\ufefftoken", "to\ufeffken", "not ASCII"),
        ("del\x7f", "del\x7f", "control character"),
    ],
)
def test_a_token_no_grpc_client_can_send_is_refused_naming_its_source(
    token: str, line: str, kind: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=f"ARE_TOKEN holds .*{kind}") as caught:
        load_config({}, environ={"ARE_TOKEN": token})
    assert token not in str(caught.value)  # the secret is not shown
    token_file = tmp_path / "token"
    token_file.write_bytes(f"{line}\n".encode())
    toml = tmp_path / "are.toml"
    toml.write_text(f"token_file = {str(token_file)!r}\n")
    for flags, env, named in [
        ({"token_file": str(token_file)}, {}, "(--token-file)"),
        ({}, {"ARE_TOKEN_FILE": str(token_file)}, "(ARE_TOKEN_FILE)"),
        ({"config": str(toml)}, {}, f"('token_file' in {str(toml)!r})"),
    ]:
        with pytest.raises(ConfigError, match=kind) as caught:
            load_config(flags, environ=env)
        assert named in str(caught.value)
        assert "printable ASCII" in str(caught.value)
        assert line not in str(caught.value)


def test_a_blank_token_is_refused_not_taken_for_no_token() -> None:
    with pytest.raises(ConfigError, match="ARE_TOKEN"):
        load_config({}, environ={"ARE_TOKEN": "  "})
    assert load_config({}, environ={"ARE_TOKEN": ""}).token is None  # empty counts as unset
    assert load_config({}, environ={"ARE_TOKEN": " s3cret\n"}).token == "s3cret"


def test_a_token_file_with_a_byte_order_mark_gives_the_token_without_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\r\n", encoding="utf-8-sig")  # as a Windows editor writes it
    assert token_file.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_config({"token_file": str(token_file)}, environ={}).token == "s3cret"


def test_a_ready_file_needs_an_existing_folder_named_by_its_source(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "ready.json"
    with pytest.raises(ConfigError, match=f"--ready-file.*{str(missing.parent)!r}"):
        load_config({"ready_file": str(missing)}, environ={})
    with pytest.raises(ConfigError, match="ARE_READY_FILE"):
        load_config({}, environ={"ARE_READY_FILE": str(missing)})
    toml = tmp_path / "are.toml"
    toml.write_text(f"ready_file = {str(missing)!r}\n")
    with pytest.raises(ConfigError, match="'ready_file' in"):
        load_config({"config": str(toml)}, environ={})
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="--ready-file"):
        load_config({"ready_file": str(a_file / "ready.json")}, environ={})
    with pytest.raises(ConfigError, match="--ready-file"):
        load_config({"ready_file": str(tmp_path)}, environ={})  # a folder, not a file
    ready = tmp_path / "ready.json"
    assert load_config({"ready_file": str(ready)}, environ={}).ready_file == ready
    assert load_config({"ready_file": "ready.json"}, environ={}).ready_file == Path("ready.json")


def test_readme_table_lists_every_option() -> None:
    table = options_table_markdown()
    for option in OPTIONS:
        assert option.flag in table
        assert option.env_var in table


def test_readme_carries_the_generated_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert options_table_markdown() in readme


# Durations and numbers: every value a consumer can use, nothing that overflows it.

_DURATIONS = {
    "shutdown_grace_s": 3600.0,
    "event_retention_age_s": 100 * 365.25 * 86_400,
    "state_keep_age_s": 100 * 365.25 * 86_400,
    "blob_unreferenced_ttl_s": 100 * 365.25 * 86_400,
}


@pytest.mark.parametrize("name", sorted(_DURATIONS))
@pytest.mark.parametrize(
    "text", ["inf", "-inf", "Infinity", "nan", "1.8e299", "1e400", "0", "-0", "-1", "soon"]
)
def test_durations_refuse_non_finite_zero_and_huge_values_naming_the_option(name: str, text: str) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError, match=flag):
        load_config({name: text}, environ={})
    with pytest.raises(ConfigError, match="ARE_" + name.upper()):
        load_config({}, environ={"ARE_" + name.upper(): text})


@pytest.mark.parametrize("name", sorted(_DURATIONS))
def test_durations_are_bounded_where_their_nanoseconds_fit_an_int64(name: str, tmp_path: Path) -> None:
    high = _DURATIONS[name]
    assert getattr(load_config({name: repr(high)}, environ={}), name) == high
    assert getattr(load_config({name: "0.001"}, environ={}), name) == 0.001
    with pytest.raises(ConfigError, match="--" + name.replace("_", "-")):
        load_config({name: repr(high * 1.01)}, environ={})
    # What the consumers compute (now - int(seconds * 1e9)) stays a signed 64-bit integer.
    ns = int(high * 1e9)
    assert ns < 2**63
    assert 2_000_000_000 * 10**9 - ns > -(2**63)
    # TOML spells infinity and nan as bare words, and big numbers as floats.
    toml = tmp_path / "are.toml"
    for literal in ("inf", "nan", "-inf", "1.8e299"):
        toml.write_text(f"{name} = {literal}\n")
        with pytest.raises(ConfigError, match=repr(name)):
            load_config({"config": str(toml)}, environ={})


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("keepalive_time_s", "inf"),
        ("keepalive_time_s", "nan"),
        ("keepalive_timeout_s", "1e400"),
        ("router_threshold", "nan"),
        ("router_threshold", "-inf"),
        ("router_cost_weight", "nan"),
        ("router_model_exploration", "inf"),
        ("router_reroute_grace_s", "nan"),
        ("router_reroute_grace_s", "1.8e299"),
        ("max_message_bytes", "1e9"),
        ("max_open_tasks", "5000.0"),
        ("event_retention_count", "9" * 5000),  # past Python's int-from-text digit limit
        ("router_dimension", "inf"),
        ("cache_hot_bytes", "nan"),
    ],
)
def test_other_numbers_refuse_non_finite_and_malformed_values_naming_the_option(name: str, text: str) -> None:
    with pytest.raises(ConfigError, match="--" + name.replace("_", "-")):
        load_config({name: text}, environ={})


@pytest.mark.parametrize("name", ["router_cost_weight", "router_model_exploration", "router_reroute_grace_s"])
def test_negative_zero_is_read_as_zero(name: str) -> None:
    value = getattr(load_config({name: "-0.0"}, environ={}), name)
    assert value == 0.0
    assert math.copysign(1.0, value) == 1.0


def test_a_huge_cpu_range_is_refused_without_building_it() -> None:
    # In a child held to 2 GiB of address space: building the range first (as before) would take
    # the machine's memory (a set of 10^12 CPU numbers) instead of failing.
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from sidecar._config import ConfigError, load_config\n"
        "try:\n"
        "    load_config({'cpu_affinity': '0-999999999999'}, environ={})\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    argv = [sys.executable, "-c", script]
    child = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "--cpu-affinity" in child.stdout
    assert "CPU 999999999999 is not available" in child.stdout
    with pytest.raises(ConfigError, match="--cpu-affinity"):
        load_config({"cpu_affinity": "0-"}, environ={})


def test_a_port_of_non_ascii_digits_is_refused() -> None:
    with pytest.raises(ConfigError, match="--listen"):
        load_config({"listen": "127.0.0.1:\u0665\u0660"}, environ={})  # Arabic-Indic "50"


# --max-message-bytes: large enough for what the worker streams carry.


def test_max_message_bytes_holds_the_worker_streams_batches() -> None:
    from are_sdk._worker import _MAX_BATCH_BYTES, MAX_INLINE_BYTES
    from sidecar._scheduler_worker import MAX_ASSIGNMENT_BATCH_BYTES

    low = 32 * 1024 * 1024
    assert low >= 2 * max(MAX_ASSIGNMENT_BATCH_BYTES, _MAX_BATCH_BYTES) > MAX_INLINE_BYTES
    assert load_config({"max_message_bytes": str(low)}, environ={}).max_message_bytes == low
    for text in (str(low - 1), str(4 << 20), "1048576", "1024"):
        with pytest.raises(ConfigError, match="--max-message-bytes"):
            load_config({"max_message_bytes": text}, environ={})
    assert "32 MiB to 256 MiB" in next(o.help for o in OPTIONS if o.name == "max_message_bytes")


# Embedders and model directories: a typo fails the start, not every later call.


def _model_dir(root: Path, *files: str) -> Path:
    root.mkdir(parents=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not checked until loaded")
    return root


def test_model_files_are_those_the_onnx_embedder_looks_for() -> None:
    from are_core.embed import _onnx
    from sidecar import _config

    assert _config._MODEL_FILES == _onnx._MODEL_FILES


@pytest.mark.parametrize("name", ["router_embedder", "memory_embedder"])
def test_embedder_specs_that_are_accepted(name: str, tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m", "onnx/model.onnx", "tokenizer.json")
    assert getattr(load_config({}, environ={}), name) == "lexical"
    for text, resolved in [
        ("lexical", "lexical"),
        (" lexical:64 ", "lexical:64"),
        ("lexical:4096", "lexical:4096"),
        ("off", "off"),
        ("OFF", "off"),
        (f"model:{model}", f"model:{model}"),
    ]:
        assert getattr(load_config({name: text}, environ={}), name) == resolved
    env = "ARE_" + name.upper()
    assert getattr(load_config({}, environ={env: f"model:{model}"}), name) == f"model:{model}"


@pytest.mark.parametrize("name", ["router_embedder", "memory_embedder"])
def test_embedder_specs_that_are_refused_name_the_option(name: str, tmp_path: Path) -> None:
    flag, env = "--" + name.replace("_", "-"), "ARE_" + name.upper()
    no_tokenizer = _model_dir(tmp_path / "no-tokenizer", "model.onnx")
    no_model = _model_dir(tmp_path / "no-model", "tokenizer.json")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for text, words in [
        ("model:/nonexistent", "does not exist"),
        ("model:", "model directory"),
        (f"model:{a_file}", "not a directory"),
        (f"model:{no_tokenizer}", "tokenizer.json"),
        (f"model:{no_model}", "model.onnx"),
        ("lexcial", "expected 'lexical'"),
        ("lexical:8", "16 to 4096"),
        ("lexical:x", "integer"),
        ("bert", "expected 'lexical'"),
        ("/models/minilm", "expected 'lexical'"),
    ]:
        with pytest.raises(ConfigError, match=flag) as caught:
            load_config({name: text}, environ={})
        assert words in str(caught.value), (text, str(caught.value))
        with pytest.raises(ConfigError, match=env):
            load_config({}, environ={env: text})
    toml = tmp_path / "are.toml"
    toml.write_text(f'{name} = "model:/nonexistent"\n')
    with pytest.raises(ConfigError, match=name):
        load_config({"config": str(toml)}, environ={})


def test_off_words_of_the_memory_embedder_and_the_router_embedder() -> None:
    # The memory embedder has always taken '', 'none' and 'off' (any case); the router 'off' only.
    for text in ("", "none", "None", "off"):
        assert load_config({"memory_embedder": text}, environ={}).memory_embedder == "off"
    for text in ("", "none"):
        with pytest.raises(ConfigError, match="--router-embedder"):
            load_config({"router_embedder": text}, environ={})


def test_a_model_directory_needs_the_embed_model_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_dir(tmp_path / "m", "model.onnx", "tokenizer.json")
    real = importlib.util.find_spec

    def without_onnxruntime(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "onnxruntime" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_onnxruntime)
    with pytest.raises(ConfigError, match=r"--router-embedder.*embed-model"):
        load_config({"router_embedder": f"model:{model}"}, environ={})
    with pytest.raises(ConfigError, match=r"--cache-models.*embed-model"):
        load_config({"cache_models": f"minilm={model}"}, environ={})


def test_cache_models_accepted_and_refused(tmp_path: Path) -> None:
    one = _model_dir(tmp_path / "one", "model.onnx", "tokenizer.json")
    two = _model_dir(tmp_path / "two", "onnx/model_quantized.onnx", "tokenizer.json")
    assert load_config({}, environ={}).cache_models == ""
    text = f" one={one} , two={two} ,"
    assert load_config({"cache_models": text}, environ={}).cache_models == text.strip()
    assert parse_cache_models(text) == {"one": one, "two": two}
    for bad, words in [
        ("minilm", "NAME=DIR"),
        ("=/models/x", "NAME=DIR"),
        ("minilm=", "NAME=DIR"),
        (f"lexical={one}", "NAME=DIR"),
        (f"caller={one}", "NAME=DIR"),
        (f"bad name={one}", "NAME=DIR"),
        (f"one={one},one={two}", "named twice"),
        ("minilm=/nonexistent", "does not exist"),
        (f"minilm={tmp_path}", "no model file"),
    ]:
        with pytest.raises(ConfigError, match="--cache-models") as caught:
            load_config({"cache_models": bad}, environ={})
        assert words in str(caught.value), (bad, str(caught.value))
    with pytest.raises(ConfigError, match="ARE_CACHE_MODELS"):
        load_config({}, environ={"ARE_CACHE_MODELS": "minilm=/nonexistent"})
