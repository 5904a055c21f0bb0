"""Training-time data augmentation on batches of image tensors.

The standard recipe for small images (He et al., 2016, on CIFAR-10): a random crop of the
original size from the image padded by a few pixels on each side, and a random horizontal
flip. Optionally cutout (DeVries and Taylor, 2017): a square erased at a random place. It is
applied to normalized batches, so padding and erasing are with zeros of the normalized data,
which is the training split's mean colour.

The :class:`~autocompress.settings.Augmentation` record (and its ``NO_AUGMENTATION`` and
``STANDARD_AUGMENTATION`` values) lives in the torch-free :mod:`autocompress.settings` and is
re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autocompress.exceptions import DataError
from autocompress.settings import NO_AUGMENTATION, STANDARD_AUGMENTATION, Augmentation

__all__ = ["NO_AUGMENTATION", "STANDARD_AUGMENTATION", "Augmentation", "augment"]


def augment(x: torch.Tensor, augmentation: Augmentation,
            generator: torch.Generator) -> torch.Tensor:
    """A randomly augmented copy of the N x C x H x W batch ``x`` (``x`` itself, with no
    random number drawn, if ``augmentation`` is disabled).

    The random draws come from ``generator`` only, so a seeded generator gives the same
    batches every time.

    Raises:
        DataError: ``x`` is not a batch of images (N x C x H x W), or the cutout square is
            larger than its images.
    """
    if not augmentation.enabled:
        return x
    if x.dim() != 4:
        raise DataError(f"augmentation needs N x C x H x W image batches, got shape "
                        f"{tuple(x.shape)}; use augmentation 'none' for this data")
    count, _, height, width = x.shape
    augmentation.check_fits(height, width)
    out = x
    pad = augmentation.crop_padding
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
        rows = (dy[:, None] + torch.arange(height)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width)[None, :])[:, None, None, :]
        batch = torch.arange(count)[:, None, None, None]
        channel = torch.arange(x.shape[1])[None, :, None, None]
        out = padded[batch, channel, rows, cols]
    if augmentation.horizontal_flip:
        flip = torch.rand(count, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    if augmentation.cutout:
        out = _cutout(out, augmentation.cutout, generator)
    return out


def _cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` with a ``size`` x ``size`` square set to zero in each image, centred on a pixel
    drawn uniformly (the square is clipped where it overhangs the border)."""
    count, _, height, width = x.shape
    cy = torch.randint(0, height, (count,), generator=generator)
    cx = torch.randint(0, width, (count,), generator=generator)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(height)[None, :]
    cols = torch.arange(width)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
    inside_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
    erased = inside_rows[:, :, None] & inside_cols[:, None, :]
    return x.masked_fill(erased[:, None, :, :], 0.0)
