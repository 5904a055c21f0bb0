"""Bad input: each case ends with one actionable line on stderr, exit code 2, no traceback,
and nothing already computed is lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from autocompress.cli.main import main
from autocompress.models import create_model

Case = Callable[[Path, Path], list[str]]


def _search(tmp: Path, profile: Path, *extra: str) -> list[str]:
    return ["search", "--data", "digits", "--profile", str(profile), "--out", str(tmp / "run"),
            *extra]


def _space(tmp: Path, text: str) -> str:
    path = tmp / "space.yaml"
    path.write_text(text)
    return str(path)


def _profile_with(tmp: Path, profile: Path, **changes: object) -> str:
    data = json.loads(profile.read_text())
    data.update(changes)
    path = tmp / "profile.json"
    path.write_text(json.dumps(data))
    return str(path)


def _checkpoint(tmp: Path, payload: object) -> str:
    path = tmp / "ckpt.pt"
    torch.save(payload, path)
    return str(path)


def _truncated_checkpoint(tmp: Path) -> str:
    path = Path(_checkpoint(tmp, create_model("resnet20", num_classes=10,
                                              in_channels=1).state_dict()))
    path.write_bytes(path.read_bytes()[:2000])
    return str(path)


class _Code:
    """Pickled as a class reference: torch.load(weights_only=True) refuses it."""


CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "yaml syntax error": (lambda t, p: _search(t, p, "--space", _space(
        t, "format_version: 1\nchannels: [\n")), ("not valid YAML",)),
    "unknown key in space": (lambda t, p: _search(t, p, "--space", _space(
        t, "format_version: 1\nchanels: {}\n")), ("chanels", "allowed keys")),
    "ratio out of range": (lambda t, p: _search(t, p, "--space", _space(
        t, "format_version: 1\nchannels:\n  rules:\n    - match: '*'\n"
           "      keep_ratio: {low: 0.5, high: 1.5}\n")), ("keep_ratio.high", "allowed")),
    "space of another format version": (lambda t, p: _search(t, p, "--space", _space(
        t, "format_version: 7\n")), ("format_version must be 1",)),
    "profile of another format version": (lambda t, p: _search(
        t, p, "--profile", _profile_with(t, p, format_version=99)),
        ("format_version 99", "autocompress profile")),
    "not a profile": (lambda t, p: _search(t, p, "--profile", _space(t, "{}")),
                      ("not an autocompress hardware profile",)),
    "missing profile": (lambda t, p: _search(t, p, "--profile", str(t / "nope.json")),
                        ("does not exist", "autocompress profile")),
    "corrupt checkpoint": (lambda t, p: _search(t, p, "--checkpoint", _truncated_checkpoint(t)),
                           ("ckpt.pt",)),
    "checkpoint carrying pickled code": (lambda t, p: _search(
        t, p, "--checkpoint", _checkpoint(t, {"hook": _Code()})), ("state_dict",)),
    "checkpoint of another model": (lambda t, p: _search(
        t, p, "--checkpoint", _checkpoint(t, {"fc.weight": torch.zeros(3, 3)})), ("ckpt.pt",)),
    "missing checkpoint": (lambda t, p: _search(t, p, "--checkpoint", str(t / "none.pt")),
                           ("does not exist",)),
    "wrong input shape": (lambda t, p: _search(t, p, "--input-shape", "1,3,8,8"),
                          ("--input-shape", "channels")),
    "missing data folder": (lambda t, p: _search(t, p)[:1] + [
        "--data", f"imagefolder:{t / 'nowhere'}", "--profile", str(p), "--out", str(t / "r")],
        ("does not exist",)),
    "empty data folder": (lambda t, p: (t / "empty").mkdir() or [
        "search", "--data", f"imagefolder:{t / 'empty'}", "--profile", str(p), "--out",
        str(t / "r")], ("is empty",)),
    "unknown data set": (lambda t, p: _search(t, p)[:1] + [
        "--data", "cifar", "--profile", str(p), "--out", str(t / "r")], ("mnist",)),
    "unknown model": (lambda t, p: _search(t, p, "--model", "resnet21"), ("resnet20",)),
    "missing model file": (lambda t, p: _search(t, p, "--model", f"{t}/net.py:make"),
                           ("does not exist",)),
    "unreachable storage": (lambda t, p: _search(
        t, p, "--storage", f"sqlite:///{t}/no/such/dir/x.db"), ("cannot open the study",)),
    "unreachable database, password hidden": (lambda t, p: _search(
        t, p, "--storage", "postgresql://bob:s3cret@127.0.0.1:1/db"),
        ("bob:***@", "cannot open the study storage")),
    "budget below the fastest model": (lambda t, p: _search(
        t, p, "--latency-budget-ms", "0.000001"), ("below the fastest model",)),
    "tuning asked of a backend that does not tune": (lambda t, p: [
        "measure", "--onnx", str(t), "--backend", "onnxruntime", "--tuning-trials", "8"],
        ("tuning_trials is an option of the tvm backend",)),
    "front of a folder that is no run": (lambda t, p: ["front", str(t)], ("run.json",)),
    "pick from a folder that is no run": (lambda t, p: ["pick", str(t), "--latency-budget-ms",
                                                       "1", "--export", str(t / "e")],
                                         ("run.json",)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_actionable_line(name: str, tmp_path: Path, synthetic_profile: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    make_args, expected = CASES[name]
    code = main(make_args(tmp_path, synthetic_profile))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    assert code == 2
    assert lines[-1].startswith("error: ")
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert "s3cret" not in captured.err + captured.out
    for fragment in expected:
        assert fragment in lines[-1], lines[-1]
