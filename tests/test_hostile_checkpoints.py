"""Promise: `charrnn eval` and `charrnn sample` refuse a checkpoint that is hostile, damaged or
inconsistent with one clear line and exit status 1, run none of its code, and leave it untouched.

A checkpoint is read with `torch.load(weights_only=True)`, which builds only tensors and plain
values, so a pickle that asks for a callable (here `os.system`) is refused before anything runs.
The weights are then checked against the shapes their config implies (without allocating a
model of the claimed size) and for non-finite values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CHECKPOINT_TEXT, RunsACommand, charrnn, checkpoint_payload

from charrnn import cli
from charrnn.checkpoint import FORMAT_VERSION, save_checkpoint

TEXT = CHECKPOINT_TEXT


def _payload() -> dict[str, Any]:
    return checkpoint_payload()


def _with_weight(part: str, value: float) -> dict[str, Any]:
    """A valid payload with one entry of the first weight whose name contains `part` set to `value`."""
    payload = _payload()
    payload["model"] = dict(payload["model"])
    name = next(key for key in payload["model"] if part in key)
    tensor = payload["model"][name].clone()
    tensor.view(-1)[0] = value
    payload["model"][name] = tensor
    return payload


def _with_config(**changes: Any) -> dict[str, Any]:
    payload = _payload()
    payload["model_config"] = {**payload["model_config"], **changes}
    return payload


def _valid_bytes(tmp: Path) -> bytes:
    save_checkpoint(tmp / "valid.pt", _payload())
    return (tmp / "valid.pt").read_bytes()


def _save(payload: Any) -> Callable[[Path, Path], None]:
    return lambda path, marker: torch.save(payload, path)


def _write(make: Callable[[Path], bytes]) -> Callable[[Path, Path], None]:
    return lambda path, marker: path.write_bytes(make(path.parent))


def _evil(where: str) -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        payload = _payload()
        if where == "top":
            payload["extra"] = RunsACommand(marker)
        else:
            payload["model"] = {**payload["model"], "head.bias": RunsACommand(marker)}
        torch.save(payload, path)

    return write


# name -> (how to write the file, a phrase the error must contain)
CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "pickle runs a command": (_evil("top"), "was refused: it asks to load"),
    "pickle command hidden among the weights": (_evil("weights"), "was refused: it asks to load"),
    "config claims hidden 64, tensors are 32": (_save(_with_config(hidden_size=64)), "do not match its model config"),
    "config claims two layers, tensors hold one": (_save(_with_config(num_layers=2)), "do not match its model config"),
    "config claims a gigantic model": (
        _save(_with_config(hidden_size=65536, embed_size=65536, num_layers=64)),
        "do not match its model config",
    ),
    "config names an unknown cell": (_save(_with_config(cell="transformer")), "unknown cell"),
    "config is not a mapping": (_save({**_payload(), "model_config": [1, 2]}), "missing its model config"),
    "vocabulary disagrees with the model": (_save(_with_config(vocab_size=7)), "inconsistent"),
    "a weight is not a tensor": (_save({**_payload(), "model": {**_payload()["model"], "head.bias": "x"}}), "match"),
    "an extra weight": (
        _save({**_payload(), "model": {**_payload()["model"], "extra.weight": torch.zeros(2)}}),
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
        _save({**_payload(), "format_version": FORMAT_VERSION + 1}),
        "written by a newer charrnn",
    ),
    "no format version": (_save({k: v for k, v in _payload().items() if k != "format_version"}), "no format version"),
    "another program's file": (_save({"state_dict": {"w": torch.zeros(3)}}), "not a charrnn checkpoint"),
    "a bare tensor": (_save(torch.zeros(3)), "not a charrnn checkpoint"),
    "NaN weights": (_save(_with_weight("head.bias", float("nan"))), "non-finite"),
    "infinite weights": (_save(_with_weight("weight_hh", float("inf"))), "non-finite"),
}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process: exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code or 0, out, err


def test_a_valid_checkpoint_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the same construction, unharmed, evaluates and samples."""
    path = tmp_path / "valid.pt"
    path.write_bytes(_valid_bytes(tmp_path))
    (tmp_path / "text.txt").write_text(TEXT)
    assert _run(capsys, "eval", str(path), str(tmp_path / "text.txt"), "--device", "cpu")[0] == 0
    code, out, _ = _run(capsys, "sample", str(path), "--length", "20", "--seed", "1")
    assert code == 0 and out


@pytest.mark.parametrize("command", ["eval", "sample"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_checkpoint_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    write, phrase = CASES[case]
    path, marker = tmp_path / "model.pt", tmp_path / "MARKER"
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
    ("command", "case"),
    [("eval", "pickle runs a command"), ("sample", "pickle runs a command"), ("eval", "an unknown pickle protocol")],
)
def test_the_real_cli_refuses_in_one_line(tmp_path: Path, command: str, case: str) -> None:
    """Through the installed entry point, in a separate process: nothing else reaches stderr
    (torch's own warnings about odd files included) and the command in the pickle never runs."""
    path, marker = tmp_path / "model.pt", tmp_path / "MARKER"
    CASES[case][0](path, marker)
    done = charrnn(command, str(path))
    assert done.returncode == 1
    assert done.stderr.startswith(f"charrnn: error: {path} ") and done.stderr.count("\n") == 1, done.stderr
    assert CASES[case][1] in done.stderr
    assert not marker.exists()
