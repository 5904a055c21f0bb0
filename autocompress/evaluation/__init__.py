"""Training, finetuning, distillation and measuring accuracy and size of (compressed) models.

:func:`train` is the one training loop; :func:`distill` runs it with a
:class:`DistillationLoss` and an :class:`EarlyStopper`. The settings records live in the
torch-free :mod:`autocompress.settings` and are re-exported here.
"""

from __future__ import annotations

from autocompress.evaluation._distill import (
    DistillationLoss,
    DistillResult,
    Hints,
    distill,
    hint_loss,
    kd_kl_loss,
    kd_mse_loss,
    teacher_logits_for,
)
from autocompress.evaluation._early_stop import EarlyStopper, split_holdout
from autocompress.evaluation._features import FeatureTap, find_feature_layer
from autocompress.evaluation._metrics import ModelStats, count_flops, count_params, model_stats
from autocompress.evaluation._screening import (
    ScreeningSettings,
    recalibrate_batchnorm,
    screening_score,
)
from autocompress.evaluation._train import (
    BatchLoss,
    CrossEntropy,
    TrainCallback,
    TrainResult,
    evaluate_accuracy,
    train,
)
from autocompress.settings import (
    DISTILL_LOSSES,
    MAX_HINT_WEIGHT,
    MAX_TEMPERATURE,
    NO_AUGMENTATION,
    STANDARD_AUGMENTATION,
    TRAIN_PRECISIONS,
    Augmentation,
    DistillLoss,
    DistillSettings,
    EarlyStopping,
    TrainSettings,
)

__all__ = ["DISTILL_LOSSES", "MAX_HINT_WEIGHT", "MAX_TEMPERATURE", "NO_AUGMENTATION",
           "STANDARD_AUGMENTATION", "TRAIN_PRECISIONS", "Augmentation", "BatchLoss",
           "CrossEntropy", "DistillLoss", "DistillResult", "DistillSettings", "DistillationLoss",
           "EarlyStopper", "EarlyStopping", "FeatureTap", "Hints", "ModelStats",
           "ScreeningSettings", "TrainCallback", "TrainResult", "TrainSettings", "count_flops",
           "count_params", "distill", "evaluate_accuracy", "find_feature_layer", "hint_loss",
           "kd_kl_loss", "kd_mse_loss", "model_stats", "recalibrate_batchnorm",
           "screening_score", "split_holdout", "teacher_logits_for", "train"]
