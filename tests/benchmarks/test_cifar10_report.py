"""The CIFAR-10 benchmark's report says who wins as the rows say it, never kinder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def cifar10(load_benchmark):
    return load_benchmark("cifar10")


def _row(approach, seed, accuracy, hypervolume=float("nan")):
    return {"model": "resnet20", "budget_fraction": 0.5, "approach": approach, "seed": seed,
            "accuracy": accuracy, "measured_latency_ms": 0.2, "budget_ms": 0.25,
            "within_budget": True, "baseline_ms": 0.5, "total_steps": 2400,
            "hypervolume": hypervolume, "smoke": False, "machine": "Test CPU, 2 cores; x86_64"}


def _report(cifar10, tmp_path, search, other, name):
    rows = ([_row("search", s, a, hypervolume=0.05) for s, a in enumerate(search)]
            + [_row(name, s, a, hypervolume=0.04) for s, a in enumerate(other)])
    csv = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return cifar10.report(csv, tmp_path / "rows.md")


def test_the_search_behind_beyond_the_noise_is_said_so(cifar10, tmp_path):
    text = _report(cifar10, tmp_path, [0.85, 0.86, 0.855], [0.88, 0.881, 0.879], "allocation")
    assert "search - allocation alone = -0.0250" in text
    assert "allocation is ahead beyond the noise" in text
    assert "within the noise" not in text


@pytest.mark.parametrize(("search", "verdict"), [
    ([0.83, 0.835, 0.84], "the search is ahead beyond the noise"),
    ([0.81, 0.815, 0.82], "within the noise"),
    ([0.79, 0.795, 0.80], "uniform is ahead beyond the noise"),
])
def test_the_search_against_uniform_pruning(cifar10, tmp_path, search, verdict):
    # uniform: 0.810 +- 0.010, the larger standard deviation in every case
    text = _report(cifar10, tmp_path, search, [0.80, 0.81, 0.82], "uniform")
    assert f"(larger std 0.0100): {verdict}" in text


def test_one_seed_on_a_side_gives_no_verdict(cifar10, tmp_path):
    text = _report(cifar10, tmp_path, [0.85, 0.86, 0.855], [0.88], "allocation")
    assert "1 seed on one side: no verdict" in text


def test_hypervolume_is_compared_per_budget(cifar10, tmp_path):
    rows = [_row("search", 0, 0.85, 0.05), _row("search", 1, 0.85, 0.05),
            {**_row("random", 0, 0.80, 0.05), "budget_ms": 0.5},
            {**_row("random", 1, 0.80, 0.05), "budget_ms": 0.5}]
    csv = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    text = cifar10.report(csv, tmp_path / "rows.md")
    assert "front hypervolume search / random: 2.00" in text


def test_a_cell_without_a_uniform_row_gets_its_own_heading(cifar10, tmp_path):
    # an fp32 cell (search and uniform) and, after it, an int8 cell with no uniform row:
    # the int8 cell's comparison once appeared under the fp32 cell's heading
    fp32 = [_row("search", s, 0.85) for s in range(2)] + [_row("uniform", s, 0.80)
                                                          for s in range(2)]
    int8 = [{**row, "budget_fraction": 0.7} for row in
            [_row("search", s, 0.86) for s in range(2)]
            + [_row("uniform-int8", s, 0.87) for s in range(2)]]
    csv = tmp_path / "rows.csv"
    pd.DataFrame(fp32 + int8).to_csv(csv, index=False)
    verdicts = cifar10.report(csv, tmp_path / "rows.md").split("## What wins")[1]
    lines = [line for line in verdicts.splitlines() if line.strip()]
    assert lines[0].startswith("- resnet20 at 50% ") and "search - uniform = " in lines[0]
    assert lines[1].startswith("- resnet20 at 70% ")
    assert lines[2].startswith("  - search - uniform int8 = -0.0100")


def test_a_cell_run_again_resumes_its_searches_with_the_budget_it_began_with(
        cifar10, tmp_path, monkeypatch):
    # a killed cell is run again: the baseline measured afresh would set another budget,
    # and its searches would refuse to resume; the start record keeps the first
    monkeypatch.setenv("AUTOCOMPRESS_CACHE_DIR", str(tmp_path))
    readings = iter([0.8, 0.7])
    monkeypatch.setattr(cifar10, "measure_baseline", lambda onnx: next(readings))
    cell = cifar10.Cell("resnet20", 0.5, 0, "spec", Path("ck.pt"), Path("p.json"), 0.0,
                        1000, 3, 100, 10)
    assert cifar10.start_baseline(cell, ["search"], b"graph") == 0.8
    (cell.run_dir("search") / "run.json").write_text("{}")      # the search had started
    assert cifar10.start_baseline(cell, ["search"], b"graph") == 0.8
    # another baseline (a new checkpoint) is measured again
    assert cifar10.start_baseline(cell, ["search"], b"another graph") == 0.7


def test_the_fronts_report_compares_the_latest_search_with_random_per_budget(cifar10,
                                                                             tmp_path):
    def row(approach, seed, hypervolume, commit, budget=0.25):
        return {"model": "resnet20", "budget_fraction": 0.3, "approach": approach,
                "seed": seed, "budget_ms": budget, "hypervolume": hypervolume * budget,
                "hypervolume_per_budget": hypervolume, "front_size": 2, "seconds": 60,
                "trials": 3, "space": "depth_int8.yaml", "finetune_distill": "kl",
                "smoke": False, "commit": commit, "machine": "Test CPU, 2 cores; x86_64",
                "date": {"old": "2026-12-01", "new": "2026-12-04"}.get(commit, "2026-12-02")}

    rows = ([row("search", s, 0.05, "old") for s in range(3)]
            + [row("search", s, 0.12, "new", budget=0.3) for s in range(2)]
            + [row("random", s, h, "any") for s, h in enumerate((0.1, 0.2, 0.3))])
    csv = tmp_path / "fronts.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    text = cifar10.report_fronts(csv, tmp_path / "fronts.md")
    # the latest commit of the search, against random's mean 0.2 (per budget: the budgets
    # differ)
    assert "search 0.1200 (2 seeds, new) / random 0.2000 (3 seeds) = **0.60x**" in text


def test_rows_of_another_baseline_form_a_cell_of_their_own(cifar10, tmp_path):
    # rows before the column existed compressed the first committed checkpoint
    first = ([_row("search", s, 0.85) for s in range(2)]
             + [_row("uniform", s, 0.80) for s in range(2)])
    other = [{**row, "baseline": "0123456789ab"} for row in
             [_row("search", s, 0.88) for s in range(2)]
             + [_row("uniform", s, 0.90) for s in range(2)]]
    csv = tmp_path / "rows.csv"
    pd.DataFrame(first + other).to_csv(csv, index=False)
    text = cifar10.report(csv, tmp_path / "rows.md")
    assert "search - uniform = +0.0500" in text
    assert "baseline 0123456789ab" in text and "search - uniform = -0.0200" in text
    assert f"baseline {cifar10.FIRST_BASELINE}" not in text


def test_rows_trained_in_bf16_form_a_cell_and_run_folders_of_their_own(cifar10, tmp_path,
                                                                       monkeypatch):
    fp32 = ([_row("search", s, 0.85) for s in range(2)]
            + [_row("uniform", s, 0.80) for s in range(2)])
    bf16 = [{**row, "train_precision": "bf16"} for row in
            [_row("search", s, 0.84) for s in range(2)]
            + [_row("uniform", s, 0.81) for s in range(2)]]
    csv = tmp_path / "rows.csv"
    pd.DataFrame(fp32 + bf16).to_csv(csv, index=False)
    text = cifar10.report(csv, tmp_path / "rows.md")
    assert "search - uniform = +0.0500" in text
    assert "trained in bf16" in text and "search - uniform = +0.0300" in text
    assert "trained in fp32" not in text
    monkeypatch.setenv("AUTOCOMPRESS_CACHE_DIR", str(tmp_path))
    cell = cifar10.Cell("resnet20", 0.5, 0, "spec", Path("ck.pt"), Path("p.json"), 0.0,
                        1000, 3, 100, 10)
    bf16_cell = dataclasses.replace(cell, train_precision="bf16")
    assert bf16_cell.run_dir("search") != cell.run_dir("search")
    assert bf16_cell.run_dir("search").name.endswith("-bf16-seed0-search")


def test_rows_without_a_baseline_column_name_the_first_committed_checkpoint(cifar10):
    # moving or replacing the first checkpoint would file its rows under another one's name
    _, record = cifar10.checkpoint_of("resnet20", cifar10.FIRST_CHECKPOINTS)
    assert record["sha256"][:12] == cifar10.FIRST_BASELINE


def test_the_default_baseline_is_another_checkpoint_that_names_its_rows(cifar10):
    # rows of the default checkpoint (since 2026-12-05) carry its sha and never meet the
    # first baseline's in a cell
    _, record = cifar10.checkpoint_of("resnet20")
    assert record["sha256"][:12] != cifar10.FIRST_BASELINE
    assert record["val_accuracy"] >= 0.90


@pytest.mark.parametrize(("fraction", "search", "said"), [
    (0.5, 0.89, "-1.0 points (within the 1 allowed)"),
    (0.5, 0.885, "-1.5 points (beyond the 1 allowed)"),
    (0.3, 0.875, "-2.5 points (within the 3 allowed)"),
    (0.7, 0.80, "-10.0 points"),
])
def test_the_picks_loss_against_the_baseline_is_stated_against_its_limit(
        cifar10, tmp_path, fraction, search, said):
    rows = [{**_row("search", s, search), "budget_fraction": fraction,
             "baseline_accuracy": 0.90} for s in range(2)]
    csv = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    text = cifar10.report(csv, tmp_path / "rows.md")
    line = next(line for line in text.splitlines() if "the search's pick against" in line)
    assert line.endswith(f"(0.9000): {said}")
