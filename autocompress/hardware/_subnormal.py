"""Softmaxes whose mask makes subnormal floats: a cost no profile sees.

A softmax computes exp(x - max(x)). Where a mask adds a constant between about -104.0 and
-87.3 to the masked logits (Swin's shifted-window attention adds -100), that exp is a
*subnormal* float32 (under 1.2e-38, over 1.4e-45), and so are the attention weights that
the next matrix product reads. CPUs that handle subnormals in microcode stall on each: on
a 2-core Intel Xeon with AVX-512, ONNX Runtime ran a softmax with such a mask 11.8x slower
than without it, and swin_t at 224x224 1.31x slower than with subnormals flushed to zero
(``benchmarks/denormals.py``); on the AMD VMs the estimate was developed on, Swin measured
within 8% of its estimate.
A profile measures its kernels on random normal inputs, which hold no subnormals, so the
estimate is of the model with subnormals flushed; :func:`subnormal_softmaxes` finds the
softmaxes that may pay more, so that an estimate can say so.

A mask of -10000 or -inf makes exp exactly 0 (no subnormal), and one of -10 none either:
only constants in the band are reported.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["SUBNORMAL_BAND", "subnormal_softmaxes"]

#: Values x whose exp(x) rounds to a subnormal float32: ln(2**-150) < x < ln(2**-126) (below,
#: it rounds to 0).
SUBNORMAL_BAND = (math.log(2.0**-150), math.log(2.0**-126))
#: Operators a mask passes through on its way into the logits unchanged in magnitude: it is
#: selected (Where), shaped, moved, or added to them. A product or a normalization mixes it
#: with other values, and the search stops there.
_MASK_PATH = frozenset({"Where", "Add", "Sub", "Reshape", "Unsqueeze", "Squeeze", "Expand",
                        "Transpose", "Slice", "Concat", "Cast", "Identity", "Tile", "Gather",
                        "Flatten"})


def _in_band(values: np.ndarray) -> bool:
    if values.dtype.kind != "f" or values.size == 0:
        return False
    low, high = SUBNORMAL_BAND
    return bool(np.any((values > low) & (values < high)))


def subnormal_softmaxes(model: onnx.ModelProto) -> tuple[str, ...]:
    """Names (or op and index) of the Softmax nodes that a float constant in
    :data:`SUBNORMAL_BAND` reaches through :data:`_MASK_PATH` operators, in graph order.

    Walks back from each softmax's input, so a model without softmax costs one pass over
    its nodes and only the constants on a mask's path are read (the search estimates
    hundreds of candidates)."""
    graph = model.graph
    softmaxes = [i for i, node in enumerate(graph.node) if node.op_type == "Softmax"]
    if not softmaxes:
        return ()
    producers = {name: node for node in graph.node for name in node.output}
    initializers = {init.name: init for init in graph.initializer}

    def constant(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value)
        return None

    def masked(tensor: str) -> bool:
        seen: set[str] = set()
        frontier = [tensor]
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            values = constant(name)
            if values is not None:
                if _in_band(values):
                    return True
                continue
            node = producers.get(name)
            if node is not None and node.op_type in _MASK_PATH:
                frontier.extend(node.input)
        return False

    return tuple(graph.node[i].name or f"Softmax_{i}" for i in softmaxes
                 if graph.node[i].input and masked(graph.node[i].input[0]))
