"""The layer-chains benchmark builds the chains it says it measures: valid graphs, the units
repeated, the residual additions where asked, and the kernels the estimate costs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest


@pytest.fixture(scope="module")
def chains(load_benchmark):
    return load_benchmark("layer_chains")


@pytest.mark.parametrize(("unit", "convs", "adds"), [
    ("pointwise", 1, 0), ("depthwise", 1, 0), ("expand", 2, 0), ("block", 3, 0),
    ("residual", 3, 1)])
def test_a_chain_repeats_its_unit(chains, unit, convs, adds):
    model = onnx.load_from_string(chains.chain(unit, 8, 3, 3, 6, 3))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 3 * convs
    assert ops.count("Add") == 3 * adds
    shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert shape == [1, 8, 6, 6]  # a unit keeps its channels and map


def test_a_chain_runs_and_keeps_its_shape(chains):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(chains.chain("residual", 8, 2, 3, 5, 2),
                                   providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.ones((1, 8, 5, 5), np.float32)})
    assert out.shape == (1, 8, 5, 5) and np.isfinite(out).all()


def test_a_block_is_costed_as_expansion_depthwise_and_projection(chains):
    pytest.importorskip("onnxruntime")
    from autocompress.hardware.backends._registry import rules_for

    graph = onnx.load_from_string(chains.chain("block", 16, 3, 3, 12, 1))
    kinds = [node.kernel.kind for node in rules_for("onnxruntime").lowering(graph)
             if node.kernel is not None and node.kernel.kind in ("conv1x1", "dwconv")]
    assert kinds == ["conv1x1", "dwconv", "conv1x1"]
