"""The command line: one-line errors for bad input, and surviving a SIGKILL mid-search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from autocompress.cli.main import main
from autocompress.study import TrialRecord


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ")
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_malformed_space_names_file_and_key(capsys, tmp_path, synthetic_profile) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text("format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
                     "      keep_ratio: {low: 0.5, high: 1.5}\n")
    message = _error(capsys, ["search", "--space", str(space), "--profile", str(synthetic_profile),
                              "--out", str(tmp_path / "run"), "--data", "digits"])
    assert "bad.yaml" in message and "keep_ratio.high" in message and "allowed" in message


def test_unknown_model_lists_valid_names(capsys, tmp_path, synthetic_profile) -> None:
    message = _error(capsys, ["search", "--model", "resnet21", "--profile", str(synthetic_profile),
                              "--out", str(tmp_path / "run")])
    assert "resnet20" in message


def test_unknown_data_lists_valid_specs(capsys, tmp_path, synthetic_profile) -> None:
    message = _error(capsys, ["search", "--data", "cifar", "--profile", str(synthetic_profile),
                              "--out", str(tmp_path / "run")])
    assert "mnist" in message


def test_profile_of_another_format_version(capsys, tmp_path, synthetic_profile) -> None:
    data = json.loads(synthetic_profile.read_text())
    data["format_version"] = 99
    other = tmp_path / "old.json"
    other.write_text(json.dumps(data))
    message = _error(capsys, ["search", "--data", "digits", "--profile", str(other),
                              "--out", str(tmp_path / "run")])
    assert "format_version 99" in message and "autocompress profile" in message


def test_checkpoint_with_pickled_code_is_refused(capsys, tmp_path, synthetic_profile) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": _Payload()}, path)
    message = _error(capsys, ["search", "--data", "digits", "--profile", str(synthetic_profile),
                              "--checkpoint", str(path), "--out", str(tmp_path / "run")])
    assert "state_dict" in message


def test_front_of_a_folder_that_is_no_run(capsys, tmp_path) -> None:
    message = _error(capsys, ["front", str(tmp_path)])
    assert "run.json" in message


class _Payload:
    """A class that torch.load(weights_only=True) must refuse to rebuild."""


def _trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{(run / 'study.db').resolve()}"
    try:
        return optuna.load_study(study_name="autocompress", storage=storage).get_trials()
    except Exception:
        return []


def test_sigkill_mid_trial_then_rerun_keeps_completed_trials(tmp_path, synthetic_profile) -> None:
    """Killed mid-trial (trained, heartbeat running, not yet complete): the rerun fails the
    dead trial once its heartbeat is stale, retries it, and keeps what was completed. The
    kill comes from the storage's fault hook, at the same point on any host."""
    from autocompress.study._storage import KILL_AT_TRIAL_ENV

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "autocompress", "search", "--data", "digits", "--trials", "3",
            "--finetune-steps", "20", "--latency-budget-ms", "1000", "--screen", "0",
            "--no-allocation", "--profile", str(synthetic_profile), "--out", str(run)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = subprocess.run(argv, env={**env, KILL_AT_TRIAL_ENV: "1:trained"},
                            capture_output=True, text=True, timeout=1800)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    trials = _trials(run)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.RUNNING]
    _rerun_finishes(argv, env, run, trials[:1])


def _rerun_finishes(argv: list[str], env: dict[str, str], run: Path,
                    done: list[optuna.trial.FrozenTrial]) -> None:
    """The same command again completes the study and keeps every completed trial."""
    before = {t.number: (t.values, TrialRecord.of(t).artifact) for t in done}
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stderr
    trials = _trials(run)
    complete = {t.number: t for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    for number, (values, artifact) in before.items():
        assert complete[number].values == values
        assert (run / artifact).is_file()
    assert sum(1 for t in complete.values() if TrialRecord.of(t).finetuned) == 3
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


def test_killed_before_the_first_heartbeat_then_rerun_finishes(tmp_path, synthetic_profile):
    """A worker killed between creating a trial and writing its first heartbeat leaves a
    RUNNING trial without heartbeat: the rerun fails it after the grace period (and retries
    it) instead of waiting for it for ever. The kill comes from the storage's fault hook, so
    it hits that window every time, whatever the host's speed."""
    from autocompress.study._storage import KILL_AT_TRIAL_ENV

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "autocompress", "search", "--data", "digits", "--trials", "3",
            "--finetune-steps", "20", "--latency-budget-ms", "1000", "--screen", "0",
            "--no-allocation", "--profile", str(synthetic_profile), "--out", str(run)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = subprocess.run(argv, env={**env, KILL_AT_TRIAL_ENV: "1"}, capture_output=True,
                            text=True, timeout=1800)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    trials = _trials(run)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.RUNNING]
    _rerun_finishes(argv, env, run, trials[:1])


def test_train_precision_bf16_reaches_every_training_of_the_run(tmp_path, synthetic_profile,
                                                               monkeypatch) -> None:
    import autocompress.evaluation._train as train_module

    seen: set[str] = set()
    real = train_module._autocast

    def spy(precision, device):
        seen.add(precision)
        return real(precision, device)

    monkeypatch.setattr(train_module, "_autocast", spy)
    run = tmp_path / "run"
    assert main(["search", "--data", "digits", "--trials", "2", "--finetune-steps", "10",
                 "--latency-budget-ms", "1000", "--screen", "0", "--no-allocation",
                 "--train-precision", "bf16", "--profile", str(synthetic_profile),
                 "--out", str(run)]) == 0
    assert seen == {"bf16"}        # the baseline trained here and every finetune
    assert json.loads((run / "run.json").read_text())["identity"]["train_precision"] == "bf16"
    assert sum(1 for t in _trials(run) if TrialRecord.of(t).finetuned) == 2


def test_measure_and_estimate_an_onnx_file(capsys, tmp_path, synthetic_profile) -> None:
    from autocompress.hardware.kernels import Kernel, kernel_graph

    path = tmp_path / "conv.onnx"
    path.write_bytes(kernel_graph(Kernel("conv", 16, 16, 8, 8, kernel=3)))
    assert main(["measure", "--onnx", str(path), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "ms median (measured on onnxruntime, 1 thread(s)" in out
    assert main(["estimate", "--onnx", str(path), "--profile", str(synthetic_profile)]) == 0
    out = capsys.readouterr().out
    assert "estimate from" in out and "uncalibrated" in out


def test_estimate_needs_an_input_shape_for_a_file_model(capsys, tmp_path, synthetic_profile):
    source = tmp_path / "net.py"
    source.write_text("import torch.nn as nn\n"
                      "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))\n")
    message = _error(capsys, ["estimate", "--model", f"{source}:make", "--profile",
                              str(synthetic_profile)])
    assert "--input-shape" in message
    assert main(["estimate", "--model", f"{source}:make", "--profile", str(synthetic_profile),
                 "--input-shape", "1,3,2,2"]) == 0


def test_tuning_trials_reach_the_tvm_backend() -> None:
    from autocompress.cli.main import _backend_args, _parser

    args = _parser().parse_args(["profile", "--backend", "tvm", "--tuning-trials", "4",
                                 "--out", "p.json"])
    assert _backend_args(args)["tuning_trials"] == 4
    pytest.importorskip("tvm")
    from autocompress.hardware.backends import get_backend

    settings = get_backend("tvm", **_backend_args(args)).settings()
    assert settings["tuned"] is True and settings["tuning_trials"] == 4
