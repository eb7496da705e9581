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
import math
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
from charrnn.inference import load

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


def _with_tensor(part: str, value: float, dtype: torch.dtype, version: int = FORMAT_VERSION) -> dict[str, Any]:
    """A valid payload whose first weight named with `part` is of `dtype`, its first entry `value`."""
    payload = _payload(version)
    name = next(key for key in payload["model"] if part in key)
    tensor = payload["model"][name].to(dtype)
    tensor.view(-1)[0] = value
    payload["model"] = {**payload["model"], name: tensor}
    return payload


def _without_config(key: str, version: int = FORMAT_VERSION) -> dict[str, Any]:
    payload = _payload(version)
    payload["model_config"] = {k: v for k, v in payload["model_config"].items() if k != key}
    return payload


def _with_tokenizer(version: int = FORMAT_VERSION, **state: Any) -> dict[str, Any]:
    return {**_payload(version), "tokenizer": state}


def _fewer_chars(version: int = FORMAT_VERSION) -> dict[str, Any]:
    """A char vocabulary one character short of what its embedding and config hold."""
    payload = _payload(version)
    return {**payload, "tokenizer": {**payload["tokenizer"], "chars": payload["tokenizer"]["chars"][1:]}}


def _lies(version: int) -> dict[str, tuple[dict[str, Any], str]]:
    """Payloads whose values lie about their types or their range (issue 19, items 4 and 5), for either
    format: name -> (payload, a phrase the error must contain)."""
    v = version
    return {
        "a float64 weight beyond float32's range": (_with_tensor("head.weight", 1e300, torch.float64, v), "non-finite"),
        "a float64 weight below float32's range": (_with_tensor("embed", -1e39, torch.float64, v), "non-finite"),
        "a float64 NaN weight": (_with_tensor("weight_ih", math.nan, torch.float64, v), "non-finite"),
        "an infinite float16 weight": (_with_tensor("head.bias", math.inf, torch.float16, v), "non-finite"),
        "an integer weight": (_with_tensor("head.bias", 0, torch.int64, v), "int64 values, not floating-point"),
        "a bool weight": (_with_tensor("bias_hh", 0, torch.bool, v), "bool values, not floating-point"),
        "config hidden_size 32.0": (_with_config(v, hidden_size=32.0), "hidden_size must be an integer"),
        "config hidden_size '32'": (_with_config(v, hidden_size="32"), "hidden_size must be an integer"),
        "config vocab_size a float": (_with_config(v, vocab_size=18.0), "vocab_size must be an integer"),
        "config num_layers true": (_with_config(v, num_layers=True), "num_layers must be an integer"),
        "config embed_size null": (_with_config(v, embed_size=None), "embed_size must be an integer"),
        "config tie_weights 'no'": (_with_config(v, tie_weights="no"), "tie_weights must be true or false"),
        "config tie_weights 0": (_with_config(v, tie_weights=0), "tie_weights must be true or false"),
        "config cell 5": (_with_config(v, cell=5), "cell must be a string"),
        "config dropout_hidden true": (_with_config(v, dropout_hidden=True), "dropout_hidden must be a number"),
        "config weight_drop '0'": (_with_config(v, weight_drop="0"), "weight_drop must be a number"),
        "config without vocab_size": (_without_config("vocab_size", v), "has no vocab_size"),
        "config vocab_size 2^30": (_with_config(v, vocab_size=1 << 30), "invalid model config"),
        "format version -5": ({**_payload(v), "format_version": -5}, "format version -5"),
        "format version 0": ({**_payload(v), "format_version": 0}, "format version 0"),
        "format version true": ({**_payload(v), "format_version": True}, "no format version"),
        "format version 2.0": ({**_payload(v), "format_version": 2.0}, "no format version"),
        "a vocabulary one character short of its embedding": (_fewer_chars(v), "inconsistent"),
        "a char tokenizer without characters": (_with_tokenizer(v, kind="char", chars=""), "non-empty"),
        "a char tokenizer of unsorted characters": (_with_tokenizer(v, kind="char", chars="ba"), "sorted"),
        "a bpe model of floats": (
            _with_tokenizer(v, kind="bpe", model=torch.zeros(8)),
            "1-D uint8",
        ),
        "a bpe model of garbage bytes": (
            _with_tokenizer(v, kind="bpe", model=torch.full((64,), 7, dtype=torch.uint8)),
            "not a valid SentencePiece model",
        ),
        "a tokenizer of an unknown kind": (_with_tokenizer(v, kind="words"), "unknown kind"),
    }


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
    **{name: (_save(payload), phrase) for name, (payload, phrase) in _lies(1).items()},
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
    **{name: (_save2(payload), phrase) for name, (payload, phrase) in _lies(2).items()},
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


# --- one check that every reader goes through (issue 19, item 4) ----------------------------------

READERS = ["eval", "sample", "score", "viz", "init-from", "convert"]  # convert reads format 1 only


def _reader_args(command: str, path: Path, tmp: Path) -> tuple[list[str], list[Path]]:
    """The command line that has `command` read the checkpoint at `path`, and what it must not leave."""
    text = tmp / "text.txt"
    text.write_text(TEXT)
    if command in ("eval", "score"):
        return [command, str(path), str(text), "--device", "cpu"], []
    if command == "sample":
        return [command, str(path), "--length", "20", "--seed", "1"], []
    if command == "viz":
        return [command, str(path), str(text), "--html", str(tmp / "explain.html")], [tmp / "explain.html"]
    if command == "init-from":
        run = tmp / "runs" / "new"
        return ["train", str(text), "--init-from", str(path), "--run", str(run), "--max-steps", "1", "--quiet"], [run]
    return ["convert", str(path)], [path.with_suffix(".safetensors")]


@pytest.mark.parametrize(
    ("command", "suffix"),
    [(c, s) for c in READERS for s in (".safetensors", ".pt") if not (c == "convert" and s == ".safetensors")],
)
def test_every_reader_refuses_a_float64_weight_beyond_float32(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, suffix: str
) -> None:
    """1e300 is a finite float64 and an infinite float32, the type the model computes in: eval
    reported NaN, sample printed <unk>, score a figure, viz an internal error and --init-from
    "training diverged". Now each refuses it in one line, naming the weight, and writes nothing."""
    path = tmp_path / f"model{suffix}"
    payload = _with_tensor("head.weight", 1e300, torch.float64, 1 if suffix == ".pt" else FORMAT_VERSION)
    torch.save(payload, path) if suffix == ".pt" else path.write_bytes(to_safetensors(payload))
    before = path.read_bytes()
    args, outputs = _reader_args(command, path, tmp_path)
    code, out, err = _run(capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith("charrnn: error: ") and err.count("\n") == 1, err
    assert "non-finite" in err and "head.weight" in err and "internal error" not in err, err
    assert "diverged" not in err
    assert path.read_bytes() == before
    assert not any(output.exists() for output in outputs)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("model.safetensors", torch.float16), ("model.pt", torch.float16), ("model.pt", torch.bfloat16)],
)
def test_half_precision_weights_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, dtype: torch.dtype
) -> None:
    """The neighbour that must keep working: float16 (either format) and bfloat16 (a torch zip)
    weights are finite in float32 too, and evaluate and sample."""
    path = tmp_path / name
    payload = _payload(1 if name.endswith(".pt") else FORMAT_VERSION)
    payload["model"] = {key: value.to(dtype) for key, value in payload["model"].items()}
    torch.save(payload, path) if name.endswith(".pt") else path.write_bytes(to_safetensors(payload))
    (tmp_path / "text.txt").write_text(TEXT)
    assert _run(capsys, "eval", str(path), str(tmp_path / "text.txt"), "--device", "cpu")[0] == 0
    code, out, _ = _run(capsys, "sample", str(path), "--length", "20", "--seed", "1")
    assert code == 0 and out and "\ufffd" not in out


# --- <unk> is never sampled ---------------------------------------------------------------------


def _overflowing(path: Path) -> None:
    """Weights finite in float32 whose scores are not: every unit's output is tanh(1) > 0 and every
    output weight 3e38, so each score overflows to +inf, and <unk>'s, banned with -inf, is NaN."""
    payload = _payload()
    model = {key: torch.zeros_like(value) for key, value in payload["model"].items()}
    for key in model:
        if ".bias_" in key:
            model[key] = torch.full_like(model[key], 100.0)
    model["head.weight"] = torch.full_like(model["head.weight"], 3e38)
    path.write_bytes(to_safetensors({**payload, "model": model}))


@pytest.mark.parametrize("sampler", ["numpy", "torch"])
def test_sampling_never_draws_unk_from_scores_that_overflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    """Both samplers ban <unk> with a score of -inf, which NaN scores beat: sample printed U+FFFD.
    Now drawing <unk> stops sampling with one line; the CLI, and the API in both its modes
    (streamed, and the torch sampler's bulk decoding when nothing is streamed)."""
    from charrnn.sample.text import NOT_FINITE

    monkeypatch.setenv("CHARRNN_SAMPLER", sampler)
    path = tmp_path / "model.safetensors"
    _overflowing(path)
    code, out, err = _run(capsys, "sample", str(path), "--length", "20", "--seed", "1")
    assert code == 1 and "\ufffd" not in out
    assert err == f"charrnn: error: {NOT_FINITE}\n"
    if sampler == "numpy":  # the real CLI: numpy's overflow warnings do not reach stderr either
        done = charrnn("sample", str(path), "--length", "20")
        assert done.returncode == 1 and done.stderr == err and "\ufffd" not in done.stdout
    model = load(path, device="cpu")
    with pytest.raises(CharrnnError, match="became NaN"):
        model.generate(length=20, seed=1)
    with pytest.raises(CharrnnError, match="became NaN"):
        "".join(model.stream(length=20, seed=1))


# --- a tokenizer's blob (issue 19, item 16) -------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_tokenizer_blob_is_read_without_a_list_of_its_bytes(kind: str) -> None:
    """`bytes(model.tolist())` held a Python int pointer per byte: 8 MB of blob took over 64 MB.
    Traced with tracemalloc; what SentencePiece allocates itself is not traced."""
    from charrnn.data.tokenizers import tokenizer_from_state

    blob = np.full(8 << 20, 7, dtype=np.uint8)  # not a SentencePiece model: refused after it is copied
    model = blob if kind == "numpy" else torch.from_numpy(blob)
    tracemalloc.start()
    try:
        with pytest.raises(CharrnnError, match="not a valid SentencePiece model"):
            tokenizer_from_state({"kind": "bpe", "model": model})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * blob.nbytes, peak


def test_a_tokenizer_blob_past_the_bound_is_refused_before_it_is_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from charrnn.data import tokenizers

    monkeypatch.setattr(tokenizers, "MAX_MODEL_BYTES", 1000)
    path = tmp_path / "model.safetensors"
    path.write_bytes(to_safetensors(_with_tokenizer(kind="unigram", model=torch.zeros(1001, dtype=torch.uint8))))
    code, _, err = _run(capsys, "sample", str(path), "--length", "5")
    assert code == 1 and err.count("\n") == 1
    assert "the unigram tokenizer model is 1,001 bytes, more than" in err
