"""Joint candidates: a student, distilled, channel-pruned during distillation and quantized to
int8 by the same pipeline; on the front, and exported by ``pick`` as a QDQ graph."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import torch
import yaml
from torch import nn

from autocompress.space import Candidate, Schedule, SearchSpace
from autocompress.space._candidate import EVERY
from autocompress.study import SearchConfig, load_front, pick, search
from autocompress.transforms import compress, exported_precisions

SPACE = {
    "format_version": 1,
    "channels": {"round_to": 8, "min_channels": 8},
    "schedule": {"kind": "polynomial", "stages": 3, "begin": 0.25, "end": 0.75},
    "students": {
        "families": [{"family": "cifar_resnet", "depths": 1, "widths": 16}],
        "compress": {"keep_ratio": 0.5, "precision": {"choices": ["fp32", "int8"]}},
    },
}


def test_student_compression_is_read_from_the_space_and_sampled() -> None:
    space = SearchSpace.from_dict(SPACE)
    assert space.precisions == {"fp32", "int8"}
    bound = space.bind([], [])
    candidate = bound.candidate_from_params({"student/precision": "int8"})
    assert candidate.student is not None
    assert candidate.channel_keep == {EVERY: 0.5} and candidate.precision == {EVERY: "int8"}
    assert candidate.schedule.kind == "polynomial"
    assert candidate.combines == "student+channels+bits"
    plain = bound.candidate_from_params({"student/precision": "fp32"})
    assert plain.precision == {} and plain.combines == "student+channels"
    assert Candidate.from_json(candidate.to_json()) == candidate


def test_a_compressed_student_names_its_own_groups_and_layers() -> None:
    space = SearchSpace.from_dict(SPACE)
    candidate = space.bind([], []).candidate_from_params({"student/precision": "int8"})
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    x = torch.zeros(1, 3, 16, 16)
    teacher(x)
    built = compress(teacher, candidate, x, num_classes=10)
    assert not built.candidate.unresolved
    assert built.channels and all(kept == before // 2 for before, kept in built.channels.values())
    layers = {n for n, m in built.module.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert set(built.candidate.precision) <= layers and built.candidate.precision
    # the built network is the pruned student; its precisions name its layers
    widths = [m.out_channels for m in built.module.modules() if isinstance(m, nn.Conv2d)]
    assert max(widths) == 8


def test_a_search_with_compressed_students_fronts_and_picks_one(
        synthetic_int8_profile: Path, tmp_path: Path) -> None:
    # every student int8: on this tiny model the synthetic device's int8 is no faster than
    # fp32 (Quantize/Dequantize cost), so an fp32 student would dominate
    space = {**SPACE, "students": {**SPACE["students"],  # type: ignore[dict-item]
                                   "compress": {"keep_ratio": 0.5, "precision": "int8"}}}
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    out = tmp_path / "run"
    search(SearchConfig(model="resnet20", data="digits", trials=2, finetune_steps=12,
                        profile=synthetic_int8_profile, space=space_file, out=out,
                        latency_budget_ms=1000.0, screen=0, allocate=False))
    frame = load_front(out).to_frame()
    joint = frame[frame["combines"] == "student+channels+bits"]
    assert len(joint), f"no pruned, quantized student on the front: {frame['combines'].tolist()}"
    trial = int(joint.iloc[0]["trial"])
    export = tmp_path / "export"
    result = pick(out, 1000.0, export, trial=trial)
    assert result.member is not None and result.member.trial == trial
    model = (export / "model.onnx").read_bytes()
    ops = Counter(n.op_type for n in onnx.load_from_string(model).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert set(exported_precisions(model).values()) == {"int8"}
    record = json.loads((export / "candidate.json").read_text())
    assert record["measured_latency_ms"] <= 1000.0
    config = Candidate.from_dict(record["config"])
    assert config.student is not None and config.schedule == Schedule(
        "polynomial", stages=3, begin=0.25, end=0.75)
