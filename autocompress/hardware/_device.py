"""What identifies the machine a profile was measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["describe_device"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device() -> dict[str, Any]:
    """What identifies this machine's CPU for a profile (no host names or user data)."""
    return {
        "cpu": _cpu_name(),
        "logical_cores": os.cpu_count() or 1,
        "machine": platform.machine(),
        "system": platform.system(),
    }
