"""Promise: what a user configures a run with cannot break it or anything of theirs.

- A `--config` file is read only when it is a regular file of at most 1 MiB; a hostile one (nested
  5,000 deep, a NUL in a path, a wrong type for any option, a huge integer, a bad duration or size,
  an unknown key, bytes that are not UTF-8, a directory, a FIFO, /dev/zero) is refused in one line
  that names the file, and the key where there is one.
- `--encoding` takes text encodings only: base64, rot13, zlib_codec and their kind, and unknown
  names, are one line for train, eval, score and viz.
- A fresh `train` writes only into a new or empty directory: one holding a checkpoint of any name
  or format, config.json, metrics.jsonl or any file of the user's is refused, byte for byte unchanged.

Every case runs `charrnn` through `charrnn.cli.main` in this process, and checks one
`charrnn: error:` line, no "internal error", a non-zero exit and the directory unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY, copied, in_process

from charrnn import options
from charrnn.data.corpus import find_corpus
from charrnn.errors import CharrnnError
from charrnn.runs import train as api_train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def work(tmp_path: Path, tiny_trained: Path) -> Path:
    """A corpus and a small trained run (the session's `tiny_trained`), copied into the test's directory."""
    return copied(tiny_trained, tmp_path)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: its kind, and for a file its size, mtime and digest."""
    seen: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink() or not path.is_file():
            seen[str(path)] = ("other", info.st_mode, info.st_mtime_ns)
        else:
            seen[str(path)] = ("file", info.st_size, info.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return seen


def refused(code: int, err: str, *phrases: str) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("charrnn: error: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err


def _train_with_config(work: Path, config: Path) -> list[str]:
    """`train` with the config file; one step at most, should a hostile file ever be taken."""
    return ["train", str(work / "corpus.txt"), "--run", str(work / "new"), "--config", str(config), *TINY,
            "--max-steps", "1"]  # fmt: skip


# ----- --config files that are not options files -----------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(w: Path) -> Path:
    os.mkfifo(w / "c.toml")
    return w / "c.toml"


def _symlink_to_zero(w: Path) -> Path:
    (w / "c.toml").symlink_to("/dev/zero")
    return w / "c.toml"


def _directory(w: Path) -> Path:
    (w / "c.toml").mkdir()
    return w / "c.toml"


NOT_OPTIONS_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "/dev/zero": (lambda w: Path("/dev/zero"), "is not a regular file"),
    "/dev/null": (lambda w: Path("/dev/null"), "is not a regular file"),
    "a FIFO nobody writes to": (_fifo, "is not a regular file"),
    "a symlink to /dev/zero": (_symlink_to_zero, "is not a regular file"),
    "a directory": (_directory, "is not a regular file"),
    "missing": (lambda w: w / "nope.toml", "cannot read config file"),
    "over 1 MiB": (lambda w: _write(w / "c.toml", b"# padding\n" * 110_000), "is larger than 1 MiB"),
    "nested arrays 5,000 deep": (
        lambda w: _write(w / "c.toml", b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        "nested too deeply",
    ),
    "nested tables 5,000 deep": (
        lambda w: _write(w / "c.toml", b"x = " + b"{a = " * 5000 + b"1" + b"}" * 5000 + b"\n"),
        "nested too deeply",
    ),
    "a known key nested 5,000 deep": (
        lambda w: _write(w / "c.toml", b"hidden = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        "nested too deeply",
    ),
    "a dotted key 3,000 deep": (
        lambda w: _write(w / "c.toml", b"hidden." + b".".join([b"a"] * 3000) + b" = 1\n"),
        "hidden must be an integer",
    ),
    "not UTF-8": (lambda w: _write(w / "c.toml", b"hidden = 32\n# \xff\xfe\n"), "is not UTF-8 (bad byte at offset 14)"),
    "UTF-16": (lambda w: _write(w / "c.toml", "hidden = 32\n".encode("utf-16")), "is not UTF-8"),
    "not TOML": (lambda w: _write(w / "c.toml", b"hidden: 32\n"), "is not valid TOML"),
    "NUL bytes": (lambda w: _write(w / "c.toml", b"\x00" * 100), "is not valid TOML"),
    "a key given twice, two spellings": (
        lambda w: _write(w / "c.toml", b"seq-len = 16\nseq_len = 32\n"),
        "is given twice",
    ),
}


@pytest.mark.parametrize("kind", list(NOT_OPTIONS_FILES))
def test_a_file_that_is_no_options_file_is_one_line(kind: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, phrase = NOT_OPTIONS_FILES[kind]
    config = make(work)
    before = snapshot(work)
    code, _, err = in_process(capsys, *_train_with_config(work, config))
    refused(code, err, phrase)
    if config.parent == work and kind != "missing":
        assert str(config) in err, "the message does not name the file"
    assert snapshot(work) == before
    assert not (work / "new").exists()


def test_a_byte_order_mark_is_no_error(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_bytes(b"\xef\xbb\xbfhidden = 32\n")
    assert options.read_config(tmp_path / "c.toml") == {"hidden": 32}


# ----- values: every option with a value of the wrong kind ----------------------------------------

# TOML literals of the wrong kind for each kind of option (the right kind is the table's type).
WRONG: dict[object, list[str]] = {
    int: [
        '"32"',
        "32.0",
        "true",
        "[32]",
        "{a = 1}",
        "1979-05-27",
        "99999999999999999999999",
        "-99999999999999999999999",
    ],
    float: ['"fast"', "true", "[0.1]", "{a = 1}", "07:32:00"],
    str: ["5", "true", '["x"]', "{a = 1}", "1.5"],
    bool: ['"yes"', '"no"', "1", "[true]"],
    Path: ["5", "true", '["a"]', '""', '"a\\u0000b"', "{a = 1}"],
    options.DURATION: ["true", "[1]", '"-5m"', '"soon"', "-5", "0", "inf", "nan", "1979-05-27T07:32:00Z"],
    options.SIZE: ["true", '"lots"', "0", "-1", "1.5", '"-1M"', "[1]"],
    options.FILES: ["5", "[]", "[1]", "{a = 1}", '""', '["a", "b\\u0000"]', '[["a"]]'],
}
FILE_OPTIONS = [options.BY_NAME.get(name) or options.CORPUS for name in options.FILE_KEYS]
VALUE_CASES = [(option.name, literal) for option in FILE_OPTIONS for literal in WRONG[option.type]]


def test_every_option_has_hostile_values() -> None:
    assert {option.name for option in FILE_OPTIONS} == {name for name, _ in VALUE_CASES}
    assert len(VALUE_CASES) >= 200


@pytest.mark.parametrize("name, literal", VALUE_CASES)
def test_a_value_of_the_wrong_kind_is_one_line_naming_the_file_and_key(
    name: str, literal: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = name.replace("_", "-")
    config = _write(work / "c.toml", f"{key} = {literal}\n".encode())
    before = snapshot(work)
    code, _, err = in_process(capsys, *_train_with_config(work, config))
    refused(code, err, f"{config}: {key}")
    assert snapshot(work) == before
    assert not (work / "new").exists()


@pytest.mark.parametrize("where", ["config file", "flag"])
@pytest.mark.parametrize("value", ["9000000000000000000", "100000", "0", "-1"])
def test_nproc_is_bounded_before_any_process_starts(
    value: str, where: str, work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--nproc starts that many processes: a huge one (it fits in 64 bits) is a typo, refused
    before torchrun is run."""
    from charrnn import distributed

    started: list[object] = []

    def never(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise CharrnnError("torchrun would have started")

    monkeypatch.setattr(distributed, "relaunch", never)  # the command line's way to torchrun
    monkeypatch.setattr(distributed, "torchrun_command", never)  # charrnn.train's
    config = _write(work / "c.toml", f"nproc = {value}\n".encode())
    args = _train_with_config(work, config) if where == "config file" else [
        "train", str(work / "corpus.txt"), "--run", str(work / "new"), "--nproc", value, *TINY]  # fmt: skip
    before = snapshot(work)
    code, _, err = in_process(capsys, *args)
    refused(code, err, "--nproc must be in 1..256")
    assert started == []
    assert snapshot(work) == before


def test_the_negative_duration_names_its_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(work / "c.toml", b'max_time = "-5m"\n')
    code, _, err = in_process(capsys, *_train_with_config(work, config))
    refused(code, err, f"{config}: max_time: cannot read duration '-5m'")


def test_a_nul_in_a_path_names_its_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("run", "corpus", "val-file", "init-from"):
        config = _write(work / "c.toml", f'{key} = "runs/a\\u0000b"\n'.encode())
        code, _, err = in_process(capsys, "train", "--config", str(config), *TINY, "--max-steps", "1")
        refused(code, err, f"{config}: {key} must be", "NUL")


KEYS: dict[str, tuple[bytes, str]] = {
    "unknown": (b"hiden = 32\n", "unknown key 'hiden' (did you mean 'hidden'?)"),
    "a table": (b"[model]\nhidden = 32\n", "unknown key 'model'"),
    "resume": (b'resume = "runs/x"\n', "unknown key 'resume': --resume is given on the command line only"),
    "config": (b'config = "other.toml"\n', "unknown key 'config': --config is given on the command line only"),
    "100,000 characters long": (b'"' + b"k" * 100_000 + b'" = 1\n', "unknown key 'kkkk"),
    "empty": (b'"" = 1\n', "unknown key ''"),
}


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_bad_key_is_one_short_line(kind: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, phrase = KEYS[kind]
    config = _write(work / "c.toml", data)
    code, _, err = in_process(capsys, *_train_with_config(work, config))
    refused(code, err, str(config), phrase)
    assert len(err) < 400


def test_a_megabyte_value_is_shown_cut_short(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(work / "c.toml", b'hidden = "' + b"v" * 1_000_000 + b'"\n')
    code, _, err = in_process(capsys, *_train_with_config(work, config))
    refused(code, err, f"{config}: hidden must be an integer")
    assert len(err) < 400


def test_the_api_refuses_a_nul_in_any_path(tmp_path: Path) -> None:
    for keywords in ({"config": "a\x00b"}, {"init_from": "a\x00b"}, {"val_file": ["a", "b\x00"]}):
        with pytest.raises(CharrnnError, match="NUL character"):
            api_train(tmp_path / "corpus.txt", run=tmp_path / "r", **keywords)
    with pytest.raises(CharrnnError, match="NUL character"):
        api_train("a\x00b", run=tmp_path / "r")
    with pytest.raises(CharrnnError, match="not a path: it holds a NUL character"):
        find_corpus(["a\x00b"])
    assert not (tmp_path / "r").exists()


def test_sizes_read_in_binary_units(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('stdin-limit = "1.5M"\n')
    assert options.read_config(tmp_path / "c.toml") == {"stdin_limit": 3 << 19}
    (tmp_path / "c.toml").write_text("stdin_limit = 4096\n")
    assert options.read_config(tmp_path / "c.toml") == {"stdin_limit": 4096}


# ----- --encoding: text encodings only -----------------------------------------------------------------

ENCODINGS = {
    "base64": "is not a text encoding",
    "rot13": "is not a text encoding",
    "zlib_codec": "is not a text encoding",
    "hex": "is not a text encoding",
    "bz2": "is not a text encoding",
    "uu": "is not a text encoding",
    "quopri": "is not a text encoding",
    "klingon": "unknown encoding 'klingon'",
    "": "unknown encoding ''",
    "utf\x00-8": "unknown encoding",
    "x" * 10_000: "unknown encoding 'xxxx",
}


def _text_commands(w: Path) -> dict[str, list[str]]:
    text = str(w / "corpus.txt")
    return {
        "train": ["train", text, "--run", str(w / "new"), *TINY, "--max-steps", "1"],
        "eval": ["eval", str(w / "run"), text],
        "score": ["score", str(w / "run"), text],
        "viz": ["viz", str(w / "run"), text, "--json"],
    }


@pytest.mark.parametrize("encoding", list(ENCODINGS), ids=lambda e: repr(e[:12]))
@pytest.mark.parametrize("command", ["train", "eval", "score", "viz"])
def test_only_text_encodings_are_accepted(
    command: str, encoding: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(work)
    code, _, err = in_process(capsys, *_text_commands(work)[command], "--encoding", encoding)
    refused(code, err, ENCODINGS[encoding])
    assert len(err) < 400
    assert snapshot(work) == before
    assert not (work / "new").exists()


def test_an_encoding_in_a_config_file_is_checked_too(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(work / "c.toml", b'encoding = "rot13"\n')
    code, _, err = in_process(capsys, *_train_with_config(work, config))
    refused(code, err, "'rot13' is not a text encoding")


# ----- a fresh train and the directory it is given -----------------------------------------------------


def _only(*names: str) -> Callable[[Path, Path], None]:
    """A run directory holding only these files of the trained run."""

    def make(run: Path, target: Path) -> None:
        target.mkdir()
        for name in names:
            shutil.copy2(run / name, target / name)

    return make


def _files(**contents: bytes) -> Callable[[Path, Path], None]:
    def make(run: Path, target: Path) -> None:
        target.mkdir()
        for name, data in contents.items():
            (target / name.replace("__", ".")).write_bytes(data)

    return make


def _with_subdirectory(run: Path, target: Path) -> None:
    (target / "notes").mkdir(parents=True)


def _with_symlink(run: Path, target: Path) -> None:
    target.mkdir()
    (target / "link").symlink_to(run / "best.safetensors")


USED_DIRECTORIES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "best.safetensors alone": (_only("best.safetensors"), "already exists (it holds best.safetensors)"),
    "last.safetensors alone": (_only("last.safetensors"), "already exists: pass --resume"),
    "best and config": (_only("best.safetensors", "config.json"), "already exists"),
    "a config.json of the user's": (
        _files(config__json=b'{"my": "settings"}\n'),
        "already exists (it holds config.json)",
    ),
    "a run's config.json and metrics": (_only("config.json", "metrics.jsonl"), "already exists (it holds config.json"),
    "metrics.jsonl alone": (_only("metrics.jsonl"), "already exists (it holds metrics.jsonl)"),
    "a format-1 best.pt": (_files(best__pt=b"PK\x03\x04 not really"), "already exists (it holds best.pt)"),
    "a format-1 last.pt": (_files(last__pt=b"PK\x03\x04 not really"), "already exists: pass --resume"),
    "another checkpoint name": (_files(model__safetensors=b"{}"), "already exists (it holds model.safetensors)"),
    "a user's file": (_files(notes__txt=b"my notes\n"), "is not empty (it holds notes.txt)"),
    "a user's hidden file": (_files(__notes=b"my notes\n"), "is not empty (it holds .notes)"),
    "a user's .tmp file": (_files(__backup__tmp=b"mine\n"), "is not empty (it holds .backup.tmp)"),
    "a subdirectory": (_with_subdirectory, "is not empty (it holds notes)"),
    "a symlink": (_with_symlink, "is not empty (it holds link)"),
    "many files": (_files(a=b"1", b=b"2", c=b"3", d=b"4", e=b"5"), "(it holds a, b, c and 2 more)"),
}


@pytest.mark.parametrize("kind", list(USED_DIRECTORIES))
@pytest.mark.parametrize("how", ["train", "--init-from"])
def test_a_fresh_train_never_writes_into_a_used_directory(
    how: str, kind: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, phrase = USED_DIRECTORIES[kind]
    target = work / "target"
    make(work / "run", target)
    before = snapshot(work)
    extra = ["--init-from", str(work / "run")] if how == "--init-from" else []
    args = ["train", str(work / "corpus.txt"), "--run", str(target), *TINY, "--max-steps", "1", *extra]
    code, _, err = in_process(capsys, *args)
    refused(code, err, phrase)
    assert snapshot(work) == before


def test_a_fresh_train_takes_an_empty_directory_and_its_own_leftovers(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty directory, or one holding only what an earlier train left of its own (its lock, a
    temporary file of a killed save), is a new run's."""
    target = work / "target"
    target.mkdir()
    (target / ".lock").write_text("12345")
    (target / ".config.json.12345.tmp").write_bytes(b"half a config")
    code, _, err = in_process(
        capsys, "train", str(work / "corpus.txt"), "--run", str(target), *TINY, "--max-steps", "1"
    )
    assert code == 0, err
    assert (target / "best.safetensors").is_file() and not (target / ".config.json.12345.tmp").exists()


def _cut_short(run: Path, target: Path, *, metrics: bytes = b"") -> None:
    """What a fresh train killed by SIGKILL before its first checkpoint leaves: its lock (the pid
    of a process long gone), its config.json, an empty metrics.jsonl, a temporary file."""
    target.mkdir()
    (target / ".lock").write_text("999999999")
    shutil.copy2(run / "config.json", target / "config.json")
    (target / "metrics.jsonl").write_bytes(metrics)
    (target / ".best.safetensors.999999999.tmp").write_bytes(b"half a save")


def test_a_start_killed_before_its_first_checkpoint_is_started_afresh(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rerunning the command after a SIGKILL in the first seconds works: nothing is lost (no
    weights, no figure), and the note says what was taken over."""
    target = work / "target"
    _cut_short(work / "run", target)
    code, _, err = in_process(
        capsys, "train", str(work / "corpus.txt"), "--run", str(target), *TINY, "--max-steps", "1"
    )
    assert code == 0, err
    assert "killed before its first checkpoint" in err and "internal error" not in err
    assert (target / "best.safetensors").is_file() and not (target / ".best.safetensors.999999999.tmp").exists()


@pytest.mark.parametrize("left", ["a metrics record", "no lock"])
def test_a_cut_short_start_with_a_figure_or_without_its_lock_is_refused(
    left: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = work / "target"
    _cut_short(work / "run", target, metrics=b'{"step": 5}\n')
    if left == "no lock":
        (target / "metrics.jsonl").write_bytes(b"")
        (target / ".lock").unlink()
    before = snapshot(work)
    code, _, err = in_process(
        capsys, "train", str(work / "corpus.txt"), "--run", str(target), *TINY, "--max-steps", "1"
    )
    refused(code, err, "already exists")
    assert snapshot(work) == before
