"""Search settings and the run folder that keeps everything a search produced."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from autocompress._io import write_json_atomic
from autocompress._version import __version__
from autocompress.exceptions import RunError

__all__ = ["RUN_FORMAT_VERSION", "RunFolder", "SearchConfig", "redact_url"]

RUN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; the CLI's ``search`` options map onto these fields.

    ``latency_budget_ms=None`` means half the baseline's latency (measured when the profile
    is of this machine, else estimated). ``profile=None`` profiles this CPU once and caches
    it. ``storage=None`` is an SQLite file in the run folder.
    """

    model: str = "resnet20"
    data: str = "mnist"
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
    threads: int = 1
    input_shape: tuple[int, int, int, int] | None = None
    calibrate: bool = True
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"

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

    ``run.json`` (settings, baseline, budget, calibration), ``study.db`` (the Optuna study,
    unless another storage is used), ``space.yaml`` and ``profile.json`` (copies of what the
    search used), ``baseline/model.onnx``, ``trials/NNNNN/{model.onnx,candidate.json}``,
    and ``front.csv`` / ``front.png`` once ``autocompress front`` ran.
    """

    path: Path
    info: dict[str, Any] = field(default_factory=dict)

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

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        run_json = path / "run.json"
        if not run_json.is_file():
            raise RunError(f"{path} is not a search run folder (no run.json); pass the --out "
                           "folder of an 'autocompress search'")
        try:
            info = json.loads(run_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{run_json} is unreadable: {exc}") from exc
        if info.get("format_version") != RUN_FORMAT_VERSION:
            raise RunError(f"{run_json} has run format_version {info.get('format_version')!r}; "
                           f"this autocompress reads {RUN_FORMAT_VERSION}")
        return cls(path, info)

    def save(self) -> None:
        self.info.setdefault("format_version", RUN_FORMAT_VERSION)
        self.info.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        self.info["autocompress_version"] = __version__
        write_json_atomic(self.run_json, self.info)

    def storage_url(self, override: str | None = None) -> str:
        if override:
            return override
        stored = self.info.get("storage")
        if stored is None:
            return self.default_storage
        if "***" in stored:
            raise RunError(f"this run's study lives in {stored}; pass --storage with the full "
                           "URL (passwords are never written to the run folder)")
        return str(stored)


def identity(config: SearchConfig, *, space_sha: str, profile_sha: str,
             checkpoint_sha: str | None) -> dict[str, Any]:
    """The settings a resumed run must share with the run it resumes."""
    data = asdict(config)
    keep = ("model", "data", "finetune_steps", "finetune_lr", "batch_size", "seed", "threads",
            "study", "calibrate", "sampler")
    out: dict[str, Any] = {k: data[k] for k in keep}
    out["input_shape"] = list(config.input_shape) if config.input_shape else None
    out["space_sha256"] = space_sha
    out["profile_sha256"] = profile_sha
    out["checkpoint_sha256"] = checkpoint_sha
    return out


def check_same_identity(saved: dict[str, Any], new: dict[str, Any], folder: Path) -> None:
    diffs = [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(new)
             if saved.get(k) != new.get(k)]
    if diffs:
        raise RunError(
            f"{folder} holds a search with other settings ({'; '.join(diffs[:4])}); rerun with "
            "the same settings to resume it, or pass a new --out folder"
        )
