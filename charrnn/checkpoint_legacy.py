"""Format 1: the checkpoints charrnn 0.1 wrote, one `torch.save` zip per file (`best.pt`, `last.pt`).

They still load for `eval`, `sample` and `train --resume`, through `torch.load(weights_only=True)`,
which builds only tensors and plain values and refuses any pickled global that could run code.
Before it, the zip is checked whole (every entry stored, as torch writes them, and its CRC
right), and after it the payload must hold plain values and tensors only: damage and oddities
torch.load lets through are refused too. `charrnn convert` rewrites these files as format 2
(see checkpoint.py). Everything here imports torch.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from charrnn.errors import CharrnnError

ZIP_MAGIC = b"PK\x03\x04"  # every torch.save file since torch 1.6 is a zip archive
SUFFIX = ".pt"
# With arrays=True the copies made may add up to at most this many times the file's size, plus
# the slack: views of one storage (a tensor and its transpose) can exceed it, not by much in a real file.
_EXPANSION, _EXPANSION_SLACK = 8, 64 << 20


def is_legacy(start: bytes) -> bool:
    """Whether a file starting with these bytes is a format-1 (torch zip) checkpoint, by its contents."""
    return start.startswith(ZIP_MAGIC)


def refused(path: Path, name: str) -> CharrnnError:
    return CharrnnError(
        f"{path} was refused: it asks to load {name}, and a checkpoint may hold only "
        "tensors and plain values (it was not loaded)"
    )


def unreadable(path: Path, why: str) -> CharrnnError:
    return CharrnnError(f"{path} is not a readable charrnn checkpoint ({why})")


def read_legacy(path: Path, *, arrays: bool = False) -> Any:
    """The unpickled payload, tensors on the CPU; with `arrays=True` every tensor becomes a numpy array."""
    import torch

    _check_zip(path)
    try:
        # From a handle, not a path: newer torch reads a path named *.safetensors as safetensors.
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickles it then refuses: one message is enough
            payload = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know; anything else it cannot parse is corruption.
        global_name = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if global_name:
            raise refused(path, global_name.group(1)) from None
        raise unreadable(path, "corrupt pickle data") from None
    except Exception as exc:  # a damaged file can make torch.load fail in many ways (IndexError, struct.error, ...)
        raise unreadable(path, f"truncated or corrupt: {type(exc).__name__}") from None
    why = _not_plain(payload)
    if why:
        raise unreadable(path, why)
    if not arrays:
        return payload
    budget = [_EXPANSION * path.stat().st_size + _EXPANSION_SLACK]
    try:
        return _to_numpy(payload, budget)
    except _TooBig:
        raise unreadable(path, "its tensors claim far more data than the file holds") from None
    except (TypeError, RuntimeError) as exc:  # a tensor numpy has no type for (float8, quantized, sparse, ...)
        raise unreadable(path, f"it holds a tensor numpy cannot represent: {str(exc).splitlines()[0][:100]}") from None


def _check_zip(path: Path) -> None:
    """The zip is whole: every entry stored uncompressed (as torch.save writes them), every CRC right."""
    try:
        with zipfile.ZipFile(path) as archive:
            if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
                raise unreadable(path, "compressed entries, which torch.save never writes")
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise unreadable(path, f"truncated or corrupt: {type(exc).__name__}") from None
    if damaged is not None:
        raise unreadable(path, f"truncated or corrupt: entry {damaged[:100]} fails its CRC check")


_PLAIN = (str, int, float, bool, type(None), bytes)


def _not_plain(payload: Any) -> str | None:
    """Why the payload is not made of plain values and tensors only (None if it is). torch's
    unpickler lets a pickle place the classes and functions it allows among the values, or give an
    OrderedDict attributes that shadow its methods; neither belongs in a checkpoint."""
    import torch

    seen: set[int] = set()
    pending = [payload]
    while pending:
        value = pending.pop()
        if isinstance(value, _PLAIN) or id(value) in seen:
            continue
        seen.add(id(value))
        kind = type(value)
        if kind in (torch.Tensor, torch.nn.Parameter, torch.Size):
            continue
        if kind is dict or kind is OrderedDict:
            if kind is OrderedDict:  # state_dict() gives its OrderedDict a `_metadata` attribute
                attributes = vars(value)
                if any(type(name) is not str or hasattr(OrderedDict, name) for name in attributes):
                    return "an OrderedDict in it has an attribute that shadows a method"
                pending.extend(attributes.values())
            pending.extend(value.keys())
            pending.extend(value.values())
        elif kind in (list, tuple, set):
            pending.extend(value)
        else:
            return f"it holds a {kind.__name__}, which is not a plain value"
    return None


class _TooBig(Exception):
    """The arrays copied out of a file would add up to far more than the file holds."""


def _to_numpy(value: Any, budget: list[int], memo: dict[int, Any] | None = None) -> Any:
    """A copy of nested containers with every tensor as a C-contiguous numpy array of its own
    (bfloat16 widened exactly to float32; a torch.Size a tuple). At most `budget[0]` bytes are
    copied in all: views of one storage cannot claim more memory than the file holds."""
    import numpy as np
    import torch

    memo = {} if memo is None else memo
    if id(value) in memo:  # a list or dict met before (pickles may hold cycles)
        return memo[id(value)]
    if isinstance(value, torch.Tensor):
        tensor = value.detach().resolve_neg().resolve_conj()
        budget[0] -= tensor.numel() * (4 if tensor.dtype == torch.bfloat16 else tensor.element_size())
        if budget[0] < 0:
            raise _TooBig
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return np.array(tensor.numpy(), order="C")  # a copy: no two arrays share memory
    if isinstance(value, dict):
        copy = memo[id(value)] = type(value)()
        if type(value) is OrderedDict:
            copy.__dict__.update(vars(value))  # state_dict() gives its OrderedDict a `_metadata` attribute
        copy.update((k, _to_numpy(v, budget, memo)) for k, v in value.items())
        return copy
    if isinstance(value, list):
        copy = memo[id(value)] = []
        copy.extend(_to_numpy(v, budget, memo) for v in value)
        return copy
    if isinstance(value, tuple):
        return tuple(_to_numpy(v, budget, memo) for v in value)
    return value
