from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from autocompress.exceptions import CheckpointError, ModelError
from autocompress.models import (
    ModelSpec,
    create_model,
    list_models,
    load_checkpoint,
    register_model,
    resolve_model,
)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _write_model_file(directory: Path, body: str) -> Path:
    path = directory / "m.py"
    path.write_text("import torch\nfrom torch import nn\n\n" + textwrap.dedent(body))
    return path


class NotAllowedInCheckpoints:
    """A custom class: pickling it into a checkpoint means the file carries code."""

    def __init__(self) -> None:
        self.value = 3


# --- builtins (registry-driven: a new builtin is covered automatically) -----------------------


def test_builtin_registry_lists_the_builtins_sorted() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"resnet20", "resnet32", "resnet56", "mobilenet_v2"} <= set(names)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_builtin_builds_and_gives_logits_for_28_and_32_px(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_channels).eval()
    with torch.no_grad():
        for size in (28, 32):
            logits = model(torch.randn(1, in_channels, size, size))
            assert logits.shape == (1, 10)
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_builtin_spec_adapts_to_channels_and_has_versioned_fingerprint(name: str) -> None:
    spec = resolve_model(name)
    assert spec == ModelSpec(name, "builtin", None, f"builtin:{name}:v1")


def test_resnet_parameter_counts() -> None:
    counts = {
        name: _param_count(create_model(name, num_classes=10, in_channels=3))
        for name in ("resnet20", "resnet32", "resnet56")
    }
    assert 0.26e6 < counts["resnet20"] < 0.28e6
    assert counts["resnet56"] > counts["resnet32"] > counts["resnet20"]


def test_resnet_uses_projection_shortcuts_not_lambdas() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    projections = [m for name, m in model.named_modules() if name.endswith("shortcut.0")]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]


def test_mobilenet_v2_width_mult_and_expand_ratio_change_the_size() -> None:
    from autocompress.models.mobilenet_v2 import MobileNetV2

    base = _param_count(MobileNetV2(num_classes=10, in_channels=3))
    narrow = _param_count(MobileNetV2(num_classes=10, in_channels=3, width_mult=0.5))
    shallow = _param_count(MobileNetV2(num_classes=10, in_channels=3, expand_ratio=2))
    assert 2.0e6 < base < 2.4e6
    assert narrow < base and shallow < base
    with pytest.raises(ModelError, match="width_mult"):
        MobileNetV2(num_classes=10, in_channels=3, width_mult=0)


def test_register_model_refuses_a_taken_name() -> None:
    with pytest.raises(ModelError, match="already registered"):
        register_model("resnet20")(lambda **_: nn.Identity())


def test_create_model_rejects_invalid_counts() -> None:
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet20", num_classes=0, in_channels=3)


# --- torchvision ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_torchvision_model_by_plain_name_and_prefix(name: str) -> None:
    spec = resolve_model(name)
    assert spec.source == "torchvision"
    assert spec.fixed_in_channels == 3
    assert spec.fingerprint.startswith("torchvision:") and spec.fingerprint.endswith(":resnet18")
    model = create_model(name, num_classes=7, in_channels=3).eval()
    assert model.fc.out_features == 7
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_torchvision_model_refuses_other_channel_counts() -> None:
    with pytest.raises(ModelError, match="with_channels"):
        create_model("resnet18", num_classes=10, in_channels=1)


def test_builtin_name_wins_over_torchvision_name() -> None:
    assert resolve_model("mobilenet_v2").source == "builtin"
    assert resolve_model("torchvision:mobilenet_v2").source == "torchvision"


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ModelError) as caught:
        resolve_model("resnet21")
    message = str(caught.value)
    for name in list_models():
        assert name in message
    assert "torchvision:NAME" in message and ".py:factory" in message


# --- models from files ----------------------------------------------------------------------


def test_file_factory_with_num_classes(tmp_path: Path) -> None:
    path = _write_model_file(
        tmp_path,
        """
        def make(num_classes):
            return nn.Sequential(
                nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
            )
        """,
    )
    spec = resolve_model(f"{path}:make")
    assert spec.source == "file" and spec.fixed_in_channels == 1
    assert spec.fingerprint.startswith("file:") and spec.fingerprint.endswith(":make")
    model = create_model(f"{path}:make", num_classes=5, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(ModelError, match="1-channel"):
        create_model(f"{path}:make", num_classes=5, in_channels=3)


def test_file_factory_without_parameters(tmp_path: Path) -> None:
    path = _write_model_file(
        tmp_path,
        """
        def make():
            return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        """,
    )
    model = create_model(f"{path}:make", num_classes=10, in_channels=3)
    assert model(torch.randn(2, 3, 2, 2)).shape == (2, 3)  # the factory chose 3 outputs


def test_file_fingerprint_follows_the_file_contents(tmp_path: Path) -> None:
    path = _write_model_file(tmp_path, "def make():\n    return nn.Linear(2, 2)\n")
    before = resolve_model(f"{path}:make").fingerprint
    _write_model_file(tmp_path, "def make():\n    return nn.Linear(2, 3)\n")
    after = resolve_model(f"{path}:make").fingerprint
    assert before != after
    assert create_model(f"{path}:make", num_classes=2, in_channels=1).out_features == 3


def test_file_missing_factory_lists_callables(tmp_path: Path) -> None:
    path = _write_model_file(
        tmp_path,
        """
        def build_a():
            return nn.Linear(2, 2)

        class Net(nn.Module):
            pass
        """,
    )
    with pytest.raises(ModelError, match="no callable 'make'.*Net, build_a"):
        resolve_model(f"{path}:make")


def test_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(f"{tmp_path / 'absent.py'}:make")


def test_file_factory_raising_is_chained(tmp_path: Path) -> None:
    path = _write_model_file(
        tmp_path,
        """
        def make(num_classes):
            raise ValueError("boom")
        """,
    )
    with pytest.raises(ModelError, match="raised ValueError: boom") as caught:
        create_model(f"{path}:make", num_classes=10, in_channels=3)
    assert isinstance(caught.value.__cause__, ValueError)


def test_file_factory_returning_a_non_module(tmp_path: Path) -> None:
    path = _write_model_file(tmp_path, "def make(**kwargs):\n    return kwargs\n")
    with pytest.raises(ModelError, match="returned dict, not a torch.nn.Module"):
        create_model(f"{path}:make", num_classes=10, in_channels=3)


# --- checkpoints ----------------------------------------------------------------------------


def _saved_resnet20(path: Path, *, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=num_classes, in_channels=3)
    torch.save(model.state_dict(), path)
    return model


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_checkpoint_round_trip(tmp_path: Path, wrapper: str | None) -> None:
    source = _saved_resnet20(tmp_path / "plain.pt")
    state = source.state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    torch.manual_seed(2)
    target = create_model("resnet20", num_classes=10, in_channels=3)
    load_checkpoint(target, path)
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_with_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": NotAllowedInCheckpoints()}, path)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match=r"pickled Python object.*model\.state_dict\(\)"):
        load_checkpoint(model, path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    _saved_resnet20(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_checkpoint(model, path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(model, tmp_path / "absent.pt")


def test_checkpoint_of_another_architecture_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    _saved_resnet20(path)
    model = create_model("resnet32", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match=r"CifarResNet: missing keys \(\d+\): layer1\.3\."):
        load_checkpoint(model, path)


def test_checkpoint_with_other_shapes_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    _saved_resnet20(path, num_classes=100)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match=r"fc\.weight \(100, 64\) in the checkpoint"):
        load_checkpoint(model, path)


def test_checkpoint_without_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3}, path)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_checkpoint(model, path)
