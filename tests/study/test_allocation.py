"""The latency-aware allocation: it fits the budget and prunes where latency is expensive
and accuracy cheap (a toy model with known latencies and scores)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from autocompress.space import Candidate
from autocompress.study._allocation import GroupSensitivity, allocate

RATIOS = (0.25, 0.5, 0.75, 1.0)
#: latency saved per unit of keep ratio removed, and score lost per unit removed
COST = {"cheap": (1.0, 0.01), "costly": (1.0, 0.20), "slow_layer": (4.0, 0.05)}
BASE_MS = 10.0
BASE_SCORE = 0.9


def _latency(keep: Mapping[str, float]) -> float:
    """The toy device: each group's latency grows linearly with its keep ratio."""
    return BASE_MS - sum(COST[g][0] * (1.0 - keep.get(g, 1.0)) for g in COST)


def _estimate(candidate: Candidate) -> float:
    return _latency(candidate.channel_keep)


def _groups() -> list[GroupSensitivity]:
    return [GroupSensitivity(
        group=g, param=f"keep_ratio/{g}", ratios=RATIOS,
        score={r: BASE_SCORE - lost * (1.0 - r) for r in (0.25, 0.5, 1.0)},
        latency_ms={r: _latency({g: r}) for r in (0.25, 0.5, 1.0)})
        for g, (_, lost) in COST.items()]


@pytest.mark.parametrize("budget", [9.0, 8.0, 6.5, 5.5])
def test_the_allocation_fits_the_budget(budget: float) -> None:
    found = allocate(_groups(), Candidate(channel_keep=dict.fromkeys(COST, 1.0)), budget,
                     _estimate)
    assert found is not None
    assert found.latency_ms <= budget
    assert found.latency_ms == pytest.approx(_latency(found.keep))
    assert set(found.params) == {f"keep_ratio/{g}" for g in COST}


def test_it_prunes_cheap_groups_and_slow_layers_first() -> None:
    found = allocate(_groups(), Candidate(channel_keep=dict.fromkeys(COST, 1.0)), 8.0,
                     _estimate)
    assert found is not None
    # the slow layer saves 4 ms per unit at a small loss: it goes first; the costly group,
    # whose pruning saves as little as the cheap one but loses 20x more, is left alone
    assert found.keep["slow_layer"] < 1.0
    assert found.keep["costly"] == 1.0
    assert found.keep["cheap"] <= found.keep["costly"]


def test_nothing_fits_returns_none() -> None:
    assert allocate(_groups(), Candidate(channel_keep=dict.fromkeys(COST, 1.0)), 1.0,
                    _estimate) is None


def test_sensitivity_is_interpolated_between_measured_ratios() -> None:
    group = GroupSensitivity("g", "p", RATIOS, {0.25: 0.5, 1.0: 0.8}, {0.25: 1.0, 1.0: 2.0})
    assert group.score_at(0.625) == pytest.approx(0.65)
    assert group.latency_at(0.75) == pytest.approx(5 / 3)


def test_an_optimistic_prediction_is_corrected_by_the_whole_network_estimate() -> None:
    # the real device costs 1 ms more than the groups' savings predict (an interaction)
    found = allocate(_groups(), Candidate(channel_keep=dict.fromkeys(COST, 1.0)), 8.0,
                     lambda c: _latency(c.channel_keep) + 1.0)
    assert found is not None and found.latency_ms <= 8.0
    assert _latency(found.keep) + 1.0 == pytest.approx(found.latency_ms)


def test_measuring_sensitivity_prunes_one_group_at_a_time() -> None:
    from autocompress.space import SearchSpace
    from autocompress.study._allocation import measure_sensitivity

    bound = SearchSpace.default().bind(list(COST), [], sparsity=False)
    seen: list[dict[str, float]] = []

    def evaluate(candidate: Candidate) -> tuple[float, float]:
        seen.append(dict(candidate.channel_keep))
        return 0.9, _latency(candidate.channel_keep)

    groups = measure_sensitivity(bound, evaluate)
    assert [g.group for g in groups] == list(COST)
    assert all(sum(r < 1.0 for r in keep.values()) <= 1 for keep in seen)
    assert groups[2].latency_at(0.25) == pytest.approx(_latency({"slow_layer": 0.25}))


#: Two groups each cheap to prune alone, ruinous together; a third costlier alone.
ALONE = {"a": 0.01, "b": 0.01, "c": 0.05}


def _score_with_interaction(keep: Mapping[str, float]) -> float:
    cut = {g: 1.0 - keep.get(g, 1.0) for g in ALONE}
    return BASE_SCORE - sum(ALONE[g] * cut[g] for g in ALONE) - 0.5 * cut["a"] * cut["b"]


def _groups_alone() -> list[GroupSensitivity]:
    return [GroupSensitivity(
        group=g, param=f"keep_ratio/{g}", ratios=RATIOS,
        score={r: _score_with_interaction({g: r}) for r in (0.25, 0.5, 1.0)},
        latency_ms={r: BASE_MS - (1.0 - r) for r in (0.25, 0.5, 1.0)}) for g in ALONE]


def _latency_alone(candidate: Candidate) -> float:
    return BASE_MS - sum(1.0 - candidate.channel_keep.get(g, 1.0) for g in ALONE)


def test_losses_scored_in_context_keep_apart_groups_that_only_hurt_together() -> None:
    base = Candidate(channel_keep=dict.fromkeys(ALONE, 1.0))
    scored: list[dict[str, float]] = []

    def score(candidate: Candidate) -> float:
        scored.append(dict(candidate.channel_keep))
        return _score_with_interaction(candidate.channel_keep)

    # the table of each group pruned alone calls a and b cheap and prunes both
    by_table = allocate(_groups_alone(), base, 9.0, _latency_alone)
    assert by_table is not None and by_table.keep["a"] < 1.0 and by_table.keep["b"] < 1.0
    # scored in context, once a is pruned, b costs more than c: c goes instead
    in_context = allocate(_groups_alone(), base, 9.0, _latency_alone, score)
    assert in_context is not None and in_context.latency_ms <= 9.0
    assert in_context.keep["b"] == 1.0 and in_context.keep["a"] < 1.0
    assert in_context.keep["c"] < 1.0
    assert _score_with_interaction(in_context.keep) > _score_with_interaction(by_table.keep)
    assert in_context.predicted_loss == pytest.approx(
        BASE_SCORE - _score_with_interaction(in_context.keep))
    # every proposal scored is the network pruned so far with one cut added
    assert scored[0] == dict.fromkeys(ALONE, 1.0)
    assert all(sum(k < 1.0 for k in keep.values()) <= 2 for keep in scored)


def test_a_block_dropped_whole_when_that_saves_most_per_score_lost() -> None:
    """A residual block whose removal saves 3 ms for 0.02 of score competes with channel
    groups, and is dropped before any group is thinned far."""
    block = GroupSensitivity("block", "depth/block", (0.0, 1.0), {0.0: BASE_SCORE - 0.02,
                             1.0: BASE_SCORE}, {0.0: BASE_MS - 3.0, 1.0: BASE_MS}, "depth")

    def latency(candidate: Candidate) -> float:
        dropped = 3.0 if candidate.depth.get("block", 1.0) == 0.0 else 0.0
        return _latency(candidate.channel_keep) - dropped

    found = allocate([*_groups(), block], Candidate(channel_keep=dict.fromkeys(COST, 1.0)),
                     7.0, latency)
    assert found is not None and found.latency_ms <= 7.0
    assert found.keep["block"] == 0.0 and found.params["depth/block"] == 0.0
    assert found.keep["costly"] == 1.0


def test_measuring_sensitivity_drops_each_block_alone() -> None:
    from autocompress.space import SearchSpace
    from autocompress.study._allocation import measure_sensitivity

    space = SearchSpace.from_dict({"format_version": 1, "depth": {
        "rules": [{"match": "*", "keep": {"choices": [0, 1]}}]}})
    bound = space.bind([], [], blocks=["b1", "b2"])
    seen: list[tuple[str, ...]] = []

    def evaluate(candidate: Candidate) -> tuple[float, float]:
        seen.append(candidate.dropped_blocks)
        return 0.9 - 0.1 * len(candidate.dropped_blocks), 5.0 - len(candidate.dropped_blocks)

    groups = measure_sensitivity(bound, evaluate)
    assert [(g.group, g.kind, g.ratios) for g in groups] == [
        ("b1", "depth", (0.0, 1.0)), ("b2", "depth", (0.0, 1.0))]
    assert seen == [(), ("b1",), ("b2",)]
    assert groups[0].latency_at(0.0) == 4.0


def test_blocks_dropped_by_hand_are_spread_evenly() -> None:
    from autocompress.study._prepare import evenly

    blocks = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
              "layer3.2"]
    assert evenly(blocks, 0) == ()
    assert evenly(blocks, 3) == ("layer1.1", "layer2.1", "layer3.1")   # one per stage
    assert all(len(set(evenly(blocks, k))) == k for k in range(len(blocks) + 1))


def _quantizable() -> object:
    """Channel groups a, b, c, each also a layer that may run fp32 or int8 (one choice for
    the whole network)."""
    from autocompress.space import SearchSpace

    space = SearchSpace.from_dict({"format_version": 1, "channels": {"rules": [
        {"match": "*", "keep_ratio": {"low": 0.25, "high": 1.0, "step": 0.25}}]},
        "precision": {"rules": [{"match": "*", "shared": True, "name": "network",
                                 "precision": {"choices": ["fp32", "int8"]}}]}})
    return space.bind(list(ALONE), list(ALONE), sparsity=False)


def _int8_device(speedup: float):
    """(evaluate, latency): the toy device of ``_latency_alone``, an all-int8 network
    ``speedup`` times faster; the score (of the float network) as
    ``_score_with_interaction``."""
    def latency(candidate: Candidate) -> float:
        int8 = set(candidate.precision.values()) == {"int8"}
        return _latency_alone(candidate) / (speedup if int8 else 1.0)

    def evaluate(candidate: Candidate) -> tuple[float, float]:
        return _score_with_interaction(candidate.channel_keep), latency(candidate)

    return evaluate, latency


def test_the_allocation_starts_from_int8_where_that_loses_less() -> None:
    from autocompress.study._allocation import allocate_precisions

    evaluate, latency = _int8_device(speedup=1.6)
    found = allocate_precisions(_quantizable(), evaluate, 5.5, latency,
                                lambda c: _score_with_interaction(c.channel_keep))
    assert found is not None
    precision, groups, allocation = found
    # fp32 must cut 4.5 ms of 10; all-int8 (6.25 ms) cuts less than 1 ms and loses less
    assert precision == "int8"
    assert allocation.latency_ms <= 5.5
    assert allocation.predicted_loss < 0.05
    assert groups[0].latency_at(1.0) == pytest.approx(BASE_MS / 1.6)


def test_fp32_is_kept_where_int8_buys_nothing() -> None:
    from autocompress.study._allocation import allocate_precisions

    evaluate, latency = _int8_device(speedup=1.0)
    found = allocate_precisions(_quantizable(), evaluate, 8.0, latency,
                                lambda c: _score_with_interaction(c.channel_keep))
    assert found is not None and found[0] == "fp32"


def test_a_float_only_space_allocates_in_fp32_only() -> None:
    from autocompress.space import SearchSpace
    from autocompress.study._allocation import allocation_precisions

    assert allocation_precisions(_quantizable()) == ("fp32", "int8")
    bound = SearchSpace.default().bind(list(COST), list(COST), sparsity=False)
    assert allocation_precisions(bound) == ("fp32",)


def test_an_int8_allocation_seeds_every_layer_in_int8() -> None:
    from autocompress.study._allocation import allocation_params
    from autocompress.study._records import AllocationRecord

    bound = _quantizable()
    record = AllocationRecord({"a": 0.5}, {"keep_ratio/a": 0.5}, 5.0, 0.01, {}, 1.0, "int8")
    params = allocation_params(bound, record)
    candidate = bound.candidate_from_params(params)
    assert set(candidate.precision.values()) == {"int8"}
    assert candidate.channel_keep["a"] == 0.5 and candidate.channel_keep["b"] == 1.0


def test_the_allocation_record_keeps_its_precision_and_reads_older_records() -> None:
    from dataclasses import asdict

    from autocompress._records import fields_to_jsonable, from_jsonable
    from autocompress.study._records import AllocationRecord

    record = AllocationRecord({"a": 0.5}, {"keep_ratio/a": 0.5}, 5.0, 0.01,
                              {"a": {"0.5": (5.0, 0.8)}}, 1.0, "int8")
    data = fields_to_jsonable(record)
    assert from_jsonable(AllocationRecord, data).precision == "int8"
    data.pop("precision")            # a run recorded before the allocation weighed int8
    older = from_jsonable(AllocationRecord, data)
    assert older.precision == "fp32" and asdict(older)["keep"] == {"a": 0.5}


def test_the_screening_seeds_uniform_prunings_at_each_precision() -> None:
    from autocompress.study._allocation import uniform_grid_params

    bound = _quantizable()
    seeds = [bound.candidate_from_params(p) for p in uniform_grid_params(bound)]
    by_precision = {}
    for c in seeds:
        by_precision.setdefault(c.precision_summary, set()).add(c.channel_keep["a"])
    assert by_precision == {"fp32": {0.25, 0.5, 0.75, 1.0}, "int8": {0.25, 0.5, 0.75, 1.0}}


def test_the_screening_grid_holds_shallower_networks_where_the_space_drops_blocks() -> None:
    from autocompress.space import SearchSpace
    from autocompress.study._allocation import GRID_DEPTHS, uniform_grid_params

    space = SearchSpace.from_dict({"format_version": 1, "channels": {"rules": [
        {"match": "*", "keep_ratio": {"low": 0.25, "high": 1.0, "step": 0.25}}]},
        "depth": {"rules": [{"match": "*", "keep": {"choices": [0, 1]}}]}})
    blocks = [f"b{i}" for i in range(3)]
    bound = space.bind(list(ALONE), list(ALONE), sparsity=False, blocks=blocks)
    seeds = [bound.candidate_from_params(p) for p in uniform_grid_params(bound)]
    full = {c.channel_keep["a"] for c in seeds if not c.dropped_blocks}
    shallow = {(c.channel_keep["a"], len(c.dropped_blocks)) for c in seeds if c.dropped_blocks}
    assert full == {0.25, 0.5, 0.75, 1.0}
    # 1, 2, 3 blocks dropped, at full width and at the grid's middle ratio, channels uniform
    assert shallow == {(r, k) for r in (1.0, 0.5) for k in (1, 2, 3)}
    assert all(len(set(c.channel_keep.values())) == 1 for c in seeds)
    # many blocks: no more than GRID_DEPTHS depths, the deepest cut among them
    many = space.bind(list(ALONE), list(ALONE), sparsity=False,
                      blocks=[f"b{i}" for i in range(20)])
    depths = {len(many.candidate_from_params(p).dropped_blocks)
              for p in uniform_grid_params(many)} - {0}
    assert len(depths) == GRID_DEPTHS and max(depths) == 20
