"""Gradual pruning: the polynomial schedule, and channels and weights pruned during training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.data import DataSplit
from autocompress.evaluation import TrainSettings
from autocompress.exceptions import SearchSpaceError
from autocompress.models import create_model
from autocompress.space import Candidate, Schedule, SearchSpace
from autocompress.transforms import compress
from autocompress.transforms._schedule import ChannelSchedule

POLY = Schedule("polynomial", stages=4, power=3.0, begin=0.2, end=0.6, initial_sparsity=0.1)


def test_polynomial_schedule_hits_initial_and_final_sparsity_at_begin_and_end() -> None:
    total = 100
    begin, end = POLY.steps(total)
    assert (begin, end) == (20, 60)
    assert POLY.pruning_steps(total) == (20, 33, 47, 60)
    final = 0.5
    assert POLY.sparsity(final, begin - 1, total) == 0.0        # nothing before the begin step
    assert POLY.sparsity(final, begin, total) == pytest.approx(0.1)
    assert POLY.sparsity(final, end, total) == pytest.approx(final)
    assert POLY.sparsity(final, total, total) == pytest.approx(final)
    values = [POLY.sparsity(final, t, total) for t in range(total + 1)]
    assert values == sorted(values)                              # never un-prunes
    # TF-MOT's PolynomialDecay: s_f + (s_i - s_f) * (1 - p) ** 3 at each pruning step
    assert POLY.sparsity(final, 33, total) == pytest.approx(0.5 - 0.4 * (1 - 13 / 40) ** 3)
    # a target below the initial sparsity is not overshot
    assert POLY.sparsity(0.05, begin, total) == pytest.approx(0.05)
    assert Schedule().sparsity(final, 0, total) == final         # one-shot: all at once


@pytest.mark.parametrize("bad", [dict(kind="cubic"), dict(stages=0), dict(begin=0.7, end=0.5),
                                 dict(power=0.0), dict(initial_sparsity=1.0)])
def test_a_malformed_schedule_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(SearchSpaceError, match="schedule"):
        Schedule(**bad)  # type: ignore[arg-type]


def _data(size: int = 48) -> DataSplit:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, 3, 16, 16, generator=generator)
    y = torch.arange(size) % 10
    return DataSplit("toy", x, y, x[:16], y[:16], 10, tuple(map(str, range(10))), "toy")


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, in_channels=3).eval()


def _counts(module: nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_gradual_channel_pruning_follows_the_schedule_and_ends_as_one_shot_structure() -> None:
    model, data = _resnet(), _data()
    keep = {"conv1": 0.5, "layer2.0.conv1": 0.25}
    candidate = Candidate(channel_keep=keep, schedule=POLY)
    oneshot = compress(model, Candidate(channel_keep=keep), torch.zeros(1, 3, 16, 16))
    gradual = compress(model, candidate, torch.zeros(1, 3, 16, 16))
    # what is built (and estimated) is the pruned network itself
    assert _counts(gradual.module) == _counts(oneshot.module)

    seen: dict[int, dict[str, int]] = {}
    original = ChannelSchedule.advance

    def spy(self: ChannelSchedule, step: int, total: int) -> None:
        original(self, step, total)
        seen[step] = {name: len(drop) for name, drop in self.masked.items()}

    ChannelSchedule.advance = spy  # type: ignore[method-assign]
    try:
        gradual.train(data, TrainSettings(steps=20, batch_size=8, lr=0.01))
    finally:
        ChannelSchedule.advance = original  # type: ignore[method-assign]
    # conv1 has 16 channels: the initial 10% at the begin step (1.6, rounded to 2), all 8 of
    # its target at the end step
    assert seen[0] == {}                           # nothing before step 4 (0.2 x 20)
    assert seen[4]["conv1"] == 2
    assert seen[12]["conv1"] == 8 and seen[20]["conv1"] == 8
    cut = [seen[t].get("layer2.0.conv1", 0) for t in sorted(seen)]
    assert cut == sorted(cut) and cut[-1] == 24   # 32 channels, 8 kept
    assert _counts(gradual.module) == _counts(oneshot.module)
    assert gradual.channels == oneshot.channels


def test_masked_channels_are_removed_without_changing_the_outputs() -> None:
    model = _resnet()
    candidate = Candidate(channel_keep={"conv1": 0.5, "layer3.0.conv1": 0.5}, schedule=POLY)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():   # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    schedule = ChannelSchedule(model, candidate, x[:1], statistics=None)
    schedule.finish()
    with torch.no_grad():
        masked = model(x)
    removed = schedule.remove()
    assert removed == {"conv1": (16, 8), "layer3.0.conv1": (64, 32)}
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked)


def test_gradual_pruning_with_a_data_criterion_recomputes_its_statistics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import autocompress.transforms._handlers as handlers

    calls: list[int] = []
    real = handlers.training_statistics

    def counted(module: nn.Module, train: object) -> object:
        calls.append(sum(m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)))
        return real(module, train)

    monkeypatch.setattr(handlers, "training_statistics", counted)
    model, data = _resnet(), _data()
    candidate = Candidate(channel_keep={"conv1": 0.5}, importance="taylor",
                          schedule=Schedule("polynomial", stages=3, power=1.0, begin=0.0,
                                            end=0.5))
    from autocompress.transforms import gradient_statistics

    stats = gradient_statistics(model, *data.train.fetch(torch.arange(8)))
    compressed = compress(model, candidate, torch.zeros(1, 3, 16, 16), gradients=stats)
    compressed.train(data, TrainSettings(steps=6, batch_size=8))
    assert compressed.channels["conv1"] == (16, 8)
    assert _counts(compressed.module)[0] == 8
    # pruning steps 0, 2 and 3 of 6 cut 0, 5 and 3 channels: statistics are computed for
    # the two that cut, on the unpruned structure the schedule masks
    assert len(calls) == 2 and len(set(calls)) == 1


def test_gradual_sparsity_follows_the_schedule() -> None:
    model, data = _resnet(), _data()
    candidate = Candidate(sparsity={"layer1.0.conv1": 0.5, "fc": 0.3}, schedule=POLY)
    compressed = compress(model, candidate, torch.zeros(1, 3, 16, 16))
    measured: dict[int, dict[str, float]] = {}
    from autocompress.transforms._schedule import WeightSchedule

    original = WeightSchedule.advance

    def spy(self: WeightSchedule, step: int, total: int) -> None:
        original(self, step, total)
        measured[step] = self.sparsity()

    WeightSchedule.advance = spy  # type: ignore[method-assign]
    try:
        compressed.train(data, TrainSettings(steps=20, batch_size=8))
    finally:
        WeightSchedule.advance = original  # type: ignore[method-assign]
    assert measured[3]["layer1.0.conv1"] == 0.0
    assert measured[4]["layer1.0.conv1"] == pytest.approx(0.1, abs=1 / 2304)
    assert measured[4]["fc"] == pytest.approx(0.1, abs=1 / 640)
    assert measured[12]["layer1.0.conv1"] == pytest.approx(0.5, abs=1 / 2304)
    assert measured[20]["fc"] == pytest.approx(0.3, abs=1 / 640)
    weight = dict(compressed.module.named_modules())["layer1.0.conv1"].weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=1 / 2304)


def test_schedule_is_read_from_the_space_and_searchable() -> None:
    space = SearchSpace.from_dict({
        "format_version": 1,
        "channels": {"rules": [{"match": "*", "keep_ratio": 0.5}]},
        "schedule": {"kind": {"choices": ["oneshot", "polynomial"]}, "stages": 3,
                     "power": 2, "begin": 0.1, "end": 0.4, "initial_sparsity": 0.05},
    })
    bound = space.bind(["conv1", "layer1.0.conv1"], ["conv1", "fc"])
    assert "schedule" in bound.distributions
    gradual = bound.candidate_from_params({"schedule": "polynomial"})
    assert gradual.schedule == Schedule("polynomial", stages=3, power=2.0, begin=0.1, end=0.4,
                                        initial_sparsity=0.05)
    assert bound.candidate_from_params({"schedule": "oneshot"}).schedule == Schedule(
        "oneshot", stages=3, power=2.0, begin=0.1, end=0.4, initial_sparsity=0.05)
    assert Candidate.from_json(gradual.to_json()) == gradual
    assert "schedule" not in Candidate().to_dict()   # old candidates keep their JSON


def test_schedule_section_errors_name_the_key() -> None:
    with pytest.raises(SearchSpaceError, match="schedule.kind"):
        SearchSpace.from_dict({"format_version": 1,
                               "channels": {"rules": [{"match": "*", "keep_ratio": 0.5}]},
                               "schedule": {"kind": "exponential"}})
    with pytest.raises(SearchSpaceError, match="schedule.*begin"):
        SearchSpace.from_dict({"format_version": 1,
                               "channels": {"rules": [{"match": "*", "keep_ratio": 0.5}]},
                               "schedule": {"kind": "polynomial", "begin": 0.9, "end": 0.1}})


def test_a_gradual_schedule_with_qat_is_refused() -> None:
    with pytest.raises(SearchSpaceError, match="gradual pruning schedule cannot be combined"):
        Candidate(channel_keep={"conv1": 0.5}, precision={"conv1": "int8"},
                  quantization="qat", schedule=POLY)


def test_a_search_samples_the_schedule_and_finishes_gradual_trials(
        synthetic_profile, tmp_path) -> None:
    import optuna
    import yaml

    from autocompress.study import SearchConfig, search
    from autocompress.study._records import TrialRecord

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "format_version": 1,
        "channels": {"importance": {"choices": ["l2", "activation"]},
                     "rules": [{"match": "*", "keep_ratio": {"choices": [0.5, 0.75]},
                                "shared": True}]},
        "schedule": {"kind": {"choices": ["polynomial", "oneshot"]}, "stages": 3},
    }))
    out = tmp_path / "run"
    search(SearchConfig(model="resnet20", data="digits", trials=3, finetune_steps=12,
                        profile=synthetic_profile, space=space, out=out,
                        latency_budget_ms=1000.0, screen=0, allocate=False))
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{out}/study.db")
    done = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if (r := TrialRecord.of(t)) is not None and r.finetuned]
    assert len(done) >= 3
    assert {t.params.get("schedule") for t in done} <= {"polynomial", "oneshot"}
    assert all(t.params.get("schedule") for t in done[1:])   # sampled beyond the seed trial


@pytest.mark.parametrize("extra", [
    {"schedule": {"kind": {"choices": ["polynomial", "oneshot"]}}},
    {"lowrank": {"rules": [{"match": "*", "rank_ratio": {"choices": [0.25, 0.5]}}]}},
])
def test_the_uniform_seed_prunes_at_once_and_factorizes_nothing_it_need_not(
        extra: dict[str, object]) -> None:
    from autocompress.study._prepare import uniform_params

    space = SearchSpace.from_dict({
        "format_version": 1,
        "channels": {"rules": [{"match": "*", "keep_ratio": {"choices": [0.5, 1.0]}}]},
        **extra})
    bound = space.bind(["conv1", "layer1.0.conv1"], ["conv1", "fc"])
    candidate = bound.candidate_from_params(uniform_params(bound, 0.5))
    assert dict(candidate.channel_keep) == {"conv1": 0.5, "layer1.0.conv1": 0.5}
    assert candidate.schedule.kind == "oneshot"
    assert all(r == 0.5 for r in candidate.rank.values())   # the largest ratio allowed
