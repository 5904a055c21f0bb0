"""The screening tells networks apart, not the parameters that built them."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import torch
from torch import nn

from autocompress.models.cifar_resnet import resnet20
from autocompress.space import Candidate
from autocompress.study import _screen
from autocompress.study._screen import (
    NETWORK_ATTR,
    PROPOSALS_PER_NETWORK,
    SCORE_ATTR,
    Screening,
    network_key,
)
from autocompress.transforms import compress

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


def test_a_screening_counts_networks_and_scores_each_once(monkeypatch) -> None:
    # parameters x = 0..11 build 4 networks (x // 3): copies are told their network's score
    # without scoring it again, and the screening goes on until it has seen enough networks
    def compress(x):
        return SimpleNamespace(estimate=lambda model: SimpleNamespace(latency_ms=0.5),
                               module=x // 3, candidate=SimpleNamespace(sparsity={}))

    monkeypatch.setattr(_screen, "network_key", lambda compressed: f"net{compressed.module}")
    prepared = SimpleNamespace(compress=compress, latency_model=None, bound=SimpleNamespace(
        sample=lambda trial: trial.suggest_int("x", 0, 11)))
    screening = Screening(prepared, 1.0, optuna.storages.InMemoryStorage(), "s", 0,  # type: ignore[arg-type]
                          "random")
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
