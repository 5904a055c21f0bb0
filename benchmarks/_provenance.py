"""What a benchmark row ran: the commit of the product code, and the machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autocompress.hardware.profile import describe_device

ROOT = Path(__file__).resolve().parent.parent


#: What a row's figures depend on: the product, not the benchmark's results committed since.
PRODUCT = ("autocompress", "pyproject.toml")


def commit() -> str:
    """The last commit that changed the product code (results committed since do not
    count), with ``+`` when the product code had uncommitted changes."""
    try:
        last = subprocess.run(["git", "log", "-1", "--format=%h", "--", *PRODUCT], cwd=ROOT,
                              check=True, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *PRODUCT], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (last or "unknown") + ("+" if dirty.strip() else "")


def machine() -> str:
    """This machine in a few words: CPU, cores and its vector extensions."""
    device = describe_device()
    vectors = "+".join(f for f in device.get("features", []) if f.startswith("avx"))
    return f"{device['cpu']}, {device['logical_cores']} cores, {vectors or 'no AVX'}"
