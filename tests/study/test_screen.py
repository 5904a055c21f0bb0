"""The screening tells networks apart, not the parameters that built them."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import torch
from torch import nn

from autocompress.models.cifar_resnet import resnet20
from autocompress.space import Candidate, SearchSpace
from autocompress.study import _screen
from autocompress.study._screen import (
    NETWORK_ATTR,
    PROPOSALS_PER_NETWORK,
    SCORE_ATTR,
    Screening,
    network_key,
    plan_key,
)
from autocompress.transforms import (
    ChannelGroup,
    compress,
    find_channel_groups,
    find_residual_blocks,
)

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return resnet20(num_classes=10).eval()


def _built(model: nn.Module, round_to: int = 8, **plan) -> str:
    return network_key(compress(model, Candidate(round_to=round_to, **plan), X))


def test_parameters_of_a_dropped_block_do_not_make_another_network(model) -> None:
    dropped = {"layer1.1": 0.0, "layer2.2": 1.0}
    keep = {"conv1": 0.5, "layer2.1.conv1": 0.5}
    one = _built(model, depth=dropped, channel_keep={**keep, "layer1.1.conv1": 0.25})
    # another ratio inside the dropped block, or none: the same network
    assert _built(model, depth=dropped, channel_keep={**keep, "layer1.1.conv1": 0.75}) == one
    assert _built(model, depth=dropped, channel_keep=keep) == one
    # settings that change nothing (a kept block, a ratio of 1) are not told apart either
    assert _built(model, depth={"layer1.1": 0.0},
                  channel_keep={**keep, "layer3.1.conv1": 1.0}) == one
    # a ratio of a kept block, or another block dropped, is another network
    assert _built(model, depth=dropped, channel_keep={**keep, "layer2.2.conv1": 0.5}) != one
    assert _built(model, depth={"layer1.1": 0.0, "layer2.2": 0.0}, channel_keep=keep) != one


def test_ratios_that_round_to_the_same_channel_count_build_one_network(model) -> None:
    # with a channel block of 16, a 16-channel layer keeps 8 channels at 0.25 to 0.625
    assert _built(model, 16, channel_keep={"layer1.0.conv1": 0.25}) == _built(
        model, 16, channel_keep={"layer1.0.conv1": 0.625})
    assert _built(model, 16, channel_keep={"layer1.0.conv1": 0.25}) != _built(
        model, 16, channel_keep={"layer1.0.conv1": 0.75})
    # the same channel counts chosen by another importance keep other weights
    assert _built(model, 16, channel_keep={"layer1.0.conv1": 0.5}) != _built(
        model, 16, channel_keep={"layer1.0.conv1": 0.5}, importance="l1")
    # what the plan does later (precision at export) tells networks apart too
    assert _built(model, precision={"fc": "fp16"}) != _built(model)


def _screening(trials: list[tuple[float, float, str | None]]) -> Screening:
    """A screening study holding candidates ``x`` = 0, 1, ... with (score, estimated ms,
    network key)."""
    screening = Screening(None, 1.0, optuna.storages.InMemoryStorage(), "s", 0,  # type: ignore[arg-type]
                          "random")
    for x, (score, ms, network) in enumerate(trials):
        screening.study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions={"x": optuna.distributions.IntDistribution(0, 99)},
            values=[score, ms], user_attrs={} if network is None else {NETWORK_ATTR: network}))
    return screening


def test_one_network_is_chosen_once_whatever_parameters_built_it() -> None:
    # x=0, 1 and 3 build network "a" (the best score); x=2 and 4 are other networks
    trials = [(0.9, 0.8, "a"), (0.9, 0.8, "a"), (0.85, 0.9, "b"), (0.9, 0.8, "a"),
              (0.5, 0.3, "c")]
    chosen = [c.params["x"] for c in _screening(trials).choose(4)]
    assert chosen[0] in (0, 1, 3) and sorted(chosen[1:]) == [2, 4]
    # a network already queued for finetuning (by any of its parameters) is not chosen again
    assert [c.params["x"] for c in _screening(trials).choose(4, exclude=[{"x": 1}])] == [2, 4]
    # a study screened before networks were recorded: each trial stands for itself
    legacy = _screening([(score, ms, None) for score, ms, _ in trials])
    assert len(legacy.choose(5)) == 5


def _model(module: int, latency_ms: float = 0.5) -> SimpleNamespace:
    """What a stand-in search builds: ``module`` names its network."""
    return SimpleNamespace(estimate=lambda model: SimpleNamespace(latency_ms=latency_ms),
                           module=module, candidate=SimpleNamespace(sparsity={}))


def _stub_screening(monkeypatch, compress, sample=lambda trial: trial.suggest_int("x", 0, 11),
                    plan=lambda candidate: f"plan{candidate}",
                    storage=None) -> Screening:
    """A screening over a stand-in search: ``sample`` (trial -> candidate), ``compress``
    (candidate -> :func:`_model`), networks keyed by their module, plans by ``plan``."""
    monkeypatch.setattr(_screen, "network_key", lambda compressed: f"net{compressed.module}")
    monkeypatch.setattr(_screen, "plan_key", lambda candidate, groups: plan(candidate))
    prepared = SimpleNamespace(compress=compress, latency_model=None, groups=(),
                               bound=SimpleNamespace(sample=sample))
    return Screening(prepared, 1.0, storage or optuna.storages.InMemoryStorage(),  # type: ignore[arg-type]
                     "s", 0, "random")


def test_a_screening_counts_networks_and_scores_each_once(monkeypatch) -> None:
    # parameters x = 0..11 build 4 networks (x // 3): copies are told their network's score
    # without scoring it again, and the screening goes on until it has seen enough networks
    screening = _stub_screening(monkeypatch, lambda x: _model(x // 3))
    scored: list[int] = []
    screening.score = lambda module: scored.append(module) or 0.5 + module / 10  # type: ignore[method-assign]
    screening.run(3)
    trials = screening.study.trials
    networks = {t.user_attrs[NETWORK_ATTR] for t in trials}
    assert len(networks) == 3 and sorted(scored) == sorted(set(scored))
    assert all(t.user_attrs[SCORE_ATTR] == 0.5 + t.params["x"] // 3 / 10 for t in trials)
    # a space of fewer networks than asked for: it stops after so many proposals
    screening.run(10)
    assert len(screening.study.trials) == PROPOSALS_PER_NETWORK * 10
    assert sorted(scored) == [0, 1, 2, 3]


def test_equal_plan_keys_build_one_network(model) -> None:
    # random candidates of the depth and channel space at a channel block of 16: every plan
    # key names one network, and ratios that round alike share a key
    groups = find_channel_groups(model, X)
    blocks = [b.name for b in find_residual_blocks(model, X)]
    space = SearchSpace.from_yaml("search_spaces/depth.yaml").for_device(16, "any")
    bound = space.bind([g.name for g in groups], [], blocks=blocks)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    networks: dict[str, set[str]] = {}
    for _ in range(24):
        candidate = bound.sample(study.ask())
        # the same counts from other ratios: 16-channel groups keep 8 from 0.25 to 0.625
        ratios = {k: (0.25 if v <= 0.625 else v) if k.startswith(("conv1", "layer1")) else v
                  for k, v in candidate.channel_keep.items()}
        for plan in (candidate, Candidate.from_dict({**candidate.to_dict(),
                                                     "channel_keep": ratios})):
            networks.setdefault(plan_key(plan, groups) or "", set()).add(
                network_key(compress(model, plan, X)))
    assert "" not in networks and all(len(found) == 1 for found in networks.values())
    assert len(networks) > 12  # the candidates were not all one plan


def test_plan_keys_tell_counts_and_settings_apart(model) -> None:
    groups = find_channel_groups(model, X)

    def key(**plan):
        return plan_key(Candidate(round_to=16, min_channels=8, **plan), groups)

    assert key(channel_keep={"layer1.0.conv1": 0.25}) == key(
        channel_keep={"layer1.0.conv1": 0.625})
    assert key(channel_keep={"layer1.0.conv1": 0.25}) != key(
        channel_keep={"layer1.0.conv1": 0.75})
    assert key(channel_keep={"layer1.0.conv1": 1.0}) == key()
    assert key(channel_keep={"layer1.0.conv1": 0.5}) != key(
        channel_keep={"layer1.0.conv1": 0.5}, importance="l1")
    assert key(depth={"layer1.1": 0.0}) != key()
    # groups the model does not have: not told from the parameters
    assert key(channel_keep={"nowhere": 0.5}) is None
    # a group's blocks (grouped convolutions) round its count: 24 channels in 3 blocks keep
    # multiples of 3, so ratios 0.25 and 0.375 keep 6 and 9, where 8-channel rounding keeps
    # 8 for both
    blocked = [ChannelGroup(g.name, 24, g.members, 3 if g.name == "conv1" else 1)
               for g in groups]
    assert (plan_key(Candidate(round_to=8, channel_keep={"conv1": 0.25}), blocked)
            != plan_key(Candidate(round_to=8, channel_keep={"conv1": 0.375}), blocked))


def test_a_copy_by_rounding_is_not_built_again(monkeypatch) -> None:
    # parameters x = 0..11 make 4 plans (x // 3), as ratios that round alike: each plan is
    # built once, its copies told its network and estimate
    built: list[int] = []

    def compress(x):
        built.append(x)
        return _model(x // 3, 0.1 * (x // 3))

    screening = _stub_screening(monkeypatch, compress, plan=lambda x: f"plan{x // 3}")
    screening.score = lambda module: 0.5  # type: ignore[method-assign]
    screening.run(4)
    trials = screening.study.trials
    assert len(trials) > 4 and sorted(x // 3 for x in built) == [0, 1, 2, 3]
    assert all(t.values[1] == pytest.approx(0.1 * (t.params["x"] // 3)) for t in trials)
    assert all(t.user_attrs[NETWORK_ATTR] == f"net{t.params['x'] // 3}" for t in trials)


def test_a_screening_stopped_midway_keeps_what_it_screened(monkeypatch, tmp_path) -> None:
    # screened in memory, stored at the end: a screening stopped by an error stores the
    # networks scored before it, and a rerun goes on from them
    def compress(x):
        if x == "stop":
            raise KeyboardInterrupt
        return _model(x)

    proposals = iter([0, 1, 2, "stop"])

    def sample(trial):
        trial.suggest_int("x", 0, 99)
        return next(proposals)

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    screening = _stub_screening(monkeypatch, compress, sample, plan=lambda x: None,
                                storage=storage)
    screening.score = lambda module: 0.5  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        screening.run(10)
    stored = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.user_attrs[NETWORK_ATTR] for t in stored] == ["net0", "net1", "net2"]
    assert all(t.user_attrs[SCORE_ATTR] == 0.5 and t.values == [0.5, 0.5] for t in stored)


class _Grouped(nn.Module):
    """A stem feeding a grouped 3x3 (3 groups of 8) and a 1x1: blocks that rounding and
    pruning order must respect."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.grouped = nn.Conv2d(24, 24, 3, padding=1, groups=3)
        self.expand = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(torch.relu(self.grouped(torch.relu(self.bn(self.stem(x))))))
        return self.head(x.mean(dim=(2, 3)))


def test_equal_plan_keys_build_one_network_with_grouped_convolutions() -> None:
    torch.manual_seed(0)
    model, x = _Grouped().eval(), torch.zeros(1, 3, 8, 8)
    groups = find_channel_groups(model, x)
    ratios = (0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 1.0)   # 0.2 and 0.3 keep 6 of 24 (3 blocks)
    networks: dict[str | None, set[str]] = {}
    for stem in ratios:
        for grouped in ratios:
            plan = Candidate(round_to=8, channel_keep={"stem": stem, "grouped": grouped})
            compressed = compress(model, plan, x)
            assert compressed.module(x).shape == (1, 10)
            networks.setdefault(plan_key(plan, groups), set()).add(network_key(compressed))
    assert None not in networks and all(len(found) == 1 for found in networks.values())
    assert 4 < len(networks) < len(ratios) ** 2  # ratios that round alike share a key
