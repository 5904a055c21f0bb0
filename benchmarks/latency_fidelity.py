"""Latency fidelity: the profile's estimate against real measurements, in one run.

For each backend and model family, random candidates of the default search space are
exported and measured twice (two interleaved passes over all models); the first pass is the
reference, the second tells this machine's noise floor (how often a re-measurement of the
same model agrees with the first within +-10%). Estimates are reported raw (profile only) and
calibrated the way a search calibrates them (an affine map fitted on four uniformly pruned
reference models of the family, measured in the same run, not among the candidates) and,
with ``--device-calibration``, corrected by the device calibration of ``autocompress
calibrate`` (five reference models of other families, measured in the same run, before the
candidates: no candidate's family is among them).

    python benchmarks/latency_fidelity.py                        # ONNX Runtime, 1 thread
    python benchmarks/latency_fidelity.py --backend tvm --candidates 8
    python benchmarks/latency_fidelity.py --backend tvm --tuning-trials 8 --candidates 4
    python benchmarks/latency_fidelity.py --zoo --device-calibration   # + torchvision zoo

With ``--zoo``, every torchvision classifier of :func:`autocompress.models.torchvision_zoo`
(random weights, 96x96, the transformers at their own size) is added as a family of two
models, unpruned and uniformly pruned to keep ratio 0.5 (local groups only where
Torch-Pruning cannot follow it, as ``zoo_pruning.py``); zoo families have no calibration
copies, so only their raw and device-calibrated estimates are reported. A model that does
not prune is measured unpruned only.

The models are measured in a fresh process (``autocompress.hardware._apart``): this one
built them with torch, and in such a process pruned many-node models ran up to 25% slower
than in a fresh one, which is how a profile is measured and a model deployed
(``--in-process`` measures here, as runs before 2026-12-07 10:00 did).

Writes benchmarks/results/latency_fidelity_<backend>.csv and .md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from scipy.stats import spearmanr

from autocompress.exceptions import ProfileError
from autocompress.hardware import HardwareProfile, LatencyModel, MeasureSettings, get_backend
from autocompress.hardware._apart import measure_apart
from autocompress.hardware.backends import is_local
from autocompress.hardware.export import export_onnx
from autocompress.hardware.latency import fit_calibration
from autocompress.hardware.profile import describe_device
from autocompress.hardware.profiler import check_profile
from autocompress.models import create_model
from autocompress.space import SearchSpace
from autocompress.transforms import find_channel_groups, prune_channels, sparsifiable_layers

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = (
    ("resnet20", (1, 3, 32, 32)),
    ("mobilenet_v2", (1, 3, 32, 32)),
    ("torchvision:resnet18", (1, 3, 96, 96)),
)
CALIBRATION_RATIOS = (1.0, 0.75, 0.5, 0.25)
#: channel rounding of the candidates (what the committed results were measured with)
FIDELITY_ROUND_TO = 8


def build_models(name: str, shape: tuple[int, int, int, int], count: int, seed: int
                 ) -> list[tuple[str, bytes]]:
    """Four calibration models, then ``count`` random candidates, as (label, onnx)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(name, num_classes=10, in_channels=shape[1]).eval()
    x = torch.zeros(shape)
    space = SearchSpace.default().for_device(FIDELITY_ROUND_TO, "any")
    bound = space.bind([g.name for g in find_channel_groups(model, x)],
                       sparsifiable_layers(model))
    out = []
    for ratio in CALIBRATION_RATIOS:
        pruned = copy.deepcopy(model)
        prune_channels(pruned, bound.uniform(ratio), x)
        out.append((f"calibration-{ratio}", export_onnx(pruned, x)))
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for i in range(count):
        trial = study.ask()
        candidate = bound.sample(trial)
        study.tell(trial, [0.0, 0.0])
        pruned = copy.deepcopy(model)
        prune_channels(pruned, candidate, x)
        out.append((f"candidate-{i}", export_onnx(pruned, x)))
    return out


def build_zoo_models(round_to: int) -> list[tuple[str, str, bytes]]:
    """(family, label, onnx) of every zoo model, unpruned and pruned to keep ratio 0.5."""
    from autocompress.exceptions import ModelError
    from autocompress.models import torchvision_zoo
    from autocompress.space import Candidate
    from autocompress.transforms import compress

    out = []
    for entry in torchvision_zoo():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(f"torchvision:{entry.name}", num_classes=10,
                                 in_channels=3).eval()
        x = torch.zeros(1, 3, entry.input_px, entry.input_px)
        family = f"zoo:{entry.name}"
        out.append((family, "unpruned", compress(model, Candidate(), x).structure_onnx()))
        try:
            groups = find_channel_groups(model, x)
            pruned = compress(model, Candidate(channel_keep={g.name: 0.5 for g in groups},
                                               round_to=round_to, min_channels=8), x)
            out.append((family, "pruned-0.5", pruned.structure_onnx()))
        except ModelError as exc:
            print(f"{entry.name}: not pruned ({exc})", file=sys.stderr)
    return out


def references_path(csv: Path) -> Path:
    """Where a run's measurements of the device calibration's reference models are kept,
    beside its CSV (``autocompress measure --out`` format)."""
    return csv.with_name(csv.stem + "_references.json")


def save_references(device, path: Path) -> None:
    import json

    path.write_text(json.dumps({"results": [
        {"onnx": f"{p.model}.onnx", "median_ms": p.measured_ms} for p in device.references]},
        indent=1) + "\n")


def device_calibration(profile: HardwareProfile, out: Path, measurements: Path | None):
    """The device calibration ``autocompress calibrate`` stores, on a copy of ``profile``:
    from ``measurements`` of its reference models where given, else measuring them here.
    (The zoo's rows are not those graphs: the references are built for 96-pixel inputs, with
    the stems of :func:`autocompress.models.create_model`, and estimate 10-25% above the zoo's
    export of the same architecture.)"""
    from autocompress.study import calibrate_device

    out.mkdir(parents=True, exist_ok=True)
    copy_path = out / "_profile.json"
    profile.save(copy_path)
    try:
        return calibrate_device(copy_path, measurements=measurements).calibration
    finally:
        copy_path.unlink()


def _stored_date(csv: Path) -> str:
    """The date line of the report written beside ``csv``, if any."""
    md = csv.with_suffix(".md")
    if md.is_file():
        for line in md.read_text().splitlines():
            if line.startswith("- date: "):
                return line.removeprefix("- date: ")
    return "at an unknown date"


def summarize(pred: list[float], ref: list[float]) -> dict[str, float]:
    err = [abs(p - m) / m for p, m in zip(pred, ref, strict=True)]
    return {"within_10pct": sum(e <= 0.10 for e in err) / len(err),
            "mape": statistics.mean(err),
            "spearman": float(spearmanr(pred, ref).statistic) if len(pred) > 2 else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tvm"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="default: hw_profiles/<backend>-cpu-t<N>")
    parser.add_argument("--candidates", type=int, default=20, help="per family (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per measurement pass")
    parser.add_argument("--min-runs", type=int, default=50,
                        help="timed runs per measurement at least (default 50; fewer for "
                             "slow untuned TVM code)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuning-trials", type=int, default=0, metavar="N",
                        help="tvm: tune every model (N trials per task, cached) before "
                             "measuring; give the profile measured with the same N")
    parser.add_argument("--device-calibration", action="store_true",
                        help="also report estimates corrected by `autocompress calibrate` "
                             "(measured here, on a copy of the profile)")
    parser.add_argument("--zoo", action="store_true",
                        help="add the torchvision zoo, unpruned and pruned (slow: 15-25 min)")
    parser.add_argument("--stored", type=Path,
                        help="reuse the measurements of this results CSV (written here by an "
                             "earlier run with the same options) and recompute only the "
                             "estimates: compares estimators without measuring (the device "
                             "calibration's references too, where the run kept them beside "
                             "it, else they are measured again); writes "
                             "latency_fidelity_<backend>_stored.{csv,md}")
    parser.add_argument("--in-process", action="store_true",
                        help="measure the models in this process, which built them with torch "
                             "(as runs before 2026-12-07 10:00 did; pruned many-node models "
                             "then measure up to 25%% slower), instead of in a fresh one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuned = f"-tuned{args.tuning_trials}" if args.tuning_trials else ""
    default_profile = (f"tvm-llvm-cpu-t{args.threads}{tuned}" if args.backend == "tvm"
                       else f"{args.backend}-cpu-t{args.threads}")
    profile_path = args.profile or ROOT / "hw_profiles" / f"{default_profile}.json"
    profile = HardwareProfile.load(profile_path, backend=args.backend)
    latency = LatencyModel(profile)
    options = {"tuning_trials": args.tuning_trials} if args.tuning_trials else {}
    backend = get_backend(args.backend, threads=args.threads, **options)
    start = time.perf_counter()
    device = None
    stored = pd.read_csv(args.stored) if args.stored else None
    tuning_s = 0.0
    references_note = ""
    refused = ""
    staleness = ""
    if args.device_calibration:
        kept = references_path(args.stored) if stored is not None else None
        if kept is not None and kept.is_file():
            device = device_calibration(profile, args.out, kept)
            references_note = f" (measurements reused from {kept.name})"
        else:
            try:
                device = device_calibration(profile, args.out, None)
            except ProfileError as exc:  # the machine ran off the profile's speed throughout
                refused = str(exc)
                print(f"device calibration refused: {exc}", file=sys.stderr)
            if stored is not None:
                references_note = " (measured in this run: the stored run kept none)"
        if device is not None:
            suffix = "_stored" if stored is not None else ""
            save_references(device, args.out / f"latency_fidelity_{args.backend}{suffix}"
                                               f"_references.json")
            print(f"device calibration: {device.describe()}", file=sys.stderr)

    rows = []
    models = []
    for family, shape in FAMILIES:
        for label, onnx in build_models(family, shape, args.candidates, args.seed):
            rows.append({"family": family, "input": "x".join(map(str, shape)), "model": label,
                         "estimate_raw_ms": latency.estimate(onnx).latency_ms})
            models.append(onnx)
    if args.zoo:
        for family, label, onnx in build_zoo_models(profile.channel_block or FIDELITY_ROUND_TO):
            rows.append({"family": family, "input": "", "model": label,
                         "estimate_raw_ms": latency.estimate(onnx).latency_ms})
            models.append(onnx)
    print(f"{len(models)} models exported in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)
    frame = pd.DataFrame(rows)
    if stored is None:
        if args.tuning_trials:  # tune everything first: nothing else runs while measuring
            tune_start = time.perf_counter()
            for i, onnx in enumerate(models):
                backend.compile(onnx)
                print(f"tuned {i + 1}/{len(models)} models, "
                      f"{time.perf_counter() - tune_start:.0f} s", file=sys.stderr)
            tuning_s = time.perf_counter() - tune_start
        measure = MeasureSettings(max_time_s=1.5, min_runs=args.min_runs,
                                  round_runs=max(1, args.min_runs // 2))
        if args.backend == "onnxruntime" and is_local(profile):  # (TVM would compile 40
            # kernels again) how the machine runs the profile's kernels now, right before
            staleness = check_profile(profile_path).describe()
        if args.in_process:
            first, second = (backend.measure_many(models, measure, rounds=args.rounds)
                             for _ in range(2))
        else:  # this process built the models with torch: see autocompress.hardware._apart
            first, second = measure_apart(models, backend, measure, rounds=args.rounds,
                                          passes=2)
        frame["measured_ms"] = [m.median_ms for m in first]
        frame["remeasured_ms"] = [m.median_ms for m in second]
        frame["measured_rel_iqr"] = [m.rel_spread for m in first]
    else:
        frame = frame.merge(stored[["family", "model", "measured_ms", "remeasured_ms",
                                    "measured_rel_iqr"]], on=["family", "model"], how="left",
                            validate="one_to_one")
        lacking = frame[frame["measured_ms"].isna()]
        if len(lacking):
            raise SystemExit(f"{args.stored} has no measurement of {len(lacking)} models "
                             f"(e.g. {lacking.iloc[0]['family']} {lacking.iloc[0]['model']}): "
                             "run it with the options it was written with, or without --stored")
    frame["estimate_calibrated_ms"] = np.nan
    for _family, group in frame.groupby("family"):
        calib = group[group["model"].str.startswith("calibration")]
        if calib.empty:   # a zoo family: no calibration copies
            continue
        scale, offset = fit_calibration(list(calib["estimate_raw_ms"]),
                                        list(calib["measured_ms"]))
        frame.loc[group.index, "estimate_calibrated_ms"] = offset + scale * group[
            "estimate_raw_ms"]
    if device is not None:
        frame["estimate_device_ms"] = device.offset_ms + device.scale * frame["estimate_raw_ms"]
    candidates = frame[frame["model"].str.startswith("candidate")]
    # the device calibration's reference models are in the zoo: left out of its figures
    from autocompress.study._calibrate import REFERENCE_MODELS

    references = {f"zoo:{name.split(':')[-1]}" for name, _ in REFERENCE_MODELS}
    zoo = frame[frame["family"].str.startswith("zoo:") & ~frame["family"].isin(references)]

    lines = [f"# Latency fidelity: {args.backend}, {args.threads} thread(s)", "",
             f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
             f"- machine: {describe_device()}; Python {platform.python_version()}",
             f"- backend: {backend.name} {backend.version()} {backend.settings()}",
             f"- profile: {profile_path.name} ({profile.describe()})",
             *([f"- the profile's kernels right before the models were measured "
                f"(`autocompress profile --check`): {staleness}"] if staleness else []),
             f"- {len(candidates)} random candidates of search_spaces/default.yaml "
             f"({args.candidates} per family, seed {args.seed}); each measured in two "
             f"interleaved passes of {args.rounds} rounds"
             + ("" if stored is not None else " in this process" if args.in_process
                else " in a fresh process (not the one that built them)")
             + "; the second pass is the noise floor",
             f"- total time {time.perf_counter() - start:.0f} s"
             + (f", of which tuning the models {tuning_s:.0f} s (tasks the cache held "
                f"were not tuned again)" if tuning_s else ""),
             *([f"- **measurements reused** from {args.stored.name} (measured "
                f"{_stored_date(args.stored)}), not taken again: only the estimates were "
                f"computed in this run, by autocompress as it is now"] if stored is not None
               else []),
             *([f"- device calibration{references_note}: {device.describe()} ("
                + ", ".join(f"{p.model} {p.estimate_ms / p.measured_ms - 1:+.0%} raw"
                            for p in device.references) + ")"] if device else []),
             *([f"- device calibration refused: {refused}"] if refused else []), "",
             "| family | n | estimate | within ±10% | MAPE | Spearman |",
             "|---|---|---|---|---|---|"]
    scopes = [("all", candidates)] + list(candidates.groupby("family"))
    for scope, group in scopes:
        ref = list(group["measured_ms"])
        columns = [("raw profile", "estimate_raw_ms")]
        if device is not None:
            columns.append(("device-calibrated", "estimate_device_ms"))
        columns += [("calibrated on the family", "estimate_calibrated_ms"),
                    ("re-measurement", "remeasured_ms")]
        for label, column in columns:
            s = summarize(list(group[column]), ref)
            lines.append(f"| {scope} | {len(group)} | {label} | {s['within_10pct']:.0%} | "
                         f"{s['mape']:.1%} | {s['spearman']:.3f} |")
    if len(zoo):
        lines += ["", f"Torchvision zoo: {zoo['family'].nunique()} models, "
                  f"{(zoo['model'] == 'pruned-0.5').sum()} of them also pruned (keep 0.5); "
                  "no family calibration (no copies measured); the five reference models "
                  "of the device calibration left out", "",
                  "| scope | n | estimate | within ±10% | MAPE | Spearman |",
                  "|---|---|---|---|---|---|"]
        for scope, group in (("zoo, all", zoo),
                             ("zoo, unpruned", zoo[zoo["model"] == "unpruned"]),
                             ("zoo, pruned", zoo[zoo["model"] == "pruned-0.5"])):
            columns = [("raw profile", "estimate_raw_ms")]
            if device is not None:
                columns.append(("device-calibrated", "estimate_device_ms"))
            columns.append(("re-measurement", "remeasured_ms"))
            for label, column in columns:
                s = summarize(list(group[column]), list(group["measured_ms"]))
                lines.append(f"| {scope} | {len(group)} | {label} | {s['within_10pct']:.0%} "
                             f"| {s['mape']:.1%} | {s['spearman']:.3f} |")
    report = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    name = (f"latency_fidelity_{args.backend}{tuned.replace('-', '_')}"
            f"{'_stored' if stored is not None else ''}")
    frame.to_csv(args.out / f"{name}.csv", index=False)
    (args.out / f"{name}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
