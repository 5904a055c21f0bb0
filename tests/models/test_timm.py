"""timm models by name (``timm:NAME``): random weights for the data's class and channel
counts, nothing downloaded, clear errors, and a search end to end on built-in data."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from autocompress.cli.main import main
from autocompress.data import load_data
from autocompress.exceptions import ModelError
from autocompress.models import create_model, resolve_model
from autocompress.study import RunFolder, load_front

SMALL = "timm:resnet10t"  # a plain residual net: 4.9M parameters, prunes with Torch-Pruning


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a timm model was created with a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(("classes", "channels"), [(7, 1), (10, 3)])
def test_timm_model_is_built_for_the_data_class_and_channel_counts(
        classes: int, channels: int, no_network: None) -> None:
    spec = resolve_model(SMALL)
    assert spec.source == "timm"
    assert spec.fixed_in_channels is None          # timm builds its stem for any count
    assert spec.fingerprint == f"timm:{timm.__version__}:resnet10t"
    model = create_model(SMALL, num_classes=classes, in_channels=channels).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == channels
    assert model.get_classifier().out_features == classes
    with torch.no_grad():
        assert model(torch.randn(2, channels, 28, 28)).shape == (2, classes)


def test_plain_names_stay_torchvision_names() -> None:
    assert resolve_model("resnet18").source == "torchvision"
    assert resolve_model("timm:resnet18").source == "timm"


@pytest.mark.parametrize(("name", "expected"), [
    ("timm:resnet10x", "timm:resnet10t"),                # close matches are listed
    ("timm:mobilenetv3_small", "timm:mobilenetv3_small_050"),
    ("timm:", "timm:NAME"),
    ("timm:resnet10t.a1_in1k", "write 'timm:resnet10t'"),  # pretrained tags: never downloaded
    ("timm:hf-hub:timm/resnet18.a1_in1k", "never downloads"),
])
def test_bad_timm_names_say_what_to_write(name: str, expected: str) -> None:
    with pytest.raises(ModelError) as caught:
        resolve_model(name)
    assert expected in str(caught.value)


def test_unknown_plain_name_mentions_timm_names() -> None:
    with pytest.raises(ModelError, match="timm:NAME"):
        resolve_model("resnet21")


def test_an_input_too_small_for_the_model_is_refused_with_what_to_do() -> None:
    # timm's test_convnext downsamples 8x8 below its 2x2 stage convolutions; 32x32 works
    with pytest.raises(ModelError, match="--input-shape") as caught:
        create_model("timm:test_convnext", num_classes=10, in_channels=1, input_size=(8, 8))
    assert "1x1x8x8" in str(caught.value)
    model = create_model("timm:test_convnext", num_classes=10, in_channels=1,
                         input_size=(32, 32))
    assert model.training                          # the check leaves the model as built


def test_the_search_refuses_data_too_small_for_the_model(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, synthetic_profile: Path) -> None:
    code = main(["search", "--model", "timm:test_convnext", "--data", "digits",
                 "--profile", str(synthetic_profile), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "--input-shape" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_timm_is_imported_only_for_timm_models() -> None:
    script = ("import sys\nfrom autocompress.models import create_model, resolve_model\n"
              "create_model('resnet20', num_classes=10, in_channels=1)\n"
              "resolve_model('torchvision:resnet18')\n"
              "assert 'timm' not in sys.modules, 'timm imported'\n"
              "resolve_model('timm:resnet10t')\n"
              "assert 'timm' in sys.modules\nprint('OK')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "OK"


def test_a_timm_model_searches_end_to_end_on_builtin_data(
        tmp_path: Path, synthetic_profile: Path) -> None:
    """Search, front and pick through the command line; the exported ONNX model scores the
    accuracy the run recorded for it."""
    run, export = tmp_path / "run", tmp_path / "export"
    assert main(["search", "--model", SMALL, "--data", "digits", "--trials", "2",
                 "--finetune-steps", "5", "--screen", "0", "--no-allocation",
                 "--profile", str(synthetic_profile), "--out", str(run)]) == 0

    info = RunFolder.open(run).run
    assert info.model == SMALL
    front = load_front(run)
    assert len(front) >= 1
    assert all(m.params < info.baseline.params for m in front)  # channels were pruned
    budget = max(m.predicted_latency_ms for m in front) * 1.5
    assert main(["pick", str(run), "--latency-budget-ms", str(budget),
                 "--export", str(export)]) == 0

    record = json.loads((export / "candidate.json").read_text())
    session = ort.InferenceSession(str(export / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    data = load_data("digits", seed=0)
    inputs, labels = data.val_x.numpy(), data.val_y.numpy()
    name = session.get_inputs()[0].name
    predicted = np.array([session.run(None, {name: inputs[i:i + 1]})[0].argmax()
                          for i in range(len(labels))])
    accuracy = float((predicted == labels).mean())
    assert accuracy == pytest.approx(record["accuracy"], abs=1.5 / len(labels))
    assert accuracy > 0.5                          # well above chance (0.1) on 10 classes


def test_estimate_takes_a_timm_models_own_input_size(synthetic_profile) -> None:
    from autocompress.study import estimate_latency

    estimate = estimate_latency(synthetic_profile, "timm:resnet10t")
    assert estimate.input_shape == (1, 3, 176, 176)   # timm's default for resnet10t
    assert estimate.estimate.latency_ms > 0
