"""Measure models in a fresh Python process: ``python -m autocompress.hardware._apart JOB``.

A process that has built and freed many tensors (exported a model zoo with torch) runs ONNX
Runtime's small kernels slower than a fresh one. On this project's 2-core development VM
(2026-12-07, nothing else running), after a process had filled and half freed its heap,
pruned densenet169, efficientnet_b1 and convnext_tiny ran 24%, 23% and 14% slower than in
the same process before, and unpruned efficientnet_b4 as fast; with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``), 2%, 12% and 1% slower. The fidelity benchmark's 174
models, measured in the process that had built them and then in a fresh one, ran 3% faster
at the median in the fresh one (pruned efficientnet_b4 17%), and its two passes agreed within
10% for 98% of the families and 99% of the zoo, against 93% and 83%.

A profile is measured in a fresh process (``autocompress profile``) and a deployed model runs
in its own, so a measurement meant to compare with an estimate is taken apart:
:func:`measure_apart` writes the models to files, runs this module on them in a new
interpreter and reads the results back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from autocompress.exceptions import AutocompressError
from autocompress.hardware.backends import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    backend_for,
)

__all__ = ["measure_apart"]


def measure_apart(onnx_models: Sequence[bytes], backend: Backend,
                  settings: MeasureSettings | None = None, *, rounds: int = 1,
                  passes: int = 1) -> list[list[LatencyMeasurement]]:
    """``passes`` interleaved passes of :meth:`Backend.measure_many` over ``onnx_models``
    (``rounds`` rounds each), run in a fresh Python process on ``backend`` as configured;
    one list of measurements per pass, in the models' order.

    Raises:
        AutocompressError: the process failed (its error output is in the message).
    """
    settings = settings or MeasureSettings()
    with tempfile.TemporaryDirectory(prefix="autocompress-apart-") as tmp:
        folder = Path(tmp)
        files = []
        for i, data in enumerate(onnx_models):
            path = folder / f"{i:05d}.onnx"
            path.write_bytes(data)
            files.append(str(path))
        job = folder / "job.json"
        out = folder / "results.json"
        job.write_text(json.dumps({
            "backend": backend.name, "settings": backend.settings(),
            "measure": asdict(settings), "rounds": rounds, "passes": passes,
            "files": files, "out": str(out)}))
        done = subprocess.run([sys.executable, "-m", "autocompress.hardware._apart", str(job)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            raise AutocompressError(
                f"measuring {len(files)} models in a fresh process failed (exit status "
                f"{done.returncode}): {done.stderr.strip()[-2000:]}")
        results = json.loads(out.read_text())
    return [[LatencyMeasurement.from_dict(m) for m in one] for one in results]


def _run(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    backend = backend_for(job["backend"], job["settings"])
    settings = MeasureSettings(**job["measure"])
    models = [Path(f).read_bytes() for f in job["files"]]
    results = [[m.to_dict() for m in backend.measure_many(models, settings,
                                                          rounds=job["rounds"])]
               for _ in range(job["passes"])]
    Path(job["out"]).write_text(json.dumps(results))


if __name__ == "__main__":
    _run(sys.argv[1])
