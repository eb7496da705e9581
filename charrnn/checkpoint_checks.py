"""What a checkpoint's values must be beyond their shapes: config values of exactly the declared
types, weights finite in the dtype the model runs in, and a training state that a resume can
restore as it stands.

Every reader of a checkpoint goes through `checkpoint.load_checkpoint`, which uses the first two;
`train --resume` then checks the training state (`check_train_state` before anything is built,
`check_optimizer_state` against the trainer's own parameters) before a step is taken or a file
written. Each refusal is one line naming the value that is wrong. torch is imported only inside
the functions that need it, so `charrnn sample` on the CPU reads checkpoints without it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from charrnn.config import ModelConfig, TrainConfig, from_dict
from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    import torch

Config = TypeVar("Config", ModelConfig, TrainConfig)

# Elements converted to float32 at a time when a wider tensor's finiteness is checked.
_CHUNK = 1 << 22
_FLOAT_HEADERS = frozenset({"F64", "F32", "F16", "BF16"})  # safetensors' names of floating types
_MAX_COUNT = 2**62  # a counter (step, epoch, ...) beyond this is not from a real run


# --- configs -------------------------------------------------------------------------------------


def _is_type(value: Any, name: str) -> bool:
    """Whether `value` is of the annotated type `name`, exactly: a bool is not an int, a float is
    not an int (an int is a float: 1 for 1.0 changes no arithmetic)."""
    if name == "int":
        return type(value) is int
    if name == "float":
        return type(value) in (int, float)
    if name == "bool":
        return type(value) is bool
    if name == "str":
        return type(value) is str
    if name == "None":
        return value is None
    raise TypeError(f"a config field of type {name!r} has no check")


_SPELLED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "None": "null"}


def shown(value: Any) -> str:
    """A value as a refusal quotes it: short, with its type."""
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def config_from(cls: type[Config], values: Any, what: str) -> Config:
    """The config `values` (a checkpoint's) describe, each known key checked to be of its field's
    type exactly before the config's own range checks; keys this version does not know are ignored.
    `what` names the config in refusals ("model config")."""
    if not isinstance(values, dict):
        raise CharrnnError(f"checkpoint has an invalid {what}: not a mapping")
    for field in dataclasses.fields(cls):
        if field.name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise CharrnnError(f"checkpoint has an invalid {what}: it has no {field.name}")
            continue
        allowed = [part.strip() for part in str(field.type).split("|")]
        value = values[field.name]
        if not any(_is_type(value, name) for name in allowed):
            expected = " or ".join(_SPELLED[name] for name in allowed)
            raise CharrnnError(f"checkpoint has an invalid {what}: {field.name} must be {expected}, got {shown(value)}")
    try:
        return from_dict(cls, values)
    except CharrnnError as exc:
        raise CharrnnError(f"checkpoint has an invalid {what}: {exc}") from None


# --- tensors -------------------------------------------------------------------------------------


def is_floating(value: Any) -> bool:
    """Whether a torch tensor, numpy array or safetensors header (`.dtype` a name like "F32") holds floats."""
    dtype = value.dtype
    if isinstance(dtype, str):
        return dtype in _FLOAT_HEADERS
    if type(value).__module__ == "numpy":
        import numpy as np

        return bool(np.issubdtype(dtype, np.floating))
    return bool(value.is_floating_point())


_HEADER_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "BOOL": "bool",
    "U8": "uint8",
}


def dtype_name(value: Any) -> str:
    """The element type's name as numpy spells it ("int64"), from a tensor, an array or a header."""
    name = str(value.dtype).removeprefix("torch.")
    return _HEADER_NAMES.get(name) or (f"int{name[1:]}" if name[:1] == "I" and name[1:].isdigit() else name)


def finite_as_float32(value: Any) -> bool:
    """Every value of a floating tensor or array finite once converted to float32, which is what
    the model computes in (a float64 1e300 is finite, and infinite in the model). Wider tensors are
    converted a chunk at a time."""
    if type(value).__module__ == "numpy":
        import numpy as np

        flat = value.reshape(-1)
        if flat.dtype.itemsize <= 4:
            return bool(np.isfinite(flat).all())
        with np.errstate(over="ignore", invalid="ignore"):
            return all(
                bool(np.isfinite(flat[i : i + _CHUNK].astype(np.float32)).all()) for i in range(0, flat.size, _CHUNK)
            )
    import torch

    flat = value.detach().reshape(-1)
    if flat.element_size() <= 4:
        return bool(torch.isfinite(flat).all())
    return all(
        bool(torch.isfinite(flat[i : i + _CHUNK].to(torch.float32)).all()) for i in range(0, flat.numel(), _CHUNK)
    )


def check_finite_weights(path: Path, state: dict[str, Any], keys: Any) -> None:
    """Every weight named in `keys` finite in float32 (their shapes and types already checked)."""
    for key in keys:
        if not finite_as_float32(state[key]):
            raise CharrnnError(
                f"{path} holds non-finite weights (NaN, or infinite as float32, the model's type) in {key}"
            )


# --- the training state a resume restores ----------------------------------------------------------

_PROGRESS_COUNTS = ("step", "epoch", "step_in_epoch", "bad_evals", "chars_seen", "window_steps")
_PROGRESS_NUMBERS = ("elapsed", "window_loss")
_PROGRESS_LOSSES = ("best_val", "last_val")  # None before the first evaluation


def _refuse(path: Path, what: str, problem: str) -> CharrnnError:
    return CharrnnError(f"cannot resume from {path}: its training state's {what} {problem}")


def _count(path: Path, what: str, value: Any, *, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= _MAX_COUNT:
        raise _refuse(path, what, f"must be an integer >= {minimum}, got {shown(value)}")
    return value


def _number(path: Path, what: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        nothing = " or null" if optional else ""
        raise _refuse(path, what, f"must be a finite number >= 0{nothing}, got {shown(value)}")


def _tensor(path: Path, what: str, value: Any, shape: tuple[int, ...] | None = None) -> None:
    """A floating tensor (of `shape`, where given) whose values are finite in float32."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise _refuse(path, what, f"must be a tensor, got {shown(value)}")
    if not value.is_floating_point():
        raise _refuse(path, what, f"must hold floating-point values, not {dtype_name(value)}")
    if shape is not None and tuple(value.shape) != shape:
        raise _refuse(path, what, f"has shape {tuple(value.shape)}, where {shape} is expected")
    if not finite_as_float32(value):
        raise _refuse(path, what, "holds non-finite values (NaN, or infinite as float32)")


def _rng_state(path: Path, what: str, value: Any, cuda: bool = False) -> None:
    """A generator state that torch takes back: tried on the live generator, which is then restored."""
    import torch

    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise _refuse(path, what, f"must be a 1-D uint8 tensor, got {_described(value)}")
    if cuda and not torch.cuda.is_available():
        return  # restored only where there is a GPU to take it
    current = torch.cuda.get_rng_state() if cuda else torch.get_rng_state()
    if value.numel() != current.numel():
        raise _refuse(path, what, f"has {value.numel()} bytes, where a generator state has {current.numel()}")
    try:
        (torch.cuda.set_rng_state if cuda else torch.set_rng_state)(value)
    except RuntimeError as exc:
        raise _refuse(path, what, f"is not a valid generator state ({str(exc).strip()[:80]})") from None
    finally:
        (torch.cuda.set_rng_state if cuda else torch.set_rng_state)(current)


def _described(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {dtype_name(value)} tensor of shape {tuple(value.shape)}"
    return shown(value)


def check_train_state(path: Path, payload: dict[str, Any]) -> None:
    """The training state of a checkpoint `train --resume` read (its config and weights already
    checked by `load_checkpoint`): the counters, the streams, the hidden state and the generators,
    every value of its type and range and every tensor finite. The optimizer's state is checked
    against the trainer's parameters by `check_optimizer_state`."""
    state = payload.get("train_state")
    if not isinstance(state, dict):
        raise CharrnnError(f"{path} has no training state to resume from")
    try:
        cfg = config_from(ModelConfig, payload["model_config"], "model config")
        config_from(TrainConfig, payload.get("train_config") or {}, "train config")
    except CharrnnError as exc:
        raise CharrnnError(f"cannot resume from {path}: {exc}") from None
    _check_progress(path, state.get("progress"))
    world = _count(path, "world_size", state.get("world_size", 1), minimum=1)
    streams = state.get("batch_size")
    if streams is not None:
        _count(path, "batch_size", streams, minimum=1)
        if streams % world:
            raise _refuse(path, "batch_size", f"({streams} streams) is not shared equally by its {world} ranks")
    hidden = state.get("hidden")
    parts = 2 if cfg.cell == "lstm" else 1
    if not isinstance(hidden, (list, tuple)) or len(hidden) != parts:
        raise _refuse(
            path, "hidden state", f"must be a list of {parts} tensor(s) for a {cfg.cell}, got {shown(hidden)}"
        )
    batch = streams if streams is not None else _batch_of(hidden[0])  # a 0.1 run may not record its streams
    for i, tensor in enumerate(hidden):
        _tensor(path, f"hidden state [{i}]", tensor, (cfg.num_layers, batch, cfg.hidden_size))
    _check_generators(path, state, world)
    if not isinstance(state.get("optimizer"), dict):
        raise _refuse(path, "optimizer", f"must be a mapping, got {shown(state.get('optimizer'))}")


def _check_progress(path: Path, progress: Any) -> None:
    """The saved counters: known names only, each a count, a number or an optional loss."""
    if not isinstance(progress, dict):
        raise _refuse(path, "progress", f"must be a mapping, got {shown(progress)}")
    known = (*_PROGRESS_COUNTS, *_PROGRESS_NUMBERS, *_PROGRESS_LOSSES)
    unknown = sorted(str(key) for key in progress if key not in known)
    if unknown:
        raise _refuse(path, "progress", f"holds an unknown counter, {unknown[0][:40]!r}")
    for key in _PROGRESS_COUNTS:
        if key in progress:
            _count(path, f"progress.{key}", progress[key])
    for key in _PROGRESS_NUMBERS:
        if key in progress:
            _number(path, f"progress.{key}", progress[key])
    for key in _PROGRESS_LOSSES:
        if key in progress:
            _number(path, f"progress.{key}", progress[key], optional=True)


def _check_generators(path: Path, state: dict[str, Any], world: int) -> None:
    """The random generators' states: the CPU's, each CUDA device's and, under torchrun, each rank's."""
    import torch

    _rng_state(path, "rng_cpu", state.get("rng_cpu"))
    cuda = state.get("rng_cuda", [])
    if not isinstance(cuda, (list, tuple)):
        raise _refuse(path, "rng_cuda", f"must be a list of generator states, got {shown(cuda)}")
    restored = torch.cuda.is_available() and len(cuda) == torch.cuda.device_count()
    for i, value in enumerate(cuda):
        _rng_state(path, f"rng_cuda [{i}]", value, cuda=restored)
    ranks = state.get("rng_ranks")
    if ranks is None:
        return
    if not isinstance(ranks, (list, tuple)) or len(ranks) != world:
        raise _refuse(path, "rng_ranks", f"must be a list of {world} ranks' generators, got {shown(ranks)}")
    for rank, entry in enumerate(ranks):
        if not isinstance(entry, dict):
            raise _refuse(path, f"rng_ranks [{rank}]", f"must be a mapping, got {shown(entry)}")
        _rng_state(path, f"rng_ranks [{rank}].cpu", entry.get("cpu"))
        if entry.get("cuda") is not None:
            _rng_state(path, f"rng_ranks [{rank}].cuda", entry["cuda"], cuda=torch.cuda.is_available())


def _batch_of(tensor: Any) -> int:
    """The streams of a (layers, streams, hidden) state tensor; 1 for anything else (then refused by its shape)."""
    shape = getattr(tensor, "shape", ())
    return int(shape[1]) if len(shape) == 3 else 1


# Each group hyperparameter AdamW reads: what it must be. The rest (flags) must keep their type.
_GROUP_NUMBERS = {"lr": (0.0, math.inf), "weight_decay": (0.0, math.inf), "eps": (0.0, math.inf)}
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_NON_NEGATIVE = ("exp_avg_sq", "max_exp_avg_sq")  # second moments, whose square roots are taken


def check_optimizer_state(path: Path, saved: Any, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """The optimizer state of a checkpoint, against the trainer's own `optimizer` over `model`'s
    parameters: the same groups over the same parameters, every hyperparameter of its type and
    range, and every moment of its parameter's shape, finite (second moments not negative)."""
    template = optimizer.state_dict()
    names = {id(param): name for name, param in model.named_parameters()}
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), (list, tuple)):
        raise _refuse(path, "optimizer", "has no parameter groups")
    groups = saved["param_groups"]
    if len(groups) != len(template["param_groups"]):
        raise _refuse(
            path,
            "optimizer",
            f"has {len(groups)} parameter groups, where the model has {len(template['param_groups'])}",
        )
    params: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for g, (group, expected) in enumerate(zip(groups, template["param_groups"])):
        where = f"optimizer group {g}"
        if not isinstance(group, dict):
            raise _refuse(path, where, f"must be a mapping, got {shown(group)}")
        if list(group.get("params", ())) != expected["params"] or not all(type(i) is int for i in group["params"]):
            raise _refuse(path, f"{where}", "covers other parameters than the model's")
        for key, want in expected.items():
            if key == "params" or key not in group:
                continue
            _group_value(path, f"{where}.{key}", group[key], want, _GROUP_NUMBERS.get(key))
        for index, param in zip(expected["params"], optimizer.param_groups[g]["params"]):
            params[index] = (names.get(id(param), f"parameter {index}"), param)
    state = saved.get("state", {})
    if not isinstance(state, dict):
        raise _refuse(path, "optimizer state", f"must be a mapping, got {shown(state)}")
    amsgrad = any(group.get("amsgrad") is True for group in groups)
    for index, entry in state.items():
        if type(index) is not int or index not in params:
            raise _refuse(path, "optimizer state", f"is kept for a parameter the model does not have ({shown(index)})")
        name, param = params[index]
        if not isinstance(entry, dict):
            raise _refuse(path, f"optimizer state of {name}", f"must be a mapping, got {shown(entry)}")
        if not entry:
            continue  # a parameter not yet updated
        needed = ("step", "exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if amsgrad else ()))
        missing = [key for key in needed if key not in entry]
        if missing:
            raise _refuse(path, f"optimizer state of {name}", f"lacks {missing[0]}")
        _step(path, f"optimizer step of {name}", entry["step"])
        for key in _MOMENTS:
            if key in entry:
                what = f"optimizer {key} of {name}"
                _tensor(path, what, entry[key], tuple(param.shape))
                if key in _NON_NEGATIVE and bool((entry[key] < 0).any()):
                    raise _refuse(path, what, "holds negative values (a second moment cannot be negative)")


def _step(path: Path, what: str, value: Any) -> None:
    """An optimizer's step count: a number or a one-element tensor, finite and not negative."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise _refuse(path, what, f"must be one number, got {_described(value)}")
        value = value.item()
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise _refuse(path, what, f"must be a finite number >= 0, got {shown(value)}")


def _group_value(path: Path, what: str, value: Any, want: Any, bounds: tuple[float, float] | None) -> None:
    """A hyperparameter of a saved group, of the type the trainer's own group has for it."""
    if isinstance(want, bool) or want is None:
        if not (value is None or type(value) is bool):
            raise _refuse(path, what, f"must be true, false or null, got {shown(value)}")
    elif isinstance(want, (int, float)):
        low, high = bounds or (-math.inf, math.inf)
        if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
            raise _refuse(path, what, f"must be a finite number >= {low:g}, got {shown(value)}")
    elif isinstance(want, (tuple, list)):  # betas
        ok = isinstance(value, (tuple, list)) and len(value) == len(want)
        if not ok or not all(type(v) in (int, float) and 0 <= v < 1 for v in value):
            raise _refuse(path, what, f"must be {len(want)} numbers in [0, 1), got {shown(value)}")
