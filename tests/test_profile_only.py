"""The base install is profile-only: profiling, measuring and the CLI work without torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH_ONLY = ("torch", "torchvision", "optuna", "scipy", "pandas", "matplotlib", "sklearn",
               "mlxtend", "torch_pruning", "yaml", "onnxscript")

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
assert len(HardwareProfile.load(out).kernels) == 3
open(out + ".onnx", "wb").write(kernel_graph(grid[0]))
code = autocompress.cli.main.main(["measure", "--onnx", out + ".onnx", "--rounds", "1"])
assert code == 0, code
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


def test_profiling_and_measuring_work_without_search_dependencies(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "p.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK")
    assert "autocompress[search]" in result.stderr
