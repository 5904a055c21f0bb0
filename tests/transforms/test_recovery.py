"""Finetunes that learn from the uncompressed model (``finetune_distill="kl"``): the pruned
network is trained towards the uncompressed one's outputs, and the uncompressed one is left
as it was (resnet20 on scikit-learn digits, 8x8; a few dozen steps, deterministic)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import load_data
from autocompress.evaluation import TrainSettings, train
from autocompress.models import create_model
from autocompress.space import Candidate
from autocompress.study._config import finetune_recovery
from autocompress.transforms import compress, find_channel_groups

X = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def data():
    return load_data("digits", seed=0)


@pytest.fixture(scope="module")
def teacher(data) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    train(model, data.train, None, TrainSettings(steps=60, batch_size=32, lr=0.05))
    return model.eval()


def _divergence(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    """KL(teacher || student) of the softmax outputs on ``x``, averaged over samples."""
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student.eval()(x), dim=1),
                              F.log_softmax(teacher(x), dim=1),
                              reduction="batchmean", log_target=True))


def _finetuned(teacher: nn.Module, data, recovery) -> nn.Module:
    groups = find_channel_groups(teacher, X)
    compressed = compress(teacher, Candidate(channel_keep={g.name: 0.25 for g in groups}), X)
    compressed.train(data, TrainSettings(steps=60, batch_size=32, lr=0.01, seed=3),
                     recovery=recovery)
    return compressed.module


def test_a_finetune_with_recovery_follows_the_uncompressed_models_outputs(teacher,
                                                                          data) -> None:
    before = copy.deepcopy(teacher.state_dict())
    x = data.val_x[:200]
    plain = _divergence(_finetuned(teacher, data, None), teacher, x)
    recovered = _divergence(_finetuned(teacher, data, finetune_recovery("kl")), teacher, x)
    assert recovered < 0.8 * plain, (recovered, plain)
    # the uncompressed model taught without changing, and was left in eval mode
    assert not teacher.training
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_finetune_recovery_names_its_choices() -> None:
    from autocompress.exceptions import RunError

    assert finetune_recovery("none") is None
    kl = finetune_recovery("kl")
    assert kl is not None and kl.loss == "kl" and kl.early_stopping is None
    with pytest.raises(RunError, match="none, kl"):
        finetune_recovery("mse")
