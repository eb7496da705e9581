"""Checkpoint files: written atomically, read without running any code from them.

A checkpoint is one `torch.save` file holding only tensors and plain values
(dicts, lists, strings, numbers), so it loads with `torch.load(weights_only=True)`,
which refuses any pickled object that could run code. Tensors are moved to the
CPU before saving, so a checkpoint written on a GPU loads anywhere. The layout
is versioned by `FORMAT_VERSION`; see "Checkpoint format" in the README.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from charrnn.config import ModelConfig, TrainConfig, from_dict
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel
from charrnn.tokenizers import Tokenizer, tokenizer_from_state

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1
BEST, LAST = "best.pt", "last.pt"


def to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _WriteErrors:
    """A file handle that remembers the OSError a write raised (a full disk, say)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def atomic_write(path: Path, write: Any) -> None:
    """Write through `write(file)` to a temporary file beside `path`, fsync it, rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a
    mixture; a failed write (disk full) removes the temporary file and leaves
    the old one untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            recorder = _WriteErrors(handle)
            try:
                write(recorder)
            except RuntimeError:
                if recorder.error is None:
                    raise
                raise recorder.error from None  # torch.save reports a failed write as a RuntimeError
            handle.flush()
            os.fsync(handle.fileno())
        if (slow := os.environ.get("CHARRNN_TEST_SLOW_SAVE")) and path.suffix == ".pt":
            time.sleep(float(slow))  # test hook: hold a checkpoint between write and rename, for kill tests
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CharrnnError(f"could not save {path}: {reason}; the previous file is intact") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **to_cpu(payload)}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def resolve_checkpoint(path: Path) -> Path:
    """A run directory means its `best` checkpoint (or `last` if it has no best yet)."""
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CharrnnError(f"{path} holds no checkpoint ({BEST} or {LAST})")
    if not path.exists():
        raise CharrnnError(f"no such run or checkpoint: {path}")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint file (or a run directory's best), onto the CPU."""
    path = resolve_checkpoint(path)
    if path.stat().st_size == 0:
        raise CharrnnError(f"{path} is empty: not a charrnn checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles it then refuses: one message is enough
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know; anything else it cannot parse is corruption.
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise CharrnnError(
                f"{path} was refused: it asks to load {refused.group(1)}, and a checkpoint may hold only "
                "tensors and plain values (it was not loaded)"
            ) from None
        raise CharrnnError(f"{path} is not a readable charrnn checkpoint (corrupt pickle data)") from None
    except Exception as exc:  # a damaged file can make torch.load fail in many ways (IndexError, struct.error, ...)
        raise CharrnnError(
            f"{path} is not a readable charrnn checkpoint (truncated or corrupt: {type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharrnnError(f"{path} is not a charrnn checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise CharrnnError(f"{path} has no format version: not a charrnn checkpoint")
    if version > FORMAT_VERSION:
        raise CharrnnError(
            f"{path} was written by a newer charrnn (checkpoint format {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade charrnn"
        )
    for key in ("model_config", "tokenizer", "model"):
        if not isinstance(payload.get(key), dict):
            raise CharrnnError(f"{path} is missing its {key.replace('_', ' ')}")
    return payload


def model_from_checkpoint(
    payload: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[RNNLanguageModel, Tokenizer]:
    """Build the model and tokenizer a checkpoint describes and load its weights."""
    try:
        cfg = from_dict(ModelConfig, payload["model_config"])
    except CharrnnError as exc:
        raise CharrnnError(f"checkpoint has an invalid model config: {exc}") from None
    tokenizer = tokenizer_from_state(payload["tokenizer"])
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CharrnnError(
            f"checkpoint is inconsistent: vocabulary {tokenizer.vocab_size} but model expects {cfg.vocab_size}"
        )
    state = payload["model"]
    with torch.device("meta"):  # shapes only: a config claiming a huge model must not allocate it
        expected = {k: tuple(v.shape) for k, v in RNNLanguageModel(cfg).state_dict().items()}
    for key, shape in expected.items():
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            if isinstance(tensor, torch.Tensor):
                found = str(tuple(tensor.shape))
            else:
                found = "none" if tensor is None else f"a {type(tensor).__name__}"
            raise CharrnnError(
                f"checkpoint weights do not match its model config: {key} should be {shape}, the file holds {found}"
            )
    model = RNNLanguageModel(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        detail = str(exc).strip().splitlines()
        raise CharrnnError(
            f"checkpoint weights do not match its model config: {detail[-1].strip()[:200] if detail else exc}"
        ) from None
    if not all(
        torch.isfinite(t).all() for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()
    ):
        raise CharrnnError("checkpoint holds non-finite (NaN or infinite) weights")
    return model.to(device), tokenizer


def train_config_of(payload: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, payload.get("train_config") or {})
