"""Student families (autocompress.models.students) and the ``students:`` search-space section
(autocompress.space._students: kept here with the specs it builds)."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from torch import nn

from autocompress.evaluation import (
    DistillSettings,
    EarlyStopping,
    FeatureTap,
    TrainSettings,
    find_feature_layer,
)
from autocompress.exceptions import ModelError, SearchSpaceError
from autocompress.hardware.export import export_onnx
from autocompress.models import (
    TORCHVISION_STUDENTS,
    CifarResNetStudent,
    MobileNetV2Student,
    StudentSpec,
    TorchvisionStudent,
    create_model,
    list_student_families,
    student_from_dict,
)
from autocompress.models.cifar_resnet import CifarResNet
from autocompress.space._students import StudentPlan, StudentSpace, parse_students_section

# One small spec per family, every allowed torchvision model: a new family or torchvision
# name is covered once it is listed here (test_every_family_has_an_example enforces it).
EXAMPLES: list[StudentSpec] = [
    CifarResNetStudent(depths=(1, 1, 2), widths=(8, 16, 32)),
    MobileNetV2Student(width_mult=0.25, expand_ratio=2),
    *(TorchvisionStudent(name) for name in sorted(TORCHVISION_STUDENTS)),
]
SHAPES = [(1, 28, 28), (3, 32, 32)]
FAST_TORCHVISION = "squeezenet1_1"  # the quickest to build and run


def _id(spec: StudentSpec) -> str:
    return spec.describe().replace(" ", "-")


def _cases(*, all_slow_torchvision: bool) -> list[object]:
    """Every example; torchvision models (seconds each on 2 busy cores) are marked slow
    except the first, so the fast run still covers every family."""
    out = []
    for spec in EXAMPLES:
        slow = isinstance(spec, TorchvisionStudent) and (
            all_slow_torchvision or spec != TorchvisionStudent(FAST_TORCHVISION))
        out.append(pytest.param(spec, marks=[pytest.mark.slow] if slow else [], id=_id(spec)))
    return out


def _build(spec: StudentSpec, num_classes: int, in_channels: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(num_classes, in_channels)


# --- families --------------------------------------------------------------------------------


def test_every_family_has_an_example() -> None:
    assert sorted({spec.family for spec in EXAMPLES}) == list_student_families()
    assert {s.name for s in EXAMPLES if isinstance(s, TorchvisionStudent)} == set(
        TORCHVISION_STUDENTS)


@pytest.mark.parametrize("spec", _cases(all_slow_torchvision=False))
def test_student_builds_for_28_and_32_px_and_gives_the_class_count(spec: StudentSpec) -> None:
    for channels, height, width in SHAPES:
        model = _build(spec, num_classes=7, in_channels=channels).eval()
        with torch.no_grad():
            logits = model(torch.randn(1, channels, height, width))
        assert logits.shape == (1, 7), (spec.describe(), channels)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("spec", _cases(all_slow_torchvision=False))
def test_student_has_a_feature_map_for_hints(spec: StudentSpec) -> None:
    model = _build(spec, num_classes=10, in_channels=1)
    name = find_feature_layer(model, torch.randn(2, 1, 28, 28))
    with FeatureTap(model, name) as tap, torch.no_grad():
        model.eval()(torch.randn(2, 1, 28, 28))
        feature = tap.take()
    assert feature.dim() == 4 and feature.shape[0] == 2


@pytest.mark.parametrize("spec", _cases(all_slow_torchvision=True))
def test_student_exports_to_onnx(spec: StudentSpec) -> None:
    model = _build(spec, num_classes=10, in_channels=1)
    onnx_bytes = export_onnx(model, torch.randn(1, 1, 28, 28))
    assert len(onnx_bytes) > sum(p.numel() for p in model.parameters())  # fp32 weights inside


@pytest.mark.parametrize("spec", EXAMPLES, ids=_id)
def test_spec_round_trips_through_json(spec: StudentSpec) -> None:
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["family"] == spec.family
    again = student_from_dict(data)
    assert again == spec and type(again) is type(spec)
    assert again.fingerprint == spec.fingerprint


def test_describe_and_fingerprint_tell_specs_apart() -> None:
    a = CifarResNetStudent(depths=(1, 1, 2), widths=(8, 16, 32))
    b = CifarResNetStudent(depths=[1, 1, 2], widths=[8, 16, 24])  # lists are normalized
    assert a.describe() == "cifar_resnet d(1,1,2) w(8,16,32)"
    assert MobileNetV2Student(width_mult=0.25, expand_ratio=4).describe() == "mobilenet_v2 w0.25 e4"
    assert b.depths == (1, 1, 2) and a.fingerprint != b.fingerprint
    assert "torchvision-" in TorchvisionStudent("resnet18").fingerprint


def test_cifar_resnet_student_has_the_asked_depths_and_widths() -> None:
    model = _build(CifarResNetStudent(depths=(1, 2, 3), widths=(8, 24, 40)), 10, 1)
    assert isinstance(model, CifarResNet)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [1, 2, 3]
    assert model.conv1.out_channels == 8
    assert [s[-1].conv2.out_channels for s in (model.layer1, model.layer2, model.layer3)] == [
        8, 24, 40]
    assert model.fc.in_features == 40


def test_generalised_cifar_resnet_is_resnet20_with_default_widths() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        builtin = create_model("resnet20", num_classes=10, in_channels=1)
        torch.manual_seed(0)
        spec = CifarResNetStudent(depths=(3, 3, 3), widths=(16, 32, 64)).build(10, 1)
    a, b = builtin.state_dict(), spec.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: CifarResNetStudent(depths=(0, 1, 1), widths=(8, 8, 8)), "depths[0] must be an "
     "integer in [1, 9]"),
    (lambda: CifarResNetStudent(depths=(1, 1), widths=(8, 8, 8)), "3 integers in [1, 9]"),
    (lambda: CifarResNetStudent(depths=(1, 1, 1), widths=(8, 8, 512)), "widths[2] must be an "
     "integer in [8, 256], not 512"),
    (lambda: CifarResNetStudent(depths=(1, 1.5, 1), widths=(8, 8, 8)), "depths[1]"),
    (lambda: MobileNetV2Student(width_mult=0.05, expand_ratio=6), "width_mult must be a "
     "number in [0.1, 2]"),
    (lambda: MobileNetV2Student(width_mult=1.0, expand_ratio=9), "expand_ratio must be an "
     "integer in [1, 8]"),
    (lambda: MobileNetV2Student(width_mult=True, expand_ratio=2), "width_mult"),
    (lambda: TorchvisionStudent("vgg16"), "choose one of mnasnet0_5"),
    (lambda: CifarResNet((1, 1, 1, 1), num_classes=10, in_channels=1), "3 integers"),
])
def test_out_of_range_specs_are_refused_with_the_allowed_range(make, message: str) -> None:
    with pytest.raises(ModelError) as info:
        make()
    assert message in str(info.value)


@pytest.mark.parametrize(("data", "message"), [
    ({"family": "vit"}, "known families: cifar_resnet, mobilenet_v2, torchvision"),
    ({"family": "torchvision", "name": "resnet18", "weights": "DEFAULT"}, "unknown: ['weights']"),
    ({"family": "mobilenet_v2", "width_mult": 0.5}, "missing: ['expand_ratio']"),
    (["cifar_resnet"], "must be a mapping"),
])
def test_malformed_spec_dicts_are_refused(data: object, message: str) -> None:
    with pytest.raises(ModelError) as info:
        student_from_dict(data)  # type: ignore[arg-type]
    assert message in str(info.value)


# --- the students: section of a search space -------------------------------------------------

SECTION = {
    "families": [
        {"family": "cifar_resnet", "depths": {"choices": [1, 2, 3]},
         "widths": {"choices": [8, 16, 24, 32]}},
        {"family": "mobilenet_v2", "width_mult": {"choices": [0.25, 0.35, 0.5]},
         "expand_ratio": {"choices": [2, 4, 6]}},
        {"family": "torchvision", "name": {"choices": ["mobilenet_v3_small",
                                                       "shufflenet_v2_x0_5"]}},
    ],
    "distillation": {"loss": {"choices": ["kl", "mse"]}, "temperature": {"low": 2, "high": 8},
                     "alpha": {"choices": [0.0, 0.5]}, "hint_weight": {"choices": [0.0, 1.0]}},
}
WHERE = "space.yaml: students"


def _space() -> StudentSpace:
    return parse_students_section(SECTION, WHERE)


def test_student_space_names_its_parameters_under_student() -> None:
    dists = _space().distributions
    assert dists["student/family"].choices == ("cifar_resnet", "mobilenet_v2", "torchvision")
    assert {f"student/cifar_resnet/{k}{i}" for k in ("depth", "width") for i in (1, 2, 3)} <= set(
        dists)
    assert {"student/mobilenet_v2/width_mult", "student/mobilenet_v2/expand_ratio",
            "student/torchvision/name", "student/distill/loss", "student/distill/temperature",
            "student/distill/alpha", "student/distill/hint_weight"} <= set(dists)
    assert all(name.startswith("student/") for name in dists)
    temperature = dists["student/distill/temperature"]
    assert isinstance(temperature, optuna.distributions.FloatDistribution)
    assert (temperature.low, temperature.high) == (2.0, 8.0)


def _sample_plans(seed: int, count: int) -> list[tuple[StudentPlan, dict]]:
    space = _space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(count):
        trial = study.ask()
        out.append((space.sample(trial), dict(trial.params)))
        study.tell(trial, 0.0)
    return out


def test_plan_sampling_is_deterministic_and_round_trips() -> None:
    first, second = _sample_plans(3, 24), _sample_plans(3, 24)
    assert [p for p, _ in first] == [p for p, _ in second]
    space = _space()
    families = set()
    for plan, params in first:
        families.add(plan.student.family)
        # only the chosen family's parameters are sampled
        others = {f for f in space.family_names if f != plan.student.family}
        assert not any(k.split("/")[1] in others for k in params)
        assert space.plan_from_params({**params, "kind": "student"}) == plan
        assert StudentPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert families == set(space.family_names)


def test_fixed_trial_gives_the_named_plan() -> None:
    params = {"student/family": "cifar_resnet", "student/cifar_resnet/depth1": 1,
              "student/cifar_resnet/depth2": 1, "student/cifar_resnet/depth3": 2,
              "student/cifar_resnet/width1": 8, "student/cifar_resnet/width2": 16,
              "student/cifar_resnet/width3": 32, "student/distill/loss": "kl",
              "student/distill/temperature": 4.0, "student/distill/alpha": 0.5,
              "student/distill/hint_weight": 0.0}
    space = _space().with_training(TrainSettings(steps=300, lr=0.05),
                                   EarlyStopping(eval_every=25))
    plan = space.sample(optuna.trial.FixedTrial(params))
    assert plan.student == CifarResNetStudent(depths=(1, 1, 2), widths=(8, 16, 32))
    assert plan.distill == DistillSettings(loss="kl", temperature=4.0, alpha=0.5,
                                           training=TrainSettings(steps=300, lr=0.05),
                                           early_stopping=EarlyStopping(eval_every=25))
    assert plan.describe() == "cifar_resnet d(1,1,2) w(8,16,32), kl T4 alpha0.5"


def test_smallest_and_largest_give_one_plan_per_family() -> None:
    smallest, largest = _space().smallest(), _space().largest()
    assert [p.student for p in smallest] == [
        CifarResNetStudent(depths=(1, 1, 1), widths=(8, 8, 8)),
        MobileNetV2Student(width_mult=0.25, expand_ratio=2),
        TorchvisionStudent("shufflenet_v2_x0_5")]   # 0.35M parameters vs 1.5M
    assert [p.student for p in largest] == [
        CifarResNetStudent(depths=(3, 3, 3), widths=(32, 32, 32)),
        MobileNetV2Student(width_mult=0.5, expand_ratio=6),
        TorchvisionStudent("mobilenet_v3_small")]


def test_by_stage_specs_ranges_and_fixed_values() -> None:
    space = parse_students_section({"families": [{
        "family": "cifar_resnet", "depths_by_stage": [1, {"low": 1, "high": 3}, 2],
        "widths_by_stage": [8, 16, {"choices": [32, 64]}]}]}, WHERE)
    dists = space.distributions
    assert set(dists) == {"student/cifar_resnet/depth2", "student/cifar_resnet/width3"}
    assert isinstance(dists["student/cifar_resnet/depth2"], optuna.distributions.IntDistribution)
    plan = space.plan_from_params({"student/cifar_resnet/depth2": 3,
                                   "student/cifar_resnet/width3": 64})
    assert plan.student == CifarResNetStudent(depths=(1, 3, 2), widths=(8, 16, 64))
    assert plan.distill.loss == "kl" and plan.distill.temperature == 4.0  # defaults


def _family(**entry: object) -> dict:
    return {"families": [entry]}


@pytest.mark.parametrize(("section", "message"), [
    ("cifar_resnet", f"{WHERE}: must be a mapping with 'families'"),
    ({"families": []}, f"{WHERE}.families: expected a non-empty list"),
    ({"families": [{"family": "cifar_resnet", "depths": 1, "widths": 8}], "extra": 1},
     "unknown key(s) ['extra']"),
    (_family(family="vit"), "families[0].family: unknown family 'vit'; known families: "
     "cifar_resnet, mobilenet_v2, torchvision"),
    (_family(family="cifar_resnet", depths={"choices": [1, 12]}, widths=8),
     "families[0].depths.choices: 12 is out of range; allowed [1, 9]"),
    (_family(family="cifar_resnet", depths=1, widths={"low": 4, "high": 32}),
     "families[0].widths.low: 4 is out of range; allowed [8, 256]"),
    (_family(family="cifar_resnet", depths={"choices": [1.5, 2]}, widths=8),
     "families[0].depths: expected integers in [1, 9]"),
    (_family(family="cifar_resnet", widths=8), "give exactly one of 'depths'"),
    (_family(family="cifar_resnet", depths=1, depths_by_stage=[1, 1, 1], widths=8),
     "give exactly one of 'depths'"),
    (_family(family="cifar_resnet", depths_by_stage=[1, 1], widths=8),
     "depths_by_stage: expected a list of 3 specs"),
    (_family(family="cifar_resnet", depths=1, widths=8, blocks=2), "unknown key(s) ['blocks']"),
    (_family(family="mobilenet_v2", width_mult={"choices": [0.05, 0.5]}),
     "families[0].width_mult.choices: 0.05 is out of range; allowed [0.1, 2]"),
    (_family(family="mobilenet_v2", width_mult=0.5, expand_ratio=10),
     "families[0].expand_ratio: 10 is out of range; allowed [1, 8]"),
    (_family(family="mobilenet_v2"), "missing 'width_mult'"),
    (_family(family="torchvision", name={"choices": ["resnet18", "vit_b_16"]}),
     "families[0].name: 'vit_b_16' is not allowed; choose from: mnasnet0_5, mobilenet_v3_small"),
    (_family(family="torchvision"), "missing 'name'"),
    ({"families": [{"family": "torchvision", "name": "resnet18"},
                   {"family": "torchvision", "name": "mnasnet0_5"}]}, "listed twice"),
    ({**_family(family="torchvision", name="resnet18"), "distillation": {"loss": "l1"}},
     "distillation.loss: 'l1' is not allowed; choose from: kl, mse"),
    ({**_family(family="torchvision", name="resnet18"), "distillation": {"temperature": 0}},
     "distillation.temperature: 0 is out of range; allowed (0, 20]"),
    ({**_family(family="torchvision", name="resnet18"), "distillation": {"alpha": 1.5}},
     "distillation.alpha: 1.5 is out of range; allowed [0, 1]"),
    ({**_family(family="torchvision", name="resnet18"), "distillation": {"beta": 1}},
     "unknown key(s) ['beta']; allowed keys: ['alpha', 'hint_weight', 'loss', 'temperature']"),
])
def test_bad_students_sections_are_refused_naming_the_field(section: object,
                                                             message: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        parse_students_section(section, WHERE)
    assert message in str(info.value)


def test_plan_from_params_refuses_missing_and_foreign_values() -> None:
    space = _space()
    with pytest.raises(SearchSpaceError, match="missing: \\['student/family'\\]"):
        space.plan_from_params({})
    with pytest.raises(SearchSpaceError, match="student/cifar_resnet/depth1"):
        space.plan_from_params({"student/family": "cifar_resnet"})
    params = {"student/family": "torchvision", "student/torchvision/name": "resnet18",
              "student/distill/loss": "kl", "student/distill/temperature": 4.0,
              "student/distill/alpha": 0.5, "student/distill/hint_weight": 0.0}
    with pytest.raises(SearchSpaceError, match="'resnet18' is not one of"):
        space.plan_from_params(params)
    with pytest.raises(SearchSpaceError, match="not a number in \\[2, 8\\]"):
        space.plan_from_params({**params, "student/torchvision/name": "mobilenet_v3_small",
                                "student/distill/temperature": 9.0})
