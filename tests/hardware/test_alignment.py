"""Channel alignment read from the device: the profile's channel sweep gives the block a
device runs convolutions fastest at, and a space that leaves ``round_to`` to the device
rounds kept channels to it. The devices here are the synthetic backend with channel blocks
(deterministic) and scripted latencies; nothing is timed."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import pytest

from autocompress.exceptions import SearchSpaceError
from autocompress.hardware import HardwareProfile
from autocompress.hardware.alignment import SWEEP_CHANNELS, channel_block
from autocompress.hardware.backends.synthetic import SyntheticBackend
from autocompress.hardware.kernels import KINDS, Kernel
from autocompress.hardware.profiler import TOKEN_GEMMS, default_grid, profile_backend
from autocompress.space import SearchSpace

_GRID = [Kernel("conv", 16, 16, 8, 8, kernel=3), Kernel("conv", 32, 32, 8, 8, kernel=3),
         Kernel("gemm", 64, 10, 1, 1), Kernel("elementwise", 16, 16, 8, 8)]


def _profile(tmp_path: Path, block: int) -> HardwareProfile:
    return profile_backend(SyntheticBackend(scale=1.0, channel_block=block),
                           tmp_path / f"block{block}.json", grid=_GRID, rounds=1, adaptive=0)


@pytest.mark.parametrize("block", [1, 4, 8, 16])
def test_the_profile_reads_the_devices_channel_block(tmp_path: Path, block: int) -> None:
    profile = _profile(tmp_path, block)
    assert [m.kernel.out_channels for m in profile.channel_sweep] == list(SWEEP_CHANNELS)
    assert profile.channel_block == block
    # the sweep is kept apart: the latency model is fitted on the grid alone
    assert [m.kernel for m in profile.kernels] == _GRID


def test_a_smooth_device_with_measurement_noise_has_no_block() -> None:
    """Latency growing with channels, each reading off by up to 3%: the next multiple of any
    block costs clearly more than the count halfway, so there is no block."""
    rng = random.Random(0)
    for _ in range(20):
        latency = {c: (0.01 + 1e-5 * c * c) * rng.uniform(0.97, 1.03) for c in SWEEP_CHANNELS}
        assert channel_block(latency) == 1
    flat = {c: 0.05 * rng.uniform(0.97, 1.03) for c in SWEEP_CHANNELS}   # launch-bound GPU
    assert channel_block(flat) == 1


def test_the_block_of_the_development_cpu_as_its_sweep_measured() -> None:
    """Microseconds measured on the development CPU (ONNX Runtime, AVX2, 1 thread): counts
    that are multiples of 4 cost what the next multiple of 16 costs; others take a generic
    path, cheaper below that multiple but slower per channel. Rounding to 16 is free."""
    measured = {16: 18, 17: 32, 18: 34, 19: 37, 20: 48, 21: 41, 22: 43, 23: 46, 24: 49, 25: 52,
                26: 54, 27: 57, 28: 49, 29: 63, 30: 67, 31: 71, 32: 48, 33: 76, 34: 80, 35: 83,
                36: 97, 37: 92, 38: 95, 39: 98, 40: 97, 41: 106, 42: 110, 43: 116, 44: 97,
                45: 124, 46: 128, 47: 133, 48: 96, 49: 144, 50: 146, 51: 151, 52: 167,
                53: 161, 54: 166, 55: 174, 56: 167, 57: 182, 58: 189, 59: 193, 60: 167,
                61: 208, 62: 210, 63: 216, 64: 166}
    assert channel_block(measured) == 16
    assert channel_block({16: 1.0, 24: 1.0, 32: 1.0}) == 1   # too few counts to tell


def test_the_sweep_and_block_survive_a_round_trip(tmp_path: Path) -> None:
    profile = _profile(tmp_path, 8)
    loaded = HardwareProfile.load(tmp_path / "block8.json")
    assert loaded.channel_sweep == profile.channel_sweep and loaded.channel_block == 8
    assert json.loads((tmp_path / "block8.json").read_text())["channel_block"] == 8


def test_a_profile_from_before_the_sweep_has_no_block_and_the_space_does_not_round(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    profile = _profile(tmp_path, 8)
    old = dataclasses.replace(profile, channel_sweep=())
    old.save(tmp_path / "old.json")
    data = json.loads((tmp_path / "old.json").read_text())
    del data["channel_sweep"], data["channel_block"]   # as older versions wrote it
    loaded = HardwareProfile.from_dict(data)
    assert loaded.channel_block is None
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        space = SearchSpace.default().for_device(loaded.channel_block, "an old profile")
    assert space.round_to == 1
    assert "no channel sweep" in caplog.text and "set channels.round_to" in caplog.text


def _space(round_to: object = "absent") -> SearchSpace:
    channels: dict[str, object] = {"rules": [{"match": "*", "keep_ratio": 0.5}]}
    if round_to != "absent":
        channels["round_to"] = round_to
    return SearchSpace.from_dict({"format_version": 1, "channels": channels})


def test_round_to_follows_the_device_unless_the_space_sets_it() -> None:
    assert _space().round_to is None and _space("device").round_to is None
    assert _space().for_device(16, "a device").round_to == 16
    assert _space(4).for_device(16, "a device").round_to == 4   # the user's choice stands
    assert _space().bind(["conv1"], ["conv1"]).uniform(0.5).round_to == 1   # no device: none
    with pytest.raises(SearchSpaceError, match="round_to.*'device'"):
        _space("fast")


def test_a_search_rounds_kept_channels_to_the_devices_block(tmp_path: Path) -> None:
    from autocompress.study import SearchConfig, load_front, search

    grid = default_grid()
    thinned = [k for kind in KINDS for k in [g for g in grid if g.kind == kind][::6]]
    profile_backend(SyntheticBackend(scale=1.0, channel_block=16), tmp_path / "p.json",
                    grid=thinned, rounds=1, adaptive=0)
    config = SearchConfig(model="resnet20", data="digits", trials=2, finetune_steps=2,
                          screen=0, allocate=False, latency_budget_ms=1.0,
                          profile=tmp_path / "p.json",
                          out=tmp_path / "run")
    search(config)
    members = list(load_front(config.out))
    assert members and all(m.candidate.round_to == 16 for m in members)


def test_the_sweep_alone_upgrades_a_profile_measured_without_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autocompress.cli.main import main

    path = tmp_path / "old.json"
    profile_backend(SyntheticBackend(scale=1.0, channel_block=8), path, grid=_GRID, rounds=1,
                    adaptive=0, sweep=False)
    assert HardwareProfile.load(path).channel_block is None
    assert main(["profile", "--upgrade", "--out", str(path), "--rounds", "1"]) == 0
    upgraded = HardwareProfile.load(path)
    assert upgraded.channel_block == 8 and "channel block 8" in capsys.readouterr().out
    # the rest is as it was; what the profile lacked is added: the many-row matrix products
    assert [m.kernel for m in upgraded.kernels] == [*_GRID, *TOKEN_GEMMS]


def test_the_runtimes_layout_block_is_a_floor_under_the_sweeps_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A sweep timed while the machine's speed drifted can show no block at all (an AVX2 VM
    in a slow spell read 1 where ONNX Runtime lays convolutions out in blocks of 8); the
    block the runtime says it lays convolutions out in, read without timing, is a floor."""
    from autocompress.cli.main import main

    monkeypatch.setattr(SyntheticBackend, "layout_block", property(lambda self: 8))
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        smooth = profile_backend(SyntheticBackend(scale=1.0, channel_block=1),
                                 tmp_path / "smooth.json", grid=_GRID, rounds=1, adaptive=0)
    assert (smooth.sweep_block, smooth.layout_block, smooth.channel_block) == (1, 8, 8)
    assert "showed a block of 1 channels, below the 8" in caplog.text
    loaded = HardwareProfile.load(tmp_path / "smooth.json")
    assert (loaded.layout_block, loaded.channel_block) == (8, 8)
    assert SearchSpace.default().for_device(loaded.channel_block, "a VM").round_to == 8
    # a sweep that shows a larger block than the layout keeps it
    wider = profile_backend(SyntheticBackend(scale=1.0, channel_block=16),
                            tmp_path / "wider.json", grid=_GRID, rounds=1, adaptive=0)
    assert (wider.sweep_block, wider.channel_block) == (16, 16)
    # a profile written before the layout block was recorded reads the sweep alone, and
    # --upgrade records the block (and says what the sweep showed)
    data = json.loads((tmp_path / "smooth.json").read_text())
    del data["layout_block"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert HardwareProfile.load(tmp_path / "old.json").channel_block == 1
    assert main(["profile", "--upgrade", "--out", str(tmp_path / "old.json"),
                 "--rounds", "1"]) == 0
    assert HardwareProfile.load(tmp_path / "old.json").channel_block == 8
    assert "channel block 8" in capsys.readouterr().out


def test_a_profile_records_no_layout_block_for_a_backend_without_one(tmp_path: Path) -> None:
    profile = _profile(tmp_path, 4)
    assert (profile.layout_block, profile.sweep_block, profile.channel_block) == (1, 4, 4)
