"""Writing files so that a crash or a full disk never leaves a half-written one."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from charrnn.errors import CharrnnError


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


def atomic_write(path: Path, write: Any) -> None:
    """Write through `write(file)` to a temporary file beside `path`, fsync it, rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a
    mixture; a failed write (disk full) removes the temporary file and leaves
    the old one untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
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
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CharrnnError(f"could not save {path}: {reason}; the previous file is intact") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
