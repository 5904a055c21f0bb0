"""Training, finetuning and measuring accuracy and size of (compressed) models."""

from __future__ import annotations

from autocompress.evaluation._distill import (
    DISTILL_LOSSES,
    DistillLoss,
    DistillResult,
    DistillSettings,
    EarlyStopping,
    FeatureTap,
    distill,
    find_feature_layer,
    hint_loss,
    kd_kl_loss,
    kd_mse_loss,
    teacher_logits_for,
)
from autocompress.evaluation._metrics import ModelStats, count_flops, count_params, model_stats
from autocompress.evaluation._train import TrainResult, TrainSettings, evaluate_accuracy, train

__all__ = ["DISTILL_LOSSES", "DistillLoss", "DistillResult", "DistillSettings",
           "EarlyStopping", "FeatureTap", "ModelStats", "TrainResult", "TrainSettings",
           "count_flops", "count_params", "distill", "evaluate_accuracy", "find_feature_layer",
           "hint_loss", "kd_kl_loss", "kd_mse_loss", "model_stats", "teacher_logits_for",
           "train"]
