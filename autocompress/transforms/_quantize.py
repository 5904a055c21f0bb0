"""Per-layer mixed precision (fp32 / fp16 / int8) with ONNX Runtime's own tools.

A request names a precision per torch layer (``{"layer1.0.conv1": "int8", "fc": "fp16"}``;
layers not named stay fp32). :func:`node_precisions` spreads it over every node of the fp32
ONNX graph: the single assignment the latency estimator costs and :func:`quantize_onnx`
builds. int8 is ONNX Runtime's static QDQ quantization (``quant_pre_process`` then
:func:`~autocompress.hardware.quantization.quantize_static_int8`, the routine profiling uses
too; ORT fuses the Q/DQ pairs into QLinearConv, QLinearAdd, QGemm, ...), fp16 its
``convert_float_to_float16``. :func:`exported_precisions` reads back what an exported graph
really runs, and :func:`prepare_qat` / :func:`finish_qat` finetune the int8 layers with fake
quantization (straight-through estimator) before export.

The parts live in private modules: graph helpers and layer mapping (``_quantize_graph``),
the precision plan (``_precision_plan``), int8 (``_int8``), fp16 (``_fp16``) and accuracy
(``_accuracy``); this module assembles them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from autocompress.exceptions import ExportError
from autocompress.hardware.kernels import PRECISIONS, Precision
from autocompress.hardware.quantization import quiet_onnxruntime_logging
from autocompress.transforms._accuracy import onnx_accuracy
from autocompress.transforms._fp16 import _convert_fp16
from autocompress.transforms._int8 import _WEIGHT_QMAX as _WEIGHT_QMAX  # used by _qat
from autocompress.transforms._int8 import _quantize_int8, _unshare_weights
from autocompress.transforms._precision_plan import _check_request, node_precisions
from autocompress.transforms._quantize_graph import (
    _INTEGER_OPS,
    _WEIGHT_INPUT,
    _label,
    _load,
    _name_nodes,
    _node_layers,
    _producers,
    onnx_layer_nodes,
)
from autocompress.transforms._quantize_graph import _QUANT_SUFFIX as _QUANT_SUFFIX  # tested

_logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "Precision",
    "exported_precisions",
    "node_precisions",
    "onnx_accuracy",
    "onnx_layer_nodes",
    "quantize_onnx",
]


def quantize_onnx(model_bytes: bytes, layer_precision: Mapping[str, str],
                  calibration: np.ndarray, *, per_channel: bool = True,
                  reduce_range: bool = True) -> bytes:
    """The deployable model for a per-layer precision request (layers not named: fp32).

    int8 layers: ORT's ``quant_pre_process`` and static QDQ quantization (per-channel
    symmetric int8 weights, per-tensor asymmetric uint8 activations) calibrated on
    ``calibration`` (float32 samples shaped like the model's input, at least one batch of the
    size the graph declares). ``reduce_range`` keeps weights to 7 bits ([-64, 64]), which
    x86 CPUs without VNNI (AVX2) need to avoid int16 saturation; pass the same value to
    :func:`prepare_qat`. fp16 layers: ORT's ``convert_float_to_float16`` with fp32 inputs
    and outputs. Every node runs at the precision :func:`node_precisions` assigns it; the
    result is checked with :func:`exported_precisions`. All fp32: ``model_bytes`` unchanged.
    Raises :class:`SearchSpaceError` for a bad request, :class:`DataError` for calibration data
    of the wrong shape, :class:`ExportError` when ORT cannot build the model.
    """
    model = _load(model_bytes)
    request = _check_request(layer_precision, onnx_layer_nodes(model))
    if all(precision == "fp32" for precision in request.values()):
        return model_bytes
    _name_nodes(model)
    expected = node_precisions(model, request)
    with tempfile.TemporaryDirectory(prefix="autocompress-quantize-") as tmp:
        folder = Path(tmp)
        try:
            with quiet_onnxruntime_logging():
                _pre_process(model, folder / "pre.onnx")
        except Exception as exc:
            raise ExportError(f"ONNX Runtime's quantization pre-processing failed ({exc}); "
                              "check the model runs in ONNX Runtime at fp32") from exc
        prepared = onnx.load(folder / "pre.onnx")
        plan = node_precisions(prepared, request)
        changed = sorted(n for n in plan.keys() & expected.keys() if plan[n] != expected[n])
        missing = sorted(layer for layer, p in request.items()
                         if p != "fp32" and layer not in onnx_layer_nodes(prepared))
        if changed or missing:
            raise ExportError(f"ONNX Runtime's pre-processing rewrote the graph: nodes "
                              f"{(changed + missing)[:5]} no longer match the precision plan; "
                              "request fp32 for those layers")
        _unshare_weights(prepared, plan)
        if "int8" in plan.values():
            prepared = _quantize_int8(prepared, plan, calibration, per_channel, reduce_range)
    if "fp16" in plan.values():
        prepared = _convert_fp16(prepared, plan)
    result = prepared.SerializeToString()
    actual = exported_precisions(result)
    wrong = {layer: actual.get(layer) for layer in onnx_layer_nodes(model)
             if actual.get(layer) != request.get(layer, "fp32")}
    if wrong:
        raise ExportError(f"the exported graph runs layers {sorted(wrong)[:5]} at "
                          f"{[wrong[k] for k in sorted(wrong)[:5]]}, not as requested; "
                          "request fp32 for them")
    return result


#: ``quant_pre_process`` options, tried in turn: its symbolic shape inference (made for
#: transformers) gives up on some graphs (Swin's shifted windows), and its graph
#: optimization fails on others (Swin V2's attention, once its weights pass 100 MB); each
#: step only helps the quantizer, which ONNX's own shape inference serves as well.
_PRE_PROCESSING = ({}, {"skip_symbolic_shape": True},
                   {"skip_symbolic_shape": True, "skip_optimization": True})


def _pre_process(model: onnx.ModelProto, out: Path) -> None:
    """ONNX Runtime's ``quant_pre_process`` of ``model`` to ``out``, with fewer of its steps
    where it fails; raises the last failure."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for i, options in enumerate(_PRE_PROCESSING):
        copy = onnx.ModelProto()   # a failed attempt may leave external data references
        copy.CopyFrom(model)
        try:
            # in ``out``'s folder: a failed symbolic shape inference dumps the model (with its
            # weights, tens of MB) into the working directory
            with contextlib.chdir(out.parent):
                quant_pre_process(copy, out, **options)
            return
        except Exception as exc:
            if i + 1 == len(_PRE_PROCESSING):
                raise
            _logger.debug("quantization pre-processing failed (%s); again with %s", exc,
                          _PRE_PROCESSING[i + 1])


def exported_precisions(model_bytes: bytes) -> dict[str, Precision]:
    """Torch layer -> the precision its node really runs at in an exported graph: int8 when
    its weight is an int8 tensor (DequantizeLinear of int8, QLinearConv, QGemm, ...), fp16 when
    its weight is float16, else fp32."""
    graph = _load(model_bytes).graph
    initializers = {init.name: init for init in graph.initializer}
    producers = _producers(graph)
    nodes = {_label(node, i): node for i, node in enumerate(graph.node)}
    integer = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    found: dict[str, Precision] = {}
    for key, layer in _node_layers(graph).items():
        node = nodes[key]
        weight = node.input[_WEIGHT_INPUT[node.op_type]]
        dq = producers.get(weight)
        if node.op_type in _INTEGER_OPS or (
                dq is not None and dq.op_type == "DequantizeLinear"
                and dq.input[0] in initializers
                and initializers[dq.input[0]].data_type in integer):
            precision: Precision = "int8"
        elif weight in initializers and initializers[weight].data_type == onnx.TensorProto.FLOAT16:
            precision = "fp16"
        else:
            precision = "fp32"
        found.setdefault(layer, precision)
    return found
