"""Promise: `charrnn eval` and `charrnn sample` refuse a checkpoint that is hostile, damaged or
inconsistent with one clear line and exit status 1, run none of its code, take no more memory than
the file holds, and leave the file untouched, in either format.

A format-2 checkpoint is a safetensors file: its header (length, JSON, every tensor's dtype, shape
and offsets) is checked by the safetensors reader, then charrnn's metadata (format, version, the
config, each weight's shape against what the config implies) before any tensor data is read. A
format-1 checkpoint (charrnn 0.1's torch zip) is read with `torch.load(weights_only=True)`, which
builds only tensors and plain values, so a pickle that asks for a callable (here `os.system`) is
refused before anything runs. Either way the weights are then checked for non-finite values.
`eval` reads into torch tensors and `sample` (on the CPU) into numpy arrays without torch, so every
case goes through both readers.
"""

from __future__ import annotations

import json
import pickle
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    CHECKPOINT_TEXT,
    RunsACommand,
    charrnn,
    checkpoint_payload,
    safetensors_file,
    safetensors_parts,
)

from charrnn import cli
from charrnn.checkpoint import FORMAT_VERSION, METADATA_KEY, load_checkpoint, to_safetensors
from charrnn.errors import CharrnnError

TEXT = CHECKPOINT_TEXT
Writer = Callable[[Path, Path], None]  # (path, marker): writes the file at path


def _payload(version: int = FORMAT_VERSION) -> dict[str, Any]:
    return checkpoint_payload(version=version)


def _with_weight(part: str, value: float, version: int = FORMAT_VERSION) -> dict[str, Any]:
    """A valid payload with one entry of the first weight whose name contains `part` set to `value`."""
    payload = _payload(version)
    payload["model"] = dict(payload["model"])
    name = next(key for key in payload["model"] if part in key)
    tensor = payload["model"][name].clone()
    tensor.view(-1)[0] = value
    payload["model"][name] = tensor
    return payload


def _with_config(version: int = FORMAT_VERSION, **changes: Any) -> dict[str, Any]:
    payload = _payload(version)
    payload["model_config"] = {**payload["model_config"], **changes}
    return payload


def _write(make: Callable[[Path], bytes]) -> Writer:
    return lambda path, marker: path.write_bytes(make(path.parent))


# --- format 1 (.pt): torch.save zips ------------------------------------------------------------


def _valid_bytes(tmp: Path) -> bytes:
    torch.save(_payload(1), tmp / "valid.pt")
    return (tmp / "valid.pt").read_bytes()


def _save(payload: Any) -> Writer:
    return lambda path, marker: torch.save(payload, path)


def _evil(where: str) -> Writer:
    def write(path: Path, marker: Path) -> None:
        payload = _payload(1)
        if where == "top":
            payload["extra"] = RunsACommand(marker)
        else:
            payload["model"] = {**payload["model"], "head.bias": RunsACommand(marker)}
        torch.save(payload, path)

    return write


# name -> (how to write the file, a phrase the error must contain)
FORMAT1: dict[str, tuple[Writer, str]] = {
    "pickle runs a command": (_evil("top"), "was refused: it asks to load"),
    "pickle command hidden among the weights": (_evil("weights"), "was refused: it asks to load"),
    "config claims hidden 64, tensors are 32": (
        _save(_with_config(1, hidden_size=64)),
        "do not match its model config",
    ),
    "config claims two layers, tensors hold one": (
        _save(_with_config(1, num_layers=2)),
        "do not match its model config",
    ),
    "config claims a gigantic model": (
        _save(_with_config(1, hidden_size=65536, embed_size=65536, num_layers=64)),
        "do not match its model config",
    ),
    "config names an unknown cell": (_save(_with_config(1, cell="transformer")), "unknown cell"),
    "config is not a mapping": (_save({**_payload(1), "model_config": [1, 2]}), "missing its model config"),
    "vocabulary disagrees with the model": (_save(_with_config(1, vocab_size=7)), "inconsistent"),
    "a weight is not a tensor": (_save({**_payload(1), "model": {**_payload(1)["model"], "head.bias": "x"}}), "match"),
    "an extra weight": (
        _save({**_payload(1), "model": {**_payload(1)["model"], "extra.weight": torch.zeros(2)}}),
        "do not match its model config",
    ),
    "truncated to its first half": (_write(lambda tmp: _valid_bytes(tmp)[: len(_valid_bytes(tmp)) // 2]), "corrupt"),
    "zero bytes": (_write(lambda tmp: b""), "is empty"),
    "an unknown pickle protocol": (
        _write(lambda tmp: b"\x80\x4bnot really a pickle"),
        "not a readable charrnn checkpoint",
    ),
    "random bytes": (_write(lambda tmp: bytes(range(256)) * 40), "not a readable charrnn checkpoint"),
    "text file": (_write(lambda tmp: TEXT.encode()), "not a readable charrnn checkpoint"),
    "a future format version": (
        _save({**_payload(1), "format_version": FORMAT_VERSION + 1}),
        "written by a newer charrnn",
    ),
    "no format version": (_save({k: v for k, v in _payload(1).items() if k != "format_version"}), "no format version"),
    "another program's file": (_save({"state_dict": {"w": torch.zeros(3)}}), "not a charrnn checkpoint"),
    "a bare tensor": (_save(torch.zeros(3)), "not a charrnn checkpoint"),
    "NaN weights": (_save(_with_weight("head.bias", float("nan"), 1)), "non-finite"),
    "infinite weights": (_save(_with_weight("weight_hh", float("inf"), 1)), "non-finite"),
}


# --- format 2 (.safetensors) ----------------------------------------------------------------------


def _valid2() -> bytes:
    return to_safetensors(_payload())


def _save2(payload: dict[str, Any]) -> Writer:
    """A safetensors file holding exactly `payload` (its format keys as given)."""
    return lambda path, marker: path.write_bytes(to_safetensors(payload))


def _header_with(change: Callable[[dict[str, Any]], Any]) -> Writer:
    """A valid file whose safetensors header is changed by `change(header)`, its data as it was."""

    def write(path: Path, marker: Path) -> None:
        header, data = safetensors_parts(_valid2())
        change(header)
        path.write_bytes(safetensors_file(header, data))

    return write


def _tensor(name: str, **fields: Any) -> Writer:
    return _header_with(lambda header: header[name].update(fields))


def _metadata(text: str) -> Writer:
    return _header_with(lambda header: header["__metadata__"].update({METADATA_KEY: text}))


def _document(change: Callable[[dict[str, Any]], Any]) -> Writer:
    """A valid file whose metadata JSON is changed by `change(document)`."""

    def edit(header: dict[str, Any]) -> None:
        document = json.loads(header["__metadata__"][METADATA_KEY])
        change(document)
        header["__metadata__"][METADATA_KEY] = json.dumps(document)

    return _header_with(edit)


def _bf16(header: dict[str, Any]) -> None:
    entry = header["model/head.bias"]
    entry.update(dtype="BF16", shape=[entry["shape"][0] * 2])  # the same bytes, read as bfloat16


def _foreign(path: Path, marker: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path), metadata={"format": "pt"})


def _renamed_zip(path: Path, marker: Path) -> None:
    torch.save({**_payload(1), "extra": RunsACommand(marker)}, path)


def _renamed_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({**_payload(1), "extra": RunsACommand(marker)}))


FORMAT2: dict[str, tuple[Writer, str]] = {
    "header length larger than the file": (
        _write(lambda tmp: struct.pack("<Q", 10_000) + _valid2()[8:]),
        "not a readable charrnn checkpoint",
    ),
    "header length of terabytes": (_write(lambda tmp: struct.pack("<Q", 2**40) + _valid2()[8:]), "corrupt"),
    "header that is not JSON": (_write(lambda tmp: struct.pack("<Q", 8) + b"not json"), "corrupt"),
    "a tensor whose offsets leave the data": (_tensor("model/head.bias", data_offsets=[0, 10**9]), "corrupt"),
    "dtype disagreeing with the byte length": (_tensor("model/head.bias", dtype="F64"), "corrupt"),
    "shape disagreeing with the byte length": (_tensor("model/head.bias", shape=[3, 7]), "corrupt"),
    "a shape of terabytes": (_tensor("model/head.bias", shape=[2**40, 2**40]), "corrupt"),
    "an unknown dtype": (_tensor("model/head.bias", dtype="Q7"), "corrupt"),
    "bfloat16 weights": (_header_with(_bf16), "BF16 tensors"),
    "metadata that is not JSON": (_metadata("{not json"), "metadata is not JSON"),
    "metadata nested too deep": (_metadata("[" * 100_000), "not a readable charrnn checkpoint"),
    "metadata of millions of items": (_metadata("[" + "{}," * 3_000_000 + "{}]"), "far more items"),
    "metadata naming a missing tensor": (
        _document(lambda d: d["model"].update({"x": {"$tensor": "nowhere"}})),
        "names a tensor the file does not hold",
    ),
    "a tensor the metadata does not name": (_document(lambda d: d["model"].pop("head.bias")), "named nowhere"),
    "a tensor reference that is not a name": (
        _document(lambda d: d["model"].update({"x": {"$tensor": 5}})),
        "malformed metadata",
    ),
    "an int-keyed dict keyed by a word": (
        _document(lambda d: d.update({"s": {"$int_keys": {"one": 1}}})),
        "malformed metadata",
    ),
    "a float that is not a number": (_document(lambda d: d.update({"f": {"$float": "1e999"}})), "malformed metadata"),
    "a float that is a list": (_document(lambda d: d.update({"f": {"$float": ["nan"]}})), "malformed metadata"),
    "metadata of another program": (_foreign, "not a charrnn checkpoint"),
    "a pickle renamed to .safetensors": (_renamed_pickle, "not a readable charrnn checkpoint"),
    "a torch zip with a command renamed to .safetensors": (_renamed_zip, "was refused: it asks to load"),
    "truncated to its first half": (_write(lambda tmp: _valid2()[: len(_valid2()) // 2]), "corrupt"),
    "truncated by one byte": (_write(lambda tmp: _valid2()[:-1]), "corrupt"),
    "one byte too many": (_write(lambda tmp: _valid2() + b"\x00"), "corrupt"),
    "zero bytes": (_write(lambda tmp: b""), "is empty"),
    "seven bytes": (_write(lambda tmp: b"\x01" + bytes(6)), "corrupt"),
    "random bytes": (
        _write(lambda tmp: bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8))),
        "not a readable charrnn checkpoint",
    ),
    "text file": (_write(lambda tmp: TEXT.encode()), "not a readable charrnn checkpoint"),
    "config claims hidden 64, tensors are 32": (_save2(_with_config(hidden_size=64)), "do not match its model config"),
    "config claims two layers, tensors hold one": (
        _save2(_with_config(num_layers=2)),
        "do not match its model config",
    ),
    "config claims a gigantic model": (
        _save2(_with_config(hidden_size=65536, embed_size=65536, num_layers=64)),
        "do not match its model config",
    ),
    "config names an unknown cell": (_save2(_with_config(cell="transformer")), "unknown cell"),
    "config is not a mapping": (_save2({**_payload(), "model_config": [1, 2]}), "missing its model config"),
    "vocabulary disagrees with the model": (_save2(_with_config(vocab_size=7)), "inconsistent"),
    "a weight is not a tensor": (_save2({**_payload(), "model": {**_payload()["model"], "head.bias": "x"}}), "match"),
    "an extra weight": (
        _save2({**_payload(), "model": {**_payload()["model"], "extra.weight": torch.zeros(2)}}),
        "do not match its model config",
    ),
    "a future format version": (_save2({**_payload(), "format_version": FORMAT_VERSION + 1}), "written by a newer"),
    "no format version": (_save2({k: v for k, v in _payload().items() if k != "format_version"}), "no format version"),
    "NaN weights": (_save2(_with_weight("head.bias", float("nan"))), "non-finite"),
    "infinite weights": (_save2(_with_weight("weight_hh", float("inf"))), "non-finite"),
}

# case -> (file name, how to write it, phrase)
CASES: dict[str, tuple[str, Writer, str]] = {
    **{f"pt: {name}": ("model.pt", *case) for name, case in FORMAT1.items()},
    **{f"safetensors: {name}": ("model.safetensors", *case) for name, case in FORMAT2.items()},
}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process: exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code or 0, out, err


@pytest.mark.parametrize("name", ["valid.pt", "valid.safetensors"])
def test_a_valid_checkpoint_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """The control: the same constructions, unharmed, evaluate and sample."""
    path = tmp_path / name
    if name.endswith(".pt"):
        path.write_bytes(_valid_bytes(tmp_path))
    else:
        path.write_bytes(_valid2())
    (tmp_path / "text.txt").write_text(TEXT)
    assert _run(capsys, "eval", str(path), str(tmp_path / "text.txt"), "--device", "cpu")[0] == 0
    code, out, _ = _run(capsys, "sample", str(path), "--length", "20", "--seed", "1")
    assert code == 0 and out


@pytest.mark.parametrize("command", ["eval", "sample"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_checkpoint_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    name, write, phrase = CASES[case]
    path, marker = tmp_path / name, tmp_path / "MARKER"
    write(path, marker)
    before = path.read_bytes()
    started = time.monotonic()
    code, out, err = _run(capsys, command, str(path), "--device", "cpu")
    assert code == 1
    assert err.startswith("charrnn: error: ") and err.count("\n") == 1, err
    assert phrase in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert out == ""
    assert not marker.exists(), "the checkpoint ran a command"
    assert path.read_bytes() == before
    assert time.monotonic() - started < 10  # refused up front, never by building what it claims


@pytest.mark.parametrize(
    "case",
    [
        "header length larger than the file",
        "header length of terabytes",
        "a shape of terabytes",
        "a tensor whose offsets leave the data",
        "config claims a gigantic model",
        "metadata nested too deep",
        "metadata of millions of items",
    ],
)
def test_refusing_a_safetensors_file_takes_no_more_memory_than_it_holds(tmp_path: Path, case: str) -> None:
    """Traced with tracemalloc (numpy's arrays are traced too), after a valid read has warmed up the imports."""
    valid = tmp_path / "valid.safetensors"
    valid.write_bytes(_valid2())
    load_checkpoint(valid, arrays=True)
    name, write, phrase = CASES[f"safetensors: {case}"]
    path = tmp_path / name
    write(path, tmp_path / "MARKER")
    tracemalloc.start()
    try:
        with pytest.raises(CharrnnError, match=phrase):
            load_checkpoint(path, arrays=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < path.stat().st_size + (1 << 20), peak


@pytest.mark.parametrize(
    ("command", "case"),
    [
        ("eval", "pt: pickle runs a command"),
        ("sample", "pt: pickle runs a command"),
        ("eval", "pt: an unknown pickle protocol"),
        ("sample", "safetensors: a torch zip with a command renamed to .safetensors"),
        ("eval", "safetensors: header length larger than the file"),
        ("sample", "safetensors: a tensor whose offsets leave the data"),
    ],
)
def test_the_real_cli_refuses_in_one_line(tmp_path: Path, command: str, case: str) -> None:
    """Through the installed entry point, in a separate process: nothing else reaches stderr
    (torch's own warnings about odd files included) and the command in the pickle never runs."""
    name, write, phrase = CASES[case]
    path, marker = tmp_path / name, tmp_path / "MARKER"
    write(path, marker)
    done = charrnn(command, str(path))
    assert done.returncode == 1
    assert done.stderr.startswith(f"charrnn: error: {path} ") and done.stderr.count("\n") == 1, done.stderr
    assert phrase in done.stderr
    assert not marker.exists()
