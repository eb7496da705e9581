"""Promise: `charrnn convert` converts a run as one unit (both new files or neither), finishes a
conversion that was killed halfway and says so, removes the temporary files a killed one left,
and refuses what is no checkpoint file in one line; and every atomic write (checkpoints, pages,
figures) fails on a read-only file system, a full disk or a path through a file with one clear
line that names the file and the reason, its temporary file removed, the previous file intact.

A read-only file system is simulated in this process (the tests run as root, for whom chmod
stops nothing): `open` for writing, `os.link`, `os.replace`, `os.mkdir` and `os.unlink` raise
EROFS, the clean-up included, as on a real one.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, in_process

from charrnn import files as files_module
from charrnn.checkpoint import convert, load_checkpoint
from charrnn.errors import CharrnnError
from charrnn.files import atomic_write, remove_stale_temps, write_together

FIXTURE = ROOT / "tests" / "fixtures" / "format1"
NEW = ("best.safetensors", "last.safetensors")

pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(directory: Path) -> dict[str, str]:
    """Every entry of `directory` (hidden ones too): a file's sha256, or what else it is."""
    found = {}
    for entry in sorted(directory.rglob("*")):
        name = str(entry.relative_to(directory))
        if entry.is_symlink():
            found[name] = f"link -> {os.readlink(entry)}"
        elif entry.is_file():
            found[name] = hashlib.sha256(entry.read_bytes()).hexdigest()
        else:
            found[name] = "dir" if entry.is_dir() else "other"
    return found


def _one_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert err.startswith("charrnn: error: ") and err.count("\n") == 1, err
    assert "internal error" not in err
    for fragment in fragments:
        assert fragment in err, err


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    return run


@pytest.fixture(scope="module")
def converted_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """What converting the fixture run writes, file by file."""
    run = tmp_path_factory.mktemp("reference") / "old"
    shutil.copytree(FIXTURE, run)
    convert(run)
    return {name: (run / name).read_bytes() for name in NEW}


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# ----- one unit -----


def test_a_conversion_is_deterministic_so_a_rerun_can_recognise_its_files(
    old_run: Path, converted_bytes: dict[str, bytes]
) -> None:
    convert(old_run)
    assert {name: (old_run / name).read_bytes() for name in NEW} == converted_bytes


def test_a_failure_writing_the_second_file_leaves_neither(old_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code wrote best.safetensors, then failed on last: half a conversion, visible."""
    before = _snapshot(old_run)
    real_open = builtins.open

    def second_fails(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and "last.safetensors" in str(file):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(files_module, "open", second_fails, raising=False)
    monkeypatch.setattr("charrnn.checkpoint.open", second_fails, raising=False)
    with pytest.raises(CharrnnError, match=r"could not save .*last\.safetensors: the disk is full; nothing was"):
        convert(old_run)
    assert _snapshot(old_run) == before


def test_a_failure_placing_the_second_file_takes_the_first_away(old_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(old_run)
    real_link = os.link

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        if str(dst).endswith("last.safetensors"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(CharrnnError, match=r"could not save .*last\.safetensors: input/output error"):
        convert(old_run)
    assert _snapshot(old_run) == before


def test_a_conversion_killed_between_its_files_is_finished_on_the_rerun_and_says_so(
    old_run: Path, converted_bytes: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """Old code refused ("best.safetensors already exists ... nothing was converted"), forever."""
    (old_run / "best.safetensors").write_bytes(converted_bytes["best.safetensors"])  # renamed before the kill
    stale = old_run / f".last.safetensors.{_dead_pid()}.tmp"
    stale.write_bytes(converted_bytes["last.safetensors"][:1000])  # written, never renamed
    code, out, err = in_process(capsys, "convert", str(old_run))
    assert code == 0, err
    assert out == f"{old_run / 'last.pt'} -> {old_run / 'last.safetensors'}\n"
    assert "finishing a conversion that was cut short" in err and "best.safetensors" in err
    assert f"removed {stale}" in err
    assert {name: (old_run / name).read_bytes() for name in NEW} == converted_bytes
    assert _temps(old_run) == []
    load_checkpoint(old_run / "last.safetensors")


def test_a_rerun_of_a_finished_conversion_has_nothing_to_do(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    convert(old_run)
    before = _snapshot(old_run)
    code, out, err = in_process(capsys, "convert", str(old_run))
    assert (code, out) == (0, "") and "nothing to convert" in err and "already held" in err
    assert _snapshot(old_run) == before


def test_stale_temporary_files_go_even_after_a_successful_conversion_and_live_ones_stay(
    old_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".best.safetensors.{dead}.tmp", f".last.safetensors.{dead}.tmp", f".best.safetensors.{alive}.tmp"):
        (old_run / name).write_bytes(b"half a file")
    (old_run / f".notes.txt.{dead}.tmp").write_bytes(b"someone else's")
    code, _, err = in_process(capsys, "convert", str(old_run))
    assert code == 0, err
    assert _temps(old_run) == sorted([f".best.safetensors.{alive}.tmp", f".notes.txt.{dead}.tmp"])
    assert remove_stale_temps(old_run / "best.safetensors") == []


def test_a_target_that_holds_something_else_is_never_overwritten(
    old_run: Path, converted_bytes: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    (old_run / "best.safetensors").write_bytes(converted_bytes["best.safetensors"])
    (old_run / "last.safetensors").write_bytes(b"the user's own file")
    before = _snapshot(old_run)
    code, out, err = in_process(capsys, "convert", str(old_run))
    _one_error(code, err, "last.safetensors already exists", "nothing was converted")
    assert out == "" and _snapshot(old_run) == before


def test_a_file_that_appears_while_the_conversion_writes_is_kept(tmp_path: Path) -> None:
    """The files are linked into place, never renamed over what is there."""
    first, second = tmp_path / "a", tmp_path / "b"
    real_link = os.link

    def someone_writes_b(src: Any, dst: Any, **kwargs: Any) -> None:
        if str(dst) == str(second):
            second.write_bytes(b"theirs")
        real_link(src, dst, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "link", someone_writes_b)
        with pytest.raises(CharrnnError, match="appeared while it was being written"):
            write_together([(first, b"ours"), (second, b"ours")])
    assert not first.exists() and second.read_bytes() == b"theirs" and _temps(tmp_path) == []


# ----- what is no checkpoint file -----


def test_a_directory_named_like_a_checkpoint_is_skipped_with_a_note(
    old_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old code: internal error: IsADirectoryError."""
    (old_run / "best.pt").unlink()
    (old_run / "best.pt").mkdir()
    code, out, err = in_process(capsys, "convert", str(old_run))
    assert code == 0 and "skipped best.pt" in err and "internal error" not in err
    assert out == f"{old_run / 'last.pt'} -> {old_run / 'last.safetensors'}\n"
    assert not (old_run / "best.safetensors").exists()


@pytest.mark.parametrize("kind", ["directory", "dangling link", "link to a directory"])
def test_a_run_whose_only_checkpoints_are_no_files_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if kind == "directory":
        (run / "best.pt").mkdir()
    else:
        (run / "best.pt").symlink_to(tmp_path if kind == "link to a directory" else tmp_path / "gone")
    before = _snapshot(run)
    _one_error(*in_process(capsys, "convert", str(run))[::2], "no format-1 (.pt) checkpoints", "best.pt: not a file")
    assert _snapshot(run) == before


@pytest.mark.parametrize("kind", ["named pipe", "dangling link", "device"])
def test_a_single_path_that_is_no_regular_file_is_refused_without_opening_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A named pipe would block for ever on opening; /dev/zero would read for ever."""
    path = tmp_path / "model.pt"
    if kind == "named pipe":
        os.mkfifo(path)
    else:
        path.symlink_to(tmp_path / "gone" if kind == "dangling link" else "/dev/zero")
    code, _, err = in_process(capsys, "convert", str(path))
    if kind == "dangling link":
        _one_error(code, err, "is a symbolic link to", "which does not exist")
    else:
        _one_error(code, err, "is not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_safetensors_file_is_already_format_2(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Old code: "best.safetensors already exists", as if the user had got the target wrong."""
    convert(old_run)
    before = _snapshot(old_run)
    _one_error(*in_process(capsys, "convert", str(old_run / "best.safetensors"))[::2], "is already format 2")
    assert _snapshot(old_run) == before


def test_a_symlinked_checkpoint_converts_and_the_link_stays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "elsewhere.pt"
    shutil.copy(FIXTURE / "best.pt", real)
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").symlink_to(real)
    code, _, err = in_process(capsys, "convert", str(run))
    assert code == 0, err
    assert (run / "best.pt").is_symlink() and real.read_bytes() == (FIXTURE / "best.pt").read_bytes()
    assert (run / "best.safetensors").is_file() and not (run / "best.safetensors").is_symlink()


@pytest.mark.parametrize(
    "out", ["file/model.safetensors", "file/deeper/model.safetensors", "file/into-a-dir"], ids=["under", "deep", "run"]
)
def test_an_output_under_a_regular_file_is_one_error_line_and_nothing_is_made(
    old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    """Old code: internal error: FileExistsError (from mkdir of the parent)."""
    (tmp_path / "file").write_text("a user's file")
    before = _snapshot(tmp_path)
    source = old_run if out.endswith("into-a-dir") else old_run / "best.pt"
    _one_error(*in_process(capsys, "convert", str(source), str(tmp_path / out))[::2], "file is not a directory")
    assert _snapshot(tmp_path) == before


def test_new_directories_for_the_output_are_removed_when_the_conversion_fails(
    old_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(tmp_path)
    real_link = os.link

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        if str(dst).endswith("last.safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link)
    code, _, err = in_process(capsys, "convert", str(old_run), str(tmp_path / "new" / "dirs"))
    _one_error(code, err, "the disk is full")
    assert _snapshot(tmp_path) == before


def test_an_existing_directory_as_the_target_of_one_file_receives_it(
    old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "into").mkdir()
    code, out, err = in_process(capsys, "convert", str(old_run / "best.pt"), str(tmp_path / "into"))
    assert code == 0, err
    assert (tmp_path / "into" / "best.safetensors").is_file()


# ----- a read-only file system, for every atomic write -----


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def ro_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(m in mode for m in "wax+"):
            refuse()
        return real_open(file, mode, *args, **kwargs)

    for module in ("charrnn.files", "charrnn.plot", "charrnn.checkpoint"):
        monkeypatch.setattr(f"{module}.open", ro_open, raising=False)
    for name in ("link", "replace", "rename", "unlink", "mkdir"):
        monkeypatch.setattr(os, name, refuse)


def test_atomic_write_on_a_read_only_file_system_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: the clean-up's own EROFS (unlink of the temporary file) escaped, an internal error."""
    (tmp_path / "old.txt").write_text("kept")
    _read_only(monkeypatch)
    with pytest.raises(CharrnnError) as failed:
        atomic_write(tmp_path / "old.txt", lambda handle: handle.write(b"new"))
    assert (
        str(failed.value)
        == f"could not save {tmp_path / 'old.txt'}: the file system is read-only; the previous file is intact"
    )
    with pytest.raises(CharrnnError, match="read-only; nothing was written"):
        atomic_write(tmp_path / "new.txt", lambda handle: handle.write(b"new"))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"] and (tmp_path / "old.txt").read_text() == "kept"


def test_convert_on_a_read_only_file_system(
    old_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(old_run)
    _read_only(monkeypatch)
    code, _, err = in_process(capsys, "convert", str(old_run))
    monkeypatch.undo()
    _one_error(code, err, "best.safetensors: the file system is read-only")
    assert _snapshot(old_run) == before


def test_viz_html_and_plot_into_a_read_only_directory(
    old_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    convert(old_run)
    before = _snapshot(tmp_path)
    _read_only(monkeypatch)
    page = tmp_path / "page.html"
    viz = in_process(capsys, "viz", str(old_run), str(FIXTURE / "held.txt"), "--html", str(page), "--device", "cpu")
    plot = in_process(capsys, "plot", str(old_run), "-o", str(tmp_path / "curves.png"))
    monkeypatch.undo()
    _one_error(viz[0], viz[2], f"could not save {page}: the file system is read-only")
    _one_error(plot[0], plot[2], "curves.png: the file system is read-only")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("errno_", "reason"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EDQUOT, "the disk quota is used up"),
        (errno.EACCES, "permission denied"),
        (errno.EFBIG, "the file is too large for its file system"),
        (errno.EIO, "input/output error"),
    ],
)
def test_every_write_error_is_named_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_: int, reason: str
) -> None:
    def fails(handle: Any) -> None:
        raise OSError(errno_, os.strerror(errno_))

    with pytest.raises(CharrnnError, match=f"could not save .*x.bin: {reason}"):
        atomic_write(tmp_path / "x.bin", fails)
    assert list(tmp_path.iterdir()) == []


def test_a_write_through_a_path_under_a_file_or_into_a_missing_directory_names_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CharrnnError, match=f"{tmp_path / 'file'} is not a directory; nothing was written"):
        atomic_write(tmp_path / "file" / "x.bin", lambda handle: handle.write(b"new"))
    with pytest.raises(CharrnnError, match=f"directory {tmp_path / 'missing'} does not exist"):
        atomic_write(tmp_path / "missing" / "x.bin", lambda handle: handle.write(b"new"))


@pytest.mark.parametrize("kind", ["directory", "named pipe", "link to a device"])
def test_atomic_write_never_replaces_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """Renaming over /dev/stdout (a link) or a pipe would replace it with a plain file."""
    target = tmp_path / "out"
    if kind == "directory":
        target.mkdir()
    elif kind == "named pipe":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/null")
    with pytest.raises(CharrnnError, match="not a regular file; nothing was written"):
        atomic_write(target, lambda handle: handle.write(b"new"))
    assert os.path.lexists(target) and not target.is_file() and _temps(tmp_path) == []
    if kind == "link to a device":
        assert os.readlink(target) == "/dev/null"


def test_atomic_write_through_a_symlink_writes_its_file_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to("real.txt")
    atomic_write(tmp_path / "link.txt", lambda handle: handle.write(b"new"))
    assert (tmp_path / "link.txt").is_symlink() and (tmp_path / "real.txt").read_text() == "new"
