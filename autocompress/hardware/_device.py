"""What identifies the machine a profile was measured on."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["BF16_FEATURES", "KERNEL_FEATURES", "cpu_features", "describe_device", "same_device"]

#: CPU features that kernel libraries choose their code by (ONNX Runtime's MLAS, oneDNN,
#: LLVM for TVM). A CPU's name does not tell them: this project's VMs all call themselves
#: "AMD EPYC", yet the one with AVX-512 runs ONNX Runtime's convolutions in blocks of 16
#: channels and the one without in blocks of 8, and on the second the same models ran
#: 1.45-1.98x slower than the first's profile says
#: (``benchmarks/results/latency_fidelity_onnxruntime_avx2host.md``).
KERNEL_FEATURES = frozenset({
    # x86
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
    "amx_bf16",
    # Arm
    "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",
})

#: Features that give a CPU bfloat16 arithmetic (x86: AVX512_BF16, AMX; Arm: BF16); without
#: one, bfloat16 training is emulated, and slower than fp32.
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_features(cpuinfo: str) -> list[str]:
    """The :data:`KERNEL_FEATURES` that the first CPU of ``cpuinfo`` (the text of
    ``/proc/cpuinfo``: ``flags`` on x86, ``Features`` on Arm) has, sorted."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return sorted(KERNEL_FEATURES.intersection(value.split()))
    return []


def describe_device() -> dict[str, Any]:
    """What identifies this machine's CPU for a profile (no host names or user data): its
    name, core count, architecture, system and, where ``/proc/cpuinfo`` lists them, the
    :data:`KERNEL_FEATURES` it has."""
    cpuinfo = _cpuinfo()
    device: dict[str, Any] = {
        "cpu": _cpu_name(cpuinfo),
        "logical_cores": os.cpu_count() or 1,
        "machine": platform.machine(),
        "system": platform.system(),
    }
    features = cpu_features(cpuinfo)
    if features:
        device["features"] = features
    return device


def same_device(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> bool:
    """Whether a profile's ``recorded`` device is ``here``. A profile written before devices
    recorded their CPU features (no ``features``) is compared by the rest, as it was then."""
    if "features" not in recorded:
        here = {k: v for k, v in here.items() if k != "features"}
    return dict(recorded) == dict(here)
