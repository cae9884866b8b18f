"""OnnxEmbedder: a local model directory run with ONNX Runtime and tokenizers."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import EmbedderError

__all__ = ["OnnxEmbedder"]

_MODEL_FILES = ("model.onnx", "onnx/model.onnx", "model_quantized.onnx", "onnx/model_quantized.onnx")
_DEFAULT_MAX_TOKENS = 256
_MAX_BATCH = 64


class OnnxEmbedder:
    """A sentence-embedding model from a local directory: no PyTorch, no download.

    The directory holds ``model.onnx`` (or ``onnx/model.onnx``) and
    ``tokenizer.json``, as a sentence-transformers ONNX export does. The
    model's token outputs are mean-pooled over the attention mask (a model
    whose first output is already one vector per text is used as is) and
    L2-normalised. Texts are cut at ``max_tokens`` (``tokenizer_config.json``'s
    ``model_max_length`` when at most 512, otherwise 256).

    Needs the ``embed-model`` extra (``onnxruntime``, ``tokenizers``).

    Args:
        directory: The model directory.
        threads: ONNX Runtime intra-op threads (1 keeps the event loop's core free).

    Raises:
        EmbedderError: The runtime is not installed, or the directory lacks a
            file or holds a model that cannot be run.
    """

    def __init__(self, directory: Path | str, *, threads: int = 1) -> None:
        try:
            import onnxruntime  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
            import tokenizers  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        except ImportError as error:
            raise EmbedderError(
                "a model embedder needs onnxruntime and tokenizers: install the `embed-model` extra"
            ) from error
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise EmbedderError(f"model directory {str(root)!r} does not exist")
        model = next((root / name for name in _MODEL_FILES if (root / name).is_file()), None)
        if model is None:
            raise EmbedderError(f"model directory {root.name!r} has no model.onnx (nor onnx/model.onnx)")
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise EmbedderError(f"model directory {root.name!r} has no tokenizer.json")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = max(1, threads)
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(model), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise EmbedderError(f"cannot load the model in {root.name!r}: {error}") from error
        self._max_tokens = _max_tokens(root)
        tokenizer.enable_truncation(max_length=self._max_tokens)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._session = session
        self._inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise EmbedderError(f"the model in {root.name!r} lacks the inputs {sorted(missing)}")
        self._lock = threading.Lock()
        self.name = f"onnx:{root.name}"
        probe = self._run(["dimension probe"])
        self.dimension = int(probe.shape[1])

    def __repr__(self) -> str:
        return f"OnnxEmbedder(name={self.name!r}, dimension={self.dimension})"

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """An (n, dimension) float32 array of L2-normalised vectors (thread-safe; releases the GIL)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parts = [self._run(list(texts[i : i + _MAX_BATCH])) for i in range(0, len(texts), _MAX_BATCH)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(1, *(len(e.ids) for e in encodings))
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = encoding.attention_mask
            types[row, :n] = encoding.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = types
        with self._lock:
            output = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        if output.ndim == 3:
            weights = mask.astype(np.float32)[:, :, None]
            pooled = (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        elif output.ndim == 2:
            pooled = output
        else:
            raise EmbedderError(f"{self.name}: unexpected model output of shape {output.shape}")
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.ascontiguousarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


def _max_tokens(root: Path) -> int:
    config = root / "tokenizer_config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return _DEFAULT_MAX_TOKENS
    if isinstance(value, int) and 0 < value <= 512:
        return value
    return _DEFAULT_MAX_TOKENS
