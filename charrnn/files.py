"""Writing files so that a crash, a full disk or a read-only file system never leaves a half-written one.

Every write goes to a temporary file beside its target, `.NAME.PID.tmp`, which is fsynced and then
renamed over the target: a reader sees the old file or the new one, never a mixture. A write that
fails removes its temporary file (a clean-up that fails too is not allowed to hide why the write
failed) and raises one CharrnnError naming the file and the reason in words (`os_error_reason`).
A process killed mid-write leaves its temporary file; `remove_stale_temps` takes away those whose
process is gone.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from charrnn.errors import CharrnnError

REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is too large for its file system",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error (a failing disk, or a network file system gone?)",
}


def os_error_reason(exc: OSError, path: Path | None = None) -> str:
    """Why `exc` stopped a read or a write of `path`, in words for one error line."""
    if path is not None:
        if exc.errno == errno.ENOTDIR and (blocker := not_a_directory(path)) is not None:
            return f"{blocker} is not a directory"
        if exc.errno == errno.ENOENT and not path.parent.is_dir():
            return f"directory {path.parent} does not exist"
        if exc.errno == errno.EISDIR:
            return f"{path} is a directory"
    text = REASONS.get(exc.errno) if exc.errno is not None else None
    return text or exc.strerror or str(exc) or type(exc).__name__


def not_a_directory(path: Path) -> Path | None:
    """The first of `path`'s parents that exists and is not a directory."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def discard(path: Path) -> None:
    """Remove `path` if it is there; a failure (a read-only file system) is let pass, so that it
    never hides the error that made the clean-up necessary."""
    try:
        os.unlink(path)
    except OSError:
        pass


def temp_path(path: Path) -> Path:
    """The temporary file a write of `path` by this process goes through."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts; so does any doubt)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of writes of `path` (`.NAME.PID.tmp` beside it) whose process is
    gone: what a process killed mid-write left. Those of live processes stay. Returns the removed."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([0-9]{{1,10}})\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found is None or int(found[1]) == os.getpid() or pid_alive(int(found[1])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}
_KINDS.update({stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"})


def destination(path: Path) -> Path:
    """Where a write of `path` goes: `path`, or the file a symbolic link at `path` points to (the
    link stays a link). Something there that is not a regular file (a directory, a device such as
    /dev/stdout's target, a pipe) is refused: renaming a file over it would replace it."""
    try:
        if os.path.islink(path):
            path = Path(os.path.realpath(path))
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise CharrnnError(f"could not save {path}: {os_error_reason(exc, path)}; nothing was written") from None
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise CharrnnError(f"could not save {path}: it is {kind}, not a regular file; nothing was written")
    return path


class _WriteErrors:
    """A file handle that remembers the OSError a write raised (a full disk, say)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def _write_temp(tmp: Path, write: Callable[[Any], Any]) -> None:
    """`write(file)` into `tmp`, fsynced; raises OSError (torch.save's RuntimeError for a failed
    write becomes the OSError behind it)."""
    with open(tmp, "wb") as handle:
        recorder = _WriteErrors(handle)
        try:
            write(recorder)
        except RuntimeError:
            if recorder.error is None:
                raise
            raise recorder.error from None  # torch.save reports a failed write as a RuntimeError
        handle.flush()
        os.fsync(handle.fileno())


def replace_atomically(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through `write(file)` to a temporary file beside `path`, fsync it, rename it over `path`.
    Raises the OSError of a failed write, with the temporary file removed and `path` untouched."""
    tmp = temp_path(path)
    try:
        _write_temp(tmp, write)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """`replace_atomically`, with an OSError turned into one CharrnnError naming `path` and why.

    A crash at any moment leaves either the old file or the new one, never a mixture; a failed
    write (disk full, read-only file system) removes the temporary file and leaves the old one
    untouched. A symbolic link is written through; a directory, device or pipe is refused.
    """
    target = destination(path)
    try:
        replace_atomically(target, write)
    except OSError as exc:
        kept = "the previous file is intact" if os.path.lexists(target) else "nothing was written"
        raise CharrnnError(f"could not save {path}: {os_error_reason(exc, target)}; {kept}") from None


def write_together(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write new files as one unit: every one to its temporary file (fsynced) first, then each
    linked into place. None of `files` may exist (one made meanwhile is never overwritten). A
    failure before the last is in place removes those already placed and every temporary file; a
    kill between two renames leaves some in place, which the caller's rerun must recognise."""
    temps = [(temp_path(path), path) for path, _ in files]
    placed: list[Path] = []
    try:
        for (tmp, path), (_, data) in zip(temps, files):
            try:
                _write_temp(tmp, lambda handle, data=data: handle.write(data))
            except OSError as exc:
                raise CharrnnError(
                    f"could not save {path}: {os_error_reason(exc, path)}; nothing was written"
                ) from None
        for tmp, path in temps:
            try:
                _place(tmp, path)
            except FileExistsError:
                raise CharrnnError(f"{path} appeared while it was being written; nothing was written") from None
            except OSError as exc:
                raise CharrnnError(
                    f"could not save {path}: {os_error_reason(exc, path)}; nothing was written"
                ) from None
            placed.append(path)
    except BaseException:
        for tmp, _ in temps:
            discard(tmp)
        if len(placed) < len(files):
            for path in placed:
                discard(path)
        raise
    for parent in {path.parent for path, _ in files}:
        fsync_dir(parent)


def _place(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`, never over an existing file: a hard link then the temporary's removal
    (FileExistsError if `path` exists); where hard links are not supported, a checked rename."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    discard(tmp)
