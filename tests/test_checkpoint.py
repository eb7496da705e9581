"""Promise: a checkpoint is one safetensors file (format 2) that gives back exactly the payload
saved, as torch tensors or, without importing torch, as numpy arrays; a charrnn 0.1 file (format 1,
a torch zip) still reads, through `torch.load(weights_only=True)`, into the same payload, and a
hostile, damaged or foreign one is refused in one line before anything in it runs and before more
memory is taken than the file holds. (Hostile safetensors files, and both formats through
`charrnn eval` and `charrnn sample`: test_hostile_checkpoints.py.)

torch is used here to write the files and as the oracle to compare against.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CHECKPOINT_TEXT, RunsACommand, checkpoint_payload

from charrnn.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_KEY,
    arrays_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from charrnn.checkpoint_legacy import read_legacy
from charrnn.config import ModelConfig, asdict
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel

ROOT = Path(__file__).resolve().parent.parent
TEXT = CHECKPOINT_TEXT


# --- helpers ------------------------------------------------------------------------


def _as_numpy(value: Any) -> Any:
    """What a numpy read should give for a value torch gave."""
    if isinstance(value, torch.Tensor):
        return (value.float() if value.dtype == torch.bfloat16 else value).detach().resolve_neg().numpy()
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, dict):
        return type(value)((k, _as_numpy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return type(value)(_as_numpy(v) for v in value)
    return value


def _assert_same(got: Any, want: Any, where: str = "payload") -> None:
    """Equal in type, structure, key order, dtype, shape and every bit."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {got.dtype}{got.shape}"
        assert got.flags.c_contiguous and got.flags.writeable, where
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), where
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {got.dtype}{got.shape}"
        assert got.is_contiguous(), where
        assert got.numpy().tobytes() == want.contiguous().numpy().tobytes(), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _plain(value: Any) -> Any:
    """What format 2 gives back for a value: OrderedDicts as dicts (JSON keeps their order, not their class)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        return tuple(_plain(v) for v in value)
    if isinstance(value, torch.Size):
        return tuple(value)
    return value


def _charrnn_payload() -> dict[str, Any]:
    """A small real checkpoint's contents, training state included (as in a run's last checkpoint)."""
    payload = checkpoint_payload(num_layers=2)
    cfg = ModelConfig(**payload["model_config"])
    model = RNNLanguageModel(cfg)
    model.load_state_dict(payload["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.zeros(2, 5, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    return {
        **payload,
        "model": model.state_dict(),
        "corpus": {"files": ["a.txt"], "chars": {"train": 100, "val": 10}},
        "metrics": {"step": 1, "val_loss": None, "best_val_loss": 2.5},
        "train_state": {
            "optimizer": optimizer.state_dict(),
            "hidden": [torch.randn(2, 3, 32), torch.randn(2, 3, 32)],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": [],
        },
    }


def _format1(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as charrnn 0.1 did: one torch.save zip, format version 1."""
    torch.save({"format": FORMAT, "format_version": 1, **payload}, path)
    return path


def _refusal(path: Path, *, arrays: bool) -> str:
    """The one-line CharrnnError load_checkpoint raises for `path`."""
    with pytest.raises(CharrnnError) as refused:
        load_checkpoint(path, arrays=arrays)
    message = str(refused.value)
    assert message and "\n" not in message, message
    return message


# --- format 2: what is saved comes back -------------------------------------------------------


def test_a_charrnn_checkpoint_comes_back_exactly_as_saved(tmp_path: Path) -> None:
    """Weights, optimizer moments (int-keyed state, tuple betas), hidden state, RNG state and plain
    values, bit for bit, as torch tensors and as numpy arrays."""
    payload = _charrnn_payload()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, payload)
    want = {"format": FORMAT, "format_version": FORMAT_VERSION, **_plain(payload)}
    got = load_checkpoint(path)
    _assert_same(got, want)
    assert list(got["train_state"]["optimizer"]["state"]) == list(payload["train_state"]["optimizer"]["state"])
    assert got["train_state"]["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    _assert_same(load_checkpoint(path, arrays=True), _as_numpy(want))


def test_every_stored_dtype_and_odd_layout_comes_back(tmp_path: Path) -> None:
    """Every dtype numpy shares with torch, 0-d, empty and non-contiguous tensors, views sharing a storage,
    and plain values (big ints, non-finite floats, unicode, tuples, int keys) in nested containers."""
    torch.manual_seed(0)
    floats = torch.randn(3, 4)
    floats[0, 0], floats[0, 1], floats[0, 2] = float("nan"), float("-inf"), -0.0
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    values = {
        "float32": floats,
        "float64": torch.randn(2, 3, dtype=torch.float64),
        "float16": torch.randn(5).half(),
        "int64": torch.tensor([-(2**62), -1, 0, 2**62]),
        "int32": torch.tensor([-(2**31), 7, 2**31 - 1], dtype=torch.int32),
        "int16": torch.tensor([-32768, 3, 32767], dtype=torch.int16),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.25),
        "scalar bool": torch.tensor(True),
        "empty": torch.zeros(0),
        "empty 3-d": torch.zeros(2, 0, 3, dtype=torch.int16),
        "base": base,
        "transposed": base.t(),
        "slice": base[1:3, 2:5],
        "every other column": base[:, ::2],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),  # stride 0
        "nested": [
            {"a": 1, "b": -2.5, "c": None, "d": True, "e": False, "f": "ünïcode \u2581 \U0001f600", "g": 2**70},
            (1, "two", 3.0, [torch.ones(2, dtype=torch.int32)], ()),
            [],
            {},
            {0: "int key", -3: "negative int key"},
        ],
        "float specials": [float("inf"), float("-inf"), -0.0, 1e-310, 5e-324],
        "size": torch.Size([2, 3]),
    }
    path = tmp_path / "all.safetensors"
    save_checkpoint(path, {**checkpoint_payload(), "values": values, "nan": float("nan")})
    _assert_same(load_checkpoint(path)["values"], _plain(values))
    _assert_same(load_checkpoint(path, arrays=True)["values"], _as_numpy(_plain(values)))
    assert math.isnan(load_checkpoint(path)["nan"])


def test_tied_weights_are_stored_as_two_tensors_and_load_apart(tmp_path: Path) -> None:
    """With tie_weights the state dict holds head.weight and embed.weight in one memory, which
    safetensors would refuse: each is saved as its own copy, and they come back apart."""
    payload = checkpoint_payload()
    cfg = ModelConfig(**{**payload["model_config"], "tie_weights": True, "embed_size": 32})
    state = RNNLanguageModel(cfg).state_dict()
    assert state["head.weight"].data_ptr() == state["embed.weight"].data_ptr()
    path = tmp_path / "tied.safetensors"
    save_checkpoint(path, {**payload, "model_config": asdict(cfg), "model": state})
    model, _ = model_from_checkpoint(load_checkpoint(path))
    assert model.head.weight is model.embed.weight  # tied again by the model itself
    assert torch.equal(model.embed.weight, state["embed.weight"])
    arrays = load_checkpoint(path, arrays=True)["model"]
    assert not np.shares_memory(arrays["head.weight"], arrays["embed.weight"])


def test_views_of_one_storage_come_back_as_independent_copies(tmp_path: Path) -> None:
    """Tensors that shared a storage are separate arrays: writing to one changes no other."""
    base = torch.arange(12.0).reshape(3, 4)
    path = tmp_path / "views.safetensors"
    save_checkpoint(path, {**checkpoint_payload(), "views": {"base": base, "row": base[1], "t": base.t()}})
    got = load_checkpoint(path)["views"]
    got["base"][1, 0] = 100.0
    assert got["row"][0] == 4.0 and got["t"][0, 1] == 4.0


def test_a_restored_optimizer_continues_exactly(tmp_path: Path) -> None:
    """AdamW's state read back from a checkpoint takes the next step to the same bits as the original."""
    torch.manual_seed(0)
    model, twin = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path / "opt.safetensors"
    save_checkpoint(path, {**checkpoint_payload(), "linear": model.state_dict(), "optimizer": optimizer.state_dict()})
    saved = load_checkpoint(path)
    twin.load_state_dict(saved["linear"])
    restored = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    restored.load_state_dict(saved["optimizer"])
    _assert_same(restored.state_dict()["state"], optimizer.state_dict()["state"])
    x = torch.randn(5, 4)
    for net, opt in ((model, optimizer), (twin, restored)):
        net(x).square().sum().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_the_file_is_plain_safetensors_with_the_payload_as_json(tmp_path: Path) -> None:
    """Any safetensors reader gets the weights by name, and the rest is JSON in the header metadata."""
    from safetensors.numpy import load_file

    payload = _charrnn_payload()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, payload)
    tensors = load_file(str(path))
    np.testing.assert_array_equal(tensors["model/embed.weight"], payload["model"]["embed.weight"].numpy())
    assert "train_state/optimizer/state/0/exp_avg" in tensors and "train_state/rng_cpu" in tensors
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    document = json.loads(header["__metadata__"][METADATA_KEY])
    assert document["format"] == FORMAT and document["format_version"] == FORMAT_VERSION == 2
    assert document["model_config"] == payload["model_config"]
    assert document["model"]["head.bias"] == {"$tensor": "model/head.bias"}


def test_saving_the_same_payload_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    payload = _charrnn_payload()
    save_checkpoint(tmp_path / "a.safetensors", payload)
    save_checkpoint(tmp_path / "b.safetensors", payload)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_what_json_cannot_hold_is_a_bug_not_a_file(tmp_path: Path) -> None:
    """A value a checkpoint cannot hold exactly is refused when saving, and no file is written."""
    for bad in ({"s": {1, 2}}, {"x": object()}, {"b": torch.zeros(2, dtype=torch.bfloat16)}, {"d": {"$tensor": "x"}}):
        with pytest.raises(TypeError):
            save_checkpoint(tmp_path / "bad.safetensors", bad)
    assert list(tmp_path.iterdir()) == []


def test_reading_never_imports_torch(tmp_path: Path) -> None:
    """In a fresh interpreter, reading and checking a checkpoint leaves torch unimported."""
    checkpoint = tmp_path / "best.safetensors"
    save_checkpoint(checkpoint, _charrnn_payload())
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from charrnn.checkpoint import arrays_from_checkpoint, load_checkpoint\n"
        "payload = load_checkpoint(Path(sys.argv[1]), arrays=True)\n"
        "cfg, tokenizer, weights = arrays_from_checkpoint(payload)\n"
        "assert type(weights['head.bias']).__name__ == 'ndarray'\n"
        "assert type(payload['train_state']['rng_cpu']).__name__ == 'ndarray'\n"
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('torch')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False []"


# --- format 1: charrnn 0.1's torch zip files ----------------------------------------------------


def _zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


class _Storage:
    """Pickled as the persistent id `pid` by `_Pickler`, as torch.save pickles a storage."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, _Storage) else None


class _Tensor:
    """Pickled as the call `torch._utils._rebuild_tensor_v2(*args)`, with arguments of our choosing."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch._utils._rebuild_tensor_v2, self.args)


def _crafted(path: Path, payload: Any, data: dict[str, bytes], byteorder: str = "little", protocol: int = 2) -> Path:
    """A checkpoint laid out as torch.save lays it out, with a pickle and storages of our choosing."""
    pickled = io.BytesIO()
    _Pickler(pickled, protocol=protocol).dump(payload)
    entries = {"archive/data.pkl": pickled.getvalue(), "archive/byteorder": byteorder.encode()}
    entries.update({f"archive/data/{key}": raw for key, raw in data.items()})
    entries["archive/version"] = b"3\n"
    return _zip(path, entries)


def _float_tensor(key: str, numel: int, offset: int, size: tuple[Any, ...], stride: tuple[Any, ...]) -> _Tensor:
    storage = _Storage(("storage", torch.FloatStorage, key, "cpu", numel))
    return _Tensor(storage, offset, size, stride, False, OrderedDict())


class EvaluatesCode:
    """Unpickling this evaluates Python that touches MARKER."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


def _check_against_torch(path: Path) -> Any:
    """read_legacy(arrays=True) gives what torch.load gives, every tensor as a numpy array."""
    got = read_legacy(path, arrays=True)
    _assert_same(got, _as_numpy(torch.load(path, map_location="cpu", weights_only=True)))
    return got


def test_every_supported_dtype_and_layout_reads_as_torch_load_gives_it(tmp_path: Path) -> None:
    """Every dtype, 0-d, empty and non-contiguous tensors, views sharing a storage, and plain values nested
    in dicts, OrderedDicts, lists and tuples come back as torch.load gives them, tensors as numpy arrays."""
    torch.manual_seed(0)
    floats = torch.randn(3, 4)
    floats[0, 0], floats[0, 1], floats[0, 2] = float("nan"), float("-inf"), -0.0
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    lstm = torch.nn.LSTM(4, 3, num_layers=2)
    payload = {
        "float32": floats,
        "float64": torch.randn(2, 3, dtype=torch.float64),
        "float16": torch.randn(5).half(),
        "bfloat16": torch.randn(2, 5).bfloat16(),
        "int64": torch.tensor([-(2**62), -1, 0, 2**62]),
        "int32": torch.tensor([-(2**31), 7, 2**31 - 1], dtype=torch.int32),
        "int16": torch.tensor([-32768, 3, 32767], dtype=torch.int16),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.25),
        "scalar bf16": torch.tensor(-1.5, dtype=torch.bfloat16),
        "scalar bool": torch.tensor(True),
        "empty": torch.zeros(0),
        "empty 3-d": torch.zeros(2, 0, 3, dtype=torch.int16),
        "base": base,
        "transposed": base.t(),
        "slice": base[1:3, 2:5],  # an offset into the storage `base` shares
        "every other column": base[:, ::2],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),  # stride 0
        "bf16 transposed": torch.randn(3, 4).bfloat16().t(),
        "nested": [
            {"a": 1, "b": -2.5, "c": None, "d": True, "e": False, "f": "ünïcode", "g": 2**70, "h": -(2**40)},
            (1, "two", 3.0, [torch.ones(2, dtype=torch.int32)], ()),
            [],
            {},
            {0: "int key", (1, 2): "tuple key"},
        ],
        "float specials": [float("inf"), float("-inf"), -0.0, 1e-310],
        "lstm": lstm.state_dict(),
        "ordered": OrderedDict([("z", 1), ("a", torch.zeros(1))]),
        "size": torch.Size([2, 3]),
        "a set": {1, 2, 3},
    }
    path = tmp_path / "all.pt"
    torch.save(payload, path)
    got = _check_against_torch(path)
    assert type(got["lstm"]) is OrderedDict and type(got["nested"][0]) is dict
    assert got["lstm"]._metadata == lstm.state_dict()._metadata  # the attribute state_dict() sets
    assert got["bfloat16"].dtype == np.float32
    np.testing.assert_array_equal(got["bfloat16"], payload["bfloat16"].float().numpy())
    assert got["scalar"].shape == () and isinstance(got["scalar"], np.ndarray)
    assert got["size"] == (2, 3)


def test_format1_views_of_one_storage_come_back_as_independent_copies(tmp_path: Path) -> None:
    """Tensors that shared a storage are separate arrays: writing to one changes no other."""
    base = torch.arange(12.0).reshape(3, 4)
    path = tmp_path / "views.pt"
    torch.save({"base": base, "row": base[1], "t": base.t()}, path)
    got = read_legacy(path, arrays=True)
    got["base"][1, 0] = 100.0
    assert got["row"][0] == 4.0 and got["t"][0, 1] == 4.0
    assert not np.shares_memory(got["base"], got["row"])


def test_a_real_format1_checkpoint_reads_as_torch_load_gives_it(tmp_path: Path) -> None:
    """A checkpoint as charrnn 0.1 wrote it, training state included, reads exactly, by either reader."""
    path = _format1(tmp_path / "last.pt", _charrnn_payload())
    got = _check_against_torch(path)
    assert got["format"] == FORMAT and got["model_config"]["num_layers"] == 2
    assert got["model"]["rnns.0.weight_hh_l0"].shape == (128, 32)
    assert got["train_state"]["rng_cpu"].dtype == np.uint8
    _assert_same(load_checkpoint(path, arrays=True), got)
    arrays_from_checkpoint(load_checkpoint(path, arrays=True))
    model_from_checkpoint(load_checkpoint(path))


def test_a_negated_view_comes_back_negated(tmp_path: Path) -> None:
    """A tensor saved with torch's lazy negation bit reads as its values, not its storage's."""
    path = tmp_path / "neg.pt"
    torch.save({"neg": torch._neg_view(torch.arange(4.0))}, path)
    got = _check_against_torch(path)
    assert got["neg"].tolist() == [-0.0, -1.0, -2.0, -3.0]


def test_a_big_endian_file_reads_in_native_byte_order(tmp_path: Path) -> None:
    """A file whose byteorder entry says big reads with the same values as torch.load gives."""
    values = np.array([1.5, -2.0, 3.25, 2.0**100], dtype=np.float32)
    shorts = np.array([1, -2, 300], dtype=np.int16)
    bf16 = np.array([0x3FC0, 0xC000], dtype=np.uint16)  # 1.5, -2.0
    payload = {
        "f": _float_tensor("0", 4, 0, (2, 2), (1, 2)),
        "h": _Tensor(_Storage(("storage", torch.ShortStorage, "1", "cpu", 3)), 0, (3,), (1,), False, OrderedDict()),
        "b": _Tensor(_Storage(("storage", torch.BFloat16Storage, "2", "cpu", 2)), 1, (1,), (1,), False, OrderedDict()),
    }
    data = {"0": values.astype(">f4").tobytes(), "1": shorts.astype(">i2").tobytes(), "2": bf16.astype(">u2").tobytes()}
    path = _crafted(tmp_path / "big.pt", payload, data, byteorder="big")
    got = _check_against_torch(path)
    assert got["f"].dtype == np.dtype("float32") and got["f"].dtype.isnative
    assert got["f"].tolist() == [[1.5, 3.25], [-2.0, 2.0**100]] and got["h"].tolist() == [1, -2, 300]
    assert got["b"].tolist() == [-2.0]


@pytest.mark.parametrize("nested", ["top level", "among the weights"])
def test_a_pickle_that_runs_a_command_is_refused_before_it_runs(tmp_path: Path, nested: str) -> None:
    """A `__reduce__` calling os.system, saved by torch.save beside real tensors, is refused by name."""
    marker = tmp_path / "MARKER"
    payload = _charrnn_payload()
    if nested == "top level":
        payload["extra"] = RunsACommand(marker)
    else:
        payload["model"] = {**payload["model"], "head.bias": [1, {"x": RunsACommand(marker)}]}
    path = _format1(tmp_path / "evil.pt", payload)
    for arrays in (True, False):
        message = _refusal(path, arrays=arrays)
        assert f"it asks to load {os.system.__module__}.system" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize(("evil", "name"), [(RunsACommand, f"{os.system.__module__}.system"), (EvaluatesCode, "eval")])
def test_every_pickle_protocol_is_refused_before_it_runs(tmp_path: Path, protocol: int, evil: type, name: str) -> None:
    """Whatever the protocol, the pickle's global never runs. torch's unpickler names the global it
    refuses in the protocols torch.save writes (2, and 3 alike); in the others it stops earlier, at an
    opcode it does not take (DICT in protocol 0, FRAME in 4 and 5), and the file is unreadable."""
    marker = tmp_path / "MARKER"
    payload = {"evil": [evil(marker)], "w": _float_tensor("0", 2, 0, (2,), (1,))}
    path = _crafted(tmp_path / "evil.pt", payload, {"0": bytes(8)}, protocol=protocol)
    for arrays in (True, False):
        message = _refusal(path, arrays=arrays)
        if protocol in (2, 3):
            assert f"was refused: it asks to load {name}," in message, message
        else:
            assert "was refused: it asks to load" in message or "corrupt pickle data" in message, message
    assert not marker.exists()


def _raw_pickle(path: Path, pickled: bytes) -> Path:
    return _zip(path, {"archive/data.pkl": pickled, "archive/byteorder": b"little", "archive/version": b"3\n"})


MISUSES: dict[str, bytes] = {
    # PROTO 2, EMPTY_DICT, 'a', GLOBAL collections.OrderedDict (the class itself as a value), SETITEM, STOP
    "an allowed class as a value": b"\x80\x02}X\x01\x00\x00\x00accollections\nOrderedDict\ns.",
    "a rebuild function as a value": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n.",
    "a storage type as a value": b"\x80\x02ctorch\nFloatStorage\n.",
    # OrderedDict() then BUILD {'keys': 1}: an attribute that would shadow its keys() method
    "BUILD shadowing an OrderedDict method": b"\x80\x02ccollections\nOrderedDict\n)R}X\x04\x00\x00\x00keysK\x01sb.",
    # BUILD (None, {'__defaults__': (1,)}) aimed at a rebuild function
    "BUILD aimed at a rebuild function": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.",
    "BUILD aimed at a storage type": b"\x80\x02ctorch\nFloatStorage\n}X\x01\x00\x00\x00xK\x01sb.",
    "BUILD aimed at the OrderedDict class": b"\x80\x02ccollections\nOrderedDict\nN}X\x01\x00\x00\x00xK\x01s\x86b.",
    "calling a storage type": b"\x80\x02ctorch\nFloatStorage\n)R.",
    "a rebuild with no arguments": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.",
    "a rebuild of a list, not a storage": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(]K\x00K\x01\x85K\x01\x85\x89}tR.",
}


@pytest.mark.parametrize("case", list(MISUSES))
def test_a_pickle_misusing_an_allowed_global_is_unreadable(tmp_path: Path, case: str) -> None:
    """The names torch allows can only rebuild tensors and containers: used any other way, the file is
    unreadable, and no payload ever holds one of them."""
    path = _raw_pickle(tmp_path / "misuse.pt", MISUSES[case])
    for arrays in (True, False):
        assert "not a readable charrnn checkpoint" in _refusal(path, arrays=arrays)


def test_a_self_referencing_list_reads(tmp_path: Path) -> None:
    """Plain values may refer to themselves, as pickle allows: the result is the same structure."""
    value: list[Any] = [1, "two"]
    value.append(value)
    got = read_legacy(_raw_pickle(tmp_path / "cycle.pt", pickle.dumps({"x": value}, protocol=2)), arrays=True)
    assert got["x"][2] is got["x"] and got["x"][:2] == [1, "two"]


@pytest.mark.parametrize(
    "pid",
    [
        ("module", "os", "system"),
        "storage",
        ("storage", "torch.FloatStorage", "0", "cpu", 2),  # a string, not the storage type
        ("storage", torch.FloatStorage, 0, "cpu", 2),  # the key is not a string
        ("storage", torch.FloatStorage, "0", "cpu", -1),
        ("storage", torch.FloatStorage, "0", "cpu"),
    ],
    ids=["another kind", "a bare string", "type as string", "int key", "negative numel", "short tuple"],
)
def test_a_persistent_id_that_is_not_a_storage_is_refused(tmp_path: Path, pid: Any) -> None:
    """Only `('storage', <storage type>, key, location, numel)` persistent ids are accepted."""
    payload = {"w": _Tensor(_Storage(pid), 0, (2,), (1,), False, OrderedDict())}
    path = _crafted(tmp_path / "pid.pt", payload, {"0": bytes(8)})
    for arrays in (True, False):
        _refusal(path, arrays=arrays)


@pytest.mark.parametrize(
    ("numel", "offset", "size", "stride"),
    [
        (4, 0, (5,), (1,)),  # more elements than the storage
        (4, 4, (1,), (1,)),  # an offset at the end
        (4, 2, (2, 2), (1, 1)),  # the last element one past the end
        (4, 0, (2, 2), (3, 1)),  # a stride that walks out
        (4, 0, (2,), (-1,)),  # negative stride
        (4, -1, (2,), (1,)),  # negative offset
        (4, 0, (2, 2), (1,)),  # size and stride disagree
        (4, 0, (2.0,), (1,)),  # not integers
        (4, 0, (2,), (True,)),
        (400, 0, (400,), (1,)),  # numel claims more than the entry holds
        (1, 0, (10**12,), (0,)),  # a stride-0 view claiming terabytes of a 4-byte storage
        (1, 0, (2**40, 2**40), (0, 0)),
        (4, 0, (10**12,), (0,)),  # the same, with the storage's own size right
    ],
)
def test_a_tensor_reaching_past_its_storage_is_refused(
    tmp_path: Path, numel: int, offset: int, size: tuple[Any, ...], stride: tuple[Any, ...]
) -> None:
    """Sizes, strides and offsets are checked against the storage's real length, and no array read may
    claim far more memory than the file holds."""
    payload = {"w": _float_tensor("0", numel, offset, size, stride)}
    path = _crafted(tmp_path / "oob.pt", payload, {"0": np.arange(4, dtype="<f4").tobytes()})
    with pytest.raises(CharrnnError, match="not a readable charrnn checkpoint"):
        read_legacy(path, arrays=True)


def test_many_views_of_one_storage_cannot_claim_unbounded_memory(tmp_path: Path) -> None:
    """A small file that rebuilds one storage's tensor over and over is refused once the copies far exceed it."""
    storage = np.zeros(1 << 18, dtype="<f4")  # 1 MiB
    copies = [_float_tensor("0", storage.size, 0, (storage.size,), (1,)) for _ in range(1000)]
    path = _crafted(tmp_path / "many.pt", {"copies": copies}, {"0": storage.tobytes()})
    assert path.stat().st_size < 2 * storage.nbytes
    with pytest.raises(CharrnnError, match="far more data than the file holds"):
        read_legacy(path, arrays=True)


def test_a_crafted_file_within_bounds_reads_as_torch_load_gives_it(tmp_path: Path) -> None:
    """The control for the crafted files above: well-formed, they read like torch's own."""
    payload = {"w": _float_tensor("0", 4, 1, (3,), (1,)), "v": _float_tensor("0", 4, 0, (2, 2), (1, 2))}
    path = _crafted(tmp_path / "ok.pt", payload, {"0": np.arange(4, dtype="<f4").tobytes()})
    got = _check_against_torch(path)
    assert got["w"].tolist() == [1.0, 2.0, 3.0]


def _valid(tmp: Path) -> Path:
    return _format1(tmp / "valid.pt", _charrnn_payload())


def _shorter_data_0(tmp: Path) -> bytes:
    entries = _entries(_valid(tmp))
    name = next(n for n in entries if n.endswith("/data/0"))
    entries[name] = entries[name][: len(entries[name]) // 2]
    return _zip(tmp / "short.pt", entries).read_bytes()


def _without(suffix: str) -> Any:
    def make(tmp: Path) -> bytes:
        entries = {n: d for n, d in _entries(_valid(tmp)).items() if not n.endswith(suffix)}
        return _zip(tmp / "missing.pt", entries).read_bytes()

    return make


def _with_pickle(data: bytes) -> Any:
    def make(tmp: Path) -> bytes:
        entries = _entries(_valid(tmp))
        entries[next(n for n in entries if n.endswith("/data.pkl"))] = data
        return _zip(tmp / "pickle.pt", entries).read_bytes()

    return make


def _legacy(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def _compressed(tmp: Path) -> bytes:
    return _zip(tmp / "deflated.pt", _entries(_valid(tmp)), zipfile.ZIP_DEFLATED).read_bytes()


def _flipped_byte(tmp: Path) -> bytes:
    entries = _entries(_valid(tmp))
    raw = _valid(tmp).read_bytes()
    data = entries[next(n for n in entries if n.endswith("/data/0"))]
    at = raw.index(data) + 3
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


DAMAGED: dict[str, Any] = {
    "truncated to its first half": lambda tmp: _valid(tmp).read_bytes()[: _valid(tmp).stat().st_size // 2],
    "truncated by one byte": lambda tmp: _valid(tmp).read_bytes()[:-1],
    "torch's legacy (non-zip) format": _legacy,
    "a zip without data.pkl": _without("/data.pkl"),
    "a zip without a storage": _without("/data/0"),
    "a storage shorter than its tensors": _shorter_data_0,
    "a storage with a flipped byte (bad CRC)": _flipped_byte,
    "compressed entries": _compressed,
    "an unknown pickle protocol": _with_pickle(b"\x80\x4bnot really a pickle"),
    "a truncated pickle": _with_pickle(pickle.dumps({"a": list(range(100))}, protocol=2)[:-20]),
    "garbage as the pickle": _with_pickle(bytes(range(256))),
    "an empty pickle": _with_pickle(b""),
    "a pickle using an undefined memo slot": _with_pickle(b"\x80\x02h\x05."),
    "a pickle with a huge string length": _with_pickle(b"\x80\x02X\xff\xff\xff\x7f"),
}


@pytest.mark.parametrize("arrays", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_or_foreign_format1_file_is_unreadable(tmp_path: Path, case: str, arrays: bool) -> None:
    """Anything that is not an intact torch zip checkpoint is refused in one line, never with another error."""
    path = tmp_path / "model.pt"
    path.write_bytes(DAMAGED[case](tmp_path))
    assert "charrnn checkpoint" in _refusal(path, arrays=arrays)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    assert str(tmp_path / "absent.pt") in _refusal(tmp_path / "absent.pt", arrays=True)


@pytest.mark.parametrize(
    "value",
    [
        lambda: torch.zeros(2, dtype=torch.float8_e4m3fn),
        lambda: torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8),
        lambda: torch.zeros(2).to_sparse(),
    ],
    ids=["float8", "quantized", "sparse"],
)
def test_a_tensor_numpy_cannot_hold_is_unreadable_without_torch(tmp_path: Path, value: Any) -> None:
    """Genuine torch tensors of kinds numpy has no array for are refused by the numpy reading, in one line."""
    path = tmp_path / "other.pt"
    with warnings.catch_warnings():  # torch warns that quantized tensors are deprecated
        warnings.simplefilter("ignore")
        _format1(path, {**_charrnn_payload(), "extra": value()})
    assert "numpy cannot represent" in _refusal(path, arrays=True)


@pytest.mark.parametrize(
    "value",
    [
        lambda: torch.zeros(2, dtype=torch.complex64),
        lambda: torch.zeros(2, dtype=torch.uint16),
        lambda: torch.nn.Parameter(torch.ones(2)),
    ],
    ids=["complex64", "uint16", "parameter"],
)
def test_other_tensor_kinds_numpy_has_read_as_numpy_arrays(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "other.pt"
    torch.save({"w": value()}, path)
    _check_against_torch(path)
