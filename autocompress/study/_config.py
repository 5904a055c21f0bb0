"""Search settings and the run folder that keeps everything a search produced."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autocompress._io import write_json_atomic
from autocompress.exceptions import RunError
from autocompress.settings import TRAIN_PRECISIONS, Augmentation, DistillSettings
from autocompress.study._records import RunIdentity, RunInfo

__all__ = ["FINETUNE_DISTILL", "OBJECTIVE_SETS", "RunFolder", "SearchConfig",
           "check_same_identity", "finetune_recovery", "identity", "redact_url", "sha256_file"]

#: The objectives a search can trade off.
OBJECTIVE_SETS = (("accuracy", "latency"), ("accuracy", "latency", "size"))
#: How a compressed candidate's finetune learns: from the labels only (``none``), or from the
#: uncompressed model's outputs as well (``kl``: :func:`finetune_recovery`).
FINETUNE_DISTILL = ("none", "kl")


def finetune_recovery(name: str) -> DistillSettings | None:
    """The distillation losses of a finetune set to ``name`` (one of
    :data:`FINETUNE_DISTILL`): for ``kl``, Hinton's KL divergence from the uncompressed
    model's outputs at temperature 4, weighted equally with the cross-entropy on the labels
    (the students' defaults). The finetune's own settings (steps, learning rate,
    augmentation) are kept; the uncompressed model runs on every batch."""
    if name == "none":
        return None
    if name == "kl":
        return DistillSettings(loss="kl", temperature=4.0, alpha=0.5, early_stopping=None)
    raise RunError(f"--finetune-distill must be one of {', '.join(FINETUNE_DISTILL)}, "
                   f"got {name!r}")


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; the CLI's ``search`` options map onto these fields.

    ``latency_budget_ms=None`` means half the baseline's latency (measured when the profile
    is of this machine, else estimated). ``profile=None`` profiles this CPU once and caches
    it. ``storage=None`` is an SQLite file in the run folder.
    """

    model: str = "resnet20"
    #: ``mnist``, ``digits``, ``imagefolder:PATH`` (a ``PATH/train`` + ``PATH/val`` layout
    #: gives both sides) or, through the Python API, a ``torch.utils.data.Dataset``; split
    #: into training and validation data unless ``val_data`` is given
    data: str | Any = "mnist"
    out: Path = Path("runs/default")
    latency_budget_ms: float | None = None
    trials: int = 12
    checkpoint: Path | None = None
    space: Path | None = None
    profile: Path | None = None
    finetune_steps: int = 150
    finetune_lr: float = 0.01
    batch_size: int = 64
    storage: str | None = None
    study: str = "autocompress"
    seed: int = 0
    #: seed of the train/validation split of ``data`` (``None``: ``seed``); fix it to compare
    #: searches of several seeds on one validation set, or to keep the split a checkpoint
    #: was trained with (its training images must not land in the validation split)
    split_seed: int | None = None
    threads: int = 1
    input_shape: tuple[int, int, int, int] | None = None
    calibrate: bool = True
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    #: training-time augmentation of finetunes (and of a baseline trained here): ``auto``
    #: (random crop and flip for image folders, none for the digit sets), ``none``,
    #: ``standard`` or e.g. ``crop=4,flip``
    augment: str = "auto"
    #: candidates scored without training (adaptive BatchNorm) before the best are finetuned;
    #: ``None``: 10 per finetuned trial; 0: no screening (the sampler proposes every trial)
    screen: int | None = None
    #: what the front trades off: accuracy and latency, and optionally the compressed size
    #: (only then is unstructured sparsity searched: it does not change latency)
    objectives: tuple[str, ...] = ("accuracy", "latency")
    #: seed the search with a latency-aware allocation of channels (see _allocation.py)
    allocate: bool = True
    #: finetunes of compressed candidates (in the search and at ``pick``) learn from the
    #: labels only (``none``) or also from the uncompressed model's outputs (``kl``)
    finetune_distill: Literal["none", "kl"] = "none"
    #: arithmetic of every training here (finetunes, students, a baseline trained here):
    #: ``fp32``, or ``bf16`` (forward passes under bfloat16 autocast; see
    #: :class:`~autocompress.evaluation.TrainSettings`)
    train_precision: str = "fp32"
    #: the training data, as ``data`` (an alias of it; given, it replaces ``data``)
    train_data: str | Any | None = None
    #: separate validation data (a spec or a Dataset): ``data`` is then all training data
    val_data: str | Any | None = None
    #: ``dataset`` (the training data's per-channel mean and std), ``imagenet``, ``none`` or
    #: ``MEAN,STD`` numbers on the 0-1 scale (one each, or one per channel, means first)
    normalize: str = "dataset"
    #: image folders: resize the shorter side to this many pixels, then ``center_crop``
    #: ``(height, width)``
    resize: int | None = None
    center_crop: tuple[int, int] | None = None
    #: exported models (``pick``) normalize their input themselves: they take 0-1 images
    embed_preprocessing: bool = False
    #: image folders: ``auto`` (in memory when the decoded pixels take at most 1 GiB),
    #: ``memory`` or ``stream`` (decoded on the fly by ``data_workers`` processes)
    data_cache: Literal["auto", "memory", "stream"] = "auto"
    data_workers: int | None = None

    @property
    def data_seed(self) -> int:
        """The seed the train/validation split is drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def screen_count(self) -> int:
        return 10 * self.trials if self.screen is None else self.screen

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise RunError(f"--trials must be at least 1, got {self.trials}")
        if self.finetune_steps < 0:
            raise RunError(f"--finetune-steps must be 0 or more, got {self.finetune_steps}")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise RunError(
                f"--latency-budget-ms must be a positive number, got {self.latency_budget_ms}")
        if self.threads < 1:
            raise RunError(f"--threads must be at least 1, got {self.threads}")
        if self.sampler not in ("tpe", "random", "nsga2"):
            raise RunError(f"--sampler must be tpe, random or nsga2, got {self.sampler!r}")
        if self.screen is not None and self.screen < 0:
            raise RunError(f"--screen must be 0 or more, got {self.screen}")
        if tuple(self.objectives) not in OBJECTIVE_SETS:
            raise RunError(f"--objectives must be one of "
                           f"{', '.join(','.join(o) for o in OBJECTIVE_SETS)}, got "
                           f"{','.join(self.objectives)!r}")
        finetune_recovery(self.finetune_distill)
        if self.train_precision not in TRAIN_PRECISIONS:
            raise RunError(f"--train-precision must be one of {', '.join(TRAIN_PRECISIONS)}, "
                           f"got {self.train_precision!r}")
        if self.augment != "auto":
            try:
                Augmentation.parse(self.augment)
            except Exception as exc:
                raise RunError(f"--augment: {exc}; or 'auto'") from exc
        self._check_data()

    def _check_data(self) -> None:
        """Data settings: checked before anything is loaded (raise :class:`DataError`)."""
        from autocompress.data import CACHE_MODES, parse_center_crop, parse_normalize
        from autocompress.data._preprocess import check_resize
        from autocompress.exceptions import DataError

        if self.train_data is not None:
            object.__setattr__(self, "data", self.train_data)
            object.__setattr__(self, "train_data", None)
        parse_normalize(self.normalize)
        check_resize(self.resize)
        object.__setattr__(self, "center_crop", parse_center_crop(self.center_crop))
        if self.data_cache not in CACHE_MODES:
            raise DataError(f"--data-cache must be one of {', '.join(CACHE_MODES)}, got "
                            f"{self.data_cache!r}")
        if self.data_workers is not None and (isinstance(self.data_workers, bool) or not
                                              isinstance(self.data_workers, int)
                                              or self.data_workers < 0):
            raise DataError(f"--data-workers must be 0 or more, got {self.data_workers!r}")


def redact_url(url: str) -> str:
    """A storage URL safe to print or store: any password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a journal file): show scheme only
        return url.split("://", 1)[0] + "://***" if "://" in url else url


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class RunFolder:
    """The folder of one search run.

    ``run.json`` (:class:`RunInfo`: settings, baseline, budget, calibration), ``study.db``
    (the Optuna study, unless another storage is used), ``space.yaml`` and ``profile.json``
    (copies of what the search used), ``baseline/model.onnx``,
    ``trials/NNNNN/{model.onnx,candidate.json}``, and ``front.csv`` / ``front.png`` once
    ``autocompress front`` ran.
    """

    path: Path
    info: RunInfo | None = None

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{(self.path / 'study.db').resolve()}"

    def trial_dir(self, number: int) -> Path:
        return self.path / "trials" / f"{number:05d}"

    def exists(self) -> bool:
        return self.run_json.is_file()

    @property
    def run(self) -> RunInfo:
        """The run's record (raises :class:`RunError` before the first search wrote it)."""
        if self.info is None:
            raise RunError(f"{self.path} holds no run.json yet; run 'autocompress search' "
                           "with --out pointing here first")
        return self.info

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        run_json = path / "run.json"
        if not run_json.is_file():
            raise RunError(f"{path} is not a search run folder (no run.json); pass the --out "
                           "folder of an 'autocompress search'")
        try:
            data = json.loads(run_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{run_json} is unreadable: {exc}") from exc
        return cls(path, RunInfo.from_dict(data, str(run_json)))

    def save(self, info: RunInfo) -> None:
        self.info = info
        write_json_atomic(self.run_json, info.to_dict())

    def storage_url(self, override: str | None = None) -> str:
        if override:
            return override
        stored = self.info.storage if self.info is not None else None
        if stored is None:
            return self.default_storage
        if "***" in stored:
            raise RunError(f"this run's study lives in {stored}; pass --storage with the full "
                           "URL (passwords are never written to the run folder)")
        return str(stored)


def trial_seed(run_seed: int, trial: int) -> int:
    """The training seed of trial ``trial`` of a search seeded ``run_seed`` (its finetune
    in the search and at pick): distinct across trials and across search seeds; seed 0's
    trials train with their trial number."""
    return run_seed * 10_007 + trial


def identity(config: SearchConfig, *, space_sha: str, profile_sha: str,
             checkpoint_sha: str | None, augmentation: str) -> RunIdentity:
    """The settings a resumed run must share with the run it resumes (``augmentation``: the
    resolved augmentation, as :meth:`Augmentation.describe` says)."""
    from autocompress.data import spec_name

    return RunIdentity(
        augmentation=augmentation, screen=config.screen,
        objectives=tuple(config.objectives), allocate=config.allocate,
        finetune_distill=config.finetune_distill,
        val_data=spec_name(config.val_data) if config.val_data is not None else None,
        normalize=config.normalize.strip().lower(), resize=config.resize,
        center_crop=config.center_crop, embed_preprocessing=config.embed_preprocessing,
        split_seed=config.split_seed, model=config.model, data=spec_name(config.data),
        finetune_steps=config.finetune_steps,
        finetune_lr=config.finetune_lr, batch_size=config.batch_size, seed=config.seed,
        threads=config.threads, study=config.study, calibrate=config.calibrate,
        sampler=config.sampler, train_precision=config.train_precision,
        input_shape=tuple(config.input_shape) if config.input_shape else None,
        space_sha256=space_sha, profile_sha256=profile_sha, checkpoint_sha256=checkpoint_sha)


def check_same_identity(saved: RunIdentity, new: RunIdentity, folder: Path) -> None:
    diffs = saved.differences(new)
    if diffs:
        raise RunError(
            f"{folder} holds a search with other settings ({'; '.join(diffs[:4])}); rerun with "
            "the same settings to resume it, or pass a new --out folder"
        )
