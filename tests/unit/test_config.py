"""Configuration precedence and validation, without starting a server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar._config import OPTIONS, ConfigError, LogFormat, load_config, options_table_markdown


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


def test_readme_table_lists_every_option() -> None:
    table = options_table_markdown()
    for option in OPTIONS:
        assert option.flag in table
        assert option.env_var in table


def test_readme_carries_the_generated_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert options_table_markdown() in readme
