"""Shared fixtures: an isolated cache folder and a small real profile of this CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from autocompress.hardware import MeasureSettings, get_backend
from autocompress.hardware.kernels import KINDS
from autocompress.hardware.profiler import default_grid, profile_backend


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's ~/.cache/autocompress."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def small_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX Runtime profile of this CPU over a thinned grid (a few seconds)."""
    grid = default_grid()
    small = []
    for kind in KINDS:
        of_kind = [k for k in grid if k.kind == kind]
        small.extend(of_kind[:: max(1, len(of_kind) // 6)])
    path = tmp_path_factory.mktemp("profile") / "cpu.json"
    profile_backend(get_backend("onnxruntime", threads=1), path, grid=small, rounds=1, adaptive=4,
                    settings=MeasureSettings(max_time_s=0.05, min_runs=10, round_runs=10))
    return path


@pytest.fixture(scope="session")
def digits_config(small_profile: Path, tmp_path_factory: pytest.TempPathFactory):
    """A small real search: resnet20 on scikit-learn digits (8x8), 3 trials."""
    from autocompress.study import SearchConfig

    return SearchConfig(model="resnet20", data="digits", trials=3, finetune_steps=10,
                        profile=small_profile, out=tmp_path_factory.mktemp("run") / "r1")


@pytest.fixture(scope="session")
def digits_front(digits_config):
    """The front of :func:`digits_config`'s search, run once per test session."""
    from autocompress.study import search

    return search(digits_config)
