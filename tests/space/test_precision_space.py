"""Per-layer precision in search spaces and candidates."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autocompress.exceptions import SearchSpaceError
from autocompress.space import Candidate, SearchSpace

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]


def _space(precision: object) -> SearchSpace:
    return SearchSpace.from_dict({
        "format_version": 1,
        "channels": {"rules": [{"match": "*", "keep_ratio": {"choices": [0.5, 1.0]}}]},
        "precision": precision,
    })


def test_mixed_precision_space_file_offers_int8_per_layer() -> None:
    space = SearchSpace.from_yaml(ROOT / "search_spaces" / "mixed_precision.yaml")
    assert space.precisions == {"fp32", "int8"}
    bound = space.bind(["conv1"], LAYERS)
    dists = bound.distributions
    for layer in LAYERS:
        assert dists[f"precision/{layer}"].choices == ("fp32", "int8")
    assert dists["quantization"].choices == ("ptq", "qat")


def test_sampled_candidate_has_a_precision_per_layer_and_round_trips() -> None:
    bound = _space({"method": "qat", "rules": [
        {"match": "fc", "precision": "fp32"},
        {"match": "*", "precision": {"choices": ["fp32", "int8"]}}]}).bind(["conv1"], LAYERS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    candidate = bound.sample(study.ask())
    assert set(candidate.precision) == set(LAYERS)
    assert candidate.precision["fc"] == "fp32"
    assert candidate.quantization == "qat"
    assert "precision/fc" not in bound.distributions   # fixed, not searched
    again = Candidate.from_json(candidate.to_json())
    assert again == candidate and again.precision_summary == candidate.precision_summary


def test_uniform_and_extreme_candidates_take_the_requested_precision() -> None:
    bound = _space({"rules": [{"match": "*", "precision": {"choices": ["fp32", "int8"]}}]}
                   ).bind(["conv1"], LAYERS)
    assert bound.uniform(0.5, "int8").precision_summary == "int8"
    assert bound.extreme("min", "int8").quantized_layers == dict.fromkeys(LAYERS, "int8")
    assert bound.extreme("min").precision_summary == "fp32"


def test_shared_precision_rule_is_one_parameter() -> None:
    bound = _space({"rules": [{"match": "layer1.*", "precision": {"choices": ["fp32", "int8"]},
                               "shared": True, "name": "stage1"}]}).bind([], LAYERS)
    assert list(bound.distributions) == ["precision/stage1"]
    candidate = bound.candidate_from_params({"precision/stage1": "int8"})
    assert candidate.precision == {"layer1.0.conv1": "int8", "layer1.0.conv2": "int8"}


@pytest.mark.parametrize(("precision", "message"), [
    ({"rules": [{"match": "*", "precision": "int4"}]},
     "'int4' is not allowed; choose from: fp32, fp16, int8"),
    ({"rules": [{"match": "*", "precision": {"choices": []}}]}, "non-empty list"),
    ({"rules": [{"match": "*", "bits": "int8"}]}, "unknown key(s) ['bits']"),
    ({"rules": []}, "non-empty list of rules"),
    ({"method": "awq", "rules": [{"match": "*", "precision": "int8"}]},
     "'awq' is not allowed; choose from: ptq, qat"),
    ({"calibration_samples": 0, "rules": [{"match": "*", "precision": "int8"}]},
     "positive integer"),
    ("int8", "must be a mapping"),
])
def test_malformed_precision_sections_are_refused(precision: object, message: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        _space(precision)
    assert message in str(info.value)


def test_a_precision_the_backend_does_not_run_is_refused_clearly() -> None:
    space = _space({"rules": [{"match": "*", "precision": {"choices": ["fp32", "fp16"]}}]})
    with pytest.raises(SearchSpaceError) as info:
        space.check_precisions(("fp32", "int8"), "onnxruntime CPU")
    text = str(info.value)
    assert "offer fp16" in text and "runs only fp32, int8" in text
    space.check_precisions(("fp32", "fp16", "int8"), "onnxruntime CUDA")   # accepted


def test_candidate_refuses_unknown_precisions_and_methods() -> None:
    with pytest.raises(SearchSpaceError, match="unknown precision"):
        Candidate(precision={"fc": "int3"})
    with pytest.raises(SearchSpaceError, match="'ptq' or 'qat'"):
        Candidate(quantization="gptq")  # type: ignore[arg-type]


def test_old_candidates_without_precision_still_load() -> None:
    old = {"format_version": 1, "channel_keep": {"conv1": 0.5}, "sparsity": {},
           "importance": "l2", "round_to": 8, "min_channels": 8}
    candidate = Candidate.from_dict(old)
    assert candidate.precision == {} and candidate.kind == "compressed"
    assert candidate.precision_summary == "fp32"
