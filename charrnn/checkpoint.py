"""Checkpoint files: written atomically, read without running any code from them.

A checkpoint is one `torch.save` file holding only tensors and plain values
(dicts, lists, strings, numbers), so it loads with `torch.load(weights_only=True)`,
which refuses any pickled object that could run code. Tensors are moved to the
CPU before saving, so a checkpoint written on a GPU loads anywhere. The layout
is versioned by `FORMAT_VERSION`; see "Checkpoint format" in the README.

The same file can also be read without torch, into numpy arrays
(`load_checkpoint(path, arrays=True)`, see `checkpoint_numpy.py`): that is how
`charrnn sample` on the CPU starts in a fraction of the time `import torch` takes.
Both readers go through the same checks, with the same messages. This module
imports torch only inside the functions that need it.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn.config import ModelConfig, TrainConfig, from_dict
from charrnn.data.tokenizers import Tokenizer, tokenizer_from_state
from charrnn.errors import CharrnnError
from charrnn.files import atomic_write

if TYPE_CHECKING:
    import numpy as np
    import torch

    from charrnn.model import RNNLanguageModel

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1
BEST, LAST = "best.pt", "last.pt"
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks in each layer's stacked weights


def to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor moved to the CPU."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    import torch

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


def load_checkpoint(path: Path, *, arrays: bool = False) -> dict[str, Any]:
    """Read and check a checkpoint file (or a run directory's best), onto the CPU.
    Tensors come back as torch tensors, or with `arrays=True` as numpy arrays, read without torch."""
    path = resolve_checkpoint(path)
    if path.stat().st_size == 0:
        raise CharrnnError(f"{path} is empty: not a charrnn checkpoint")
    payload = _read_arrays(path) if arrays else _read_tensors(path)
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


def _refused(path: Path, name: str) -> CharrnnError:
    return CharrnnError(
        f"{path} was refused: it asks to load {name}, and a checkpoint may hold only "
        "tensors and plain values (it was not loaded)"
    )


def _unreadable(path: Path, why: str) -> CharrnnError:
    return CharrnnError(f"{path} is not a readable charrnn checkpoint ({why})")


def _read_tensors(path: Path) -> Any:
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about odd pickles it then refuses: one message is enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know; anything else it cannot parse is corruption.
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise _refused(path, refused.group(1)) from None
        raise _unreadable(path, "corrupt pickle data") from None
    except Exception as exc:  # a damaged file can make torch.load fail in many ways (IndexError, struct.error, ...)
        raise _unreadable(path, f"truncated or corrupt: {type(exc).__name__}") from None


def _read_arrays(path: Path) -> Any:
    from charrnn.checkpoint_numpy import RefusedGlobal, UnreadableCheckpoint, read_checkpoint_file

    try:
        return read_checkpoint_file(path)
    except RefusedGlobal as exc:
        raise _refused(path, exc.name) from None
    except UnreadableCheckpoint as exc:
        raise _unreadable(path, f"truncated or corrupt: {exc}") from None
    except OSError as exc:  # the file could not be opened (parse failures are UnreadableCheckpoint)
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every entry of `RNNLanguageModel(cfg).state_dict()`, computed without building it
    (a config claiming a huge model must not allocate it)."""
    gates, hidden = GATES[cfg.cell] * cfg.hidden_size, cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (cfg.vocab_size, cfg.embed_size)}
    for layer in range(cfg.num_layers):
        width = cfg.embed_size if layer == 0 else hidden
        shapes |= {
            f"rnns.{layer}.weight_ih_l0": (gates, width),
            f"rnns.{layer}.weight_hh_l0": (gates, hidden),
            f"rnns.{layer}.bias_ih_l0": (gates,),
            f"rnns.{layer}.bias_hh_l0": (gates,),
        }
    head_in = hidden
    if cfg.tie_weights and hidden != cfg.embed_size:
        shapes["proj.weight"] = (cfg.embed_size, hidden)
        head_in = cfg.embed_size
    shapes |= {"head.weight": (cfg.vocab_size, head_in), "head.bias": (cfg.vocab_size,)}
    return shapes


def _config_and_tokenizer(payload: dict[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    """The model config and tokenizer a checkpoint describes, and its weights checked against them:
    every shape the config implies, nothing else, every value finite."""
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
    expected = weight_shapes(cfg)
    for key, shape in expected.items():
        weight = state.get(key)
        found = tuple(weight.shape) if _is_array(weight) else None
        if found != shape:
            if found is not None:
                described = str(found)
            else:
                described = "none" if weight is None else f"a {type(weight).__name__}"
            raise CharrnnError(
                f"checkpoint weights do not match its model config: {key} should be {shape}, the file holds {described}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CharrnnError(
            f"checkpoint weights do not match its model config: unexpected key(s) {', '.join(map(str, extra))[:200]}"
        )
    if not all(_all_finite(state[key]) for key in expected):
        raise CharrnnError("checkpoint holds non-finite (NaN or infinite) weights")
    return cfg, tokenizer


def _is_array(value: Any) -> bool:
    """A torch tensor or a numpy array (whichever reader built the payload)."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _all_finite(value: Any) -> bool:
    if type(value).__module__ == "numpy":
        import numpy as np

        return not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all())
    import torch

    return not value.is_floating_point() or bool(torch.isfinite(value).all())


def model_from_checkpoint(
    payload: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[RNNLanguageModel, Tokenizer]:
    """Build the model and tokenizer a checkpoint describes and load its weights."""
    from charrnn.model import RNNLanguageModel

    cfg, tokenizer = _config_and_tokenizer(payload)
    model = RNNLanguageModel(cfg)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        detail = str(exc).strip().splitlines()
        raise CharrnnError(
            f"checkpoint weights do not match its model config: {detail[-1].strip()[:200] if detail else exc}"
        ) from None
    return model.to(device), tokenizer


def arrays_from_checkpoint(payload: dict[str, Any]) -> tuple[ModelConfig, Tokenizer, dict[str, np.ndarray]]:
    """The model config, tokenizer and checked weights of a payload read with `arrays=True`."""
    cfg, tokenizer = _config_and_tokenizer(payload)
    return cfg, tokenizer, {key: payload["model"][key] for key in weight_shapes(cfg)}


def train_config_of(payload: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, payload.get("train_config") or {})
