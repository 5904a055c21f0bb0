"""Knowledge distillation: losses, feature discovery and the distill() loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.evaluation import (
    NO_AUGMENTATION,
    STANDARD_AUGMENTATION,
    DistillationLoss,
    DistillSettings,
    EarlyStopping,
    TrainSettings,
    distill,
    evaluate_accuracy,
    find_feature_layer,
    hint_loss,
    kd_kl_loss,
    kd_mse_loss,
    split_holdout,
    teacher_logits_for,
    train,
)
from autocompress.exceptions import FinetuneDivergedError, ModelError, SearchSpaceError
from autocompress.models import CifarResNetStudent, MobileNetV2Student

CLASSES = 3


def _seeded(seed: int, make):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _data(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """1x8x8 images whose class is where a bright square sits (left, middle, right)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for i in range(n):
        col = int(y[i]) * 3
        x[i, 0, 2:5, col:col + 2] += 2.0
    return x, y


def _tiny(seed: int, widths: tuple[int, int, int] = (8, 8, 8)) -> nn.Module:
    return _seeded(seed, lambda: CifarResNetStudent((1, 1, 1), widths).build(CLASSES, 1))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return _data()


@pytest.fixture(scope="module")
def teacher(data) -> nn.Module:
    x, y = data
    model = _tiny(0, (8, 16, 16))
    train(model, x, y, TrainSettings(steps=40, batch_size=32, lr=0.05))
    return model


# --- losses --------------------------------------------------------------------------------


def test_kd_kl_loss_is_zero_for_equal_logits_and_matches_hinton() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert kd_kl_loss(t.clone(), t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    p = F.softmax(t / 4, dim=1)
    expected = (p * (p.log() - F.log_softmax(s / 4, dim=1))).sum(1).mean() * 16
    assert kd_kl_loss(s, t, 4.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_mse_loss(t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_mse_loss(s, t, 2.0).item() > 0


@pytest.mark.parametrize("kd", [kd_kl_loss, kd_mse_loss])
def test_kd_losses_soften_in_fp32_under_bf16_autocast(kd) -> None:
    # bf16 training (TrainSettings.precision) runs the losses under autocast, which would
    # compute softmax in bfloat16; the logits' softened distributions are computed in fp32
    g = torch.Generator().manual_seed(0)
    s, t = (torch.randn(8, 10, generator=g).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = kd(s, t, 4.0)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(kd(s.float(), t.float(), 4.0).item(), rel=1e-6)


def test_hint_loss_pools_the_larger_map_to_the_smaller() -> None:
    regressor = _seeded(0, lambda: nn.Conv2d(4, 6, 1))
    small, large = torch.randn(2, 4, 2, 2), torch.randn(2, 6, 4, 4)
    expected = F.mse_loss(regressor(small), F.adaptive_avg_pool2d(large, 2))
    assert hint_loss(small, large, regressor).item() == pytest.approx(expected.item())
    big_student = torch.randn(2, 4, 8, 8)
    assert hint_loss(big_student, large, regressor).item() == pytest.approx(
        F.mse_loss(regressor(F.adaptive_avg_pool2d(big_student, 4)), large).item(), rel=1e-5)
    with pytest.raises(ModelError, match="N x C x H x W"):
        hint_loss(torch.randn(2, 4), large, regressor)


def _descends(make_loss, params: list[torch.Tensor], steps: int = 15) -> list[float]:
    optimizer = torch.optim.SGD(params, lr=0.1)
    values = []
    for _ in range(steps):
        loss = make_loss()
        assert math.isfinite(loss.item())
        values.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return values


@pytest.mark.parametrize("kind", ["kl", "mse", "kl+ce", "hint"])
def test_each_loss_decreases_under_sgd_on_a_toy_batch(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 6, 6, generator=g)
    labels = torch.randint(0, CLASSES, (16,), generator=g)
    teacher_logits = torch.randn(16, CLASSES, generator=g) * 3
    conv = _seeded(0, lambda: nn.Conv2d(1, 4, 3, padding=1))
    head = _seeded(1, lambda: nn.Linear(4 * 6 * 6, CLASSES))
    regressor = _seeded(2, lambda: nn.Conv2d(4, 5, 1))
    teacher_conv = _seeded(3, lambda: nn.Conv2d(1, 5, 3, padding=1))
    with torch.no_grad():  # a target the student's conv and regressor can reach, at 3x3
        teacher_feat = F.adaptive_avg_pool2d(F.relu(teacher_conv(x)), 3)

    def logits() -> torch.Tensor:
        return head(F.relu(conv(x)).flatten(1))

    losses = {
        "kl": lambda: kd_kl_loss(logits(), teacher_logits, 4.0),
        "mse": lambda: kd_mse_loss(logits(), teacher_logits, 2.0),
        "kl+ce": lambda: 0.5 * F.cross_entropy(logits(), labels)
        + 0.5 * kd_kl_loss(logits(), teacher_logits, 4.0),
        "hint": lambda: hint_loss(conv(x), teacher_feat, regressor),
    }
    params = [*conv.parameters(), *head.parameters(), *regressor.parameters()]
    values = _descends(losses[kind], params)
    assert values[-1] < 0.9 * values[0], values


# --- feature maps --------------------------------------------------------------------------


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(self.pool(x)))


class _WithSqueezeExcite(nn.Module):
    """A squeeze-excitation pool inside the last stage and a functional global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), _SqueezeExcite(4),
                                  nn.Conv2d(4, 6, 3, stride=2, padding=1))
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def test_feature_layer_is_the_last_map_before_global_pooling() -> None:
    x = torch.randn(2, 1, 8, 8)
    assert find_feature_layer(_tiny(0), x) == "layer3"
    mobilenet = _seeded(0, lambda: MobileNetV2Student(0.25, 2).build(CLASSES, 1))
    assert find_feature_layer(mobilenet, x) == "features"
    assert find_feature_layer(_WithSqueezeExcite(), x) == "body"
    squeezenet_like = nn.Sequential(  # pools inside its classifier, after a 1x1 conv
        nn.Conv2d(1, 4, 3), nn.Sequential(nn.Conv2d(4, CLASSES, 1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1)), nn.Flatten())
    assert find_feature_layer(squeezenet_like, x) == "1.1"
    with pytest.raises(ModelError, match="hint_weight to 0"):
        find_feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES)), x)


def test_teacher_logits_are_eval_mode_outputs_and_leave_the_teacher_as_it_was(
        data, teacher) -> None:
    x, _ = data
    teacher.train()
    cached = teacher_logits_for(teacher, x, batch_size=50)
    assert teacher.training
    teacher.eval()
    with torch.no_grad():
        assert torch.allclose(cached, teacher(x), atol=1e-5)
    assert not cached.requires_grad


# --- distill -------------------------------------------------------------------------------


def _settings(**kw) -> DistillSettings:
    training = kw.pop("training", TrainSettings(steps=30, batch_size=32, lr=0.05, seed=0))
    return DistillSettings(training=training, **kw)


def test_distill_with_only_cross_entropy_is_train(data, teacher) -> None:
    x, y = data
    settings = TrainSettings(steps=12, batch_size=32, lr=0.05, warmup_steps=3, seed=5)
    a, b = _tiny(1), _tiny(1)
    train(a, x, y, settings)
    result = distill(b, teacher, x, y, DistillSettings(alpha=1.0, training=settings,
                                                       early_stopping=None))
    assert result.steps == 12 and not result.stopped_early
    assert result.best_holdout_accuracy is None
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_distill_trains_the_student_and_leaves_the_teacher_alone(data, teacher,
                                                                 loss: str) -> None:
    x, y = data
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    student = _tiny(1)
    chance = evaluate_accuracy(student, x, y)
    seen: list[float] = []
    result = distill(student, teacher, x, y,
                     _settings(loss=loss, alpha=0.0 if loss == "kl" else 0.5,
                               early_stopping=None),
                     on_step=lambda step, value: seen.append(value))
    assert result.steps == 30 == len(seen) and math.isfinite(result.final_loss)
    assert evaluate_accuracy(student, x, y) > max(0.7, chance + 0.2)
    assert teacher.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_distill_with_hints_trains_a_regressor_between_different_widths(data, teacher) -> None:
    x, y = data
    student = _tiny(2)  # 8 channels against the teacher's 16
    result = distill(student, teacher, x, y, _settings(hint_weight=1.0, early_stopping=None),
                     teacher_logits=torch.zeros(len(x), CLASSES))  # unused with hints
    assert result.steps == 30 and math.isfinite(result.final_loss)
    assert evaluate_accuracy(student, x, y) > 0.7


def test_distill_stops_early_and_restores_the_best_weights(data, teacher) -> None:
    x, y = data
    student = _tiny(3)
    stopper = EarlyStopping(eval_every=2, patience=2, holdout_fraction=0.25)
    frozen_lr = TrainSettings(steps=200, batch_size=32, lr=1e-7, seed=0)  # (almost) no gain
    result = distill(student, teacher, x, y, _settings(training=frozen_lr,
                                                       early_stopping=stopper))
    assert result.stopped_early and result.best_step is not None
    assert result.steps == result.best_step + stopper.eval_every * stopper.patience < 200
    # the holdout is the first quarter of the same seeded permutation distill() draws
    split = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:60]
    assert evaluate_accuracy(student, x[split], y[split]) == result.best_holdout_accuracy


def test_distill_keeps_the_best_checkpoint_when_training_goes_on(data, teacher) -> None:
    x, y = data
    student = _tiny(4)
    stopper = EarlyStopping(eval_every=5, patience=100, holdout_fraction=0.25)
    result = distill(student, teacher, x, y, _settings(early_stopping=stopper))
    assert not result.stopped_early and result.steps == 30
    assert result.best_step is not None and result.best_step % 5 == 0
    assert result.best_holdout_accuracy is not None and result.best_holdout_accuracy > 0.5


@pytest.mark.parametrize("hint_weight", [0.0, 1.0])
def test_distill_raises_when_the_loss_diverges(data, teacher, hint_weight: float) -> None:
    x, y = data
    settings = _settings(hint_weight=hint_weight, early_stopping=None,
                         training=TrainSettings(steps=30, batch_size=32, lr=1e9))
    with pytest.raises(FinetuneDivergedError, match="distillation diverged at step") as info:
        distill(_tiny(5), teacher, x, y, settings)
    assert "lower the learning rate (now 1e+09)" in str(info.value)
    assert ("or the hint weight (now 1)" in str(info.value)) == (hint_weight > 0)


class _Inputs:
    """Records the inputs ``model`` receives (in training mode only, unless ``every``)."""

    def __init__(self, model: nn.Module, every: bool = False) -> None:
        self.seen: list[torch.Tensor] = []
        self.every = every
        self._handle = model.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.every or module.training:
            self.seen.append(inputs[0].clone())

    def __enter__(self) -> list[torch.Tensor]:
        return self.seen

    def __exit__(self, *_exc: object) -> None:
        self._handle.remove()


@pytest.mark.parametrize("augmented", [False, True])
@pytest.mark.parametrize(("alpha", "hint_weight", "stopping"), [
    (0.5, 0.0, None),
    (0.3, 1.0, EarlyStopping(eval_every=2, patience=100, holdout_fraction=0.2)),
])
def test_distill_and_train_draw_identical_batches(data, teacher, augmented: bool, alpha: float,
                                                  hint_weight: float,
                                                  stopping: EarlyStopping | None) -> None:
    """The student sees exactly the (augmented) batches train() draws for the same settings
    (from the pool left by the early-stopping holdout), and the teacher sees them too."""
    x, y = data
    training = TrainSettings(steps=5, batch_size=32, lr=0.05, seed=3,
                             augmentation=STANDARD_AUGMENTATION if augmented
                             else NO_AUGMENTATION)
    settings = DistillSettings(alpha=alpha, hint_weight=hint_weight, training=training,
                               early_stopping=stopping)
    student, plain = _tiny(1), _tiny(1)
    with _Inputs(student) as distilled, _Inputs(teacher, every=True) as taught:
        distill(student, teacher, x, y, settings)
    pool = None if stopping is None else split_holdout(len(x), stopping, training.seed + 1)[1]
    with _Inputs(plain) as trained:
        train(plain, x, y, training, pool=pool)
    assert len(distilled) == len(trained) == 5
    assert all(torch.equal(a, b) for a, b in zip(distilled, trained, strict=True))
    if augmented or hint_weight > 0:  # the teacher runs on the student's batches
        assert all(torch.equal(a, b) for a, b in zip(taught[-5:], distilled, strict=True))


def test_with_augmentation_cached_teacher_outputs_are_not_used(data, teacher) -> None:
    """Cached outputs are of the un-augmented images: the teacher runs on every batch."""
    x, y = data
    training = TrainSettings(steps=4, batch_size=32, lr=0.05, augmentation=STANDARD_AUGMENTATION)
    settings = DistillSettings(alpha=0.0, training=training, early_stopping=None)
    assert settings.needs_teacher_per_batch
    wrong = torch.full((len(x), CLASSES), 50.0)  # would make any use visible
    a, b = _tiny(1), _tiny(1)
    with _Inputs(teacher, every=True) as taught:
        distill(a, teacher, x, y, settings, teacher_logits=wrong)
    assert len(taught) == 1 + 4  # the class check's probe, then one run per batch
    distill(b, teacher, x, y, settings)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_the_distillation_loss_needs_hints_exactly_when_they_are_weighted(teacher) -> None:
    with pytest.raises(ModelError, match="needs Hints exactly when hint_weight > 0"):
        DistillationLoss(teacher, DistillSettings(hint_weight=1.0))
    loss = DistillationLoss(teacher, DistillSettings(), teacher_logits=torch.zeros(4, CLASSES))
    assert loss.parameters() == [] and loss.divergence_advice() == ""
    assert loss.teacher_logits is not None


def test_distill_refuses_mismatched_classes_and_cached_logits(data, teacher) -> None:
    x, y = data
    other = _seeded(0, lambda: CifarResNetStudent((1, 1, 1), (8, 8, 8)).build(CLASSES + 1, 1))
    with pytest.raises(ModelError, match="teacher's number of classes"):
        distill(other, teacher, x, y, _settings())
    with pytest.raises(ModelError, match="teacher_logits_for"):
        distill(_tiny(1), teacher, x, y, _settings(), teacher_logits=torch.zeros(3, CLASSES))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: DistillSettings(loss="l1"), "must be one of kl, mse"),  # type: ignore[arg-type]
    (lambda: DistillSettings(temperature=0), "temperature must be in (0, 20]"),
    (lambda: DistillSettings(alpha=1.5), "alpha must be in [0, 1]"),
    (lambda: DistillSettings(hint_weight=-1), "hint_weight must be in [0, 100]"),
    (lambda: DistillSettings(training=TrainSettings(lr=0)), "lr > 0"),
    (lambda: EarlyStopping(patience=0), "patience must be a positive integer"),
    (lambda: EarlyStopping(holdout_fraction=0.9), "holdout_fraction must be in (0, 0.5]"),
    (lambda: DistillSettings.from_dict({"loss": "kl", "lr": 0.1}), "unknown key(s) ['lr']"),
])
def test_bad_settings_are_refused_with_the_allowed_range(make, message: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        make()
    assert message in str(info.value)


def test_settings_round_trip_through_a_dict() -> None:
    settings = DistillSettings(loss="mse", temperature=3.0, alpha=0.25, hint_weight=1.0,
                               training=TrainSettings(steps=300, lr=0.05),
                               early_stopping=EarlyStopping(eval_every=25, patience=4))
    assert DistillSettings.from_dict(settings.to_dict()) == settings
    no_stop = DistillSettings(early_stopping=None)
    assert DistillSettings.from_dict(no_stop.to_dict()) == no_stop
