"""Random crop, flip and cutout of training batches, and the augmentation settings' text
forms."""

from __future__ import annotations

import pytest
import torch

from autocompress.data._augment import (
    NO_AUGMENTATION,
    STANDARD_AUGMENTATION,
    Augmentation,
    augment,
)
from autocompress.exceptions import DataError


def _images(count: int = 32, size: int = 8) -> torch.Tensor:
    """Every pixel distinct and non-zero, so where it went can be read back."""
    x = torch.arange(1, count * 2 * size * size + 1, dtype=torch.float32)
    return x.reshape(count, 2, size, size)


def _shift(original: torch.Tensor, cropped: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) the content of one C x H x W image moved by."""
    value = cropped[0, cropped.shape[1] // 2, cropped.shape[2] // 2]
    (r0, c0), = (original[0] == value).nonzero().tolist()
    return cropped.shape[1] // 2 - r0, cropped.shape[2] // 2 - c0


def test_crop_keeps_the_shape_and_moves_content_by_at_most_the_padding() -> None:
    x = _images()
    pad = 2
    out = augment(x, Augmentation(crop_padding=pad), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    shifts = set()
    for original, cropped in zip(x, out, strict=True):
        dy, dx = _shift(original, cropped)
        assert abs(dy) <= pad and abs(dx) <= pad
        # the crop is the image moved by (dy, dx), zeros where it moved in from the padding
        moved = torch.zeros_like(original)
        src = original[:, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
        moved[:, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
        assert torch.equal(cropped, moved)
        shifts.add((dy, dx))
    assert len(shifts) > 1  # not one shift for the whole batch


def test_flip_mirrors_some_images_left_to_right_and_leaves_the_others() -> None:
    x = _images()
    out = augment(x, Augmentation(horizontal_flip=True), torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_cutout_erases_one_square_of_at_most_its_size_per_image_and_nothing_else() -> None:
    x = _images(count=64, size=8)
    out = augment(x, Augmentation(cutout=4), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    places = set()
    for original, erased in zip(x, out, strict=True):
        zero = erased == 0
        # every channel erased alike, the rest untouched (the images have no zero pixel)
        assert torch.equal(zero[0], zero[1])
        assert torch.equal(erased[~zero], original[~zero])
        rows, cols = zero[0].nonzero(as_tuple=True)
        assert len(rows) > 0  # the centre is always inside the image
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height <= 4 and width <= 4 and len(rows) == height * width  # one rectangle
        places.add((int(rows.min()), int(cols.min()), int(height), int(width)))
    # centred anywhere: some squares whole, some clipped at a border, not all in one place
    assert any(h == 4 and w == 4 for *_, h, w in places)
    assert any(h < 4 or w < 4 for *_, h, w in places)
    assert len(places) > 10


def test_a_cutout_larger_than_the_images_is_refused_with_a_size_that_fits() -> None:
    with pytest.raises(DataError, match=r"larger than the 8 x 8 images.*cutout=4"):
        augment(_images(), Augmentation(cutout=9), torch.Generator())


def test_cutout_comes_after_crop_and_flip_and_leaves_their_draws_as_they_were() -> None:
    x = _images()
    plain = augment(x, STANDARD_AUGMENTATION, torch.Generator().manual_seed(2))
    with_cutout = augment(x, Augmentation(crop_padding=4, horizontal_flip=True, cutout=3),
                          torch.Generator().manual_seed(2))
    kept = with_cutout != 0
    assert torch.equal(with_cutout[kept], plain[kept])
    assert (with_cutout == 0).sum() > (plain == 0).sum()


def test_a_seeded_generator_reproduces_the_batch() -> None:
    x = _images()
    first = augment(x, STANDARD_AUGMENTATION, torch.Generator().manual_seed(5))
    again = augment(x, STANDARD_AUGMENTATION, torch.Generator().manual_seed(5))
    other = augment(x, STANDARD_AUGMENTATION, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_disabled_augmentation_returns_the_input_without_drawing() -> None:
    x = _images()
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert augment(x, NO_AUGMENTATION, generator) is x
    assert torch.equal(generator.get_state(), state)


def test_augmentation_needs_image_batches() -> None:
    with pytest.raises(DataError, match="N x C x H x W"):
        augment(torch.zeros(4, 10), STANDARD_AUGMENTATION, torch.Generator())


@pytest.mark.parametrize(("text", "expected"), [
    ("none", NO_AUGMENTATION),
    (" Standard ", STANDARD_AUGMENTATION),
    ("crop=4,flip", Augmentation(crop_padding=4, horizontal_flip=True)),
    ("crop=2", Augmentation(crop_padding=2)),
    ("flip", Augmentation(horizontal_flip=True)),
    ("crop=4,flip,cutout=16", Augmentation(crop_padding=4, horizontal_flip=True, cutout=16)),
    ("cutout=8", Augmentation(cutout=8)),
])
def test_parse_accepts_the_documented_forms(text: str, expected: Augmentation) -> None:
    assert Augmentation.parse(text) == expected


@pytest.mark.parametrize("text", ["rotate", "crop=-1", "crop=x,flip", "crop", "cutout=-2",
                                  "cutout"])
def test_parse_rejects_junk_and_lists_the_valid_forms(text: str) -> None:
    with pytest.raises(DataError) as info:
        Augmentation.parse(text)
    message = str(info.value)
    assert repr(text) in message
    assert all(form in message for form in ("'none'", "'standard'", "'crop=4,flip'"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"crop_padding": -1}, "non-negative integer"),
    ({"crop_padding": True}, "non-negative integer"),
    ({"horizontal_flip": "yes"}, "true or false"),
    ({"cutout": -1}, "side of the erased square"),
    ({"cutout": 2.5}, "side of the erased square"),
])
def test_invalid_values_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Augmentation(**kwargs)


def test_describe_names_what_is_on() -> None:
    assert NO_AUGMENTATION.describe() == "none" and not NO_AUGMENTATION.enabled
    assert STANDARD_AUGMENTATION.describe() == "crop(pad=4)+hflip"
    assert STANDARD_AUGMENTATION.enabled
    with_cutout = Augmentation(crop_padding=4, horizontal_flip=True, cutout=16)
    assert with_cutout.describe() == "crop(pad=4)+hflip+cutout(16)"
    assert Augmentation.parse(with_cutout.spec()) == with_cutout
    assert Augmentation(cutout=8).enabled and Augmentation(cutout=8).spec() == "cutout=8"
