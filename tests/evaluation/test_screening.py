"""Adaptive BatchNorm: it re-estimates BatchNorm statistics and changes nothing else."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.evaluation import ScreeningSettings, recalibrate_batchnorm, screening_score


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_recalibration_changes_batchnorm_statistics_and_nothing_else() -> None:
    net = _net()
    x = torch.randn(256, 3, 8, 8) * 3 + 2          # far from the initial statistics (0, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batchnorm(net, x, batches=4, batch_size=64) == 1
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert not net.training and net[1].momentum == 0.1   # left as it was found
    # the statistics are those of the conv's outputs on the samples seen
    with torch.no_grad():
        seen = torch.cat([net[0](x[i]) for i in [torch.randperm(256, generator=torch.Generator(
        ).manual_seed(0))[j * 64:(j + 1) * 64] for j in range(4)]])
    torch.testing.assert_close(net[1].running_mean, seen.mean(dim=(0, 2, 3)), rtol=1e-4,
                               atol=1e-4)


def test_a_model_without_batchnorm_is_left_alone() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batchnorm(net, torch.randn(8, 3, 2, 2)) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_screening_score_is_an_accuracy_on_the_first_validation_samples() -> None:
    net = _net()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    settings = ScreeningSettings(batches=2, batch_size=32, val_samples=16)
    score = screening_score(net, x, x, y, settings)
    with torch.no_grad():
        expected = float((net(x[:16]).argmax(1) == y[:16]).float().mean())
    assert score == expected
