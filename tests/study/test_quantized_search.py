"""End to end with search_spaces/mixed_precision.yaml on scikit-learn digits: quantized
trials record the deployed (ONNX Runtime) accuracy of a real QDQ model, and ``pick`` with
``finetune_steps`` trains the pick again before exporting it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import onnx
import optuna
import pytest

from autocompress.data import load_data
from autocompress.exceptions import CheckpointError, RunError
from autocompress.space import DEFAULT_SPACE_PATH
from autocompress.study import (
    FrontMember,
    RunFolder,
    SearchConfig,
    load_front,
    pick,
    search,
    write_report,
)
from autocompress.study._refine import finetune_member
from autocompress.transforms import exported_precisions, onnx_accuracy

MIXED_SPACE = DEFAULT_SPACE_PATH.parent / "mixed_precision.yaml"
QDQ = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def mixed_run(synthetic_int8_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-trial mixed-precision search with a budget every candidate meets, so that the
    uniform all-int8 seed trial is finetuned and quantized."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    search(SearchConfig(model="resnet20", data="digits", trials=3, finetune_steps=10,
                        profile=synthetic_int8_profile, space=MIXED_SPACE, out=out,
                        latency_budget_ms=1000.0, screen=0, allocate=False))
    return out


def _finetuned(run: Path) -> list[FrontMember]:
    folder = RunFolder.open(run)
    study = optuna.load_study(study_name="autocompress", storage=folder.storage_url())
    members = [FrontMember.from_trial(t)
               for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    return [m for m in members if m is not None and m.record.finetuned]


def _int8_trial(run: Path) -> FrontMember:
    int8 = [m for m in _finetuned(run) if m.precision == "int8"]
    assert int8, "the uniform all-int8 seed trial was not finetuned"
    return int8[0]


def test_an_int8_trial_records_the_accuracy_of_its_quantized_onnx_model(mixed_run) -> None:
    record = _int8_trial(mixed_run).record
    model = (mixed_run / record.artifact).read_bytes()
    ops = Counter(n.op_type for n in onnx.load_from_string(model).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert set(exported_precisions(model).values()) == {"int8"}
    assert record.accuracy_source == "onnxruntime"
    assert record.float_accuracy is not None
    data = load_data("digits", seed=0)
    assert record.accuracy == pytest.approx(
        onnx_accuracy(model, data.val_x.numpy(), data.val_y.numpy()))
    assert record.size_bytes == len(model)


def test_front_says_which_members_are_quantized(mixed_run) -> None:
    frame = load_front(mixed_run).to_frame()
    assert set(frame["precision"]) <= {"fp32", "int8", "mixed"}
    quantized = frame[frame["precision"] != "fp32"]
    assert (quantized["accuracy_source"] == "onnxruntime").all()


def test_a_quantized_member_finetuned_again_is_still_int8(mixed_run) -> None:
    member = _int8_trial(mixed_run)
    refined = finetune_member(RunFolder.open(mixed_run), member, 15)
    assert refined.steps == 15
    assert refined.deployed.accuracy_source == "onnxruntime"
    assert set(exported_precisions(refined.deployed.onnx).values()) == {"int8"}
    data = load_data("digits", seed=0)
    assert refined.deployed.accuracy == pytest.approx(
        onnx_accuracy(refined.deployed.onnx, data.val_x.numpy(), data.val_y.numpy()))
    assert refined.stats["size_bytes"] == len(refined.deployed.onnx)


def test_pick_with_finetune_steps_exports_the_retrained_model(mixed_run, tmp_path) -> None:
    export = mixed_run.parent / "picked"    # beside the run: the report finds it there
    result = pick(mixed_run, 1000.0, export, finetune_steps=12)
    assert result.member is not None and result.refined is not None
    record = json.loads((export / "candidate.json").read_text())
    assert record["finetune_steps"] == 12
    assert record["search_accuracy"] == pytest.approx(result.member.accuracy)
    assert record["accuracy"] == pytest.approx(result.refined.deployed.accuracy)
    model = (export / "model.onnx").read_bytes()
    # the retrained graph, the run's preprocessing added to its metadata_props
    exported = onnx.load_from_string(model)
    assert exported.graph == onnx.load_from_string(result.refined.deployed.onnx).graph
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["autocompress.accuracy"] == f"{record['accuracy']:.6f}"
    assert record["size_bytes"] == len(model)
    # the accuracy written is the exported model's, whatever its precision
    data = load_data("digits", seed=0)
    deployed = onnx_accuracy(model, data.val_x.numpy(), data.val_y.numpy())
    assert abs(record["accuracy"] - deployed) <= 1.0 / len(data.val_y)
    assert "after a 12-step finetune at pick" in result.message
    report = write_report(mixed_run, tmp_path / "report.html").read_text()
    assert "after 12 finetune steps at pick" in report


def test_pick_refuses_negative_finetune_steps(mixed_run, tmp_path) -> None:
    with pytest.raises(RunError, match="finetune-steps"):
        pick(mixed_run, 1000.0, tmp_path / "x", finetune_steps=-1)


def test_finetune_needs_the_checkpoint_the_run_searched_from(mixed_run, tmp_path) -> None:
    member = _finetuned(mixed_run)[0]
    folder = RunFolder.open(mixed_run)
    # this run trained its own baseline: a checkpoint is refused
    stray = tmp_path / "other.pt"
    stray.write_bytes(b"not the baseline")
    with pytest.raises(RunError, match="not from a checkpoint"):
        finetune_member(folder, member, 5, checkpoint=stray)
    # a run searched from a checkpoint: it must be that very file
    folder.info = replace(folder.run, identity=replace(folder.run.identity,
                                                       checkpoint_sha256="0" * 64))
    with pytest.raises(RunError, match="--checkpoint"):
        finetune_member(folder, member, 5)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        finetune_member(folder, member, 5, checkpoint=stray)
    with pytest.raises(CheckpointError, match="does not exist"):
        finetune_member(folder, member, 5, checkpoint=tmp_path / "missing.pt")

