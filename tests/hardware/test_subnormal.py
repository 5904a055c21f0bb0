"""Softmaxes whose mask makes subnormal floats (Swin's -100) are found and reported; masks
whose exponential is exactly zero or a normal float are not. Graph analysis only: nothing is
timed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autocompress.cli.main import main
from autocompress.hardware import HardwareProfile, LatencyModel
from autocompress.hardware._subnormal import SUBNORMAL_BAND, subnormal_softmaxes

SHAPE = [1, 2, 4, 4]


def _attention(mask_value: float, *, through: str = "Add") -> onnx.ModelProto:
    """logits -> (+ Where(window, 0, mask_value)) -> Softmax -> MatMul with values, as a
    shifted-window attention builds its mask; ``through="MatMul"`` mixes the mask into a
    product before the softmax instead."""
    window = np.zeros(SHAPE, dtype=bool)
    window[..., :2] = True
    inits = [numpy_helper.from_array(window, "window"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(mask_value, np.float32), "masked"),
             numpy_helper.from_array(np.ones([1, 2, 4, 4], np.float32), "values")]
    mixed = "Add" if through == "Add" else "MatMul"
    nodes = [helper.make_node("Where", ["window", "zero", "masked"], ["mask"], name="where"),
             helper.make_node(mixed, ["logits", "mask"], ["masked_logits"], name="apply"),
             helper.make_node("Softmax", ["masked_logits"], ["weights"], axis=-1,
                              name="attn_softmax"),
             helper.make_node("MatMul", ["weights", "values"], ["y"], name="attn_v")]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_band_is_where_exp_is_subnormal_in_float32() -> None:
    low, high = SUBNORMAL_BAND
    tiny = np.finfo(np.float32).tiny  # the smallest normal float32
    assert np.float32(math.exp(high + 0.01)) >= tiny
    assert 0 < np.float32(math.exp(high - 0.01)) < tiny
    assert np.float32(math.exp(low + 0.01)) > 0
    assert np.float32(math.exp(low - 0.01)) == 0


def test_swins_mask_is_found() -> None:
    assert subnormal_softmaxes(_attention(-100.0)) == ("attn_softmax",)


@pytest.mark.parametrize("value", [-10.0, -10000.0, float("-inf")])
def test_masks_whose_exponential_is_normal_or_zero_are_not(value: float) -> None:
    assert subnormal_softmaxes(_attention(value)) == ()


def test_a_mask_mixed_into_a_product_before_the_softmax_is_not_followed() -> None:
    assert subnormal_softmaxes(_attention(-100.0, through="MatMul")) == ()


def test_estimates_say_which_softmaxes_may_stall(small_profile: Path) -> None:
    model = LatencyModel(HardwareProfile.load(small_profile))
    flagged = model.estimate(_attention(-100.0))
    plain = model.estimate(_attention(-10000.0))
    assert flagged.subnormal_softmax == ("attn_softmax",)
    assert plain.subnormal_softmax == ()
    # a note, not a cost: the estimate itself is that of the graph
    assert flagged.latency_ms == pytest.approx(plain.latency_ms)


def test_estimate_command_notes_a_subnormal_mask(capsys, tmp_path: Path,
                                                 synthetic_profile: Path) -> None:
    path = tmp_path / "attention.onnx"
    onnx.save(_attention(-100.0), path)
    assert main(["estimate", "--onnx", str(path), "--profile", str(synthetic_profile)]) == 0
    out = capsys.readouterr().out
    assert "1 softmax node(s) take a mask whose exponential is a subnormal float" in out
    assert "attn_softmax" in out
