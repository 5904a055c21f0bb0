"""Compression transforms: students, dropped residual branches, channel pruning, low-rank
factorization, sparsity and mixed precision, each a config type with one handler, applied by
one pipeline (:func:`compress`)."""

from __future__ import annotations

from autocompress.transforms import _handlers  # noqa: F401  (registers the built-in handlers)
from autocompress.transforms._channels import (
    ChannelGroup,
    classifier_layer,
    find_channel_groups,
    kept_channels,
    prune_channels,
)
from autocompress.transforms._depth import ResidualBlock, drop_blocks, find_residual_blocks
from autocompress.transforms._handlers import QAT_LR_FACTOR
from autocompress.transforms._importance import GradientStatistics, gradient_statistics
from autocompress.transforms._lowrank import (
    Factorization,
    FactorizedLayer,
    factor_names,
    factorize_layer,
    full_rank,
    low_rank,
    rank_for,
    rename_layers,
)
from autocompress.transforms._pipeline import (
    CompressedModel,
    Deployed,
    TrainingHooks,
    TrainOutcome,
    TransformHandler,
    compress,
    handler_for,
    register_transform,
)
from autocompress.transforms._qat import QatHandle, finish_qat, fold_batchnorms, prepare_qat
from autocompress.transforms._quantize import (
    PRECISIONS,
    Precision,
    exported_precisions,
    node_precisions,
    onnx_accuracy,
    onnx_layer_nodes,
    quantize_onnx,
)
from autocompress.transforms._sparsity import (
    apply_sparsity,
    called_layers,
    make_sparsity_permanent,
    sparsifiable_layers,
    weight_sparsity,
)

__all__ = [
    "GradientStatistics",
    "PRECISIONS",
    "QAT_LR_FACTOR",
    "ChannelGroup",
    "CompressedModel",
    "Deployed",
    "Factorization",
    "FactorizedLayer",
    "Precision",
    "QatHandle",
    "ResidualBlock",
    "apply_sparsity",
    "called_layers",
    "classifier_layer",
    "compress",
    "drop_blocks",
    "exported_precisions",
    "factor_names",
    "factorize_layer",
    "full_rank",
    "find_channel_groups",
    "find_residual_blocks",
    "gradient_statistics",
    "finish_qat",
    "fold_batchnorms",
    "handler_for",
    "kept_channels",
    "low_rank",
    "make_sparsity_permanent",
    "node_precisions",
    "onnx_accuracy",
    "onnx_layer_nodes",
    "prepare_qat",
    "prune_channels",
    "quantize_onnx",
    "rank_for",
    "register_transform",
    "rename_layers",
    "sparsifiable_layers",
    "TrainingHooks",
    "TrainOutcome",
    "TransformHandler",
    "weight_sparsity",
]

