from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest

from autocompress.exceptions import SearchSpaceError
from autocompress.space import CANDIDATE_FORMAT_VERSION, Candidate, LowRank, SearchSpace

GROUPS = ["conv1", "layer1.0.conv1"]
LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]

_LOWRANK_ONLY = """\
    format_version: 1
    lowrank:
      rules:
        - match: "*"
          rank_ratio: {choices: [0.25, 0.5]}
    """


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _write(directory: Path, text: str) -> Path:
    path = directory / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def test_lowrank_only_space_parses_and_samples_ranks(tmp_path: Path) -> None:
    space = SearchSpace.from_yaml(_write(tmp_path, _LOWRANK_ONLY))
    assert not space.channel_rules and not space.sparsity_rules
    assert len(space.lowrank_rules) == 1
    assert space.lowrank_rules[0].value.choices == (0.25, 0.5)

    bound = space.bind(GROUPS, LAYERS)
    assert bound.compresses
    assert set(bound.distributions) == {f"lowrank/{name}" for name in LAYERS}
    assert all(isinstance(d, optuna.distributions.CategoricalDistribution)
               for d in bound.distributions.values())
    study = _study()
    seen: set[float] = set()
    for _ in range(8):
        trial = study.ask()
        candidate = bound.sample(trial)
        assert set(candidate.rank) == set(LAYERS)
        assert set(candidate.rank.values()) <= {0.25, 0.5}
        seen |= set(candidate.rank.values())
        assert [type(t) for t in candidate.transforms()] == [LowRank]
        assert candidate.transforms()[0].ranks == candidate.rank  # type: ignore[union-attr]
        assert not candidate.channel_keep and not candidate.sparsity
        assert bound.candidate_from_params(trial.params) == candidate
        assert Candidate.from_json(candidate.to_json()) == candidate
        study.tell(trial, 0.0)
    assert seen == {0.25, 0.5}


def test_shared_rule_and_fixed_ratio_with_channels() -> None:
    space = SearchSpace.from_dict({
        "format_version": 1,
        "channels": {"rules": [{"match": "*", "keep_ratio": {"low": 0.5, "high": 1.0}}]},
        "lowrank": {"rules": [
            {"match": "fc", "rank_ratio": 0.5},
            {"match": "layer*", "rank_ratio": {"low": 0.125, "high": 1.0},
             "shared": True, "name": "blocks"},
        ]},
    })
    bound = space.bind(GROUPS, LAYERS)
    lowrank = {k for k in bound.distributions if k.startswith("lowrank/")}
    assert lowrank == {"lowrank/blocks"}      # fc is fixed; conv1 matches no rule
    candidate = bound.sample(_study(1).ask())
    assert set(candidate.rank) == {"fc", "layer1.0.conv1", "layer1.0.conv2"}
    assert candidate.rank["fc"] == 0.5
    assert candidate.rank["layer1.0.conv1"] == candidate.rank["layer1.0.conv2"]
    assert 0.125 <= candidate.rank["layer1.0.conv1"] <= 1.0

    low, high = bound.extreme("min"), bound.extreme("max")
    assert low.rank == {"fc": 0.5, "layer1.0.conv1": 0.125, "layer1.0.conv2": 0.125}
    assert high.rank == {"fc": 0.5, "layer1.0.conv1": 1.0, "layer1.0.conv2": 1.0}
    uniform = bound.uniform(0.5)
    assert not uniform.rank and set(uniform.channel_keep.values()) == {0.5}


@pytest.mark.parametrize(("section", "fragments"), [
    ({"rules": [{"match": "*", "rank_ratio": 0.0}]}, ["lowrank.rules[0].rank_ratio", "range"]),
    ({"rules": [{"match": "*", "rank_ratio": {"choices": [0.5, 1.5]}}]},
     ["lowrank.rules[0].rank_ratio", "range"]),
    ({"rules": [{"match": "*", "rank": 0.5}]}, ["lowrank.rules[0]", "rank"]),
    ({"rules": [{"match": "*", "rank_ratio": 0.5}], "method": "svd"}, ["lowrank", "method"]),
    ({"rules": []}, ["no rules", "lowrank.rules"]),
    ([{"match": "*", "rank_ratio": 0.5}], ["lowrank must be a mapping"]),
])
def test_invalid_lowrank_section_is_refused(section: object, fragments: list[str]) -> None:
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_dict({"format_version": 1, "lowrank": section}, source="s.yaml")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_full_ratio_is_allowed_and_changes_nothing() -> None:
    space = SearchSpace.from_dict({"format_version": 1, "lowrank": {"rules": [
        {"match": "*", "rank_ratio": {"choices": [0.5, 1.0]}}]}})
    candidate = space.bind(GROUPS, LAYERS).extreme("max")
    assert set(candidate.rank.values()) == {1.0}
    assert candidate.is_identity and candidate.transforms() == ()


def test_candidate_json_with_and_without_rank() -> None:
    candidate = Candidate(channel_keep={"conv1": 0.5}, rank={"fc": 0.25})
    data = json.loads(candidate.to_json())
    assert data["rank"] == {"fc": 0.25}
    assert Candidate.from_json(candidate.to_json()) == candidate
    assert hash(Candidate.from_json(candidate.to_json())) == hash(candidate)
    # a candidate written before low rank existed has no "rank": it loads, untouched
    old = {"format_version": CANDIDATE_FORMAT_VERSION, "channel_keep": {"conv1": 0.5},
           "sparsity": {}, "importance": "l2", "round_to": 1, "min_channels": 1,
           "precision": {}, "quantization": "ptq"}
    loaded = Candidate.from_dict(old)
    assert loaded.rank == {}
    assert "rank" not in json.loads(loaded.to_json())  # its JSON (and hash) stay the same
    with pytest.raises(SearchSpaceError, match="rank"):
        Candidate.from_dict({**old, "rank": {"fc": 0.0}})
