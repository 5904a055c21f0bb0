"""Shared fixtures: an isolated cache folder, profiles of the deterministic synthetic backend
(for everything whose outcome must not depend on this host's speed) and a small real profile
of this CPU (for what only a real runtime can show)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autocompress.hardware import MeasureSettings, get_backend
from autocompress.hardware.kernels import KINDS
from autocompress.hardware.profiler import default_grid, profile_backend


def write_image_folder(root: Path, count: int, *, classes: int = 4,
                       size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """``count`` RGB PNGs of ``size`` (height, width) in ``root/class<k>/``, classes in turn.

    Class ``k`` has a hue of its own (the same for every seed); each image gets a random
    colour shift and pixel noise drawn from ``seed``, so the classes overlap a little and a
    small model scores neither 0 nor 1 on them after a short training.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    angles = [2 * math.pi * k / classes for k in range(classes)]
    centers = np.array([[128 + 45 * math.cos(a - shift) for shift in (0, 2.1, 4.2)]
                        for a in angles])
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        k = index % classes
        color = centers[k] + rng.normal(0.0, 22.0, size=3)
        pixels = color + rng.normal(0.0, 30.0, size=(*size, 3))
        image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"class{k}" / f"{index:06d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder() -> Callable[..., Path]:
    """:func:`write_image_folder`: writes a synthetic image folder where a test asks."""
    return write_image_folder


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's ~/.cache/autocompress."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def _thinned_profile(path: Path, *, per_kind: int, adaptive: int,
                     precisions: tuple[str, ...] = ("fp32",)) -> Path:
    """A real ONNX Runtime profile of this CPU over about ``per_kind`` kernels of each kind,
    without the channel sweep (whose outcome would depend on this host: spaces that leave
    ``round_to`` to the device do not round with it)."""
    grid = default_grid()
    small = []
    for kind in KINDS:
        of_kind = [k for k in grid if k.kind == kind]
        small.extend(of_kind[:: max(1, len(of_kind) // per_kind)])
    profile_backend(get_backend("onnxruntime", threads=1), path, grid=small, rounds=1,
                    adaptive=adaptive, precisions=precisions, sweep=False,
                    settings=MeasureSettings(max_time_s=0.05, min_runs=10, round_runs=10))
    return path


@pytest.fixture(scope="session")
def small_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX Runtime profile of this CPU over a thinned grid (a few seconds)."""
    return _thinned_profile(tmp_path_factory.mktemp("profile") / "cpu.json", per_kind=6,
                            adaptive=4)


@pytest.fixture(scope="session")
def small_int8_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, fp32 and int8 kernels, over a thinner grid."""
    return _thinned_profile(tmp_path_factory.mktemp("profile") / "cpu-int8.json", per_kind=4,
                            adaptive=0, precisions=("fp32", "int8"))


def _synthetic_profile(path: Path, precisions: tuple[str, ...]) -> Path:
    """A profile of the synthetic backend: its latencies are a fixed function of the graph
    (scaled by ``AUTOCOMPRESS_SYNTHETIC_SCALE``), the same on every host."""
    profile_backend(get_backend("synthetic"), path, rounds=1, precisions=precisions)
    return path


@pytest.fixture(scope="session")
def synthetic_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic backend's profile over the default grid, fp32."""
    return _synthetic_profile(tmp_path_factory.mktemp("profile") / "synthetic.json", ("fp32",))


@pytest.fixture(scope="session")
def synthetic_int8_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic backend's profile over the default grid, fp32 and int8."""
    return _synthetic_profile(tmp_path_factory.mktemp("profile") / "synthetic-int8.json",
                              ("fp32", "int8"))


@pytest.fixture(scope="session")
def digits_config(synthetic_profile: Path, tmp_path_factory: pytest.TempPathFactory):
    """A small real search (training, export, accuracy) on a deterministic device: resnet20
    on scikit-learn digits (8x8), 3 trials of 40 steps (fewer leave every pruned network at
    chance, and the front one member), latencies from the synthetic backend."""
    from autocompress.study import SearchConfig

    return SearchConfig(model="resnet20", data="digits", trials=3, finetune_steps=40,
                        screen=8, profile=synthetic_profile,
                        out=tmp_path_factory.mktemp("run") / "r1")


@pytest.fixture(scope="session")
def digits_front(digits_config):
    """The front of :func:`digits_config`'s search, run once per test session."""
    from autocompress.study import search

    return search(digits_config)
