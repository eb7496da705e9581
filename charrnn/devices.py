"""Choosing the device and the numeric precision."""

from __future__ import annotations

import torch

from charrnn.errors import CharrnnError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit name must be usable here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CharrnnError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CharrnnError("--device cuda was asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CharrnnError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise CharrnnError("--device mps was asked for, but MPS is not available here")
    elif device.type != "cpu":
        raise CharrnnError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: by default on CUDA only, where the matrix units make it pay."""
    if precision == "bf16":
        if device.type != "cuda":
            raise CharrnnError("--precision bf16 needs a CUDA device")
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
