"""Which backend serves a sampling call, judged without importing torch where it can be.

The numpy backend serves the CPU, for any number of samples (so that sample i of a seed is the same
text however many are drawn), and brings no torch in; the torch backend serves every other device,
and the CPU when `CHARRNN_SAMPLER=torch` asks for it.
"""

from __future__ import annotations

import os
import platform
import sys


def gpu_possible() -> bool:
    """Whether torch could find a GPU here, judged without importing it: on Linux only where a
    CUDA or ROCm driver shows its device files, on macOS on Apple silicon (MPS), elsewhere always."""
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg"))
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    return True


def surely_cpu(requested_device: str) -> bool:
    """Whether the requested device is the CPU, known without torch: "cpu", or "auto" where torch
    is not loaded and no GPU driver is in sight (where torch is loaded, it is asked instead)."""
    return requested_device == "cpu" or (
        requested_device == "auto" and "torch" not in sys.modules and not gpu_possible()
    )


def numpy_serves(device: str) -> bool:
    """Whether the numpy backend samples on `device` (a resolved device's name, as `str(torch.device)`)."""
    return os.environ.get("CHARRNN_SAMPLER", "numpy") != "torch" and device.split(":")[0] == "cpu"
