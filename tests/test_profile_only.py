"""The base install is profile-only: profiling, estimating from a profile, measuring and the
CLI work without torch or scipy."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH_ONLY = ("torch", "torchvision", "optuna", "scipy", "pandas", "matplotlib", "sklearn",
               "mlxtend", "torch_pruning", "yaml", "onnxscript", "timm")

_SCRIPT = f"""
import importlib.abc, sys
BLOCKED = {SEARCH_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {{name!r}} (blocked)", name=name)
sys.meta_path.insert(0, Block())

import autocompress, autocompress.hardware, autocompress.cli.main
from autocompress.hardware import MeasureSettings, get_backend, HardwareProfile
from autocompress.hardware.kernels import Kernel, kernel_graph
from autocompress.hardware.profiler import profile_backend
out = sys.argv[1]
grid = [Kernel("conv", 8, 8, 8, 8, kernel=3), Kernel("conv1x1", 8, 16, 8, 8),
        Kernel("elementwise", 8, 8, 8, 8)]
profile_backend(get_backend("onnxruntime"), out, grid=grid, rounds=1, adaptive=0,
                settings=MeasureSettings(max_time_s=0.02, min_runs=5, round_runs=5))
# the grid, then ONNX Runtime's reorders into and out of its blocked layout
backend = get_backend("onnxruntime")
assert len(HardwareProfile.load(out).kernels) == (3 + len(backend.layout_kernels)
                                                  + len(backend.stream_kernels))
open(out + ".onnx", "wb").write(kernel_graph(grid[0]))
code = autocompress.cli.main.main(["measure", "--onnx", out + ".onnx", "--rounds", "1"])
assert code == 0, code

# the deterministic synthetic device: profile, estimate an ONNX file (the latency model's
# non-negative least squares needs no scipy), measure it; both ways, the same latency
import contextlib, io
synthetic = out + ".synthetic.json"
profile_backend(get_backend("synthetic", scale=1.0), synthetic, rounds=1, adaptive=0,
                grid=grid + [Kernel("conv", 16, 8, 8, 8, kernel=3),
                             Kernel("conv", 8, 8, 4, 4, kernel=3)])
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    assert autocompress.cli.main.main(["estimate", "--onnx", out + ".onnx",
                                       "--profile", synthetic]) == 0
    assert autocompress.cli.main.main(["measure", "--onnx", out + ".onnx", "--backend",
                                       "synthetic", "--scale", "1", "--rounds", "1"]) == 0
estimated, measured = (float(line.split(": ")[1].split(" ms")[0])
                       for line in printed.getvalue().splitlines()[:2])
assert abs(estimated - measured) <= 1e-3, printed.getvalue()  # both printed to 1 us
assert "measured on synthetic" in printed.getvalue(), printed.getvalue()

assert autocompress.cli.main.main(["search"]) == 2   # says which extra to install
loaded = [m for m in BLOCKED if m in sys.modules]
assert not loaded, loaded
print("OK")
"""


def test_base_dependencies_hold_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split("=")[0].split(">")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert names == {"numpy", "onnx", "onnxruntime"}
    assert any(d.startswith("torch==") for d in project["optional-dependencies"]["search"])


def test_profiling_estimating_and_measuring_work_without_search_dependencies(tmp_path: Path
                                                                            ) -> None:
    """torch and scipy (and the rest of the search extra) are blocked in the subprocess."""
    result = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "p.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK")
    assert "autocompress[search]" in result.stderr
