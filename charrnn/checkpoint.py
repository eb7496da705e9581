"""Checkpoint files: written atomically, read without running any code from them.

A checkpoint (format 2) is one safetensors file: every tensor in its tensor section, and the
rest of the payload as one JSON document in its header metadata, where each tensor appears as
`{"$tensor": NAME}`. The layout is described key by key in docs/checkpoint-format.md. Format 1,
the `torch.save` zip of charrnn 0.1, still loads (checkpoint_legacy.py); the format is told
from the file's first bytes, never from its name.

`load_checkpoint` gives the payload, a nested dict, with tensors as torch tensors, or with
`arrays=True` as numpy arrays, read memory-mapped without importing torch: that is how
`charrnn sample` on the CPU starts well before `import torch` alone would finish. A header is
checked (format, version, and every weight's shape against what its config implies) before any
tensor data is read. This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn.checkpoint_checks import check_finite_weights, config_from, dtype_name, is_floating
from charrnn.checkpoint_legacy import SUFFIX as LEGACY_SUFFIX
from charrnn.checkpoint_legacy import is_legacy, read_legacy, unreadable
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.tokenizers import Tokenizer, tokenizer_from_state
from charrnn.errors import CharrnnError
from charrnn.files import atomic_write

if TYPE_CHECKING:
    import numpy as np
    import torch

    from charrnn.model import RNNLanguageModel

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 2
SUFFIX = ".safetensors"
BEST, LAST = "best" + SUFFIX, "last" + SUFFIX
LEGACY_BEST, LEGACY_LAST = "best" + LEGACY_SUFFIX, "last" + LEGACY_SUFFIX
METADATA_KEY = "charrnn"  # the header metadata entry holding the payload's JSON
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks in each layer's stacked weights
# Element types a checkpoint may hold (safetensors' names): what numpy reads without torch.
DTYPES = frozenset({"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"})
_STORED_DTYPES = frozenset({"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"})
_INT_KEY = re.compile("-?[0-9]{1,18}")
# A real payload's JSON has a few thousand items at most (its longest string, a char vocabulary, is
# one); parsing millions of tiny ones would take many times the file's size in Python objects.
_MAX_JSON_ITEMS = 100_000
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --- the payload as JSON with tensor references ---------------------------------------------


def _encode(value: Any, name: str, tensors: dict[str, Any]) -> Any:
    """`value` as strict JSON; each tensor goes into `tensors` under its path `name` ("a/b/0").
    What JSON cannot say exactly is marked: tuples, int-keyed dicts (the optimizer's state) and
    non-finite floats. Anything else is a bug in the caller (TypeError)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a torch tensor or a numpy array
        if name in tensors:
            raise TypeError(f"two tensors of a checkpoint would both be named {name!r}")
        tensors[name] = value
        return {"$tensor": name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, _child(name, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _child(name, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(type(k) is str for k in value):
            if len(value) == 1 and next(iter(value)).startswith("$"):
                raise TypeError(f"a checkpoint cannot hold a dict whose only key is {next(iter(value))!r}")
            return {k: _encode(v, _child(name, k), tensors) for k, v in value.items()}
        if all(type(k) is int and type(k) is not bool for k in value):
            return {"$int_keys": {str(k): _encode(v, _child(name, k), tensors) for k, v in value.items()}}
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__} (at {name or 'the top'})")


def _child(name: str, key: str | int) -> str:
    return f"{name}/{key}" if name else str(key)


class _Malformed(Exception):
    """The metadata's JSON is not an encoded payload."""


def _decode(value: Any, tensor: Callable[[str], Any]) -> Any:
    """The payload `_encode` described, with `tensor(name)` in place of each tensor reference."""
    if isinstance(value, list):
        return [_decode(v, tensor) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == "$tensor":
            if not isinstance(inner, str):
                raise _Malformed("a tensor reference is not a name")
            return tensor(inner)
        if key == "$tuple":
            if not isinstance(inner, list):
                raise _Malformed("a tuple is not a list")
            return tuple(_decode(v, tensor) for v in inner)
        if key == "$int_keys":
            if not isinstance(inner, dict) or not all(_INT_KEY.fullmatch(k) for k in inner):
                raise _Malformed("an int-keyed dict has a key that is not an integer")
            return {int(k): _decode(v, tensor) for k, v in inner.items()}
        if key == "$float":
            if not isinstance(inner, str) or inner not in _NON_FINITE:
                raise _Malformed("a non-finite float is not nan, inf or -inf")
            return _NON_FINITE[inner]
    return {k: _decode(v, tensor) for k, v in value.items()}


# --- writing ----------------------------------------------------------------------------------


def to_safetensors(payload: dict[str, Any]) -> bytes:
    """The bytes of a safetensors file holding `payload` exactly as given (format keys included)."""
    import torch
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    document = _encode(payload, "", tensors)
    for name, value in tensors.items():
        if str(value.dtype).removeprefix("torch.") not in _STORED_DTYPES:
            raise TypeError(f"a checkpoint cannot hold {value.dtype} tensors ({name}): numpy could not read them")
    # Each tensor its own contiguous CPU copy: tied weights (head.weight is embed.weight) share
    # memory, which safetensors refuses, and views carry strides it cannot store.
    own = {
        name: (torch.from_numpy(value.copy()) if type(value).__module__ == "numpy" else value.detach()).to(
            "cpu", memory_format=torch.contiguous_format, copy=True
        )
        for name, value in tensors.items()
    }
    text = json.dumps(document, allow_nan=False, separators=(",", ":"))  # ASCII: \u escapes for the rest
    return save(own, metadata={METADATA_KEY: text})


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as a format-2 checkpoint, atomically: a crash leaves the old file or the new one."""
    versioned = {k: v for k, v in payload.items() if k not in ("format", "format_version")}
    data = to_safetensors({"format": FORMAT, "format_version": FORMAT_VERSION, **versioned})
    atomic_write(path, lambda handle: handle.write(data))


# --- reading ----------------------------------------------------------------------------------


def resolve_checkpoint(path: Path) -> Path:
    """A run directory means its `best` checkpoint (or `last` if it has no best yet), of either format."""
    if path.is_dir():
        for name in (BEST, LEGACY_BEST, LAST, LEGACY_LAST):
            if (path / name).is_file():
                return path / name
        raise CharrnnError(f"{path} holds no checkpoint ({BEST} or {LAST})")
    if not path.exists():
        raise CharrnnError(f"no such run or checkpoint: {path}")
    return path


def load_checkpoint(path: Path, *, arrays: bool = False) -> dict[str, Any]:
    """Read and check a checkpoint file (or a run directory's best), onto the CPU.
    Tensors come back as torch tensors, or with `arrays=True` as numpy arrays, read without torch
    (a format-1 file needs torch to read, and then gives numpy arrays too)."""
    path = resolve_checkpoint(path)
    try:
        with open(path, "rb") as handle:
            start = handle.read(8)
    except OSError as exc:
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not start:
        raise CharrnnError(f"{path} is empty: not a charrnn checkpoint")
    if is_legacy(start):
        payload = read_legacy(path, arrays=arrays)
        _check_payload(path, payload)
        cfg, _ = _named(path, lambda: _config_and_tokenizer(payload))  # what a format-2 header is checked for
    else:
        payload, cfg = _read_safetensors(path, arrays=arrays)
    # After the read, in float32 as the model will hold them: the one check every reader gets.
    check_finite_weights(path, payload["model"], weight_shapes(cfg))
    return payload


def _named(path: Path, check: Callable[[], Any]) -> Any:
    """`check()`, its refusal naming the file."""
    try:
        return check()
    except CharrnnError as exc:
        raise CharrnnError(f"{path}: {exc}") from None


def _check_payload(path: Path, payload: Any) -> None:
    """The parts every checkpoint has: its format, a version this charrnn reads, a config, tokenizer, weights."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharrnnError(f"{path} is not a charrnn checkpoint")
    version = payload.get("format_version")
    if type(version) is not int:
        raise CharrnnError(f"{path} has no format version: not a charrnn checkpoint")
    if version < 1:
        raise CharrnnError(f"{path} has format version {version}, which no charrnn writes: not a charrnn checkpoint")
    if version > FORMAT_VERSION:
        raise CharrnnError(
            f"{path} was written by a newer charrnn (checkpoint format {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade charrnn"
        )
    for key in ("model_config", "tokenizer", "model"):
        if not isinstance(payload.get(key), dict):
            raise CharrnnError(f"{path} is missing its {key.replace('_', ' ')}")


class _Header:
    """A tensor as its header describes it (shape and element type), before its data is read."""

    def __init__(self, shape: list[int], dtype: str) -> None:
        self.shape, self.dtype = tuple(shape), dtype


def _read_safetensors(path: Path, *, arrays: bool) -> tuple[dict[str, Any], ModelConfig]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:  # parses and checks the header; maps the file
            document = _document(path, handle.metadata())
            headers = {name: handle.get_slice(name) for name in handle.keys()}
            headers = {name: _Header(s.get_shape(), s.get_dtype()) for name, s in headers.items()}
            _check_tensors(path, document, headers)

            def read(name: str) -> Any:
                array = handle.get_tensor(name)
                if arrays:
                    return array
                import torch

                return torch.from_numpy(array)

            # The skeleton: tokenizer tensors read (small), every other tensor only its header.
            skeleton = _decode(document, lambda name: read(name) if name.startswith("tokenizer/") else headers[name])
            _check_payload(path, skeleton)
            # A config claiming a huge model is refused here, before its tensors are read.
            cfg, _ = _named(path, lambda: _config_and_tokenizer(skeleton))
            return _decode(document, read), cfg
    except SafetensorError as exc:
        raise unreadable(path, f"truncated or corrupt: {str(exc).strip()[:160]}") from None
    except OSError as exc:
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None


def _document(path: Path, metadata: dict[str, str] | None) -> Any:
    """The payload's JSON from the header metadata (tensors still references)."""
    text = (metadata or {}).get(METADATA_KEY)
    if text is None:
        raise CharrnnError(f"{path} is not a charrnn checkpoint (a safetensors file without charrnn's metadata)")
    if sum(map(text.count, ",[{")) > _MAX_JSON_ITEMS:
        raise unreadable(path, "its metadata holds far more items than a checkpoint has")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise unreadable(path, "its metadata is not JSON") from None


def _check_tensors(path: Path, document: Any, headers: dict[str, _Header]) -> None:
    """Every tensor reference names a tensor of the file, every tensor is referenced, all of known types."""
    named: list[str] = []
    try:
        _decode(document, lambda name: named.append(name))
    except (_Malformed, RecursionError) as exc:
        raise unreadable(path, f"malformed metadata: {exc}") from None
    missing = sorted(set(named) - set(headers))
    if missing:
        raise unreadable(path, f"its metadata names a tensor the file does not hold: {missing[0][:100]}")
    unnamed = sorted(set(headers) - set(named))
    if unnamed:
        raise unreadable(path, f"tensor {unnamed[0][:100]} is named nowhere in its metadata")
    odd = sorted({header.dtype for header in headers.values()} - DTYPES)
    if odd:
        raise unreadable(path, f"it holds {odd[0][:16]} tensors, which charrnn does not read")


# --- checking the model a payload describes ----------------------------------------------------


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
    every shape the config implies, of floating-point type, and nothing else. (Their values are
    checked to be finite by `load_checkpoint`, once the data is read.)"""
    cfg = config_from(ModelConfig, payload["model_config"], "model config")
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
        if not is_floating(weight):
            raise CharrnnError(f"checkpoint weight {key} holds {dtype_name(weight)} values, not floating-point ones")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CharrnnError(
            f"checkpoint weights do not match its model config: unexpected key(s) {', '.join(map(str, extra))[:200]}"
        )
    return cfg, tokenizer


def _is_array(value: Any) -> bool:
    """A torch tensor, a numpy array, or a tensor's header (whichever reader built the payload)."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def model_from_checkpoint(
    payload: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[RNNLanguageModel, Tokenizer]:
    """Build the model and tokenizer a checkpoint (as `load_checkpoint` gave it) describes and load its weights."""
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
    """A checkpoint's training config, each value checked to be of its type (the defaults where it has none)."""
    return config_from(TrainConfig, payload.get("train_config") or {}, "train config")


# --- format 1 -> format 2 ----------------------------------------------------------------------


def convert(
    path: Path, out: Path | None = None, *, note: Callable[[str], None] = lambda message: None
) -> list[tuple[Path, Path]]:
    """Rewrite format-1 checkpoints as format 2: one OLD.pt as `out` (default: OLD.safetensors beside
    it), or every .pt file of a run directory (into `out`, a directory, if given). The old files stay.

    A run converts as one unit: every source is read and checked, and every new file written to a
    temporary file, before any appears, and they appear together (`files.write_together`). An
    existing target is never overwritten, with one exception that is no overwrite: a target that
    already holds, byte for byte, what this conversion writes is what a conversion killed between
    two files left, and the rest is finished, `note` saying so. Temporary files of a killed
    conversion (`.NAME.PID.tmp` of a process that is gone) are removed. Returns the (old, new)
    pairs written now."""
    from charrnn import files

    pairs = _conversion_pairs(path, out, note)
    for _, target in pairs:
        for stale in files.remove_stale_temps(target):
            note(f"removed {stale}, left by a conversion or save that was killed")
    converted = [_converted_bytes(_legacy_payload(source)) for source, _ in pairs]  # all checked first
    todo, done = [], []
    for (source, target), data in zip(pairs, converted):
        if not os.path.lexists(target):
            todo.append((source, target, data))
        elif target.resolve() == source.resolve():
            raise CharrnnError(f"{source} would be converted onto itself: name another target")
        elif _holds(target, data):
            done.append(target)
        else:
            raise CharrnnError(f"{target} already exists: remove it or name another target (nothing was converted)")
    if done and todo:
        names = ", ".join(str(t) for t in done)
        note(f"finishing a conversion that was cut short: {names} already held its converted checkpoint")
    elif done:
        note(f"nothing to convert: {', '.join(str(t) for t in done)} already held the converted checkpoints")
    made = _make_parents([target for _, target, _ in todo])
    try:
        files.write_together([(target, data) for _, target, data in todo])
    except BaseException:
        for directory in reversed(made):
            try:
                directory.rmdir()
            except OSError:
                pass
        raise
    return [(source, target) for source, target, _ in todo]


def _conversion_pairs(path: Path, out: Path | None, note: Callable[[str], None]) -> list[tuple[Path, Path]]:
    """(format-1 file, its target) for each checkpoint file to convert; refuses what is not one."""
    if path.is_dir():
        entries = sorted(path.glob("*" + LEGACY_SUFFIX))
        sources = [entry for entry in entries if entry.is_file()]
        skipped = [entry.name for entry in entries if not entry.is_file()]
        if not sources:
            odd = f" ({', '.join(skipped)}: not a file)" if skipped else ""
            raise CharrnnError(f"{path} holds no format-1 ({LEGACY_SUFFIX}) checkpoints to convert{odd}")
        if skipped:
            note(f"skipped {', '.join(skipped)} in {path}: not a file")
        pairs = [(source, (out or path) / source.with_suffix(SUFFIX).name) for source in sources]
    elif os.path.lexists(path):
        if not path.exists():
            raise CharrnnError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist")
        if not path.is_file():
            raise CharrnnError(f"{path} is not a regular file: nothing to convert")
        target = out or path.with_suffix(SUFFIX)
        if out is not None and out.is_dir():
            target = out / path.with_suffix(SUFFIX).name
        pairs = [(path, target)]
    else:
        raise CharrnnError(f"no such run or checkpoint: {path}")
    return pairs


def _converted_bytes(payload: dict[str, Any]) -> bytes:
    """The format-2 file of a payload, exactly as `save_checkpoint` writes it."""
    versioned = {k: v for k, v in payload.items() if k not in ("format", "format_version")}
    return to_safetensors({"format": FORMAT, "format_version": FORMAT_VERSION, **versioned})


def _holds(target: Path, data: bytes) -> bool:
    """Whether `target` is a regular file (not a link) of exactly these bytes."""
    try:
        if not target.is_file() or target.is_symlink() or target.stat().st_size != len(data):
            return False
        return target.read_bytes() == data
    except OSError:
        return False


def _make_parents(targets: list[Path]) -> list[Path]:
    """Create the missing directories the targets go into; returns those created, outermost first.
    A parent that is a file is refused before anything is made."""
    from charrnn.files import not_a_directory, os_error_reason

    made: list[Path] = []
    for target in targets:
        if (blocker := not_a_directory(target)) is not None:
            raise CharrnnError(f"cannot write {target}: {blocker} is not a directory (nothing was converted)")
        missing = [p for p in reversed(target.parents) if not p.exists()]
        for directory in missing:
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                for done in reversed(made):
                    try:
                        done.rmdir()
                    except OSError:
                        pass
                reason = os_error_reason(exc, directory)
                raise CharrnnError(f"cannot create {directory}: {reason} (nothing was converted)") from None
            made.append(directory)
    return made


def _legacy_payload(path: Path) -> dict[str, Any]:
    """A format-1 checkpoint's payload, checked as `eval` would check it."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(9)
    except OSError as exc:
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not is_legacy(start):
        if start[8:9] == b"{":  # a safetensors file: 8 bytes of header length, then its JSON
            raise CharrnnError(f"{path} is already format 2 (safetensors): nothing to convert")
        raise CharrnnError(f"{path} is not a format-1 (torch zip) checkpoint: nothing to convert")
    return load_checkpoint(path)
