from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from autocompress.data import DataSplit, list_datasets, load_data
from autocompress.exceptions import DataError

_CIFAR_TARBALL = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10" / "train-jpeg.tar.gz"
)


@pytest.fixture(scope="module")
def mnist() -> DataSplit:
    return load_data("mnist")


@pytest.fixture(scope="module")
def digits() -> DataSplit:
    return load_data("digits")


def _write_image_folder(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """Two classes, three PNGs each: 'dark' images are near black, 'light' near white."""
    sizes = sizes or {}
    for class_name, level in (("dark", 20), ("light", 230)):
        (root / class_name).mkdir(parents=True)
        for index in range(3):
            name = f"{class_name}/{index}.png"
            width, height = sizes.get(name, (6, 5))
            color = (level + index, level, 255 - level)
            Image.new("RGB", (width, height), color).save(root / name)
    return root


def test_list_datasets() -> None:
    assert list_datasets() == ["digits", "imagefolder:PATH", "mnist"]


def test_mnist_shapes_and_normalization(mnist: DataSplit) -> None:
    assert mnist.train_x.shape == (4000, 1, 28, 28)
    assert mnist.val_x.shape == (1000, 1, 28, 28)
    assert mnist.train_x.dtype == torch.float32 and mnist.train_y.dtype == torch.int64
    assert mnist.input_shape == (1, 1, 28, 28)
    assert mnist.num_classes == 10 and mnist.class_names == tuple("0123456789")
    assert set(torch.cat([mnist.train_y, mnist.val_y]).tolist()) == set(range(10))
    assert abs(mnist.train_x.mean().item()) < 0.05
    assert 0.9 < mnist.train_x.std().item() < 1.1


def test_digits_shapes_and_normalization(digits: DataSplit) -> None:
    assert digits.input_shape == (1, 1, 8, 8)
    assert len(digits.train_y) + len(digits.val_y) == 1797
    assert len(digits.val_y) == round(1797 * 0.2)
    assert abs(digits.train_x.mean().item()) < 1e-4
    assert abs(digits.train_x.std().item() - 1.0) < 1e-3
    assert digits.num_classes == 10


def test_split_is_deterministic_per_seed(digits: DataSplit) -> None:
    again = load_data("digits", seed=0)
    other = load_data("digits", seed=1)
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.val_y, digits.val_y)
    assert again.fingerprint == digits.fingerprint
    assert not torch.equal(other.val_y, digits.val_y)
    assert other.fingerprint != digits.fingerprint


def test_val_fraction_changes_split_and_fingerprint(digits: DataSplit) -> None:
    half = load_data("digits", val_fraction=0.5)
    assert len(half.val_y) == round(1797 * 0.5)
    assert half.fingerprint != digits.fingerprint


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        load_data("digits", val_fraction=fraction)


def test_unknown_spec_lists_valid_specs() -> None:
    with pytest.raises(DataError, match="digits, imagefolder:PATH, mnist"):
        load_data("cifar100")


def test_with_channels(digits: DataSplit) -> None:
    assert digits.with_channels(1) is digits
    rgb = digits.with_channels(3)
    assert rgb.input_shape == (1, 3, 8, 8)
    assert torch.equal(rgb.train_x[:, 2], digits.train_x[:, 0])
    assert torch.equal(rgb.val_y, digits.val_y)
    assert rgb.fingerprint != digits.fingerprint
    with pytest.raises(DataError, match="only 1 -> 3"):
        digits.with_channels(2)
    with pytest.raises(DataError, match="only 1 -> 3"):
        rgb.with_channels(1)


def test_resized(digits: DataSplit) -> None:
    assert digits.resized(8, 8) is digits
    big = digits.resized(16, 12)
    assert big.input_shape == (1, 1, 16, 12)
    assert big.val_x.shape[0] == digits.val_x.shape[0]
    assert big.fingerprint != digits.fingerprint
    # resizing interpolates: the mean brightness stays about the same
    assert torch.allclose(big.train_x.mean(), digits.train_x.mean(), atol=0.05)
    with pytest.raises(DataError, match="height"):
        digits.resized(0, 8)


def test_image_size_resizes_builtins_on_load() -> None:
    data = load_data("digits", image_size=(28, 28))
    assert data.input_shape == (1, 1, 28, 28)
    assert data.fingerprint != load_data("digits").fingerprint


def test_image_folder(tmp_path: Path) -> None:
    root = _write_image_folder(tmp_path / "images")
    data = load_data(f"imagefolder:{root}", val_fraction=0.5, seed=3)
    assert data.class_names == ("dark", "light")
    assert data.num_classes == 2
    assert data.input_shape == (1, 3, 5, 6)
    assert len(data.train_y) == 3 and len(data.val_y) == 3
    assert sorted(torch.cat([data.train_y, data.val_y]).tolist()) == [0, 0, 0, 1, 1, 1]
    per_channel_mean = data.train_x.mean(dim=(0, 2, 3))
    assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-5)
    # normalization keeps the order: every light image is redder than every dark one
    red = torch.cat([data.train_x, data.val_x])[:, 0, 0, 0]
    labels = torch.cat([data.train_y, data.val_y])
    assert red[labels == 1].min() > red[labels == 0].max()
    again = load_data(f"imagefolder:{root}", val_fraction=0.5, seed=3)
    assert again.fingerprint == data.fingerprint
    assert torch.equal(again.val_x, data.val_x)


def test_image_folder_sizes_must_match_or_be_resized(tmp_path: Path) -> None:
    root = _write_image_folder(tmp_path / "images", sizes={"light/1.png": (9, 7)})
    with pytest.raises(DataError, match=r"differ in size.*1\.png is 7x9.*image_size"):
        load_data(f"imagefolder:{root}")
    data = load_data(f"imagefolder:{root}", image_size=(4, 4), val_fraction=0.5)
    assert data.input_shape == (1, 3, 4, 4)


def test_image_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'absent'}")


def test_image_folder_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")


def test_image_folder_without_class_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(f"imagefolder:{root}")


def test_image_folder_with_unreadable_image_names_it(tmp_path: Path) -> None:
    root = _write_image_folder(tmp_path / "images")
    (root / "dark" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_data(f"imagefolder:{root}")


def test_data_split_validates_its_tensors() -> None:
    x = torch.zeros(4, 1, 2, 2)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(DataError, match="train_y"):
        DataSplit("t", x, y[:3], x, y, 1, ("a",), "f")
    with pytest.raises(DataError, match="class names"):
        DataSplit("t", x, y, x, y, 2, ("a",), "f")


@pytest.mark.slow
@pytest.mark.skipif(not _CIFAR_TARBALL.is_file(), reason="needs ../shared/data/cifar10")
def test_cifar10_jpeg_folder_loads(tmp_path: Path) -> None:
    """(How fast it loads is a benchmark's business: benchmarks/cifar10.py reports it.)"""
    with tarfile.open(_CIFAR_TARBALL) as archive:
        archive.extractall(tmp_path, filter="data")
    data = load_data(f"imagefolder:{tmp_path / 'train'}")
    assert data.input_shape == (1, 3, 32, 32)
    assert len(data.train_y) == 45_000 and len(data.val_y) == 5_000
    assert data.num_classes == 10
