"""Preprocessing: the ``--normalize`` forms, resize and center crop, and what is recorded of
them (the numbers a deployment needs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autocompress.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    load_data,
    parse_center_crop,
    parse_normalize,
)
from autocompress.data._preprocess import check_resize
from autocompress.exceptions import DataError


@pytest.mark.parametrize(("text", "expected"), [
    ("dataset", None),
    (" Dataset ", None),
    ("imagenet", (IMAGENET_MEAN, IMAGENET_STD)),
    ("none", ((), ())),
    ("0.5,0.25", ((0.5,), (0.25,))),
    ("0.1,0.2,0.3,0.4,0.5,0.6", ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))),
])
def test_normalize_forms(text: str, expected: object) -> None:
    assert parse_normalize(text) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("imagenette", "--normalize must be dataset"),
    ("", "--normalize must be dataset"),
    ("0.5", "(1 numbers)"),
    ("0.1,0.2,0.3", "(3 numbers)"),
    ("0.5,abc", "MEAN,STD numbers on the 0-1 scale"),
    ("nan,0.2", "--normalize must be dataset"),
    ("0.5,0", "every std must be positive"),
    ("0.5,-0.2", "every std must be positive"),
])
def test_bad_normalize_says_what_is_valid(text: str, fragment: str) -> None:
    with pytest.raises(DataError) as caught:
        parse_normalize(text)
    assert fragment in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), (12, (12, 12)), ("12", (12, 12)), ("12,10", (12, 10)), ("12x10", (12, 10)),
    ((7, 9), (7, 9)),
])
def test_center_crop_forms(value: object, expected: object) -> None:
    assert parse_center_crop(value) == expected


@pytest.mark.parametrize("value", [0, -3, "a", "1,2,3", "0,4", True, 2.5])
def test_bad_center_crop(value: object) -> None:
    with pytest.raises(DataError, match="--center-crop must be a positive integer"):
        parse_center_crop(value)


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "16"])
def test_bad_resize(value: object) -> None:
    with pytest.raises(DataError, match="--resize must be a positive integer"):
        check_resize(value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory,
           image_folder: Callable[..., Path]) -> Path:
    return image_folder(tmp_path_factory.mktemp("pre") / "images", 40, size=(20, 26), seed=4)


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    """Every image of ``folder`` as H x W x 3 uint8, by path relative to it."""
    return {str(p.relative_to(folder)): np.array(Image.open(p).convert("RGB"))
            for p in sorted(folder.rglob("*.png"))}


def _all_inputs(data) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    x_train, y_train = data.train.materialize()
    x_val, y_val = data.val.materialize()
    return torch.cat([x_train, x_val]), torch.cat([y_train, y_val])


def _sorted_raw(folder: Path) -> torch.Tensor:
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in _pixels(folder).values()])


def _by_content(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` in a fixed order that depends on their values only."""
    keys = x.flatten(1).double().mul(torch.arange(x[0].numel(), dtype=torch.float64).add(1))
    return x[keys.sum(dim=1).argsort()]


@pytest.mark.parametrize("normalize", ["imagenet", "none", "0.5,0.25",
                                       "0.4,0.5,0.6,0.1,0.2,0.3"])
def test_fixed_normalization_is_applied_and_recorded(folder: Path, normalize: str) -> None:
    data = load_data(f"imagefolder:{folder}", normalize=normalize, seed=0)
    mean, std = parse_normalize(normalize)  # type: ignore[misc]
    p = data.preprocessing
    assert (p.normalize, p.mean, p.std) == (normalize, mean, std)
    assert p.input_size == (20, 26) and p.resize is None and p.center_crop is None
    x, _ = _all_inputs(data)
    unit = _sorted_raw(folder).float() / 255
    if mean:
        m = torch.tensor(mean).reshape(1, -1, 1, 1)
        s = torch.tensor(std).reshape(1, -1, 1, 1)
        unit = (unit - m) / s
    else:
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(_by_content(x), _by_content(unit))


def test_dataset_normalization_uses_the_training_images_only(folder: Path) -> None:
    data = load_data(f"imagefolder:{folder}", seed=0)
    assert data.preprocessing.normalize == "dataset"
    x_train, _ = data.train.materialize()
    assert torch.allclose(x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    # the recorded numbers are those of the training images, on the 0-1 scale
    raw = data.train.with_transform(type(data.train.transform)()).materialize()[0]
    assert np.allclose(data.preprocessing.mean, raw.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    x_val, _ = data.val.materialize()
    assert not torch.allclose(x_val.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_normalization_with_the_wrong_number_of_channels(folder: Path) -> None:
    with pytest.raises(DataError, match=r"gives 2 values per statistic but the images have 3"):
        load_data(f"imagefolder:{folder}", normalize="0.1,0.2,0.3,0.4")


def test_resize_then_center_crop_as_torchvision_does_on_pil_images(folder: Path) -> None:
    from torchvision import transforms

    data = load_data(f"imagefolder:{folder}", normalize="none", resize=16, center_crop="12,14",
                     seed=0)
    assert data.input_shape == (1, 3, 12, 14)
    p = data.preprocessing
    assert (p.resize, p.center_crop, p.input_size) == (16, (12, 14), (12, 14))
    assert "resize shorter side to 16, center crop 12x14" in p.describe()
    classic = transforms.Compose([transforms.Resize(16), transforms.CenterCrop((12, 14)),
                                  transforms.ToTensor()])
    expected = torch.stack([classic(Image.open(path).convert("RGB"))
                            for path in sorted(folder.rglob("*.png"))])
    x, _ = _all_inputs(data)
    assert torch.equal(_by_content(x), _by_content(expected))


def test_resize_applies_to_image_folders_only() -> None:
    with pytest.raises(DataError, match="--resize and --center-crop apply to image folders"):
        load_data("digits", resize=16)


def test_preprocessing_settings_change_the_fingerprint(folder: Path) -> None:
    spec = f"imagefolder:{folder}"
    prints = {load_data(spec, **kw).fingerprint for kw in (  # type: ignore[arg-type]
        {}, {"normalize": "imagenet"}, {"resize": 18}, {"center_crop": 16})}
    assert len(prints) == 4


def test_metadata_holds_every_number_a_deployment_needs() -> None:
    p = Preprocessing(normalize="imagenet", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=256,
                      center_crop=(224, 224), input_size=(224, 224), embedded=True)
    props = p.metadata(("cat", "dog"))
    assert all(key.startswith("autocompress.") and isinstance(v, str) for key, v in props.items())
    assert json.loads(props["autocompress.normalize_mean"]) == list(IMAGENET_MEAN)
    assert json.loads(props["autocompress.normalize_std"]) == list(IMAGENET_STD)
    assert json.loads(props["autocompress.resize"]) == 256
    assert json.loads(props["autocompress.center_crop"]) == [224, 224]
    assert json.loads(props["autocompress.input_size"]) == [224, 224]
    assert json.loads(props["autocompress.preprocessing_embedded"]) is True
    assert json.loads(props["autocompress.class_names"]) == ["cat", "dog"]
    assert props["autocompress.normalize"] == "imagenet"
    none = Preprocessing(normalize="none").metadata()
    assert json.loads(none["autocompress.normalize_mean"]) == []
    assert "not normalized" in none["autocompress.preprocessing"]
    assert "autocompress.class_names" not in none
