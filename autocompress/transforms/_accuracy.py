"""Top-1 accuracy of an ONNX classifier, run by a backend (default: ONNX Runtime's CPU)."""

from __future__ import annotations

import numpy as np

from autocompress.exceptions import DataError
from autocompress.hardware.backends import Backend, get_backend
from autocompress.transforms._quantize_graph import _check_samples, _input_dims, _load

__all__ = ["onnx_accuracy"]

_EVAL_BATCH = 256  # samples per run when the graph's batch is dynamic


def onnx_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray, *, threads: int = 1,
                  backend: Backend | None = None) -> float:
    """Top-1 accuracy of the ONNX model on samples ``x`` (float32, shaped like the input)
    and labels ``y``, run by ``backend``'s :meth:`~autocompress.hardware.backends.Backend.run`
    (default: ONNX Runtime on the CPU with ``threads`` intra-op threads). A graph with a
    fixed batch size runs one batch of that size at a time, the last one padded."""
    _, dims = _input_dims(_load(model_bytes))
    x = _check_samples(np.asarray(x), dims, "the evaluation data")
    labels = np.asarray(y).reshape(-1)
    if len(labels) != len(x):
        raise DataError(f"{len(x)} samples but {len(labels)} labels; pass one label per sample")
    runner = backend if backend is not None else get_backend("onnxruntime", threads=threads)
    logits = np.asarray(runner.run(model_bytes, x, batch_size=_EVAL_BATCH))
    predicted = logits.reshape(len(x), -1).argmax(axis=1)
    return int((predicted == labels).sum()) / len(x)
