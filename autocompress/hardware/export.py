"""PyTorch -> ONNX export.

The search exports every candidate (often twice), so speed matters: torch's TorchScript
exporter (``dynamo=False``) takes about 0.1 s for resnet20 where the dynamo exporter takes
about 2 s. It is deprecated in torch 2.14 but still supported and pinned with torch here;
models it cannot export are retried with the dynamo exporter. Both fold BatchNorm into the
preceding Conv. Node names keep the module path (``/layer1/layer1.0/conv1/Conv``; dynamo:
``metadata_props["namespace"]``).

:func:`add_metadata` and :func:`embed_normalization` finish an exported model for deployment:
the preprocessing it expects in its ``metadata_props``, or the normalization in its graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from autocompress.exceptions import ExportError

__all__ = ["OPSET", "add_metadata", "embed_normalization", "export_onnx"]

_logger = logging.getLogger(__name__)

OPSET = 17


def _legacy(module: nn.Module, example_input: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(module, (example_input,), buffer, dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      do_constant_folding=True)
    return _name_linear_weights(buffer.getvalue(), module)


def _name_linear_weights(onnx_bytes: bytes, module: nn.Module) -> bytes:
    """Give each Linear weight the exporter stored transposed (a Linear on inputs of more
    than two dimensions is a MatMul, its weight a folded constant ``onnx::MatMul_N``) its
    layer's name, ``<layer>.weight``, so that precision and other per-layer plans find the
    layer by its weight, as they do for Conv and Gemm. Node scopes alone lose the path of a
    layer a ``torch.fx.GraphModule`` calls (a block depth dropped a branch of). Weights
    equal in several layers keep the exporter's name."""
    if b"onnx::MatMul" not in onnx_bytes:   # no folded MatMul weight: nothing to rename
        return onnx_bytes
    import onnx
    from onnx import numpy_helper

    by_content: dict[bytes, list[str]] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            transposed = layer.weight.detach().t().contiguous().cpu().numpy()
            by_content.setdefault(transposed.tobytes(), []).append(name)
    if not by_content:
        return onnx_bytes
    model = onnx.load_from_string(onnx_bytes)
    taken = {init.name for init in model.graph.initializer}
    renamed: dict[str, str] = {}
    for init in model.graph.initializer:
        if init.name.startswith("onnx::MatMul"):
            names = by_content.get(numpy_helper.to_array(init).tobytes(), [])
            if len(names) == 1 and f"{names[0]}.weight" not in taken:
                renamed[init.name] = f"{names[0]}.weight"
                taken.add(renamed[init.name])
    if not renamed:
        return onnx_bytes
    for init in model.graph.initializer:
        init.name = renamed.get(init.name, init.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    return model.SerializeToString()


def _dynamo(module: nn.Module, example_input: torch.Tensor) -> bytes:
    program = torch.onnx.export(module, (example_input,), dynamo=True, verbose=False,
                                external_data=False, input_names=["input"],
                                output_names=["logits"])
    if program is None:  # pragma: no cover - dynamo export always returns a program
        raise ExportError("the ONNX exporter returned nothing")
    model = program.model_proto
    for node in model.graph.node:  # keep the module path, drop traces of torch internals
        kept = [(p.key, p.value) for p in node.metadata_props if p.key == "namespace"]
        del node.metadata_props[:]
        for key, value in kept:
            node.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def export_onnx(module: nn.Module, example_input: torch.Tensor) -> bytes:
    """Export ``module`` (in eval mode) for a batch of ``example_input``'s shape.

    Returns the serialized model with its weights inside (no external data file). Raises
    :class:`ExportError` with the exporter's reason when the model cannot be exported.
    """
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                return _legacy(module, example_input)
            except Exception as legacy_error:
                _logger.debug("TorchScript export failed (%s); trying dynamo", legacy_error)
                return _dynamo(module, example_input)
    except ExportError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"cannot export the model to ONNX ({type(exc).__name__}: {reason}); the model must "
            "be traceable by torch.onnx.export for an input of shape "
            f"{tuple(example_input.shape)}"
        ) from exc
    finally:
        module.train(was_training)


def add_metadata(onnx_bytes: bytes, props: Mapping[str, str]) -> bytes:
    """``onnx_bytes`` with ``props`` in the model's ``metadata_props`` (a key already there
    takes the new value); the graph is untouched."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    existing = {entry.key: entry for entry in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            model.metadata_props.add(key=key, value=str(value))
    return model.SerializeToString()


def embed_normalization(onnx_bytes: bytes, mean: Sequence[float],
                        std: Sequence[float]) -> bytes:
    """``onnx_bytes`` with ``(x - mean) / std`` (per channel, float32) as its first two nodes,
    so that the model takes the 0-1 image itself: the same arithmetic as autocompress's
    normalization (std clamped to at least 1e-6), so the outputs do not change.

    Raises:
        ExportError: the graph has no float input to put the normalization in front of.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError("the model has no float input to embed the normalization in")
    name = inputs[0].name
    inner = f"{name}__normalized"
    for node in graph.node:
        node.input[:] = [inner if value == name else value for value in node.input]
    shape = (1, len(mean), 1, 1)
    mean_array = np.asarray(mean, dtype=np.float32).reshape(shape)
    std_array = np.maximum(np.asarray(std, dtype=np.float32), np.float32(1e-6)).reshape(shape)
    graph.initializer.extend([numpy_helper.from_array(mean_array, f"{name}__mean"),
                              numpy_helper.from_array(std_array, f"{name}__std")])
    centered = f"{name}__centered"
    nodes = [helper.make_node("Sub", [name, f"{name}__mean"], [centered],
                              name="autocompress_normalize/Sub"),
             helper.make_node("Div", [centered, f"{name}__std"], [inner],
                              name="autocompress_normalize/Div")]
    for index, node in enumerate(nodes):
        graph.node.insert(index, node)
    return model.SerializeToString()
