"""A longer finetune of a picked candidate, before it is exported.

The search trains every candidate briefly: enough to rank them, not to deploy one. Once a
member is picked, it is rebuilt from the run's baseline and trained again the search's way
(same learning rate, sparsity, quantization method or distillation), for more steps; its
accuracy is then measured on the model as deployed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from autocompress.evaluation import TrainSettings, model_stats
from autocompress.exceptions import CheckpointError, RunError
from autocompress.models import resolve_model
from autocompress.settings import Augmentation
from autocompress.space import SearchSpace
from autocompress.space._candidate import DATA_IMPORTANCES
from autocompress.study._baseline import BASELINE_TRAINING, prepare_baseline
from autocompress.study._config import RunFolder, finetune_recovery, sha256_file, trial_seed
from autocompress.study._front import FrontMember
from autocompress.study._prepare import calibration_inputs, importance_statistics, run_data
from autocompress.transforms import Deployed, compress

__all__ = ["Refined", "finetune_member"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refined:
    """A picked member after its longer finetune."""

    deployed: Deployed
    steps: int                 # steps run (a distillation may stop early)
    stats: dict[str, Any]      # size, params, FLOPs, sparsity of the deployed model


def _checkpoint(folder: RunFolder, given: str | Path | None) -> Path | None:
    """The baseline checkpoint the run searched from: ``given``, else the one recorded in
    run.json; checked against the sha256 the run recorded."""
    info = folder.run
    expected = info.identity.checkpoint_sha256
    if given is None and info.checkpoint:
        given = info.checkpoint
    if expected is None:
        if given is not None:
            raise RunError(f"{folder.path} searched from a baseline trained by autocompress, "
                           f"not from a checkpoint; leave out --checkpoint {given}")
        return None
    if given is None:
        raise RunError(f"{folder.path} searched from a checkpoint that run.json does not name; "
                       "pass it with --checkpoint")
    path = Path(given)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the checkpoint "
                              f"{folder.path} was searched from with --checkpoint")
    if sha256_file(path) != expected:
        raise CheckpointError(f"checkpoint {path} is not the one {folder.path} was searched "
                              f"from (its sha256 differs); pass that one with --checkpoint")
    return path


def finetune_member(folder: RunFolder, member: FrontMember, steps: int, *,
                    checkpoint: str | Path | None = None) -> Refined:
    """Rebuild ``member`` from the baseline of the run in ``folder``, train it for ``steps``
    steps the way the search trained it, and return the deployable model and its accuracy.

    Raises :class:`FinetuneDivergedError` (nothing in the run is touched) when the loss
    diverges, :class:`RunError` / :class:`CheckpointError` when the baseline cannot be had.
    """
    if steps < 1:
        raise RunError(f"--finetune-steps must be at least 1, got {steps}")
    info = folder.run
    ident = info.identity
    path = _checkpoint(folder, checkpoint)
    data = run_data(info)
    baseline = prepare_baseline(resolve_model(info.model), data, checkpoint=path,
                                seed=ident.seed, training=replace(
                                    BASELINE_TRAINING,
                                    augmentation=Augmentation.parse(ident.augmentation),
                                    precision=ident.train_precision))
    space = SearchSpace.from_yaml(folder.path / "space.yaml")
    samples = space.precision.calibration_samples if space.precision else 128
    x = torch.zeros(data.input_shape)
    gradients = (importance_statistics(baseline.module, data)
                 if member.candidate.importance in DATA_IMPORTANCES else None)
    compressed = compress(baseline.module, member.candidate, x, num_classes=data.num_classes,
                          gradients=gradients)
    settings = TrainSettings(steps=steps, batch_size=ident.batch_size, lr=ident.finetune_lr,
                             seed=trial_seed(ident.seed, member.trial),
                             augmentation=Augmentation.parse(ident.augmentation),
                             precision=ident.train_precision)
    _logger.info("trial %d: finetuning for %d steps before export", member.trial, steps)
    outcome = compressed.train(data, settings,
                               recovery=finetune_recovery(ident.finetune_distill))
    if outcome.stopped_early:
        _logger.info("trial %d: distillation stopped early after %d steps", member.trial,
                     outcome.steps)
    deployed = compressed.deploy(data, lambda: calibration_inputs(data, samples))
    stats = model_stats(compressed.module, x, deployed.onnx).to_dict()
    return Refined(deployed, outcome.steps, stats)
