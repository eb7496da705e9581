"""The hostile-input matrix: every command against every kind of hostile input it can be given.

Each case runs one `charrnn` command through `charrnn.cli.main` in this process and asserts what
docs/reliability.md promises for bad input: a non-zero exit, exactly one line on standard error
starting `charrnn: error:`, no "internal error" and no traceback, and the bytes of every input
(the run directories, the texts, the config files) unchanged. The inputs are built once per
module from one tiny trained run; each case works on its own copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, in_process

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

# ----- making hostile inputs -----


def _tamper(checkpoint: Path, edit_payload: Callable[[dict], None] | None = None, edit_tensors=None) -> None:
    """Rewrite a format-2 checkpoint with its payload (the `charrnn` metadata) or tensors edited."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(checkpoint), framework="numpy") as f:
        metadata = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    payload = json.loads(metadata["charrnn"])
    if edit_payload is not None:
        edit_payload(payload)
    if edit_tensors is not None:
        edit_tensors(tensors)
    metadata["charrnn"] = json.dumps(payload)
    save_file(tensors, str(checkpoint), metadata=metadata)


def _both(run: Path, **edits) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        if (run / name).exists():
            _tamper(run / name, **edits)


def _model_config(key: str, value) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        _both(run, edit_payload=lambda p: p["model_config"].__setitem__(key, value))

    return edit


def _huge_weight(run: Path) -> None:
    def edit(tensors: dict) -> None:
        weight = tensors["model/head.weight"].astype(np.float64)
        weight[0, 0] = 1e300
        tensors["model/head.weight"] = weight

    _both(run, edit_tensors=edit)


def _nan_weight(run: Path) -> None:
    def edit(tensors: dict) -> None:
        tensors["model/embed.weight"] = tensors["model/embed.weight"].copy()
        tensors["model/embed.weight"][1, 0] = np.nan

    _both(run, edit_tensors=edit)


def _overflowing_scores(run: Path) -> None:
    """Finite float32 weights whose products overflow: every score is infinite or NaN."""

    def edit(tensors: dict) -> None:
        tensors["model/head.weight"] = np.full_like(tensors["model/head.weight"], 3e38)
        tensors["model/head.bias"] = np.full_like(tensors["model/head.bias"], -3e38)

    _both(run, edit_tensors=edit)


def _garbage(run: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        (run / name).write_bytes(bytes(range(256)) * 40)


def _truncated(run: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        raw = (run / name).read_bytes()
        (run / name).write_bytes(raw[: len(raw) // 2])


def _format_version(run: Path) -> None:
    _both(run, edit_payload=lambda p: p.__setitem__("format_version", -5))


def _empty_dir(run: Path) -> None:
    for child in run.iterdir():
        if child.is_file():
            child.unlink()


# Hostile run directories: what a tampered, damaged or foreign run can hold.
HOSTILE_RUNS: dict[str, Callable[[Path], None]] = {
    "garbage checkpoints": _garbage,
    "truncated checkpoints": _truncated,
    "float hidden_size": _model_config("hidden_size", 32.0),
    "float vocab_size": _model_config("vocab_size", 71.0),
    "bool num_layers": _model_config("num_layers", True),
    "string tie_weights": _model_config("tie_weights", "no"),
    "unknown cell": _model_config("cell", "transformer"),
    "negative format_version": _format_version,
    "a weight beyond float32": _huge_weight,
    "a NaN weight": _nan_weight,
    "scores that overflow": _overflowing_scores,
    "no checkpoint": _empty_dir,
}

# Hostile texts, for the TEXT argument of eval, score and viz and the corpus of train.
HOSTILE_TEXTS: dict[str, Callable[[Path], Path]] = {
    "empty": lambda d: _write(d / "t.txt", b""),
    "one character": lambda d: _write(d / "t.txt", b"a"),
    "binary": lambda d: _write(d / "t.bin", bytes(range(256)) * 8),
    "NUL bytes": lambda d: _write(d / "t.txt", b"hello\x00world\n" * 20),
    "invalid UTF-8": lambda d: _write(d / "t.txt", b"caf\xe9 au lait\n" * 20),
    "a directory of nothing": lambda d: _mkdir(d / "texts"),
    "missing": lambda d: d / "no-such-file.txt",
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# ----- the checks -----


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory under root (a run's lock file only by name)."""
    seen: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        seen[key] = path.read_bytes() if path.is_file() and path.name != ".lock" else None
    return seen


def refused_in_one_line(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("charrnn: error: "), err
    assert "internal error" not in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    base = tmp_path_factory.mktemp("matrix")
    (base / "corpus.txt").write_text(real_text[:20_000], encoding="utf-8")
    from charrnn.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", str(base / "corpus.txt"), "--run", str(base / "run"), *TINY, "--max-steps", "12"])
    assert done.value.code in (0, None)
    return base


@pytest.fixture
def work(tmp_path: Path, trained: Path) -> Path:
    shutil.copytree(trained, tmp_path / "w")
    return tmp_path / "w"


RUN_COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "eval": lambda run, w: ["eval", str(run), str(w / "corpus.txt")],
    "sample": lambda run, w: ["sample", str(run), "--length", "20", "--seed", "1"],
    "score": lambda run, w: ["score", str(run), str(w / "corpus.txt")],
    "viz": lambda run, w: ["viz", str(run), str(w / "corpus.txt"), "--json", "--max-chars", "200"],
    "init-from": lambda run, w: [
        "train",
        str(w / "corpus.txt"),
        "--init-from",
        str(run),
        "--run",
        str(w / "fine"),
        "--max-steps",
        "2",
        "--quiet",
    ],
    "resume": lambda run, w: ["train", "--resume", str(run), "--max-steps", "40", "--quiet"],
}


@pytest.mark.parametrize("kind", list(HOSTILE_RUNS))
@pytest.mark.parametrize("command", list(RUN_COMMANDS))
def test_a_hostile_run_is_refused_in_one_line(
    work: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    run = work / "run"
    HOSTILE_RUNS[kind](run)
    before = snapshot(work)
    code, _, err = in_process(capsys, *RUN_COMMANDS[command](run, work))
    refused_in_one_line(code, err)
    after = snapshot(work)
    assert {k: v for k, v in after.items() if not k.startswith("fine")} == before


FORMAT1 = Path(__file__).resolve().parent / "fixtures" / "format1"


def _pt_garbage(run: Path) -> None:
    (run / "best.pt").write_bytes(bytes(range(256)) * 40)


def _pt_truncated(run: Path) -> None:
    raw = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(raw[: len(raw) // 2])


def _pt_code(run: Path) -> None:
    import torch
    from conftest import RunsACommand

    torch.save({"model": RunsACommand(run / "MARKER")}, run / "best.pt")


def _pt_directory(run: Path) -> None:
    (run / "best.pt").unlink()
    (run / "best.pt").mkdir()
    (run / "last.pt").unlink()


def _pt_output_taken(run: Path) -> None:
    (run / "best.safetensors").mkdir()


# Hostile format-1 runs, for `convert` (the only command that writes from a .pt file).
HOSTILE_FORMAT1: dict[str, Callable[[Path], None]] = {
    "garbage .pt": _pt_garbage,
    "truncated .pt": _pt_truncated,
    "a .pt that runs code": _pt_code,
    "a directory named .pt": _pt_directory,
    "a directory where the output goes": _pt_output_taken,
}


@pytest.mark.parametrize("kind", list(HOSTILE_FORMAT1))
def test_convert_refuses_a_hostile_format1_run_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = tmp_path / "old"
    shutil.copytree(FORMAT1, run)
    HOSTILE_FORMAT1[kind](run)
    before = snapshot(tmp_path)
    code, _, err = in_process(capsys, "convert", str(run))
    refused_in_one_line(code, err)
    assert snapshot(tmp_path) == before
    assert not (run / "MARKER").exists()


TEXT_COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "train": lambda text, w: ["train", str(text), "--run", str(w / "new"), *TINY, "--max-steps", "2"],
    "eval": lambda text, w: ["eval", str(w / "run"), str(text)],
    "score": lambda text, w: ["score", str(w / "run"), str(text)],
    "viz": lambda text, w: ["viz", str(w / "run"), str(text), "--json"],
}


@pytest.mark.parametrize("kind", list(HOSTILE_TEXTS))
@pytest.mark.parametrize("command", list(TEXT_COMMANDS))
def test_a_hostile_text_is_refused_in_one_line(
    work: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    text = HOSTILE_TEXTS[kind](work)
    before = snapshot(work)
    code, _, err = in_process(capsys, *TEXT_COMMANDS[command](text, work))
    refused_in_one_line(code, err)
    assert snapshot(work) == before
    assert not (work / "new").exists()


HOSTILE_ENCODINGS = ["base64", "rot13", "zlib_codec", "no-such-codec"]


@pytest.mark.parametrize("encoding", HOSTILE_ENCODINGS)
@pytest.mark.parametrize("command", list(TEXT_COMMANDS))
def test_a_codec_that_is_no_text_encoding_is_refused(
    work: Path, capsys: pytest.CaptureFixture[str], command: str, encoding: str
) -> None:
    before = snapshot(work)
    code, _, err = in_process(capsys, *TEXT_COMMANDS[command](work / "corpus.txt", work), "--encoding", encoding)
    refused_in_one_line(code, err)
    assert snapshot(work) == before


HOSTILE_CONFIGS: dict[str, Callable[[Path], Path]] = {
    "nested 5,000 deep": lambda d: _write(d / "c.toml", b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    "not UTF-8": lambda d: _write(d / "c.toml", b"hidden = 32\n# \xff\xfe\n"),
    "not TOML": lambda d: _write(d / "c.toml", b"hidden: 32\n"),
    "a NUL in a path": lambda d: _write(d / "c.toml", b'run = "runs/a\\u0000b"\n'),
    "a negative duration": lambda d: _write(d / "c.toml", b'max_time = "-5m"\n'),
    "a float hidden size": lambda d: _write(d / "c.toml", b"hidden = 32.5\n"),
    "a bool batch size": lambda d: _write(d / "c.toml", b"batch_size = true\n"),
    "an unknown key": lambda d: _write(d / "c.toml", b"hiden = 32\n"),
    "a directory": lambda d: _mkdir(d / "conf.toml"),
    "/dev/zero": lambda d: Path("/dev/zero"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_CONFIGS))
def test_a_hostile_config_file_is_refused_in_one_line(
    work: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    config = HOSTILE_CONFIGS[kind](work)
    before = snapshot(work)
    args = ["train", str(work / "corpus.txt"), "--run", str(work / "new"), "--config", str(config), "--quiet"]
    code, _, err = in_process(capsys, *args)
    refused_in_one_line(code, err)
    assert snapshot(work) == before
    assert not (work / "new").exists()


def test_runs_and_plot_list_what_they_can_read(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One bad run among good ones: `runs` lists every run, the bad one marked; `plot` draws the rest."""
    shutil.copytree(work / "run", work / "runs" / "good")
    bad = work / "runs" / "bad"
    shutil.copytree(work / "run", bad)
    (bad / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    before = snapshot(work)
    code, out, err = in_process(capsys, "runs", str(work / "runs"), "--json")
    assert code == 0 and "internal error" not in err, err
    rows = json.loads(out)
    assert len(rows) == 2
    code, _, err = in_process(capsys, "plot", str(work / "runs" / "good"), str(bad), "-o", str(work / "c.png"))
    assert code == 0 and "internal error" not in err, err
    assert str(bad) in err or "bad" in err
    after = snapshot(work)
    assert {k: v for k, v in after.items() if k != "c.png"} == before
