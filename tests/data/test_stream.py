"""Streamed data: image folders (and Datasets) decoded on the fly by worker processes give the
same batches, the same training and the same accuracy as the same images held in memory, and
a streamed source holds no image of the data set."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.data import (
    DataSplit,
    StreamedSource,
    StreamSettings,
    TensorSource,
    load_data,
)
from autocompress.evaluation import (
    STANDARD_AUGMENTATION,
    TrainSettings,
    evaluate_accuracy,
    train,
)
from autocompress.exceptions import DataError
from autocompress.models import create_model

#: every request is decoded by worker processes, however few samples it asks for
_WORKERS = StreamSettings(workers=2, prefetch=2, min_samples=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory,
           image_folder: Callable[..., Path]) -> Path:
    return image_folder(tmp_path_factory.mktemp("stream") / "images", 300, seed=5)


def _with_workers(data: DataSplit) -> DataSplit:
    assert isinstance(data.train, StreamedSource) and isinstance(data.val, StreamedSource)
    return DataSplit.from_sources(data.name, data.train.with_settings(_WORKERS),
                                  data.val.with_settings(_WORKERS),
                                  class_names=data.class_names, fingerprint=data.fingerprint,
                                  record=data.record)


@pytest.fixture(scope="module")
def both(folder: Path) -> tuple[DataSplit, DataSplit]:
    """The same folder in memory and streamed by two worker processes."""
    spec = f"imagefolder:{folder}"
    memory = load_data(spec, seed=1, cache="memory")
    streamed = _with_workers(load_data(spec, seed=1, cache="stream", workers=2))
    return memory, streamed


def test_auto_keeps_a_small_folder_in_memory_and_stream_streams_it(both, folder: Path) -> None:
    memory, streamed = both
    assert isinstance(memory.train, TensorSource) and memory.train.in_memory
    assert isinstance(streamed.train, StreamedSource) and not streamed.train.in_memory
    assert isinstance(load_data(f"imagefolder:{folder}", seed=1).train, TensorSource)


def test_streamed_batches_equal_the_in_memory_batches(both) -> None:
    memory, streamed = both
    # the same split, the same statistics, the same record and fingerprint
    assert torch.equal(memory.train.labels, streamed.train.labels)
    assert torch.equal(memory.val.labels, streamed.val.labels)
    assert memory.record == streamed.record
    assert memory.fingerprint == streamed.fingerprint
    assert memory.input_shape == streamed.input_shape == (1, 3, 16, 16)
    order = torch.randperm(len(memory.train), generator=torch.Generator().manual_seed(0))
    chunks = [order[i:i + 37] for i in range(0, len(order), 37)]
    pairs = list(zip(memory.train.stream(chunks), streamed.train.stream(chunks), strict=True))
    assert len(pairs) == len(chunks)
    for chunk, ((x_mem, y_mem), (x_str, y_str)) in zip(chunks, pairs, strict=True):
        assert x_str.dtype == torch.float32 and x_str.shape == (len(chunk), 3, 16, 16)
        assert torch.equal(x_mem, x_str)
        assert torch.equal(y_mem, y_str)
    x_mem, y_mem = memory.val.materialize()
    x_str, y_str = streamed.val.materialize()
    assert torch.equal(x_mem, x_str) and torch.equal(y_mem, y_str)
    # normalized with the training images' statistics
    assert torch.allclose(memory.train.materialize()[0].mean(dim=(0, 2, 3)), torch.zeros(3),
                          atol=1e-5)


def _trained(data: DataSplit, steps: int) -> tuple[torch.nn.Module, float, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=data.num_classes, in_channels=3)
    settings = TrainSettings(steps=steps, batch_size=32, lr=0.05, warmup_steps=2, seed=3,
                             augmentation=STANDARD_AUGMENTATION)
    result = train(model, data.train, None, settings)
    return model, result.final_loss, evaluate_accuracy(model, data.val, batch_size=64)


def test_training_on_the_streamed_folder_equals_training_in_memory(both) -> None:
    memory, streamed = both
    steps = 10      # 270 training images in batches of 32: more than one pass
    model_mem, loss_mem, acc_mem = _trained(memory, steps)
    model_str, loss_str, acc_str = _trained(streamed, steps)
    assert loss_mem == loss_str
    assert acc_mem == acc_str
    for (name, a), (_, b) in zip(model_mem.state_dict().items(),
                                 model_str.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def _held_bytes(root: object) -> int:
    """Bytes of every tensor and numpy array reachable from ``root``'s own attributes."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            total += obj.untyped_storage().nbytes()
        elif isinstance(obj, np.ndarray):
            total += obj.nbytes
        elif not isinstance(obj, type | types.ModuleType | types.FunctionType
                            | types.BuiltinFunctionType):
            stack.extend(gc.get_referents(obj))
    return total


def test_a_streamed_source_holds_no_image_and_a_cached_one_holds_them_all(both) -> None:
    _, streamed = both
    source = streamed.train
    assert isinstance(source, StreamedSource)
    pixel_bytes = len(source) * 3 * 16 * 16
    # labels, indices and relative paths only: a few dozen bytes per image, not 768
    assert _held_bytes(source) < pixel_bytes / 8
    cached = source.cached()
    assert _held_bytes(cached) >= pixel_bytes
    assert torch.equal(cached.materialize()[0], source.materialize()[0])


class _MarkedDataset(torch.utils.data.Dataset):
    """A Dataset of uint8 images that leaves a file named after each process that reads it."""

    def __init__(self, count: int, marks: Path) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8,
                                    generator=generator)
        self.targets = [i % 3 for i in range(count)]
        self.classes = ["a", "b", "c"]
        self.marks = marks

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        (self.marks / str(os.getpid())).touch()
        return self.images[index], self.targets[index]


def test_a_dataset_is_decoded_in_worker_processes_with_the_same_result(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    dataset = _MarkedDataset(120, marks)
    memory = load_data(dataset, seed=0, cache="memory", normalize="imagenet")
    streamed = load_data(dataset, seed=0, cache="stream", normalize="imagenet")
    assert isinstance(streamed.train, StreamedSource)
    assert streamed.record.train == "dataset:_MarkedDataset[120]"
    source = streamed.train.with_settings(StreamSettings(workers=1, min_samples=0))
    for path in marks.iterdir():
        path.unlink()
    x_str, y_str = source.materialize()
    readers = {int(p.name) for p in marks.iterdir()}
    assert readers and os.getpid() not in readers      # only worker processes decoded
    x_mem, y_mem = memory.train.materialize()
    assert torch.equal(x_mem, x_str) and torch.equal(y_mem, y_str)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    raw = dataset.images[torch.from_numpy(streamed.train.indices)]
    assert torch.equal(x_str, (raw.float() / 255 - mean) / std)


def test_a_file_broken_after_the_scan_is_named_by_the_worker_that_reads_it(
        tmp_path: Path, image_folder: Callable[..., Path]) -> None:
    root = image_folder(tmp_path / "images", 40)
    data = load_data(f"imagefolder:{root}", cache="stream", normalize="none", workers=1)
    assert isinstance(data.train, StreamedSource)
    broken = Path(data.train.items.path(int(data.train.indices[5])))
    broken.write_bytes(b"truncated")
    source = data.train.with_settings(StreamSettings(workers=1, min_samples=0))
    with pytest.raises(DataError, match=rf"cannot decode image file .*{broken.name}.*remove or"):
        source.materialize()


def test_bad_cache_and_worker_settings_are_data_errors(folder: Path) -> None:
    with pytest.raises(DataError, match="cache must be one of auto, memory, stream"):
        load_data(f"imagefolder:{folder}", cache="disk")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="--data-workers must be 0 or more"):
        load_data(f"imagefolder:{folder}", workers=-1)


_CHILD = """
import json, resource, sys
import torch
from autocompress.data import StreamSettings, load_data
from autocompress.evaluation import TrainSettings, evaluate_accuracy, train
from autocompress.models import create_model

spec, warmup, cache = sys.argv[1:4]
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# every lazy import and a worker start before the first reading, in both modes
small = load_data(warmup, cache="stream", workers=1, normalize="imagenet")
list(small.train.with_settings(StreamSettings(workers=1, min_samples=0)).batches(8))
torch.manual_seed(0)
model = create_model("resnet20", num_classes=4, in_channels=3)
start = peak_mb()
data = load_data(spec, cache=cache, workers=1, normalize="imagenet", seed=0)
total = 0.0
for source in (data.train, data.val):      # every image once, by the worker when streamed
    for x, _ in source.batches(256):
        total += float(x.sum())
read = peak_mb()
# 70 steps of 32: a request of more than 2,048 samples, decoded by the worker
result = train(model, data.train, None, TrainSettings(steps=70, batch_size=32, lr=0.05, seed=1))
accuracy = evaluate_accuracy(model, data.val, batch_size=100)
print(json.dumps({"start_mb": start, "read_mb": read, "checksum": total, "accuracy": accuracy,
                  "loss": result.final_loss, "streamed": not data.train.in_memory}))
"""


def _child(spec: str, warmup: str, cache: str) -> dict[str, float]:
    # glibc raises its mmap threshold to the size of the largest buffer freed, after which
    # freed batch buffers stay in the heap between the shared-memory mappings of the batches
    # workers send: a high-water mark of a few hundred MB that depends on the batch size, not
    # on the data set (measured: the same for 18,000 and 144,000 images). A fixed threshold
    # makes the peak RSS measure what is held.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    done = subprocess.run([sys.executable, "-c", _CHILD, spec, warmup, cache], check=True,
                          capture_output=True, text=True, timeout=900, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_20000_images_stream_in_bounded_memory_with_the_in_memory_accuracy(
        tmp_path: Path, image_folder: Callable[..., Path]) -> None:
    count, size = 20_000, (48, 48)
    root = image_folder(tmp_path / "big", count, size=size, seed=2)
    warmup = image_folder(tmp_path / "warmup", 40, size=size, seed=3)
    data_mb = count * 3 * size[0] * size[1] / 2**20        # the pixels as uint8: 132 MiB
    streamed = _child(f"imagefolder:{root}", f"imagefolder:{warmup}", "stream")
    memory = _child(f"imagefolder:{root}", f"imagefolder:{warmup}", "memory")
    assert streamed["streamed"] and not memory["streamed"]
    assert streamed["accuracy"] == memory["accuracy"]
    assert streamed["loss"] == memory["loss"]
    assert streamed["checksum"] == memory["checksum"]
    # reading every image once: the in-memory path holds every pixel, the streamed one
    # only the batches in flight
    grown_streamed = streamed["read_mb"] - streamed["start_mb"]
    grown_memory = memory["read_mb"] - memory["start_mb"]
    assert grown_memory > 0.9 * data_mb, (grown_streamed, grown_memory)
    assert grown_streamed < 0.25 * data_mb, (grown_streamed, grown_memory)
