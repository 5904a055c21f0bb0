"""``autocompress retarget``: a finished search's finetuned trials re-estimated on another
device's profile (nothing trained), the new front, and a search resumed there from them.

The devices are the synthetic backend's (a latency that is a fixed function of the graph). A
profile written with ``scale`` 2.5 is the same device 2.5 times slower: every estimate of it is
exactly 2.5 times the original profile's, which is what the latencies are checked against. A
profile of another synthetic formula, under a device name of its own, is another device whose
costs differ in kind (and whose latencies this machine cannot measure)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest

from autocompress.cli.main import main
from autocompress.exceptions import BudgetError, ProfileError, RunError
from autocompress.hardware.backends import get_backend, synthetic
from autocompress.hardware.profiler import profile_backend
from autocompress.space import DEFAULT_SPACE_PATH
from autocompress.study import (
    RetargetResult,
    RunFolder,
    SearchConfig,
    TrialRecord,
    load_front,
    pick,
    retarget,
    search,
)
from autocompress.study._prepare import NEAR_BUDGET_MARGIN
from autocompress.study._retarget import RETARGET_ATTR

SCALE = 2.5
MIXED_SPACE = DEFAULT_SPACE_PATH.parent / "mixed_precision.yaml"


def _scaled(profile: Path, factor: float, out: Path) -> Path:
    """``profile`` as the synthetic backend writes it with ``scale`` times ``factor``: its
    latencies are linear in the scale, so this is the profile of a device ``factor`` times
    slower (measured here, the synthetic device being every machine)."""
    data = json.loads(profile.read_text())
    scale = data["backend"]["settings"]["scale"] * factor
    data["backend"]["settings"]["scale"] = scale
    data["device"]["scale"] = scale
    for latency in [data["overhead"], *(k["latency"] for k in data["kernels"])]:
        for key in ("median_ms", "p25_ms", "p75_ms"):
            latency[key] *= factor
    out.write_text(json.dumps(data))
    return out


def _study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="autocompress", storage=RunFolder.open(run).storage_url())


def _records(run: Path) -> dict[int, tuple[optuna.trial.FrozenTrial, TrialRecord]]:
    return {t.number: (t, r) for t in _study(run).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)) if (r := TrialRecord.of(t)) is not None}


def _nondominated(points: dict[int, tuple[float, float]]) -> set[int]:
    """Trials no other trial beats on both accuracy and latency (the front, by hand)."""
    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    return {n for n, p in points.items() if not any(beats(q, p) for q in points.values())}


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".retarget-" in p.name]


@pytest.fixture(scope="module")
def slow_profile(synthetic_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _scaled(synthetic_profile, SCALE, tmp_path_factory.mktemp("slow") / "slow.json")


@pytest.fixture(scope="module")
def retargeted(digits_config: SearchConfig, digits_front, slow_profile: Path,
               tmp_path_factory: pytest.TempPathFactory) -> RetargetResult:
    return retarget(digits_config.out, slow_profile, tmp_path_factory.mktemp("rt") / "slow")


def test_accuracies_are_kept_and_latencies_are_the_new_profiles_estimates(
        digits_config: SearchConfig, retargeted: RetargetResult) -> None:
    run, out = Path(digits_config.out), retargeted.out
    old = {n: r for n, (_, r) in _records(run).items() if r.finetuned}
    new = _records(out)
    budget, measured = retargeted.info.budget.latency_ms, 0
    assert sorted(new) == list(range(len(old)))   # a new study, numbered from 0
    assert sorted(t.user_attrs[RETARGET_ATTR]["trial"] for t, _ in new.values()) == sorted(old)
    for trial, record in new.values():
        source = old[trial.user_attrs[RETARGET_ATTR]["trial"]]
        assert record.accuracy == source.accuracy                   # exactly: nothing trained
        assert record.candidate == source.candidate and record.finetuned
        # the same device 2.5x slower: the search's (calibrated) estimate, times 2.5
        assert record.estimated_latency_ms == pytest.approx(
            SCALE * source.estimated_latency_ms, rel=1e-6)
        copied = (out / str(record.artifact)).read_bytes()
        assert copied == (run / str(source.artifact)).read_bytes()
        if abs(record.estimated_latency_ms - budget) <= NEAR_BUDGET_MARGIN * budget:
            # near the budget it is measured, as a search measures (the synthetic device is
            # this machine)
            assert record.latency_source == "measured"
            assert record.latency_ms == pytest.approx(
                synthetic.synthetic_latency_ms(copied, SCALE))
            measured += 1
        else:
            assert record.latency_source == "estimate"
            assert record.latency_ms == record.estimated_latency_ms
        assert trial.values == [record.accuracy, record.latency_ms]
        assert record.artifact == f"trials/{trial.number:05d}/model.onnx"
    assert measured == sum(t.latency_source == "measured" for t in retargeted.trials)
    assert measured >= 1     # the front's slowest members sit near the budget


def test_the_budget_is_the_runs_share_of_the_baseline_on_the_new_device(
        digits_config: SearchConfig, retargeted: RetargetResult, slow_profile: Path) -> None:
    before = RunFolder.open(digits_config.out).run
    after = RunFolder.open(retargeted.out).run
    assert after == retargeted.info
    assert after.budget.latency_ms == pytest.approx(SCALE * before.budget.latency_ms, rel=1e-6)
    assert after.budget.source.startswith("half the baseline's measured latency")
    assert after.baseline.latency_ms == pytest.approx(SCALE * before.baseline.latency_ms)
    assert after.baseline.accuracy == before.baseline.accuracy
    # the synthetic device is this machine: measured and calibrated here, as a search does
    assert after.calibration.applied and after.profile.local
    assert after.identity == replace(before.identity,
                                     profile_sha256=after.identity.profile_sha256)
    assert after.identity.profile_sha256 != before.identity.profile_sha256
    assert (retargeted.out / "profile.json").read_bytes() == slow_profile.read_bytes()


def test_a_slower_copy_of_the_device_keeps_the_front(digits_front, retargeted) -> None:
    assert retargeted.kept == tuple(sorted(m.trial for m in digits_front.members))
    assert retargeted.joined == retargeted.over_budget == retargeted.dominated == ()
    frame = pd.read_csv(retargeted.out / "front.csv")
    assert list(frame["trial"]) == [m.trial for m in retargeted.front.members]
    assert [m.trial for m in load_front(retargeted.out).members] == list(frame["trial"])


def test_retargeting_onto_the_runs_own_profile_reproduces_its_estimates(
        digits_config: SearchConfig, digits_front, tmp_path: Path) -> None:
    run = Path(digits_config.out)
    result = retarget(run, run / "profile.json", tmp_path / "same")
    old = {n: r for n, (_, r) in _records(run).items()}
    for trial, record in _records(result.out).values():
        source = old[trial.user_attrs[RETARGET_ATTR]["trial"]]
        assert record.estimated_latency_ms == pytest.approx(source.estimated_latency_ms,
                                                            rel=1e-9)
    assert result.info.budget.latency_ms == pytest.approx(
        RunFolder.open(run).run.budget.latency_ms, rel=1e-9)


def test_a_tighter_budget_puts_members_over_it_and_the_front_is_recomputed(
        digits_config: SearchConfig, digits_front, retargeted: RetargetResult,
        slow_profile: Path, tmp_path: Path) -> None:
    latencies = {t.source_trial: t.latency_ms for t in retargeted.trials}
    slowest = max(retargeted.front.members, key=lambda m: m.predicted_latency_ms)
    budget = slowest.predicted_latency_ms * 0.999
    result = retarget(digits_config.out, slow_profile, tmp_path / "tight",
                      latency_budget_ms=budget)
    assert result.info.budget.latency_ms == budget and result.info.budget.source == "given"
    source = next(t.source_trial for t in retargeted.trials if t.trial == slowest.trial)
    assert source in result.over_budget and source not in result.kept
    # kept in the study, finetuned, but infeasible as the search marks over-budget trials
    trial, record = next((t, r) for t, r in _records(result.out).values()
                         if t.user_attrs[RETARGET_ATTR]["trial"] == source)
    assert record.finetuned and trial.constraints["latency_budget"] > 0
    # the front is the non-dominated trials within the new budget
    accuracies = {t.source_trial: t.accuracy for t in result.trials}
    within = {n: (accuracies[n], ms) for n, ms in latencies.items() if ms <= budget}
    on_front = {t.source_trial for t in result.trials
                if t.trial in {m.trial for m in result.front.members}}
    assert on_front == _nondominated(within)
    assert set(result.kept) | set(result.joined) == on_front
    assert "now over budget" in result.summary()


def test_another_device_recomputes_the_front(digits_config: SearchConfig, digits_front,
                                             tmp_path: Path, monkeypatch) -> None:
    """A device where weights cost much more than activations (another synthetic formula,
    under a device name of its own: this machine cannot measure it)."""
    heavy = {kind: (*c[:-1], c[-1] * 50) if len(c) == 5 else c
             for kind, c in synthetic.COEFFICIENTS.items()}
    path = tmp_path / "weights-bound.json"
    with monkeypatch.context() as patched:
        patched.setattr(synthetic, "COEFFICIENTS", heavy)
        profile_backend(get_backend("synthetic"), path, rounds=1, precisions=("fp32",))
    data = json.loads(path.read_text())
    data["device"]["cpu"] = "a weights-bound device"
    path.write_text(json.dumps(data))
    result = retarget(digits_config.out, path, tmp_path / "other")
    info = result.info
    assert not info.profile.local and not info.calibration.applied
    assert info.baseline.latency_source == "estimate"
    assert info.budget.source.startswith("half the baseline's estimated latency")
    assert "raw estimates" in result.summary()
    points = {t.source_trial: (t.accuracy, t.latency_ms) for t in result.trials
              if t.latency_ms <= info.budget.latency_ms}
    on_front = {t.source_trial for t in result.trials
                if t.trial in {m.trial for m in result.front.members}}
    assert on_front == _nondominated(points)
    previous = {m.trial for m in digits_front.members}
    assert set(result.kept) == previous & on_front
    assert set(result.joined) == on_front - previous
    assert set(result.over_budget) | set(result.dominated) == previous - on_front


def test_front_and_pick_read_the_new_run(retargeted: RetargetResult, tmp_path: Path) -> None:
    # members measure within ~2% of their estimate: every one fits 1.5 times the budget
    budget = 1.5 * retargeted.info.budget.latency_ms
    result = pick(retargeted.out, budget, tmp_path / "export")
    assert result.member is not None and result.export_dir is not None
    # measured at pick: the synthetic device is this machine (2.5x slower)
    assert result.measured_latency_ms is not None
    model = (tmp_path / "export" / "model.onnx").read_bytes()
    assert synthetic.synthetic_latency_ms(model, SCALE) == pytest.approx(
        result.measured_latency_ms)


def test_a_search_resumes_from_the_retargeted_trials(
        digits_config: SearchConfig, digits_front, slow_profile: Path, tmp_path: Path) -> None:
    result = retarget(digits_config.out, slow_profile, tmp_path / "resumed")
    added = {t.number: t.values for t in _study(result.out).trials}
    within = sum(1 for t in result.trials if t.within_budget)
    search(replace(digits_config, out=result.out, profile=slow_profile, trials=within + 1))
    trials = _study(result.out).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert {t.number: t.values for t in trials if t.number in added} == added
    new = [t for t in trials if t.number not in added]
    assert new and min(t.number for t in new) >= len(added)
    assert not any(RETARGET_ATTR in t.user_attrs for t in new)
    finetuned = [TrialRecord.of(t) for t in new if TrialRecord.of(t).finetuned]
    assert len(finetuned) == 1
    assert finetuned[0].latency_ms <= result.info.budget.latency_ms
    assert RunFolder.open(result.out).run == result.info     # resumed, not redone


# ------------------------------------------------------------------------------ quantized


@pytest.fixture(scope="module")
def mixed_run(synthetic_int8_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-trial mixed-precision search whose uniform all-int8 seed is finetuned."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    search(SearchConfig(model="resnet20", data="digits", trials=3, finetune_steps=10,
                        profile=synthetic_int8_profile, space=MIXED_SPACE, out=out,
                        latency_budget_ms=1000.0, screen=0, allocate=False))
    return out


def test_quantized_trials_are_estimated_at_their_precisions(
        mixed_run: Path, synthetic_int8_profile: Path, tmp_path: Path) -> None:
    slow = _scaled(synthetic_int8_profile, SCALE, tmp_path / "slow-int8.json")
    result = retarget(mixed_run, slow, tmp_path / "out")
    old = {n: r for n, (_, r) in _records(mixed_run).items()}
    new = list(_records(result.out).values())
    assert any(r.candidate.quantized_layers for _, r in new)
    for trial, record in new:
        source = old[trial.user_attrs[RETARGET_ATTR]["trial"]]
        assert record.latency_ms == pytest.approx(SCALE * source.estimated_latency_ms, rel=1e-6)
    # the same share of the baseline's latency as the given 1000 ms was
    assert result.info.budget.latency_ms == pytest.approx(1000.0 * SCALE)


def test_a_profile_without_the_runs_precisions_is_refused(
        mixed_run: Path, synthetic_profile: Path, tmp_path: Path) -> None:
    int8 = sorted(n for n, (_, r) in _records(mixed_run).items()
                  if r.finetuned and "int8" in r.candidate.quantized_layers.values())
    with pytest.raises(ProfileError, match="int8") as error:
        retarget(mixed_run, synthetic_profile, tmp_path / "out")
    assert f"trials {', '.join(map(str, int8))}" in str(error.value)
    assert "--precisions fp32,int8" in str(error.value)
    _no_leftovers(tmp_path / "out")


# ------------------------------------------------------------------------------ errors


def test_an_existing_folder_that_is_not_empty_is_refused(digits_config, digits_front,
                                                          slow_profile, tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        retarget(digits_config.out, slow_profile, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()   # an empty folder is fine
    assert retarget(digits_config.out, slow_profile, empty).out == empty
    assert (empty / "run.json").is_file()


def test_a_run_without_finetuned_trials_is_refused(digits_config, digits_front, slow_profile,
                                                   tmp_path) -> None:
    run = tmp_path / "fresh"
    run.mkdir()
    for name in ("run.json", "space.yaml", "profile.json"):
        shutil.copy(Path(digits_config.out) / name, run / name)
    optuna.create_study(study_name="autocompress", storage=RunFolder.open(run).storage_url(),
                        directions=["maximize", "minimize"])
    with pytest.raises(RunError, match="no finetuned trial"):
        retarget(run, slow_profile, tmp_path / "out")
    _no_leftovers(tmp_path / "out")


def test_a_budget_below_the_fastest_model_is_refused(digits_config, digits_front, slow_profile,
                                                     tmp_path) -> None:
    with pytest.raises(BudgetError, match="fastest model"):
        retarget(digits_config.out, slow_profile, tmp_path / "out", latency_budget_ms=1e-6)
    _no_leftovers(tmp_path / "out")


def test_a_budget_only_the_runs_trials_reach_is_accepted(retargeted: RetargetResult) -> None:
    """The space's fastest model rounds channels to the new device's block; the run's trials
    keep theirs and may be faster: a budget they meet is not refused."""
    from autocompress.hardware import LatencyEstimate
    from autocompress.study._retarget import _check_reachable

    budget = retargeted.info.budget.latency_ms
    info = replace(retargeted.info, fastest_estimate_ms=2 * budget)
    fast, slow = (LatencyEstimate(f * budget, 0.0, 0.0) for f in (0.9, 1.5))
    _check_reachable(info, [slow, fast], Path("run"), Path("new.json"))
    with pytest.raises(BudgetError, match="below every trial of it"):
        _check_reachable(info, [slow], Path("run"), Path("new.json"))


def test_cli_prints_the_front_and_what_changed(digits_config, digits_front, slow_profile,
                                               tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["retarget", str(digits_config.out), "--profile", str(slow_profile),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and "kept" in printed and "new member" in printed
    assert "estimates of the new profile" in printed
    assert main(["retarget", str(digits_config.out), "--profile", str(slow_profile),
                 "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
