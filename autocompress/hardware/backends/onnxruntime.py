"""ONNX Runtime backend (CPU, or CUDA where a GPU and onnxruntime-gpu are present)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from autocompress.exceptions import ExportError, MissingDependencyError
from autocompress.hardware.backends._base import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    time_callable,
)

__all__ = ["OnnxRuntimeBackend"]

_logger = logging.getLogger(__name__)

_ELEM_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise MissingDependencyError(
            "onnxruntime is not installed; pip install autocompress (or onnxruntime)"
        ) from exc
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with ``threads`` intra-op threads and full graph optimization."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1, device: Literal["cpu", "cuda"] = "cpu") -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.threads = threads
        self.device = device
        ort = _ort()
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependencyError(
                "ONNX Runtime has no CUDAExecutionProvider here: install onnxruntime-gpu on a "
                "machine with an NVIDIA GPU, or use device 'cpu'"
            )

    def version(self) -> str:
        return str(_ort().__version__)

    @property
    def precisions(self) -> tuple[str, ...]:
        """CPU: fp32 and int8 (QDQ graphs run as QLinearConv, QGemm, QLinearAdd... with
        uint8 activations). fp16 is not offered on CPU: ONNX Runtime's x86 CPU provider
        inserts casts and runs fp16 graphs in fp32, so there is no fp16 kernel to measure.
        CUDA: fp32, fp16 and int8."""
        if self.device == "cuda":
            return ("fp32", "fp16", "int8")
        return ("fp32", "int8")

    @property
    def providers(self) -> list[str]:
        if self.device == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def settings(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "device": self.device,
            "providers": self.providers,
            "graph_optimization": "ORT_ENABLE_ALL",
            "execution_mode": "sequential",
        }

    def session(self, onnx_model: bytes) -> Any:
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(onnx_model, sess_options=options,
                                        providers=self.providers)
        except Exception as exc:
            raise ExportError(f"ONNX Runtime cannot load the model: {exc}") from exc

    def random_inputs(self, session: Any, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feeds = {}
        for arg in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
            dtype = _ELEM_TYPES.get(arg.type, np.float32)
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        return feeds

    def measure(
        self, onnx_model: bytes, settings: MeasureSettings | None = None
    ) -> LatencyMeasurement:
        session = self.session(onnx_model)
        feeds = self.random_inputs(session)
        return time_callable(lambda: session.run(None, feeds), settings or MeasureSettings())

    def run(self, onnx_model: bytes, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Run the model's first input on ``inputs`` in batches (for accuracy checks)."""
        session = self.session(onnx_model)
        name = session.get_inputs()[0].name
        fixed = session.get_inputs()[0].shape[0]
        step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
        outs = [session.run(None, {name: inputs[i:i + step]})[0]
                for i in range(0, len(inputs), step)]
        return np.concatenate(outs)
