"""The one training loop: its loss plug-in, extra parameters, pool, callbacks and stops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data._augment import augment
from autocompress.evaluation import (
    STANDARD_AUGMENTATION,
    BatchLoss,
    CrossEntropy,
    EarlyStopper,
    EarlyStopping,
    TrainCallback,
    TrainSettings,
    evaluate_accuracy,
    split_holdout,
    train,
)
from autocompress.exceptions import DataError, FinetuneDivergedError, ModelError

CLASSES = 3


def _data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g) * 0.3
    for i in range(n):
        x[i, 0, 1:4, int(y[i]) * 2:int(y[i]) * 2 + 2] += 2.0
    return x, y


def _linear(seed: int = 0) -> nn.Sequential:
    """No BatchNorm: nothing changes in a forward pass but the recorded activations."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(36, CLASSES))


class _Recording(BatchLoss):
    """Cross-entropy, remembering every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.modes: list[bool] = []

    def __call__(self, model, x, y, idx):
        self.batches.append((x.clone(), y.clone(), idx.clone()))
        self.modes.append(model.training)
        return F.cross_entropy(model(x), y)


def _expected_indices(n: int, settings: TrainSettings, steps: int) -> list[torch.Tensor]:
    """The batch order documented by train(): fresh permutations cut into full batches."""
    g = torch.Generator().manual_seed(settings.seed)
    order, cursor, out = torch.randperm(n, generator=g), 0, []
    for _ in range(steps):
        if cursor + settings.batch_size > n:
            order, cursor = torch.randperm(n, generator=g), 0
        out.append(order[cursor:cursor + settings.batch_size])
        cursor += settings.batch_size
    return out


def test_the_loss_plug_in_sees_every_batch_with_its_labels_and_indices() -> None:
    x, y = _data()
    settings = TrainSettings(steps=7, batch_size=32, lr=0.05, seed=3)
    loss = _Recording()
    seen: list[tuple[int, float]] = []
    result = train(_linear(), x, y, settings, loss=loss,
                   on_step=lambda step, value: seen.append((step, value)))
    assert result.steps == 7 and not result.stopped_early
    assert [s for s, _ in seen] == list(range(7)) and result.final_loss == seen[-1][1]
    assert all(loss.modes)  # the model trains in training mode
    for (xb, yb, idx), expected in zip(loss.batches, _expected_indices(len(x), settings, 7),
                                       strict=True):
        assert torch.equal(idx, expected)
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])


def test_the_default_loss_is_cross_entropy() -> None:
    x, y = _data()
    settings = TrainSettings(steps=6, batch_size=16, lr=0.05, seed=1)
    a, b = _linear(), _linear()
    train(a, x, y, settings)
    train(b, x, y, settings, loss=CrossEntropy())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_label_smoothing_is_torch_s_and_changes_the_training() -> None:
    x, y = _data()
    settings = TrainSettings(steps=6, batch_size=16, lr=0.05, seed=1)
    model = _linear()
    smoothed = CrossEntropy(label_smoothing=0.2)
    expected = F.cross_entropy(model(x), y, label_smoothing=0.2)
    assert torch.equal(smoothed(model, x, y, torch.arange(len(y))), expected)
    a, b = _linear(), _linear()
    train(a, x, y, settings)
    train(b, x, y, settings, loss=smoothed)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(),
                                                      strict=True))


class _Dtypes(BatchLoss):
    """Cross-entropy, remembering the dtype of every batch's outputs."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []

    def __call__(self, model, x, y, idx):
        out = model(x)
        self.dtypes.append(out.dtype)
        return F.cross_entropy(out, y)


@pytest.mark.parametrize(("precision", "forward"), [("fp32", torch.float32),
                                                    ("bf16", torch.bfloat16)])
def test_bf16_runs_the_forward_passes_in_bfloat16_and_keeps_fp32_weights(
        precision: str, forward: torch.dtype) -> None:
    x, y = _data()
    model, loss = _linear(), _Dtypes()
    before = [p.clone() for p in model.parameters()]
    train(model, x, y, TrainSettings(steps=4, batch_size=16, lr=0.05, precision=precision),
          loss=loss)
    assert loss.dtypes == [forward] * 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert not torch.is_autocast_enabled("cpu")       # nothing leaks out of train()


def test_bf16_training_learns_as_fp32_does() -> None:
    x, y = _data(240)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        model = _linear()
        train(model, x, y, TrainSettings(steps=60, batch_size=32, lr=0.1, seed=2,
                                         precision=precision))
        accuracy[precision] = evaluate_accuracy(model, x, y)
    assert accuracy["fp32"] > 0.9
    assert accuracy["bf16"] > 0.9


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_label_smoothing_outside_zero_to_one_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        CrossEntropy(label_smoothing=value)


def test_a_zero_loss_leaves_the_weights_unchanged_without_weight_decay() -> None:
    class Zero(BatchLoss):
        def __call__(self, model, x, y, idx):
            return model(x).sum() * 0.0

    x, y = _data()
    model = _linear()
    before = [p.detach().clone() for p in model.parameters()]
    train(model, x, y, TrainSettings(steps=5, batch_size=16, lr=0.5, weight_decay=0.0),
          loss=Zero())
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    train(model, x, y, TrainSettings(steps=5, batch_size=16, lr=0.5, weight_decay=0.1),
          loss=Zero())  # weight decay alone shrinks them
    weight = next(model.parameters()).detach()
    assert float(weight.abs().sum()) < float(before[0].abs().sum())


def test_the_loss_sees_the_augmented_batch_drawn_from_the_seeded_generator() -> None:
    x, y = _data()
    settings = TrainSettings(steps=3, batch_size=16, lr=0.05, seed=2,
                             augmentation=STANDARD_AUGMENTATION)
    loss = _Recording()
    train(_linear(), x, y, settings, loss=loss)
    g = torch.Generator().manual_seed(settings.seed)  # order and augmentation share it
    order = torch.randperm(len(x), generator=g)
    for step, (xb, _, idx) in enumerate(loss.batches):
        expected = order[step * 16:(step + 1) * 16]
        assert torch.equal(idx, expected)
        assert torch.equal(xb, augment(x[expected], STANDARD_AUGMENTATION, g))
    assert not torch.equal(loss.batches[0][0], x[loss.batches[0][2]])


def test_extra_parameters_are_optimised_with_the_model() -> None:
    x, y = _data()
    scale = nn.Parameter(torch.ones(()))

    class Scaled(BatchLoss):
        def __call__(self, model, xb, yb, idx):
            return F.cross_entropy(model(xb) * scale, yb)

    train(_linear(), x, y, TrainSettings(steps=5, batch_size=16, lr=0.1), loss=Scaled(),
          extra_parameters=[scale])
    assert float(scale.detach()) != 1.0


def test_batches_come_only_from_the_pool() -> None:
    x, y = _data()
    pool = torch.arange(10, 70)
    loss = _Recording()
    train(_linear(), x, y, TrainSettings(steps=8, batch_size=16, seed=4), loss=loss, pool=pool)
    drawn = torch.cat([idx for _, _, idx in loss.batches])
    assert set(drawn.tolist()) <= set(pool.tolist()) and len(drawn) == 8 * 16
    with pytest.raises(DataError, match="empty pool"):
        train(_linear(), x, y, TrainSettings(steps=2), pool=torch.arange(0))


class _StopAt(TrainCallback):
    def __init__(self, stop_step: int) -> None:
        self.stop_step = stop_step
        self.events: list[tuple[str, int]] = []

    def before_training(self, model, settings):
        self.events.append(("before", settings.steps))

    def after_step(self, model, step, loss):
        self.events.append(("step", step))
        return step == self.stop_step

    def after_training(self, model, steps):
        self.events.append(("after", steps))
        assert not model.training


def test_a_callback_stops_training_and_every_callback_sees_every_step() -> None:
    x, y = _data()
    first, second = _StopAt(3), _StopAt(-1)
    result = train(_linear(), x, y, TrainSettings(steps=10, batch_size=16),
                   callbacks=[first, second])
    assert result.steps == 4 and result.stopped_early
    expected = [("before", 10), *(("step", s) for s in range(4)), ("after", 4)]
    assert first.events == expected and second.events == expected
    last = train(_linear(), x, y, TrainSettings(steps=4, batch_size=16), callbacks=[_StopAt(3)])
    assert last.steps == 4 and not last.stopped_early  # asked to stop at the end: no early stop


def test_a_diverging_loss_raises_with_the_plug_in_s_name_and_advice() -> None:
    class Nan(BatchLoss):
        name = "sabotage"

        def __call__(self, model, xb, yb, idx):
            return model(xb).sum() * float("nan")

        def divergence_advice(self) -> str:
            return " or fix the loss"

    x, y = _data()
    model, callback = _linear(), _StopAt(-1)
    with pytest.raises(FinetuneDivergedError,
                       match=r"sabotage diverged at step 1/5 \(loss nan\); lower the learning "
                             r"rate \(now 0.01\) or fix the loss"):
        train(model, x, y, TrainSettings(steps=5, lr=0.01), loss=Nan(), callbacks=[callback])
    assert not model.training and callback.events == [("before", 5)]
    with pytest.raises(FinetuneDivergedError, match=r"training diverged at step \d/3 .* 1e\+30"):
        train(_linear(), x, y, TrainSettings(steps=3, lr=1e30))


def test_no_steps_trains_nothing() -> None:
    x, y = _data()
    model = _linear()
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, x, y, TrainSettings(steps=0), loss=_Recording())
    assert result.steps == 0 and result.final_loss != result.final_loss  # NaN
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


# --- early stopping ------------------------------------------------------------------------


def test_split_holdout_is_a_seeded_disjoint_split() -> None:
    settings = EarlyStopping(holdout_fraction=0.25)
    holdout, rest = split_holdout(40, settings, seed=7)
    assert len(holdout) == 10 and len(rest) == 30
    assert sorted(torch.cat([holdout, rest]).tolist()) == list(range(40))
    again, _ = split_holdout(40, settings, seed=7)
    assert torch.equal(holdout, again)
    assert not torch.equal(holdout, split_holdout(40, settings, seed=8)[0])
    with pytest.raises(ModelError, match="early_stopping=None"):
        split_holdout(1, settings, seed=0)


def test_early_stopping_restores_the_best_weights_and_reports_their_step() -> None:
    """Correct labels for 6 steps, then wrong ones: the holdout accuracy falls, training
    stops ``patience`` checks after the best one and the best weights come back."""
    x, y = _data(200)

    class TurnsBad(BatchLoss):
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, model, xb, yb, idx):
            self.calls += 1
            labels = yb if self.calls <= 6 else (yb + 1) % CLASSES
            return F.cross_entropy(model(xb), labels)

    stopping = EarlyStopping(eval_every=2, patience=3, holdout_fraction=0.25)
    holdout, rest = split_holdout(len(x), stopping, seed=1)
    stopper = EarlyStopper(stopping, x[holdout], y[holdout])
    model = _linear()
    kept: dict[int, list[torch.Tensor]] = {}
    result = train(model, x, y, TrainSettings(steps=100, batch_size=32, lr=0.5, seed=0),
                   loss=TurnsBad(), pool=rest, callbacks=[stopper],
                   on_step=lambda step, _: kept.__setitem__(
                       step + 1, [p.detach().clone() for p in model.parameters()]))
    assert result.stopped_early
    best = stopper.best_step
    assert best is not None and best <= 6 and result.steps == best + 2 * 3
    assert stopper.best_accuracy is not None and stopper.best_accuracy > 0.9
    assert all(torch.equal(p, q) for p, q in zip(kept[best], model.parameters(), strict=True))
    assert evaluate_accuracy(model, x[holdout], y[holdout]) == stopper.best_accuracy
    last = kept[result.steps]  # what training ended with, before the best came back
    with torch.no_grad():
        for p, q in zip(model.parameters(), last, strict=True):
            p.copy_(q)
    assert evaluate_accuracy(model, x[holdout], y[holdout]) < stopper.best_accuracy
