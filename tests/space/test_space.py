from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import optuna
import pytest

from autocompress.exceptions import SearchSpaceError
from autocompress.space import (
    CANDIDATE_FORMAT_VERSION,
    DEFAULT_SPACE_PATH,
    BoundSpace,
    Candidate,
    SearchSpace,
)

GROUPS = ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"]
LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]


def _write(directory: Path, text: str, name: str = "space.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def _trial(seed: int = 0) -> optuna.Trial:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return study.ask()


def _space(rules: list[dict], sparsity: list[dict] | None = None, **channels: object
           ) -> SearchSpace:
    raw: dict = {"format_version": 1, "channels": {"rules": rules, **channels}}
    if sparsity is not None:
        raw["sparsity"] = {"rules": sparsity}
    return SearchSpace.from_dict(raw)


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- loading and validation ------------------------------------------------------------------


def test_default_space_file_loads_with_documented_settings() -> None:
    assert DEFAULT_SPACE_PATH.is_file()
    space = SearchSpace.default()
    assert space == SearchSpace.from_yaml(DEFAULT_SPACE_PATH)
    assert space.source == str(DEFAULT_SPACE_PATH)
    assert (space.importance, space.round_to, space.min_channels) == ("l2", None, 8)
    assert space.for_device(8, "a CPU").round_to == 8   # left to the device
    assert len(space.channel_rules) >= 1 and len(space.sparsity_rules) >= 1
    bound = space.bind(GROUPS, LAYERS)
    assert set(bound.distributions) == (
        {f"keep_ratio/{g}" for g in GROUPS} | {f"sparsity/{name}" for name in LAYERS}
    )


_VALID_RULE = '    - match: "*"\n      keep_ratio: 0.5\n'

# (file body, fragments the message must contain besides the file name)
_INVALID = {
    "yaml_syntax": ("format_version: 1\nchannels: {rules: [\n", ["not valid YAML"]),
    "unknown_top_key": (
        "format_version: 1\nchanels: {}\nchannels:\n  rules:\n" + _VALID_RULE,
        ["chanels", "unknown key"],
    ),
    "unknown_channels_key": (
        "format_version: 1\nchannels:\n  round: 8\n  rules:\n" + _VALID_RULE,
        ["channels", "round"],
    ),
    "unknown_rule_key": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n      keep: 0.5\n",
        ["channels.rules[0]", "keep"],
    ),
    "keep_ratio_zero": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n      keep_ratio: 0.0\n",
        ["channels.rules[0].keep_ratio", "out of range"],
    ),
    "keep_ratio_above_one": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n      keep_ratio: 1.5\n",
        ["channels.rules[0].keep_ratio", "out of range"],
    ),
    "keep_ratio_range_low_zero": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
        "      keep_ratio: {low: 0.0, high: 0.5}\n",
        ["keep_ratio.low", "out of range"],
    ),
    "keep_ratio_choice_out_of_range": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
        "      keep_ratio: {choices: [0.5, 2.0]}\n",
        ["keep_ratio.choices", "out of range"],
    ),
    "low_equals_high": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
        "      keep_ratio: {low: 0.5, high: 0.5}\n",
        ["channels.rules[0].keep_ratio", "low"],
    ),
    "low_above_high": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
        "      keep_ratio: {low: 0.75, high: 0.5}\n",
        ["channels.rules[0].keep_ratio", "low"],
    ),
    "step_zero": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
        "      keep_ratio: {low: 0.25, high: 1.0, step: 0}\n",
        ["keep_ratio.step"],
    ),
    "step_negative": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
        "      keep_ratio: {low: 0.25, high: 1.0, step: -0.125}\n",
        ["keep_ratio.step"],
    ),
    "sparsity_amount_one": (
        "format_version: 1\nsparsity:\n  rules:\n    - match: '*'\n      amount: 1.0\n",
        ["sparsity.rules", "amount"],
    ),
    "sparsity_choice_one": (
        "format_version: 1\nsparsity:\n  rules:\n    - match: '*'\n"
        "      amount: {choices: [0.0, 1.0]}\n",
        ["sparsity.rules", "amount"],
    ),
    "sparsity_amount_negative": (
        "format_version: 1\nsparsity:\n  rules:\n    - match: '*'\n      amount: -0.1\n",
        ["sparsity.rules[0].amount", "out of range"],
    ),
    "format_version_2": (
        "format_version: 2\nchannels:\n  rules:\n" + _VALID_RULE, ["format_version", "2"],
    ),
    "format_version_missing": ("channels:\n  rules:\n" + _VALID_RULE, ["format_version"]),
    "bad_importance": (
        "format_version: 1\nchannels:\n  importance: l3\n  rules:\n" + _VALID_RULE,
        ["channels.importance", "l3"],
    ),
    "round_to_zero": (
        "format_version: 1\nchannels:\n  round_to: 0\n  rules:\n" + _VALID_RULE,
        ["channels.round_to", "0"],
    ),
    "min_channels_float": (
        "format_version: 1\nchannels:\n  min_channels: 2.5\n  rules:\n" + _VALID_RULE,
        ["channels.min_channels"],
    ),
    "rule_without_match": (
        "format_version: 1\nchannels:\n  rules:\n    - keep_ratio: 0.5\n",
        ["channels.rules[0].match"],
    ),
    "rule_without_value": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n",
        ["channels.rules[0]", "keep_ratio"],
    ),
    "shared_not_bool": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n      keep_ratio: 0.5\n"
        "      shared: 'yes please'\n",
        ["channels.rules[0].shared"],
    ),
    "value_not_number": (
        "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n      keep_ratio: half\n",
        ["channels.rules[0].keep_ratio", "half"],
    ),
    "empty_rules": ("format_version: 1\nchannels:\n  rules: []\n", ["no rules"]),
    "top_level_list": ("- 1\n- 2\n", ["mapping"]),
}


@pytest.mark.parametrize("case", sorted(_INVALID))
def test_invalid_space_file_raises_naming_file_and_key(tmp_path: Path, case: str) -> None:
    body, fragments = _INVALID[case]
    path = _write(tmp_path, body)
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_yaml(path)
    message = str(info.value)
    assert str(path) in message
    rest = message.replace(str(path), "")  # the fragments must not come from the file name
    for fragment in fragments:
        assert fragment in rest
    assert "\n" not in message  # one line, printable by the CLI


def test_missing_space_file_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SearchSpaceError, match="does not exist") as info:
        SearchSpace.from_yaml(path)
    assert str(path) in str(info.value)


def test_from_dict_names_memory_source_and_allowed_keys() -> None:
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_dict({"format_version": 1, "colour": "red"})
    message = str(info.value)
    assert "<memory>" in message and "colour" in message
    assert "channels" in message and "sparsity" in message  # the valid keys are listed


def test_valid_file_parses_rules_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        format_version: 1
        description: two rules
        channels:
          importance: l1
          round_to: 4
          min_channels: 2
          rules:
            - match: "conv1"
              keep_ratio: 1.0
            - match: "layer*"
              keep_ratio: {low: 0.25, high: 0.75, step: 0.25}
              shared: true
              name: body
        sparsity:
          rules:
            - match: "fc"
              amount: {choices: [0.0, 0.5]}
        """)
    space = SearchSpace.from_yaml(path)
    assert (space.importance, space.round_to, space.min_channels) == ("l1", 4, 2)
    assert [r.match for r in space.channel_rules] == ["conv1", "layer*"]
    assert space.channel_rules[0].value.fixed == 1.0
    body = space.channel_rules[1]
    assert (body.value.low, body.value.high, body.value.step) == (0.25, 0.75, 0.25)
    assert body.shared and body.name == "body"
    assert space.sparsity_rules[0].value.choices == (0.0, 0.5)


# --- binding and sampling --------------------------------------------------------------------


def test_sampled_values_lie_in_their_ranges() -> None:
    bound = SearchSpace.default().for_device(8, "a CPU").bind(GROUPS, LAYERS)
    assert isinstance(bound, BoundSpace)
    for seed in range(15):
        trial = _trial(seed)
        candidate = bound.sample(trial)
        assert set(candidate.channel_keep) == set(GROUPS)
        assert set(candidate.sparsity) == set(LAYERS)
        for ratio in candidate.channel_keep.values():
            assert 0.25 <= ratio <= 1.0
            assert (ratio - 0.25) / 0.125 == pytest.approx(round((ratio - 0.25) / 0.125))
        for amount in candidate.sparsity.values():
            assert amount in (0.0, 0.25, 0.5)
        assert (candidate.round_to, candidate.min_channels, candidate.importance) == (8, 8, "l2")
        assert set(trial.params) == set(bound.distributions)


def test_distributions_match_what_sample_suggests() -> None:
    bound = SearchSpace.default().for_device(8, "a CPU").bind(GROUPS, LAYERS)
    trial = _trial(3)
    bound.sample(trial)
    for name, dist in bound.distributions.items():
        assert trial.distributions[name] == dist


def test_shared_rule_drives_all_matched_groups_with_one_parameter() -> None:
    space = _space([
        {"match": "layer1.*", "keep_ratio": {"low": 0.25, "high": 1.0}, "shared": True,
         "name": "stage1"},
        {"match": "*", "keep_ratio": {"low": 0.25, "high": 1.0}},
    ])
    bound = space.bind(GROUPS, [])
    assert "keep_ratio/stage1" in bound.distributions
    assert not any(name.startswith("keep_ratio/layer1.") for name in bound.distributions)
    for seed in range(5):
        trial = _trial(seed)
        candidate = bound.sample(trial)
        shared = trial.params["keep_ratio/stage1"]
        assert candidate.channel_keep["layer1.0.conv1"] == shared
        assert candidate.channel_keep["layer1.1.conv1"] == shared
        assert candidate.channel_keep["conv1"] == trial.params["keep_ratio/conv1"]


def test_shared_rule_without_name_gets_a_rule_index_parameter() -> None:
    space = _space([{"match": "*", "keep_ratio": {"low": 0.5, "high": 1.0}, "shared": True}])
    bound = space.bind(GROUPS, [])
    assert list(bound.distributions) == ["keep_ratio/rule0"]
    candidate = bound.sample(_trial())
    assert len(set(candidate.channel_keep.values())) == 1


def test_fixed_value_creates_no_parameter() -> None:
    space = _space([{"match": "*", "keep_ratio": 0.5}],
                   sparsity=[{"match": "fc", "amount": {"choices": [0.0, 0.5]}}])
    bound = space.bind(GROUPS, LAYERS)
    assert list(bound.distributions) == ["sparsity/fc"]
    trial = _trial()
    candidate = bound.sample(trial)
    assert set(trial.params) == {"sparsity/fc"}
    assert dict(candidate.channel_keep) == dict.fromkeys(GROUPS, 0.5)
    assert set(candidate.sparsity) == {"fc"}  # layers no rule matches are left out


def test_first_matching_rule_wins() -> None:
    space = _space([
        {"match": "conv1", "keep_ratio": 0.75},
        {"match": "layer2.*", "keep_ratio": {"choices": [0.5]}},
        {"match": "*", "keep_ratio": {"low": 0.25, "high": 0.5}},
    ])
    bound = space.bind(GROUPS, [])
    assert "keep_ratio/conv1" not in bound.distributions
    candidate = bound.sample(_trial(1))
    assert candidate.channel_keep["conv1"] == 0.75
    assert candidate.channel_keep["layer2.0.conv1"] == 0.5
    assert candidate.channel_keep["layer2.0.shortcut.0"] == 0.5
    for group in ("layer1.0.conv1", "layer1.1.conv1"):
        assert 0.25 <= candidate.channel_keep[group] <= 0.5


def test_rule_matching_nothing_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    space = _space([{"match": "head.*", "keep_ratio": 0.5}, {"match": "*", "keep_ratio": 1.0}])
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        bound = space.bind(GROUPS, [])
    assert any("head.*" in record.getMessage() for record in caplog.records)
    assert all(ratio == 1.0 for ratio in bound.uniform(1.0).channel_keep.values())


def test_extreme_picks_ends_of_every_range() -> None:
    bound = SearchSpace.default().for_device(8, "a CPU").bind(GROUPS, LAYERS)
    low, high = bound.extreme("min"), bound.extreme("max")
    assert set(low.channel_keep.values()) == {0.25}
    assert set(high.channel_keep.values()) == {1.0}
    assert set(low.sparsity.values()) == {0.0}
    assert set(high.sparsity.values()) == {0.5}


def test_uniform_sets_every_group_and_no_sparsity() -> None:
    bound = SearchSpace.default().for_device(8, "a CPU").bind(GROUPS, LAYERS)
    candidate = bound.uniform(0.5)
    assert dict(candidate.channel_keep) == dict.fromkeys(GROUPS, 0.5)
    assert dict(candidate.sparsity) == {}
    assert (candidate.round_to, candidate.min_channels) == (8, 8)
    assert bound.uniform(1.0).is_identity
    assert not candidate.is_identity


def test_candidate_from_params_replays_a_trial() -> None:
    bound = SearchSpace.default().for_device(8, "a CPU").bind(GROUPS, LAYERS)
    trial = _trial(7)
    sampled = bound.sample(trial)
    assert bound.candidate_from_params(dict(trial.params)) == sampled


def test_candidate_from_params_refuses_missing_parameters() -> None:
    bound = SearchSpace.default().for_device(8, "a CPU").bind(GROUPS, LAYERS)
    with pytest.raises(SearchSpaceError, match="keep_ratio/conv1"):
        bound.candidate_from_params({})


# --- candidates ------------------------------------------------------------------------------


def _candidate() -> Candidate:
    return Candidate(channel_keep={"conv1": 0.5, "layer1.0.conv1": 0.25},
                     sparsity={"fc": 0.5}, importance="l1", round_to=8, min_channels=4)


def test_candidate_json_round_trip_is_equal() -> None:
    candidate = _candidate()
    text = candidate.to_json()
    assert json.loads(text)["format_version"] == CANDIDATE_FORMAT_VERSION
    again = Candidate.from_json(text)
    assert again == candidate
    assert again.to_json() == text


def test_sampled_candidate_round_trips_through_json() -> None:
    candidate = SearchSpace.default().for_device(8, "a CPU").bind(GROUPS, LAYERS).sample(_trial(2))
    assert Candidate.from_json(candidate.to_json()) == candidate


def test_candidate_reads_an_exported_candidate_file() -> None:
    wrapped = json.dumps({"config": _candidate().to_dict(), "accuracy": 0.9})
    assert Candidate.from_json(wrapped) == _candidate()


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_candidate_refuses_other_format_versions(version: object) -> None:
    data = _candidate().to_dict()
    data["format_version"] = version
    with pytest.raises(SearchSpaceError, match="format_version") as info:
        Candidate.from_json(json.dumps(data))
    assert repr(version) in str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_candidate_refuses_non_object_json(text: str) -> None:
    with pytest.raises(SearchSpaceError):
        Candidate.from_json(text)


@pytest.mark.parametrize("field,value", [("importance", "l3"), ("channel_keep", {"a": "x"}),
                                         ("round_to", "eight"), ("sparsity", [1, 2, 3])])
def test_candidate_refuses_malformed_fields(field: str, value: object) -> None:
    data = _candidate().to_dict()
    data[field] = value
    with pytest.raises(SearchSpaceError):
        Candidate.from_dict(data)


def test_candidate_mappings_are_read_only() -> None:
    candidate = _candidate()
    with pytest.raises(TypeError):
        candidate.channel_keep["conv1"] = 1.0  # type: ignore[index]
    source = {"conv1": 0.5}
    candidate = Candidate(channel_keep=source)
    source["conv1"] = 0.1
    assert candidate.channel_keep["conv1"] == 0.5  # copied, not aliased


def test_candidate_is_hashable_like_a_frozen_value() -> None:
    assert hash(_candidate()) == hash(Candidate.from_json(_candidate().to_json()))


def test_value_spec_grid_lists_what_a_sweep_tries() -> None:
    from autocompress.space._distributions import ValueSpec

    assert ValueSpec(low=0.25, high=1.0, step=0.25).grid() == [0.25, 0.5, 0.75, 1.0]
    assert ValueSpec(choices=(0.0, 0.5)).grid() == [0.0, 0.5]
    assert ValueSpec(fixed=0.3).grid() == [0.3]
    free = ValueSpec(low=0.0, high=1.0).grid()
    assert len(free) == 17 and free[0] == 0.0 and free[-1] == 1.0


# --- channel importance criteria -------------------------------------------------------------


def test_importance_choices_become_one_searched_parameter() -> None:
    space = _space([{"match": "*", "keep_ratio": {"low": 0.25, "high": 1.0, "step": 0.25}}],
                   importance={"choices": ["l2", "taylor", "obd"]})
    assert space.importance == "l2"   # the first choice: what the uniform seeds use
    bound = space.bind(["a", "b"], [])
    assert bound.distributions["importance"].choices == ("l2", "taylor", "obd")
    seen = {bound.sample(_trial(seed)).importance for seed in range(30)}
    assert seen == {"l2", "taylor", "obd"}
    assert bound.uniform(0.5).importance == "l2"
    params = {"importance": "obd", **{p: 0.5 for p in bound.distributions if p != "importance"}}
    assert bound.candidate_from_params(params).importance == "obd"


def test_one_importance_or_no_channel_search_adds_no_parameter() -> None:
    fixed = _space([{"match": "*", "keep_ratio": {"low": 0.25, "high": 1.0, "step": 0.25}}],
                   importance="taylor")
    assert "importance" not in fixed.bind(["a"], []).distributions
    assert fixed.bind(["a"], []).sample(_trial()).importance == "taylor"
    unsearched = _space([{"match": "*", "keep_ratio": 0.5}],
                        importance={"choices": ["l1", "taylor"]})
    assert "importance" not in unsearched.bind(["a"], []).distributions


def test_unknown_importance_lists_the_criteria() -> None:
    with pytest.raises(SearchSpaceError, match="channels.importance.*apoz.*l1, l2, "
                                               "taylor, obd, activation"):
        _space([{"match": "*", "keep_ratio": 0.5}], importance={"choices": ["apoz"]})


DEPTH_BLOCKS = ["layer1.1", "layer1.2", "layer2.1"]


def test_the_depth_space_searches_each_block_kept_or_dropped() -> None:
    space = SearchSpace.from_yaml(Path(__file__).parents[2] / "search_spaces" / "depth.yaml")
    bound = space.for_device(8, "test").bind(["conv1", "layer2.1.conv1"], [],
                                             blocks=DEPTH_BLOCKS)
    assert bound.distributions["depth/layer1.2"] == optuna.distributions.CategoricalDistribution(
        (0.0, 1.0))
    # the uniform pruning keeps every block; the smallest network drops them all
    assert bound.uniform(0.5).depth == {}
    assert bound.extreme("min").dropped_blocks == tuple(DEPTH_BLOCKS)
    trial = optuna.create_study().ask()
    sampled = bound.sample(trial)
    assert set(sampled.depth) == set(DEPTH_BLOCKS)
    assert bound.candidate_from_params(trial.params) == sampled


def test_a_depth_rule_fixed_at_zero_drops_its_block_in_every_candidate() -> None:
    space = SearchSpace.from_dict({
        "format_version": 1,
        "channels": {"rules": [{"match": "*", "keep_ratio": {"low": 0.5, "high": 1.0}}]},
        "depth": {"rules": [{"match": "layer1.*", "keep": 0},
                            {"match": "*", "keep": {"choices": [0, 1]}}]}})
    bound = space.bind(["conv1"], [], blocks=DEPTH_BLOCKS)
    assert set(bound.distributions) == {"keep_ratio/conv1", "depth/layer2.1"}
    assert bound.uniform(0.5).dropped_blocks == ("layer1.1", "layer1.2")


@pytest.mark.parametrize("keep", [0.5, {"low": 0, "high": 1}, {"choices": [0, 0.5]}])
def test_depth_keep_is_zero_or_one(keep: object) -> None:
    with pytest.raises(SearchSpaceError, match=r"depth.rules.*keep is 1 .*or 0"):
        SearchSpace.from_dict({"format_version": 1, "depth": {
            "rules": [{"match": "*", "keep": keep}]}})
