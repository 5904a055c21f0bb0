"""Users' own data in a search: a separate validation folder, the train/ + val/ layout,
preprocessing recorded and exported with the model, and the documented snippet that
reproduces the recorded accuracy from the ONNX file alone.

Latencies come from the synthetic backend, so nothing here depends on this host's speed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autocompress.cli.main import main
from autocompress.data import DataSplit, load_data
from autocompress.evaluation import TrainSettings, evaluate_accuracy, train
from autocompress.exceptions import DataError, RunError
from autocompress.models import create_model
from autocompress.study import RunFolder, SearchConfig, load_front, search, write_report

_DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"
_PREP = {"resize": 16, "center_crop": 16}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, image_folder: Callable[..., Path]) -> Path:
    """``root/train`` (160 images) and ``root/val`` (80), 4 classes, 18 x 22 pixels."""
    base = tmp_path_factory.mktemp("own") / "data"
    image_folder(base / "train", 160, size=(18, 22), seed=11)
    image_folder(base / "val", 80, size=(18, 22), seed=12)
    return base


@pytest.fixture(scope="module")
def data(root: Path) -> DataSplit:
    return load_data(f"imagefolder:{root / 'train'}", val=f"imagefolder:{root / 'val'}",
                     **_PREP)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def checkpoint(data: DataSplit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 trained briefly on the training folder, prepared as ``data`` says."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=4, in_channels=3)
    train(model, data.train, None, TrainSettings(steps=40, batch_size=32, lr=0.05,
                                                 warmup_steps=4, seed=0))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def _model(checkpoint: Path) -> torch.nn.Module:
    model = create_model("resnet20", num_classes=4, in_channels=3)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


def _torchvision_predictions(model: torch.nn.Module, folder: Path, record) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A plain torchvision evaluation: ImageFolder and the classic transforms, set up from
    the run's record of the preprocessing."""
    from torchvision import datasets, transforms

    p = record.preprocessing
    steps = [transforms.Resize(p.resize)] if p.resize else []
    steps += [transforms.CenterCrop(p.center_crop)] if p.center_crop else []
    steps += [transforms.ToTensor(), transforms.Normalize(p.mean, p.std)]
    dataset = datasets.ImageFolder(str(folder), transform=transforms.Compose(steps))
    assert tuple(dataset.classes) == record.class_names
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in loader])
    labels = torch.tensor(dataset.targets)
    return torch.stack([logits.argmax(dim=1), labels])


# ---------------------------------------------------------------------- loading the data

def test_validation_is_the_val_folder_only(data: DataSplit, root: Path) -> None:
    record = data.record
    assert record.val == f"imagefolder:{root / 'val'}" and not record.same_source
    assert (record.train_samples, record.val_samples) == (160, 80)
    assert (len(data.train), len(data.val)) == (160, 80)
    assert record.val_fraction is None
    assert "80 samples of" in record.validation_note()
    assert "separate from the 160 training samples" in record.validation_note()
    assert data.input_shape == (1, 3, 16, 16)


def test_a_train_and_val_layout_is_recognised(root: Path, data: DataSplit) -> None:
    layout = load_data(f"imagefolder:{root}", **_PREP)  # type: ignore[arg-type]
    assert layout.record.train == f"imagefolder:{root / 'train'}"
    assert layout.record.val == f"imagefolder:{root / 'val'}"
    assert (len(layout.train), len(layout.val)) == (160, 80)
    assert layout.preprocessing == data.preprocessing
    assert torch.equal(layout.val.materialize()[0], data.val.materialize()[0])
    assert layout.fingerprint != data.fingerprint      # the layout is part of the identity


def test_a_train_folder_without_val_says_what_to_do(tmp_path: Path,
                                                    image_folder: Callable[..., Path]) -> None:
    image_folder(tmp_path / "d" / "train", 8)
    with pytest.raises(DataError, match=r"has a train/ folder but no val/ folder.*--val-data"):
        load_data(f"imagefolder:{tmp_path / 'd'}")


def test_validation_data_must_match_the_training_data(
        root: Path, tmp_path: Path, image_folder: Callable[..., Path]) -> None:
    other = image_folder(tmp_path / "other", 6, classes=3, size=(18, 22))
    with pytest.raises(DataError, match=r"different classes \(missing from validation: class3"):
        load_data(f"imagefolder:{root / 'train'}", val=f"imagefolder:{other}")
    small = image_folder(tmp_path / "small", 8, size=(10, 10))
    with pytest.raises(DataError, match="pass --resize and/or --center-crop"):
        load_data(f"imagefolder:{root / 'train'}", val=f"imagefolder:{small}")
    with pytest.raises(DataError, match="with separate validation data"):
        load_data(f"imagefolder:{root / 'train'}", val=f"imagefolder:{root / 'val'}",
                  val_fraction=0.2)


def test_autocompress_scores_a_model_as_a_plain_torchvision_evaluation(
        data: DataSplit, checkpoint: Path, root: Path) -> None:
    model = _model(checkpoint)
    predicted, labels = _torchvision_predictions(model, root / "val", data.record)
    expected = int((predicted == labels).sum()) / len(labels)
    assert 0.3 < expected < 1.0          # trained, and not trivially perfect
    assert evaluate_accuracy(model, data.val) == expected
    # sample for sample: the same labels in the same order, the same predictions
    inputs, ours = data.val.materialize()
    assert torch.equal(ours, labels)
    with torch.no_grad():
        assert torch.equal(model(inputs).argmax(dim=1), predicted)


# ---------------------------------------------------------------------- a search, exported

def _snippet() -> str:
    text = _DOCS.read_text()
    marker = text.index("<!-- the code block below is executed by tests/study/")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert block is not None, "docs/data.md lost its snippet"
    return block.group(1)


def _run_snippet(tmp_path: Path, model: Path, folder: Path) -> tuple[float, int, int]:
    script = tmp_path / "accuracy.py"
    script.write_text(_snippet())
    done = subprocess.run([sys.executable, str(script), str(model), str(folder)], check=True,
                          capture_output=True, text=True, timeout=300)
    found = re.search(r"accuracy ([0-9.]+) \((\d+) of (\d+) images", done.stdout)
    assert found, done.stdout
    return float(found.group(1)), int(found.group(2)), int(found.group(3))


@pytest.fixture(scope="module")
def separate(root: Path, checkpoint: Path, synthetic_profile: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search through the command line: separate validation data, resize and crop,
    streamed from the files, normalization embedded at export; then its pick."""
    run = tmp_path_factory.mktemp("sep") / "run"
    args = ["search", "--train-data", f"imagefolder:{root / 'train'}",
            "--val-data", f"imagefolder:{root / 'val'}", "--resize", "16", "--center-crop",
            "16", "--embed-preprocessing", "--data-cache", "stream", "--data-workers", "1",
            "--checkpoint", str(checkpoint), "--profile", str(synthetic_profile),
            "--trials", "1", "--finetune-steps", "4", "--screen", "2", "--no-allocation",
            "--out", str(run)]
    assert main(args) == 0
    assert main(["pick", str(run), "--latency-budget-ms", "1000", "--export",
                 str(run / "export")]) == 0
    return run


def test_the_run_records_the_data_and_its_preprocessing(separate: Path, data: DataSplit,
                                                        checkpoint: Path, root: Path) -> None:
    info = RunFolder.open(separate).run
    record = info.data_record
    assert record is not None
    assert record.val == f"imagefolder:{root / 'val'}" and record.val_samples == 80
    assert record.preprocessing.embedded
    assert record.preprocessing.mean == data.preprocessing.mean
    assert (record.preprocessing.resize, record.preprocessing.center_crop) == (16, (16, 16))
    assert info.identity.val_data == record.val and info.identity.embed_preprocessing
    # the baseline's accuracy is that of a plain torchvision evaluation of the val folder
    predicted, labels = _torchvision_predictions(_model(checkpoint), root / "val", record)
    assert info.baseline.accuracy == int((predicted == labels).sum()) / len(labels)
    front = load_front(separate)
    assert front.members
    for member in front.members:       # whole images of the 80 validation images
        assert abs(member.accuracy * 80 - round(member.accuracy * 80)) < 1e-9
    assert "separate from the 160 training samples" in front.summary()
    assert "separate from the 160 training samples" in write_report(separate).read_text()


def test_the_exported_model_carries_its_preprocessing(separate: Path, data: DataSplit) -> None:
    candidate = json.loads((separate / "export" / "candidate.json").read_text())
    model = onnx.load(separate / "export" / "model.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["autocompress.normalize_mean"]) == list(data.preprocessing.mean)
    assert json.loads(props["autocompress.normalize_std"]) == list(data.preprocessing.std)
    assert json.loads(props["autocompress.resize"]) == 16
    assert json.loads(props["autocompress.center_crop"]) == [16, 16]
    assert json.loads(props["autocompress.input_size"]) == [16, 16]
    assert json.loads(props["autocompress.preprocessing_embedded"]) is True
    assert json.loads(props["autocompress.class_names"]) == ["class0", "class1", "class2",
                                                              "class3"]
    assert props["autocompress.normalize"] == "dataset"
    assert float(props["autocompress.accuracy"]) == pytest.approx(candidate["accuracy"],
                                                                  abs=1e-6)
    assert candidate["preprocessing"]["mean"] == list(data.preprocessing.mean)
    assert candidate["preprocessing"]["embedded"] is True
    assert candidate["data"]["val_samples"] == 80
    assert candidate["validation"] == props["autocompress.validation"]
    assert [n.op_type for n in model.graph.node[:2]] == ["Sub", "Div"]
    assert candidate["size_bytes"] == (separate / "export" / "model.onnx").stat().st_size


def test_the_embedded_graph_takes_0_1_images_with_the_same_outputs(
        separate: Path, data: DataSplit) -> None:
    candidate = json.loads((separate / "export" / "candidate.json").read_text())
    trial = separate / f"trials/{candidate['trial']:05d}/model.onnx"
    plain = ort.InferenceSession(str(trial), providers=["CPUExecutionProvider"])
    embedded = ort.InferenceSession(str(separate / "export" / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
    raw_source = data.val.with_transform(type(data.val.transform)())
    unit = raw_source.head(8).numpy()                         # pixel / 255
    normalized = data.val.head(8).numpy()
    assert not np.allclose(unit, normalized)
    for i in range(8):
        ours = embedded.run(None, {embedded.get_inputs()[0].name: unit[i:i + 1]})[0]
        theirs = plain.run(None, {plain.get_inputs()[0].name: normalized[i:i + 1]})[0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_documented_snippet_reproduces_the_recorded_accuracy(
        separate: Path, root: Path, tmp_path: Path) -> None:
    candidate = json.loads((separate / "export" / "candidate.json").read_text())
    accuracy, correct, total = _run_snippet(tmp_path, separate / "export" / "model.onnx",
                                            root / "val")
    assert total == 80
    assert correct == round(candidate["accuracy"] * 80)
    assert accuracy == pytest.approx(candidate["accuracy"], abs=1e-6)


def test_the_snippet_prepares_images_as_autocompress_does(
        separate: Path, data: DataSplit, root: Path, tmp_path: Path) -> None:
    """The snippet's prepare() on every validation image gives autocompress's inputs."""
    namespace: dict[str, object] = {}
    code = _snippet().split("extensions = ")[0]             # the definitions only
    sys_argv = sys.argv
    try:
        sys.argv = ["accuracy.py", str(separate / "export" / "model.onnx"), str(root / "val")]
        exec(compile(code, "docs/data.md", "exec"), namespace)  # noqa: S102
    finally:
        sys.argv = sys_argv
    prepare = namespace["prepare"]
    raw_source = data.val.with_transform(type(data.val.transform)())
    ours = raw_source.materialize()[0].numpy()             # embedded: the 0-1 images
    paths = sorted((root / "val").glob("*/*.png"))
    theirs = np.stack([prepare(path) for path in paths])   # type: ignore[operator]
    assert np.array_equal(ours, theirs)


# ---------------------------------------------------------------------- one folder only

def test_one_folder_records_that_validation_comes_from_it(
        root: Path, checkpoint: Path, synthetic_profile: Path, tmp_path: Path) -> None:
    config = SearchConfig(model="resnet20", data=f"imagefolder:{root / 'train'}", trials=1,
                          finetune_steps=2, screen=0, allocate=False,
                          profile=synthetic_profile, checkpoint=str(checkpoint),
                          out=tmp_path / "run", **_PREP)  # type: ignore[arg-type]
    front = search(config)
    record = RunFolder.open(tmp_path / "run").run.data_record
    assert record is not None and record.same_source and record.val is None
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_record"]["val"] is None
    assert (record.train_samples, record.val_samples) == (144, 16)
    note = "10% of imagefolder:" + str(root / "train") + " held out at random (seed 0)"
    assert note in front.summary() and "give --val-data" in front.summary()
    assert note in load_front(tmp_path / "run").summary()
    assert note in write_report(tmp_path / "run").read_text()
    # a resumed run must keep its data settings
    with pytest.raises(RunError, match="normalize"):
        search(replace(config, normalize="imagenet"))


# ---------------------------------------------------------------------- the command line

def test_the_data_flags_reach_the_search_config(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    import autocompress.study

    seen: list[SearchConfig] = []

    def fake_search(config: SearchConfig) -> None:
        seen.append(config)
        raise RunError("stopped by the test")

    monkeypatch.setattr(autocompress.study, "search", fake_search)
    code = main(["search", "--train-data", "imagefolder:/a", "--val-data", "imagefolder:/b",
                 "--normalize", "0.5,0.25", "--resize", "40", "--center-crop", "32,30",
                 "--embed-preprocessing", "--data-cache", "stream", "--data-workers", "3",
                 "--out", str(tmp_path / "r")])
    assert code == 2 and len(seen) == 1
    config = seen[0]
    assert (config.data, config.val_data) == ("imagefolder:/a", "imagefolder:/b")
    assert (config.normalize, config.resize, config.center_crop) == ("0.5,0.25", 40, (32, 30))
    assert config.embed_preprocessing and config.data_cache == "stream"
    assert config.data_workers == 3
    main(["search", "--out", str(tmp_path / "r")])
    defaults = seen[1]
    assert (defaults.data, defaults.val_data, defaults.normalize) == ("mnist", None, "dataset")
    assert (defaults.resize, defaults.center_crop, defaults.embed_preprocessing) == (
        None, None, False)
    assert (defaults.data_cache, defaults.data_workers) == ("auto", None)


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--data", "digits", "--train-data", "digits"], "give the training data once"),
    (["--normalize", "imagenette"], "--normalize must be dataset"),
    (["--normalize", "0.5,0"], "every std must be positive"),
    (["--center-crop", "big"], "--center-crop must be a positive integer"),
    (["--resize", "0"], "--resize must be a positive integer"),
    (["--data-workers", "-1"], "--data-workers must be 0 or more"),
    (["--data", "digits", "--resize", "16"], "apply to image folders"),
])
def test_bad_data_flags_give_one_clear_line(flags: list[str], fragment: str, tmp_path: Path,
                                            synthetic_profile: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", *flags, "--profile", str(synthetic_profile), "--out",
                 str(tmp_path / "r")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert err[-1].startswith("error: ") and fragment in err[-1], err[-1]
    assert not (tmp_path / "r" / "run.json").exists()



def test_the_split_seed_fixes_the_validation_set_across_search_seeds() -> None:
    """Searches of several seeds compare on one validation set, and a checkpoint trained on
    one split keeps its training images out of validation (seed alone moves the split)."""
    from autocompress.study._config import identity
    from autocompress.study._prepare import search_data

    base = SearchConfig(model="resnet20", data="digits", seed=0)
    moved = search_data(replace(base, seed=1))
    fixed = search_data(replace(base, seed=1, split_seed=0))
    reference = search_data(base)
    assert torch.equal(fixed.val_x, reference.val_x) and torch.equal(fixed.val_y, reference.val_y)
    assert not torch.equal(moved.val_x, reference.val_x)
    ident = identity(replace(base, seed=1, split_seed=0), space_sha="s", profile_sha="p",
                     checkpoint_sha=None, augmentation="none")
    assert ident.data_seed == 0 and replace(ident, split_seed=None).data_seed == 1
    assert "--split-seed" in subprocess.run(
        [sys.executable, "-m", "autocompress.cli.main", "search", "--help"],
        capture_output=True, text=True, check=True).stdout


def test_trials_of_different_search_seeds_train_with_different_seeds() -> None:
    """Two seeds of a search must not finetune trial 0 (the uniform seed) identically, or
    their spread says nothing; seed 0's trials keep training with their trial number."""
    from autocompress.study._config import trial_seed

    assert [trial_seed(0, t) for t in range(3)] == [0, 1, 2]
    seeds = {trial_seed(run, t) for run in range(3) for t in range(1000)}
    assert len(seeds) == 3000
