"""`autocompress profile --check`: kernels of a profile measured again on its machine."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from autocompress.cli.main import main
from autocompress.exceptions import ProfileError
from autocompress.hardware.backends.synthetic import SyntheticBackend
from autocompress.hardware.kernels import KINDS, Kernel, kernel_graph
from autocompress.hardware.profiler import check_profile, default_grid, profile_backend


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    grid = [k for kind in KINDS for k in [g for g in default_grid() if g.kind == kind][::6]]
    path = tmp_path / "p.json"
    profile_backend(SyntheticBackend(scale=1.0), path, grid=grid, rounds=1, adaptive=0,
                    sweep=False)
    return path


def _scale_kernels(path: Path, factor: float) -> None:
    """The profile as if measured when the machine ran ``1 / factor`` times as fast."""
    data = json.loads(path.read_text())
    for k in data["kernels"]:
        for key in ("median_ms", "p25_ms", "p75_ms"):
            k["latency"][key] *= factor
    path.write_text(json.dumps(data))


def test_a_machine_that_runs_as_profiled_holds(profile_path: Path) -> None:
    check = check_profile(profile_path, sample=12)
    assert len(check.measured) == 12
    # drawn evenly over the kinds, not all from the first
    kinds = Counter(k.kind for k, _, _ in check.measured)
    assert set(kinds) == set(KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
    assert check.median_ratio == pytest.approx(1.0)
    assert check.within() == 1.0 and check.holds
    assert not Path(str(profile_path) + ".check.partial").exists()


def test_a_machine_slower_than_when_profiled_does_not_hold(profile_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    before = profile_path.read_text()
    _scale_kernels(profile_path, 0.5)
    scaled = profile_path.read_text()
    check = check_profile(profile_path, sample=8)
    assert check.median_ratio == pytest.approx(2.0)
    assert check.within() == 0.0 and not check.holds
    assert "median 2.00x" in check.describe()

    assert main(["profile", "--backend", "synthetic", "--check", "--out",
                 str(profile_path)]) == 1
    out = capsys.readouterr().out
    assert "slower than when it was profiled" in out and "profile again" in out
    assert profile_path.read_text() == scaled != before  # a check writes nothing


def test_a_faster_machine_and_one_that_holds_from_the_cli(profile_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["profile", "--check", "--out", str(profile_path)]) == 0
    assert "still runs as when it was profiled" in capsys.readouterr().out
    _scale_kernels(profile_path, 1.5)
    assert main(["profile", "--check", "--out", str(profile_path)]) == 1
    assert "faster than when it was profiled" in capsys.readouterr().out


def test_a_profile_of_another_machine_cannot_be_checked_here(profile_path: Path) -> None:
    data = json.loads(profile_path.read_text())
    data["device"] = {"cpu": "a board elsewhere", "scale": 1.0}
    profile_path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="not measured on this machine"):
        check_profile(profile_path)


def test_check_and_upgrade_are_not_one_run(profile_path: Path) -> None:
    with pytest.raises(SystemExit, match="check first"):
        main(["profile", "--check", "--upgrade", "--out", str(profile_path)])


def test_the_check_measures_the_weight_streaming_chains_apart(profile_path: Path) -> None:
    """Memory that slows while the cores do not shows in the chains, not in the kernels'
    median, and does not make the check fail by itself."""
    from dataclasses import asdict


    backend = SyntheticBackend(scale=1.0)
    data = json.loads(profile_path.read_text())
    for layers in (8, 16, 64):  # 8, 16 and 64 MiB of weights
        chain = Kernel("weights", 512, 512, layers, 1)
        latency = asdict(backend.measure(kernel_graph(chain)))
        latency = {k: v / 2 if k.endswith("_ms") else v for k, v in latency.items()}
        data["kernels"].append({**{k: v for k, v in asdict(chain).items()
                                   if k in data["kernels"][0]}, "latency": latency})
    profile_path.write_text(json.dumps(data))
    check = check_profile(profile_path, sample=8)
    assert [k.height for k, _, _ in check.chains] == [16, 64]  # beyond 16 MiB only
    assert check.chain_ratio == pytest.approx(2.0)
    assert check.median_ratio == pytest.approx(1.0) and check.holds
    assert "2 weight-streaming chains of 16-64 MiB at 2.00x" in check.describe()


def test_the_cli_says_when_the_memory_reads_weights_slower(profile_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    from dataclasses import asdict


    data = json.loads(profile_path.read_text())
    chain = Kernel("weights", 512, 512, 32, 1)
    latency = asdict(SyntheticBackend(scale=1.0).measure(kernel_graph(chain)))
    latency = {k: v / 1.5 if k.endswith("_ms") else v for k, v in latency.items()}
    data["kernels"].append({**{k: v for k, v in asdict(chain).items()
                               if k in data["kernels"][0]}, "latency": latency})
    profile_path.write_text(json.dumps(data))
    assert main(["profile", "--backend", "synthetic", "--check", "--out",
                 str(profile_path)]) == 0
    out = capsys.readouterr().out
    assert "reads weights beyond the caches at 1.50x" in out
    assert "still runs as when it was profiled" in out


#: two weight-streaming chains (1 and 4 MiB of weights)
_CHAINS = (Kernel("weights", 512, 512, 1, 1), Kernel("weights", 512, 512, 4, 1))


class _SharedMemory(SyntheticBackend):
    """A synthetic device whose chains (:data:`_CHAINS`) read ``slow()`` times slower at
    each measurement, as memory shared with other tenants does; ``seen`` keeps what each
    measurement of a chain gave."""

    def __init__(self, slow: Callable[[], float]) -> None:
        super().__init__(scale=1.0)
        self.slow = slow
        self.graphs = {kernel_graph(k): k for k in _CHAINS}
        self.seen: dict[Kernel, list[float]] = {k: [] for k in _CHAINS}

    @property
    def stream_kernels(self):
        return _CHAINS

    def measure(self, onnx_model, settings=None):
        found = super().measure(onnx_model, settings)
        if onnx_model in self.graphs:
            slow = self.slow()
            found = type(found)(*(slow * v for v in (found.median_ms, found.p25_ms,
                                                       found.p75_ms)), found.runs, found.stable)
            self.seen[self.graphs[onnx_model]].append(found.median_ms)
        return found


def test_a_profile_keeps_the_fastest_of_its_weight_streaming_chains(tmp_path: Path) -> None:
    """Memory shared with other tenants only ever reads slower: a chain measured in a slow
    moment does not set the profile's rate."""
    calls = itertools.count(1)
    device = _SharedMemory(lambda: 1.5 if next(calls) % 2 else 1.0)  # every other one slow
    grid = [g for g in default_grid() if g.kind == "conv"][:4]
    profile = profile_backend(device, tmp_path / "p.json", grid=grid, rounds=2, adaptive=0,
                              sweep=False, layout=False)
    steady = SyntheticBackend(scale=1.0)
    kept = {m.kernel: m.latency.median_ms for m in profile.kernels if m.kernel in _CHAINS}
    assert kept == {k: steady.measure(kernel_graph(k)).median_ms for k in _CHAINS}
    # measured beside the run overhead too
    assert sum(map(len, device.seen.values())) > 2 * len(_CHAINS)


def test_an_upgraded_profile_keeps_the_fastest_of_its_chains_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile measured before it had chains gets them, on the same rule as a new one:
    each chain measured beside its rounds, the fastest kept."""
    from autocompress.hardware import backends
    from autocompress.hardware.profiler import upgrade_profile

    rng = random.Random(0)
    device = _SharedMemory(lambda: 1 + rng.random() / 2)  # 1-1.5x slow, at random
    path = tmp_path / "p.json"
    grid = [g for g in default_grid() if g.kind == "conv"][:4]
    profile_backend(device, path, grid=grid, rounds=2, adaptive=0, sweep=False, layout=False,
                    streaming=False)
    assert not any(device.seen.values())
    monkeypatch.setattr(backends, "backend_for", lambda name, settings: device)
    upgraded = upgrade_profile(path, rounds=2)
    kept = {m.kernel: m.latency.median_ms for m in upgraded.kernels if m.kernel in _CHAINS}
    assert all(len(device.seen[k]) > 2 for k in _CHAINS)  # measured beside their two rounds
    assert kept == {k: min(device.seen[k]) for k in _CHAINS}
