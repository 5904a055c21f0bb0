"""The torch-free settings records and their re-exports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import autocompress.data._augment as augment_module
import autocompress.evaluation as evaluation
import autocompress.settings as settings_module
from autocompress.exceptions import SearchSpaceError
from autocompress.settings import (
    NO_AUGMENTATION,
    STANDARD_AUGMENTATION,
    Augmentation,
    DistillSettings,
    EarlyStopping,
    TrainSettings,
)

ROOT = Path(__file__).resolve().parents[2]

_BLOCKED_IMPORT = """
import importlib.abc, sys
BLOCKED = ("torch", "torchvision", "optuna", "numpy")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())

from autocompress.settings import (DistillSettings, EarlyStopping, TrainSettings,
                                   STANDARD_AUGMENTATION, Augmentation)
plan = DistillSettings(training=TrainSettings(augmentation=Augmentation.parse("crop=2,flip")),
                       early_stopping=EarlyStopping(patience=2))
assert DistillSettings.from_dict(plan.to_dict()) == plan
assert [m for m in BLOCKED if m in sys.modules] == []
print("OK")
"""


def test_settings_import_and_work_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORT], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "OK"


def test_the_old_homes_re_export_the_same_objects() -> None:
    for name in settings_module.__all__:
        assert getattr(evaluation, name) is getattr(settings_module, name), name
        assert name in evaluation.__all__
    for name in ("Augmentation", "NO_AUGMENTATION", "STANDARD_AUGMENTATION"):
        assert getattr(augment_module, name) is getattr(settings_module, name)


def test_space_does_not_import_evaluation() -> None:
    """Layering: the search space samples settings; it must not need the training code."""
    offenders = []
    for path in sorted((ROOT / "autocompress" / "space").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.startswith("autocompress.evaluation")]
    assert offenders == []


def test_distill_settings_round_trip_the_augmentation() -> None:
    settings = DistillSettings(training=TrainSettings(steps=50, augmentation=STANDARD_AUGMENTATION))
    data = settings.to_dict()
    assert data["training"]["augmentation"] == {"crop_padding": 4, "horizontal_flip": True}
    assert DistillSettings.from_dict(data) == settings
    assert TrainSettings.from_dict(settings.training.to_dict()) == settings.training


def test_cutout_round_trips_and_is_left_out_when_off() -> None:
    # records (and the keys of baselines cached from them) stay as before cutout existed
    plain = TrainSettings(steps=50, augmentation=STANDARD_AUGMENTATION).to_dict()
    assert "cutout" not in plain["augmentation"]
    with_cutout = TrainSettings(steps=50, augmentation=Augmentation(4, True, cutout=16))
    assert with_cutout.to_dict()["augmentation"]["cutout"] == 16
    assert TrainSettings.from_dict(with_cutout.to_dict()) == with_cutout


def test_bf16_round_trips_and_fp32_is_left_out() -> None:
    # records (and the keys of baselines cached from them) stay as before precision existed
    assert "precision" not in TrainSettings(steps=50).to_dict()
    bf16 = TrainSettings(steps=50, precision="bf16")
    assert bf16.to_dict()["precision"] == "bf16"
    assert TrainSettings.from_dict(bf16.to_dict()) == bf16
    assert TrainSettings.from_dict(TrainSettings(steps=50).to_dict()).precision == "fp32"


@pytest.mark.parametrize("precision", ["fp16", "bfloat16", ""])
def test_an_unknown_training_precision_is_refused(precision: str) -> None:
    with pytest.raises(SearchSpaceError, match="training precision must be one of fp32, bf16"):
        TrainSettings(precision=precision)


def test_plans_written_before_augmentation_existed_still_load() -> None:
    old = DistillSettings().to_dict()
    del old["training"]["augmentation"]
    loaded = DistillSettings.from_dict(old)
    assert loaded.training.augmentation == NO_AUGMENTATION
    assert loaded == DistillSettings()


@pytest.mark.parametrize(("augmentation", "message"), [
    ({"crop_padding": -1}, "crop_padding must be a non-negative integer"),
    ({"crop": 4}, "unexpected keyword argument 'crop'"),
])
def test_a_bad_augmentation_in_a_plan_is_refused(augmentation: dict, message: str) -> None:
    data = DistillSettings().to_dict()
    data["training"]["augmentation"] = augmentation
    with pytest.raises(SearchSpaceError, match="training settings") as info:
        DistillSettings.from_dict(data)
    assert message in str(info.value)
    with pytest.raises(SearchSpaceError, match="must be an Augmentation"):
        DistillSettings(training=TrainSettings(augmentation=augmentation))  # type: ignore[arg-type]


def test_the_teacher_runs_per_batch_with_hints_or_augmentation() -> None:
    assert not DistillSettings().needs_teacher_per_batch
    assert DistillSettings(hint_weight=1.0).needs_teacher_per_batch
    augmented = TrainSettings(augmentation=Augmentation(horizontal_flip=True))
    assert DistillSettings(training=augmented).needs_teacher_per_batch


def test_early_stopping_holdout_size() -> None:
    stopping = EarlyStopping(holdout_fraction=0.1, max_holdout=50)
    assert stopping.holdout_size(200) == 20
    assert stopping.holdout_size(5000) == 50
    assert stopping.holdout_size(3) == 1
