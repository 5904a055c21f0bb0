"""Training, finetuning and measuring accuracy and size of (compressed) models."""

from __future__ import annotations

from autocompress.evaluation._metrics import ModelStats, count_flops, count_params, model_stats
from autocompress.evaluation._train import TrainResult, TrainSettings, evaluate_accuracy, train

__all__ = ["ModelStats", "TrainResult", "TrainSettings", "count_flops", "count_params",
           "evaluate_accuracy", "model_stats", "train"]
