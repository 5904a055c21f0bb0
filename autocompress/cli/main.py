"""``autocompress`` command line: thin commands that parse arguments and call the API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autocompress.exceptions import AutocompressError

__all__ = ["main"]

_EPILOG = "Docs: README.md. Errors print one line and exit 2; -v shows more detail."


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1,C,H,W (e.g. 1,3,32,32), got {text!r}"
                                         ) from None
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers 1,C,H,W, got {text!r}")
    return parts  # type: ignore[return-value]


def _precisions(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected precisions such as fp32,int8")
    return names


def _objectives(text: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in text.split(",") if p.strip())


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocompress", epilog=_EPILOG,
        description="Hardware-aware neural-network compression search.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more output (-vv: also Optuna's own logging)")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search compressed models for a latency budget",
                       epilog=_EPILOG)
    s.add_argument("--model", default="resnet20",
                   help="builtin name (resnet20/32/56, mobilenet_v2), a torchvision classifier "
                        "name, timm:NAME (a timm model, random weights), or "
                        "path/file.py:factory (default: resnet20)")
    s.add_argument("--data", default=None,
                   help="mnist, digits or imagefolder:PATH (PATH/<class>/<image>, split into "
                        "training and validation data; a PATH/train + PATH/val layout is used "
                        "as both) (default: mnist)")
    s.add_argument("--train-data", help="the training data (a spec as --data), with --val-data")
    s.add_argument("--val-data", help="separate validation data (a spec as --data): the front's "
                   "accuracies are measured on it only")
    s.add_argument("--normalize", default="dataset",
                   help="input normalization: dataset (mean/std of the training data), "
                        "imagenet, none, or MEAN,STD on the 0-1 scale (one each, or one per "
                        "channel, means first) (default: dataset)")
    s.add_argument("--resize", type=int, help="image folders: resize the shorter side to this "
                   "many pixels (bilinear, as torchvision's Resize on PIL images)")
    s.add_argument("--center-crop", help="image folders: crop SIZE or H,W from the center "
                   "(after --resize)")
    s.add_argument("--embed-preprocessing", action="store_true",
                   help="exported models normalize their input themselves (take 0-1 images)")
    s.add_argument("--data-cache", choices=["auto", "memory", "stream"], default="auto",
                   help="image folders: decode into memory, or stream from the files with "
                        "worker processes (default: auto, memory up to 1 GiB of pixels)")
    s.add_argument("--data-workers", type=int, help="processes decoding streamed images "
                   "(default: half the CPUs, 1 to 4)")
    s.add_argument("--latency-budget-ms", type=_positive_float, default=None,
                   help="latency budget (default: half the baseline's measured latency)")
    s.add_argument("--trials", type=int, default=12,
                   help="finetuned trials within budget to complete (default: 12)")
    s.add_argument("--out", type=Path, default=Path("runs/default"),
                   help="run folder; the same command again resumes (default: runs/default)")
    s.add_argument("--checkpoint", type=Path, help="state_dict of the model (.pt)")
    s.add_argument("--space", type=Path, help="search-space YAML (default: "
                   "search_spaces/default.yaml)")
    s.add_argument("--profile", type=Path, help="hardware profile JSON (default: profile "
                   "this CPU once and cache it)")
    s.add_argument("--finetune-steps", type=int, default=150,
                   help="finetune steps per candidate (default: 150)")
    s.add_argument("--finetune-lr", type=_positive_float, default=0.01)
    s.add_argument("--storage", help="Optuna storage URL (default: sqlite in the run folder)")
    s.add_argument("--study", default="autocompress", help="study name (default: autocompress)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split-seed", type=int,
                   help="seed of the train/validation split of --data (default: --seed); fix "
                        "it to compare seeds of a search on one validation set, or to keep the "
                        "split a --checkpoint was trained with")
    s.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime threads of the local profile (default: 1)")
    s.add_argument("--input-shape", type=_shape, help="1,C,H,W; resizes the data if needed")
    s.add_argument("--sampler", choices=["tpe", "random", "nsga2"], default="tpe",
                   help="Optuna sampler (default: multivariate TPE)")
    s.add_argument("--no-calibrate", action="store_true",
                   help="do not scale estimates by the baseline's measured/estimated ratio")
    s.add_argument("--augment", default="auto",
                   help="training augmentation: auto (crop and flip for image folders, none "
                        "for mnist/digits), none, standard, or a list such as crop=4,flip or "
                        "crop=4,flip,cutout=16 (cutout: a 16 px square erased)")
    s.add_argument("--train-precision", choices=["fp32", "bf16"], default="fp32",
                   help="arithmetic of every training of the run: fp32 (default) or bf16 "
                        "(forward passes under bfloat16 autocast, weights and optimiser in "
                        "fp32; up to 2x faster for wide networks on CPUs with AVX512_BF16 or "
                        "AMX, little for small pruned ones, slower on CPUs without bfloat16 "
                        "arithmetic)")
    s.add_argument("--screen", type=int, default=None,
                   help="distinct networks scored without training (adaptive BatchNorm) "
                        "before the best are finetuned (default: 10 per trial; 0: off)")
    s.add_argument("--objectives", type=_objectives, default=("accuracy", "latency"),
                   help="accuracy,latency (default) or accuracy,latency,size (also searches "
                        "unstructured sparsity, which only shrinks the model)")
    s.add_argument("--no-allocation", action="store_true",
                   help="do not seed the search with a latency-aware allocation of channels")
    s.add_argument("--finetune-distill", choices=("none", "kl"), default="none",
                   help="kl: finetunes (in the search and at pick) also learn from the "
                        "uncompressed model's outputs (knowledge distillation, T=4, half the "
                        "loss on the labels); costs one forward pass of that model per step "
                        "(default: none)")

    f = sub.add_parser("front", help="print a run's Pareto front; write front.csv, front.png")
    f.add_argument("run", type=Path)
    f.add_argument("--storage", help="storage URL, if the run used one")

    p = sub.add_parser("pick", help="export the most accurate front model within a budget")
    p.add_argument("run", type=Path)
    p.add_argument("--latency-budget-ms", type=_positive_float, required=True)
    p.add_argument("--export", type=Path, required=True, help="folder for model.onnx and "
                   "candidate.json")
    p.add_argument("--storage", help="storage URL, if the run used one")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="train the picked model again, the search's way, for this many steps "
                        "before export (the search's short finetune ranks candidates; a "
                        "deployed model deserves longer; default: 0, export as searched)")
    p.add_argument("--checkpoint", type=Path,
                   help="the baseline checkpoint the run searched from, for --finetune-steps "
                        "(default: the one run.json names)")
    p.add_argument("--trial", type=int,
                   help="export this front member (its trial number, as `front` lists it) "
                        "instead of the most accurate within the budget")

    t = sub.add_parser("retarget", help="re-estimate a finished search's finetuned trials on "
                       "another device's profile into a new run folder (nothing is trained)",
                       epilog=_EPILOG)
    t.add_argument("run", type=Path)
    t.add_argument("--profile", type=Path, required=True,
                   help="hardware profile JSON of the new device")
    t.add_argument("--out", type=Path, required=True,
                   help="new run folder (must not exist, or be empty); `autocompress search "
                        "--out` it with the new --profile continues the search there")
    t.add_argument("--latency-budget-ms", type=_positive_float, default=None,
                   help="the new device's budget (default: the same share of the baseline's "
                        "latency on the new profile as the run's budget was)")
    t.add_argument("--storage", help="storage URL of RUN's study, if it used one (the new "
                   "run's study is an SQLite file in --out)")

    r = sub.add_parser("report", help="write a self-contained HTML report of a run")
    r.add_argument("run", type=Path)
    r.add_argument("--out", type=Path, help="HTML file (default: RUN/report.html)")
    r.add_argument("--storage", help="storage URL, if the run used one")

    pr = sub.add_parser("profile", help="measure this device and write a hardware profile")
    _backend_options(pr)
    pr.add_argument("--rounds", type=int, default=2,
                    help="measure every kernel this many times, shuffled (default: 2)")
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--upgrade", "--sweep-only", dest="upgrade", action="store_true",
                    help="measure only what the existing profile --out lacks that profiling "
                         "measures today (the channel sweep; on ONNX Runtime on a CPU its "
                         "layout conversions, grouped convolutions, elementwise operator "
                         "classes and weight-streaming chains) and add it (seconds)")
    pr.add_argument("--check", action="store_true",
                    help="measure 40 of the existing profile --out's kernels again "
                         "(seconds on ONNX Runtime; TVM compiles each) and say whether "
                         "this machine still runs them as fast as when it was profiled "
                         "(exit status 1 where it does not: profile again); writes nothing")
    pr.add_argument("--precisions", type=_precisions, default=("fp32",),
                    help="comma-separated precisions to measure kernels in, fp32 among "
                         "them (default: fp32); e.g. fp32,int8 for mixed-precision "
                         "estimates (onnxruntime cpu: fp32,int8; cuda: fp32,fp16,int8)")

    e = sub.add_parser("estimate", help="estimate a model's latency from a hardware profile")
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model name, timm:NAME or path/file.py:factory")
    what.add_argument("--onnx", type=Path, help="an ONNX file (needs no torch)")
    e.add_argument("--profile", type=Path, required=True)
    e.add_argument("--checkpoint", type=Path)
    e.add_argument("--candidate", type=Path, help="candidate.json from 'pick': compress first")
    e.add_argument("--input-shape", type=_shape)
    e.add_argument("--num-classes", type=int, default=10)

    m = sub.add_parser("measure", help="measure ONNX models' latency on a backend")
    m.add_argument("--onnx", type=Path, required=True,
                   help="an ONNX file, or a folder: every .onnx file in it, interleaved")
    _backend_options(m)
    m.add_argument("--rounds", type=int, default=3, help="measurement rounds (default: 3)")
    m.add_argument("--out", type=Path, help="also write the results to this JSON file (what "
                   "`calibrate --measurements` reads)")

    c = sub.add_parser("calibrate", help="measure a few reference models on a profile's "
                       "device and store its correction of raw estimates in the profile")
    c.add_argument("--profile", type=Path, required=True,
                   help="hardware profile JSON (rewritten with the calibration)")
    c.add_argument("--export-references", type=Path, metavar="DIR",
                   help="only write the reference models to DIR, to measure them on a device "
                        "this machine cannot reach (`autocompress measure --onnx DIR --out "
                        "results.json` there)")
    c.add_argument("--measurements", type=Path,
                   help="results.json of `autocompress measure` on the device, instead of "
                        "measuring here")
    c.add_argument("--rounds", type=int, default=3, help="measurement rounds (default: 3)")
    return parser


def _backend_options(parser: argparse.ArgumentParser) -> None:
    from autocompress.hardware.backends import available_backends

    parser.add_argument("--backend", default="onnxruntime", choices=available_backends(),
                        help="default: onnxruntime; synthetic is a deterministic stand-in "
                             "device for tests and CI")
    parser.add_argument("--threads", type=int,
                        help="onnxruntime, tvm: intra-op threads (default: 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        help="onnxruntime, tvm: cpu (default) or cuda (onnxruntime needs "
                             "onnxruntime-gpu)")
    parser.add_argument("--target", help="tvm: llvm (default), arm, cuda, or a target JSON")
    parser.add_argument("--rpc", help="tvm: HOST:PORT of a TVM RPC server on the device")
    parser.add_argument("--tuning-trials", type=int, metavar="N",
                        help="tvm on this machine: tune every model with MetaSchedule, N "
                             "trials per task, before measuring it (default 0: untuned, not "
                             "a deployment latency); tuned tasks are cached; about 0.4 s per "
                             "trial on 2 cores")
    parser.add_argument("--scale", type=_positive_float,
                        help="synthetic: latency factor (default: "
                             "$AUTOCOMPRESS_SYNTHETIC_SCALE, else 1)")


def _backend_args(args: argparse.Namespace) -> dict[str, object]:
    """The backend options given on the command line (``None``: the backend's default)."""
    return {"threads": args.threads, "device": args.device, "target": args.target,
            "rpc": args.rpc, "tuning_trials": args.tuning_trials, "scale": args.scale}


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("autocompress")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    try:
        import optuna
    except ImportError:  # a profile-only install
        return
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose >= 2 else optuna.logging.WARNING)


def _search(args: argparse.Namespace) -> int:
    from autocompress.exceptions import DataError
    from autocompress.study import SearchConfig, search

    if args.data is not None and args.train_data is not None:
        raise DataError("give the training data once: --data (split, or with --val-data) or "
                        "--train-data with --val-data")
    config = SearchConfig(
        model=args.model, data=args.train_data or args.data or "mnist", out=args.out,
        val_data=args.val_data, normalize=args.normalize, resize=args.resize,
        center_crop=args.center_crop, embed_preprocessing=args.embed_preprocessing,
        data_cache=args.data_cache, data_workers=args.data_workers,
        latency_budget_ms=args.latency_budget_ms, trials=args.trials,
        checkpoint=args.checkpoint, space=args.space, profile=args.profile,
        finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
        storage=args.storage, study=args.study, seed=args.seed, split_seed=args.split_seed,
        threads=args.threads,
        input_shape=args.input_shape, calibrate=not args.no_calibrate, sampler=args.sampler,
        augment=args.augment, screen=args.screen, objectives=args.objectives,
        allocate=not args.no_allocation, finetune_distill=args.finetune_distill,
        train_precision=args.train_precision,
    )
    front = search(config)
    _write_front(front, args.out)
    print(f"\nNext: autocompress pick {args.out} --latency-budget-ms "
          f"{front.budget_ms:.3f} --export {args.out / 'export'}")
    return 0


def _write_front(front, run: Path) -> None:  # type: ignore[no-untyped-def]
    print(front.summary())
    csv = front.write_csv(run / "front.csv")
    png = front.plot(run / "front.png")
    print(f"wrote {csv} and {png}")


def _front(args: argparse.Namespace) -> int:
    from autocompress.study import load_front

    _write_front(load_front(args.run, storage=args.storage), args.run)
    return 0


def _pick(args: argparse.Namespace) -> int:
    from autocompress.study import pick

    result = pick(args.run, args.latency_budget_ms, args.export, storage=args.storage,
                  finetune_steps=args.finetune_steps, checkpoint=args.checkpoint,
                  trial=args.trial)
    for trial, predicted, measured in result.tried:
        print(f"trial {trial}: predicted {predicted:.3f} ms, measured {measured:.3f} ms")
    print(result.message)
    if result.export_dir is None:
        return 1
    print(f"wrote {result.export_dir / 'model.onnx'} and {result.export_dir / 'candidate.json'}")
    return 0


def _retarget(args: argparse.Namespace) -> int:
    from autocompress.study import retarget

    result = retarget(args.run, args.profile, args.out,
                      latency_budget_ms=args.latency_budget_ms, storage=args.storage)
    print(result.front.summary())
    print(result.summary())
    print(f"wrote {args.out} (front.csv, front.png, run.json, study.db)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from autocompress.study import write_report

    print(f"wrote {write_report(args.run, args.out, storage=args.storage)}")
    return 0


def _progress_bar() -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(progress callback, close) for profiling: a tqdm bar where tqdm is installed, else a
    counter line on stderr; nothing is shown before the first kernel is measured."""
    shown: list[Any] = []  # the bar, once there is one

    def advance(done: int, total: int) -> None:
        if not shown:
            try:
                from tqdm import tqdm
            except ImportError:  # a profile-only install
                shown.append(None)
            else:
                shown.append(tqdm(desc="profiling", unit="kernel", file=sys.stderr))
        bar = shown[0]
        if bar is None:
            if done % 25 == 0 or done == total:
                print(f"\rprofiling: {done}/{total} kernels", end="", file=sys.stderr,
                      flush=True)
            return
        bar.total = total
        bar.update(done - bar.n)

    def close() -> None:
        if shown and shown[0] is not None:
            shown[0].close()
        elif shown:
            print(file=sys.stderr)

    return advance, close


def _profile(args: argparse.Namespace) -> int:
    if args.check:
        if args.upgrade:
            raise SystemExit("--check and --upgrade are two runs: check first, then upgrade")
        from autocompress.hardware.profiler import CHECK_TOLERANCE, check_profile

        check = check_profile(args.out, rounds=args.rounds)
        print(f"{args.out} (profiled {check.profiled_at}): {check.describe()}")
        chains = check.chain_ratio
        if chains is not None and abs(chains - 1) > CHECK_TOLERANCE:
            print(f"its memory now reads weights beyond the caches at {chains:.2f}x their "
                  f"profiled time (the host's other tenants share it): the streaming charge "
                  f"of models with tens of MiB of weights is off by up to that much")
        if check.holds:
            print("this machine still runs as when it was profiled")
            return 0
        direction = "slower" if check.median_ratio > 1 else "faster"
        print(f"this machine now runs the profile's kernels {direction} than when it was "
              f"profiled: estimates from it are off by about as much; profile again "
              f"(`autocompress profile --out {args.out}`), or check again later if the "
              f"machine is shared and busy")
        return 1
    if args.upgrade:
        from autocompress.hardware.kernels import LAYOUT_KINDS
        from autocompress.hardware.profiler import upgrade_profile

        profile = upgrade_profile(args.out, rounds=args.rounds)
        layout = sum(1 for k in profile.kernels if k.kernel.kind in LAYOUT_KINDS)
        print(f"upgraded {args.out}: channel block {profile.channel_block}, {layout} layout "
              f"conversions measured")
        _print_streaming(profile)
        return 0
    from autocompress.hardware._tools import profile_device

    progress, close = _progress_bar()
    try:
        profile = profile_device(args.out, backend=args.backend, rounds=args.rounds,
                                 progress=progress, precisions=args.precisions,
                                 **_backend_args(args))
    finally:
        close()
    unstable = sum(1 for k in profile.kernels if not k.latency.stable)
    print(f"wrote {args.out}: {profile.describe()}; {unstable} of {len(profile.kernels)} "
          f"kernels did not settle within the time cap (spread recorded); "
          f"{profile.elapsed_s:.0f} s")
    if profile.channel_block is not None:
        print(f"channel block: {profile.channel_block} (convolutions run fastest at multiples "
              f"of {profile.channel_block} channels; spaces with round_to: device round to it)")
    _print_streaming(profile)
    return 0


def _print_streaming(profile: Any) -> None:
    """One line on what reading weights costs on the device, where the profile measured it."""
    from autocompress.hardware.latency import WeightStreaming

    streaming = WeightStreaming.from_profile(profile)
    if streaming is None:
        return
    largest = streaming.footprint_bytes[-1]
    print(f"weights: read at {1e-6 / streaming.cached_ms_per_byte:.0f} GB/s while they fit in "
          f"cache, {1e-6 / streaming.rate(largest):.0f} GB/s at {largest / 2**20:.0f} MiB "
          f"(estimates charge models whose weights outgrow the cache for reading them)")


def _estimate(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        from autocompress.hardware._tools import estimate_onnx

        estimate = estimate_onnx(args.profile, args.onnx)
        what = str(args.onnx)
        from autocompress.hardware import HardwareProfile

        profile = HardwareProfile.load(args.profile)
    else:
        _need_search_extra()
        from autocompress.study import estimate_latency

        result = estimate_latency(args.profile, args.model, checkpoint=args.checkpoint,
                                  candidate=args.candidate, input_shape=args.input_shape,
                                  num_classes=args.num_classes)
        estimate, profile = result.estimate, result.profile
        what = f"{result.what} at input {'x'.join(map(str, result.input_shape))}"
    device = profile.device_calibration
    if device is None:
        print(f"{what}: {estimate.latency_ms:.3f} ms +- {estimate.std_ms:.3f} (estimate from "
              f"{args.profile}: {profile.describe()}; uncalibrated)")
    else:
        calibrated = device.offset_ms + device.scale * estimate.latency_ms
        print(f"{what}: {calibrated:.3f} ms +- {device.scale * estimate.std_ms:.3f} (estimate "
              f"from {args.profile}: {profile.describe()}; device calibration "
              f"{device.describe()}; raw {estimate.latency_ms:.3f} ms)")
    if estimate.streaming_ms > 0:
        print(f"of which {estimate.streaming_ms:.3f} ms (raw) reading weights that outgrow the "
              f"device's cache")
    if estimate.unmodelled:
        print(f"note: operators costed as elementwise: {', '.join(estimate.unmodelled)}")
    if estimate.subnormal_softmax:
        count = len(estimate.subnormal_softmax)
        print(f"note: {count} softmax node(s) take a mask whose exponential is a subnormal "
              f"float (e.g. {estimate.subnormal_softmax[0]}; Swin's -100). CPUs that stall "
              "on subnormals run such a model slower than this estimate unless they are "
              "flushed to zero (measured: swin_t 1.31x on an Intel Xeon, 1 thread; ONNX "
              "Runtime's session.set_denormal_as_zero reaches only its thread pool). See "
              "docs/latency.md, 'A CPU the estimate was not developed on'.")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from autocompress.exceptions import ExportError
    from autocompress.hardware import get_backend
    from autocompress.hardware._tools import measure_onnx_many

    backend = get_backend(args.backend, **_backend_args(args))
    files = sorted(args.onnx.glob("*.onnx")) if args.onnx.is_dir() else [args.onnx]
    if not files:
        raise ExportError(f"{args.onnx} holds no .onnx file")
    results = measure_onnx_many(files, backend=backend, rounds=args.rounds)
    settings = backend.settings()
    where = (f"{backend.name}, {settings['threads']} thread(s)" if "threads" in settings else
             ", ".join([backend.name, *(f"{k} {v}" for k, v in settings.items())]))
    for path, m in zip(files, results, strict=True):
        print(f"{path}: {m.median_ms:.3f} ms median (measured on {where}; quartiles "
              f"{m.p25_ms:.3f}-{m.p75_ms:.3f} ms, {m.runs} runs"
              f"{'' if m.stable else ', did not settle'})")
    if args.out is not None:
        from autocompress._io import write_json_atomic
        from autocompress.hardware.profile import describe_device

        write_json_atomic(args.out, {
            "backend": {"name": backend.name, "version": backend.version(),
                        "settings": settings},
            "device": describe_device(),
            "results": [{"onnx": str(path), **m.to_dict()}
                        for path, m in zip(files, results, strict=True)]})
        print(f"wrote {args.out}")
    return 0


#: ``calibrate`` warns when its reference models' measured / estimated ratios differ more
SPREAD_WARNING = 1.25


def _calibrate(args: argparse.Namespace) -> int:
    from autocompress.study._calibrate import calibrate_device, export_references

    if args.export_references is not None:
        paths = export_references(args.export_references)
        print(f"wrote {len(paths)} reference models to {args.export_references}; on the "
              f"device: autocompress measure --onnx {args.export_references} --out "
              f"results.json (with the profile's backend options), then here: autocompress "
              f"calibrate --profile {args.profile} --measurements results.json")
        return 0
    result = calibrate_device(args.profile, measurements=args.measurements, rounds=args.rounds)
    for model, raw, calibrated in result.errors():
        print(f"{model}: raw estimate {raw:+.1%}, calibrated {calibrated:+.1%} of measured")
    print(f"wrote {args.profile}: device calibration {result.calibration.describe()}")
    if result.machine is not None:
        print(f"beside the references, the profile's kernels: {result.machine.describe()}")
    if result.spread > SPREAD_WARNING:
        print(f"warning: the reference models disagree (measured / estimated ratios differ "
              f"{result.spread:.2f}x): the profile's error depends on the architecture here, "
              f"and one factor corrects some models at the expense of others; compare "
              f"`autocompress estimate` with a measurement of a model like yours before "
              f"relying on it")
    return 0


def _need_search_extra() -> None:
    from autocompress.exceptions import MissingDependencyError

    try:
        import optuna  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"this command needs the search dependencies ({exc.name} is missing): "
            "pip install 'autocompress[search]'") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    commands = {"search": _search, "front": _front, "pick": _pick, "profile": _profile,
                "estimate": _estimate, "measure": _measure, "report": _report,
                "retarget": _retarget, "calibrate": _calibrate}
    if args.command in ("search", "front", "pick", "report", "retarget", "calibrate"):
        try:
            _need_search_extra()
        except AutocompressError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return commands[args.command](args)
    except AutocompressError as exc:
        if args.verbose:
            logging.getLogger("autocompress").exception("details")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; completed trials are kept: run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
