"""Finding and reading the text a model trains or is evaluated on.

A corpus is one file, several files, directories searched recursively (with a
glob filter), or `-` for standard input. Files are read in chunks, never whole,
so a multi-gigabyte corpus costs a chunk of memory; decoding is strict, so a
file that is not valid in the chosen encoding is refused with its name and the
byte offset of the first bad byte.

Standard input is bounded. `eval`, `score` and `viz` read it into memory, at most
STDIN_MEMORY_LIMIT bytes; `train` reads it twice (a hash, then the tokens), so it
copies it to the temporary directory, at most STDIN_SPOOL_LIMIT bytes (`--stdin-limit`
raises that). Both refuse in one line past the limit, refuse binary input on its first
block, and check the decoding as they read, so no error ever names the copy. The copy,
`charrnn-stdin-PID.txt`, is removed however the process ends (exit, error, SIGINT,
SIGTERM, SIGHUP); one that a SIGKILL left behind is removed by the next process that
reads standard input: a live copy is held with an flock, so a copy nobody holds is stale.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import errno
import fcntl
import hashlib
import io
import itertools
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from charrnn.config import parse_size
from charrnn.errors import CharrnnError

CHUNK_BYTES = 16 << 20
HEAD_BYTES = 8192  # what the binary check reads of each file (and of standard input's first block)
STDIN_BLOCK = 1 << 20

STDIN = "-"
STDIN_NAME = "standard input"
STDIN_MEMORY_LIMIT = 64 << 20  # eval, score and viz: standard input read into memory, at most this
STDIN_SPOOL_LIMIT = 2 << 30  # train: standard input copied to the temporary directory, at most this
LIMIT_VARIABLE = "CHARRNN_STDIN_LIMIT"  # overrides both defaults, e.g. "512M"
SPOOL_PATTERN = re.compile(r"charrnn-stdin-\d+(?:-\d+)?\.txt")

_STDIN_PATH = Path(STDIN)  # stands for standard input read into memory, in Corpus.files


@dataclass(frozen=True)
class Corpus:
    """An ordered list of files read as one text, in one encoding."""

    files: tuple[Path, ...]
    encoding: str = "utf-8"

    def describe(self) -> str:
        if len(self.files) == 1:
            return _name(self.files[0])
        try:
            return f"{len(self.files)} files under {os.path.commonpath([str(f) for f in self.files])}"
        except ValueError:  # standard input beside files: no common folder
            return f"{len(self.files)} files"

    def chunks(self) -> Iterator[str]:
        """Decoded text, chunk by chunk; raises CharrnnError at the first undecodable byte."""
        for path in self.files:
            with _open(path) as handle:
                yield from _decode(_blocks(handle, path, CHUNK_BYTES), _name(path), self.encoding)

    def read_text(self) -> str:
        return "".join(self.chunks())

    def content_hash(self) -> str:
        """A digest of the bytes of every file and of where each file ends."""
        digest = hashlib.blake2b(digest_size=20)
        digest.update(self.encoding.encode())
        for path in self.files:
            with _open(path) as handle:
                for block in _blocks(handle, path, CHUNK_BYTES):
                    digest.update(block)
            digest.update(b"\x00<end of file>\x00")
        return digest.hexdigest()


def _name(path: Path) -> str:
    """How messages name a file: standard input, in memory or copied, is "standard input"."""
    is_stdin = (path == _STDIN_PATH and _memory is not None) or (_spool is not None and path == _spool.path)
    return STDIN_NAME if is_stdin else str(path)


def _open(path: Path) -> BinaryIO:
    if path == _STDIN_PATH and _memory is not None:
        return io.BytesIO(_memory)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CharrnnError(f"cannot read {_name(path)}: {exc.strerror or exc}") from None


def _blocks(handle: BinaryIO, path: Path, size: int) -> Iterator[bytes]:
    """The bytes of an open file, `size` at a time (never an empty block)."""
    while True:
        try:
            block = handle.read(size)
        except OSError as exc:
            raise CharrnnError(f"cannot read {_name(path)}: {exc.strerror or exc}") from None
        if not block:
            return
        yield block


def _decode(blocks: Iterable[bytes], name: str, encoding: str) -> Iterator[str]:
    """The text of `blocks` decoded strictly; a bad byte is reported with its offset in the stream."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0  # bytes consumed before the current block
    for block in itertools.chain(blocks, [b""]):  # the empty block ends the stream
        pending = len(decoder.getstate()[0])  # undecoded tail of the previous block
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            where = offset - pending + exc.start
            raise CharrnnError(
                f"{name} is not valid {encoding}: bad byte at offset {where} "
                f"(pass --encoding if the file uses another encoding)"
            ) from None
        except UnicodeError as exc:  # e.g. UTF-16 without a byte-order mark: no offset to give
            raise CharrnnError(f"{name} is not valid {encoding}: {exc}") from None
        if text:
            yield text
        offset += len(block)


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; an unknown codec, or one that is no text encoding (base64,
    rot13, zlib_codec: bytes to bytes or str to str), is refused in one line."""
    shown = encoding if len(encoding) <= 40 else encoding[:40] + "…"
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError):  # ValueError: a NUL character in the name
        raise CharrnnError(f"unknown encoding {shown!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise CharrnnError(
            f"{shown!r} is not a text encoding (it turns bytes into bytes or text into text): "
            "give one that decodes bytes to text, such as utf-8, latin-1 or utf-16"
        )
    return info.name


def find_corpus(
    sources: Sequence[str],
    *,
    pattern: str = "*",
    encoding: str = "utf-8",
    spool_stdin: bool = False,
    stdin_limit: int | None = None,
) -> Corpus:
    """Resolve command-line sources into a Corpus. '-' is standard input, read to its end now and
    refused past `stdin_limit` bytes (default: `default_stdin_limit`): into memory, or with
    `spool_stdin` (what `train` asks for, to read it twice) into a temporary file."""
    encoding = check_encoding(encoding)
    if not sources:
        raise CharrnnError("no corpus given")
    if list(sources).count(STDIN) > 1:
        raise CharrnnError("standard input can be read only once: give - once")
    files: list[Path] = []
    for source in sources:
        if source == STDIN:
            limit = stdin_limit if stdin_limit is not None else default_stdin_limit(memory=not spool_stdin)
            files.append(_stdin(encoding, limit, spool=spool_stdin))
            continue
        if "\x00" in str(source):
            raise CharrnnError(f"{str(source)!r} is not a path: it holds a NUL character")
        path = Path(source).expanduser()
        if path == _STDIN_PATH:  # a file named "-", given as ./-: never taken for standard input
            path = path.absolute()
        if path.is_dir():
            found = sorted(p for p in path.rglob(pattern) if p.is_file() and not _hidden(p, path))
            if not found:
                raise CharrnnError(f"no files matching {pattern!r} under {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise CharrnnError(f"{path} is not a regular file or directory")
        elif SPOOL_PATTERN.fullmatch(path.name) and path.parent == Path(tempfile.gettempdir()).resolve():
            raise CharrnnError("it was standard input, which is not kept after the command that read it")
        else:
            raise CharrnnError(f"no such file or directory: {path}")
    for path in files:
        if _name(path) != STDIN_NAME and not os.access(path, os.R_OK):
            raise CharrnnError(f"cannot read {path}: permission denied")
    _refuse_binary([path for path in files if _name(path) != STDIN_NAME], encoding)  # stdin's was checked
    return Corpus(tuple(files), encoding)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _looks_binary(head: bytes, encoding: str) -> bool:
    """A NUL character in the first 8 KiB marks a binary file (as git and grep decide from NUL bytes).

    The check reads code points decoded with the corpus's encoding, not raw bytes: UTF-16 and
    UTF-32 text is full of NUL bytes and holds no NUL character, while under UTF-8 or Latin-1 a
    NUL byte is one. Undecodable bytes are left to the strict reading that follows.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    try:
        text = decoder.decode(head[:HEAD_BYTES], final=False)
    except UnicodeError:  # e.g. UTF-16 without a byte-order mark: the strict reading reports it
        return False
    return "\x00" in text


def _binary_error(name: str, encoding: str) -> CharrnnError:
    return CharrnnError(
        f"{name} looks like a binary file (it holds NUL characters read as {encoding}; "
        "pass --encoding for UTF-16 or UTF-32 text)"
    )


def _refuse_binary(files: Sequence[Path], encoding: str) -> None:
    for path in files:
        with _open(path) as handle:
            try:
                head = handle.read(HEAD_BYTES)
            except OSError as exc:
                raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
        if _looks_binary(head, encoding):
            raise _binary_error(str(path), encoding)


# ----- standard input -----------------------------------------------------------------------------


def default_stdin_limit(*, memory: bool) -> int:
    """The bound on standard input when none is given: CHARRNN_STDIN_LIMIT if set, else the memory
    limit (eval, score, viz) or the spool limit (train)."""
    value = os.environ.get(LIMIT_VARIABLE)
    if value is None or not value.strip():
        return STDIN_MEMORY_LIMIT if memory else STDIN_SPOOL_LIMIT
    try:
        return parse_size(value)
    except CharrnnError as exc:
        raise CharrnnError(f"{LIMIT_VARIABLE}: {exc}") from None


def show_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


_memory: bytes | None = None  # standard input read into memory by this process, named by _STDIN_PATH


@dataclass(frozen=True)
class _Spool:
    path: Path
    fd: int  # open, and flock-ed, for as long as this process keeps the copy


_spool: _Spool | None = None
_cleanup_registered = False
_previous_handlers: dict[int, Any] = {}


def _stdin(encoding: str, limit: int, *, spool: bool) -> Path:
    """Standard input, read now: into memory, or copied to a spool file."""
    global _memory
    stream = _stdin_stream()
    directory = Path(tempfile.gettempdir())
    remove_stale_spools(directory)
    if not spool:
        _memory = None
        parts: list[bytes] = []
        _check_stdin(stream, parts.append, limit, encoding, memory=True, directory=directory)
        _memory = b"".join(parts)
        return _STDIN_PATH
    spool = _make_spool(directory)
    try:
        with open(spool.fd, "wb", closefd=False) as handle:
            _check_stdin(stream, handle.write, limit, encoding, memory=False, directory=directory)
    except OSError as exc:  # a write that failed: the disk is full, most likely
        remove_spool()
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise CharrnnError(
            f"cannot copy standard input to the temporary directory {directory}: {reason}; nothing was kept "
            "(set TMPDIR to a directory with more room, or save the text to a file and pass that)"
        ) from None
    except BaseException:
        remove_spool()
        raise
    return spool.path


def _stdin_stream() -> BinaryIO:
    stream = sys.stdin
    if stream is None:
        raise CharrnnError("standard input is closed: pipe the text in, or give a file")
    stream = getattr(stream, "buffer", stream)
    try:
        tty = stream.isatty()
    except (OSError, ValueError):
        tty = False
    if tty:
        raise CharrnnError(
            "standard input is a terminal: pipe the text in (cat FILE | charrnn ... -), or give the file itself"
        )
    return stream


def _check_stdin(stream: BinaryIO, keep: Any, limit: int, encoding: str, *, memory: bool, directory: Path) -> None:
    """Read `stream` to its end, handing each block to `keep`, refusing at the first block past
    `limit`, binary input at the first block, and a bad byte where it comes."""

    def blocks() -> Iterator[bytes]:
        total = 0
        while True:
            try:
                block = stream.read(min(STDIN_BLOCK, limit - total + 1))
            except OSError as exc:
                raise CharrnnError(f"cannot read standard input: {exc.strerror or exc}") from None
            except ValueError:  # a closed stream
                raise CharrnnError("standard input is closed: pipe the text in, or give a file") from None
            if not block:
                break
            if total == 0 and _looks_binary(block, encoding):
                raise _binary_error(STDIN_NAME, encoding)
            total += len(block)
            if total > limit:
                raise CharrnnError(_too_large(limit, memory, directory))
            keep(block)
            yield block
        if total == 0:
            raise CharrnnError("standard input is empty: nothing was piped in")

    for _ in _decode(blocks(), STDIN_NAME, encoding):
        pass


def _too_large(limit: int, memory: bool, directory: Path) -> str:
    size = show_size(limit)
    if memory:
        return (
            f"standard input holds more than {size}, the most read from it into memory: "
            f"save the text to a file and pass that (or set {LIMIT_VARIABLE} higher)"
        )
    return (
        f"standard input holds more than {size}, the most train copies to {directory}: "
        "nothing was kept; raise --stdin-limit, or save the text to a file and pass that"
    )


def _make_spool(directory: Path) -> _Spool:
    """Create and lock this process's spool file; its clean-up is in place before a byte is written."""
    global _cleanup_registered
    remove_spool()  # a copy this process made for an earlier command (from Python, several run)
    if not _cleanup_registered:
        atexit.register(remove_spool)
        _cleanup_registered = True
    _guard_signals()
    with _signals_held():  # a signal now waits until the file is both made and known to remove_spool
        return _create_spool(directory)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _create_spool(directory: Path) -> _Spool:
    global _spool
    attempt = 0
    while attempt < 100:
        path = directory / f"charrnn-stdin-{os.getpid()}{'-' + str(attempt) if attempt else ''}.txt"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # a copy a killed process of this pid left, or another pid namespace's
            if not _remove_if_stale(path):
                attempt += 1
            continue
        except OSError as exc:
            raise CharrnnError(
                f"cannot copy standard input to the temporary directory {directory}: {exc.strerror or exc}"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this process lives: a file nobody holds is stale
        if _same_file(path, fd):
            _spool = _Spool(path, fd)
            return _spool
        os.close(fd)  # a sweeper took it for stale between its creation and the lock: make another
    raise CharrnnError(f"cannot copy standard input to the temporary directory {directory}: no free name")


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        return False


def _remove_if_stale(path: Path) -> bool:
    """Remove `path`, a spool file, if no live process holds its lock; whether it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # another user's, say: not ours to judge
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: a live process is using it
        if _same_file(path, fd):
            path.unlink(missing_ok=True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_spools(directory: Path | None = None) -> list[Path]:
    """Remove the copies of standard input that killed processes left in `directory` (default:
    the temporary directory); the paths removed."""
    directory = Path(tempfile.gettempdir()) if directory is None else directory
    removed = []
    try:
        names = [entry.name for entry in os.scandir(directory) if SPOOL_PATTERN.fullmatch(entry.name)]
    except OSError:
        return removed
    for name in names:
        path = directory / name
        if _spool is not None and path == _spool.path:
            continue
        if _remove_if_stale(path):
            removed.append(path)
    return removed


def remove_spool() -> None:
    """Remove this process's copy of standard input, if it made one."""
    global _spool
    spool, _spool = _spool, None
    _unguard_signals()
    if spool is None:
        return
    try:
        spool.path.unlink(missing_ok=True)
    except OSError:
        pass
    try:
        os.close(spool.fd)
    except OSError:
        pass


def _guard_signals() -> None:
    """SIGTERM and SIGHUP, left at their default (which ends the process without clean-up),
    remove the copy first, then end the process as the default would. Handlers someone else
    installed are left alone (a training run's own, say, which saves and exits normally)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signum in _previous_handlers:
            continue
        if signal.getsignal(signum) == signal.SIG_DFL:
            _previous_handlers[signum] = signal.signal(signum, _remove_then_die)


def _unguard_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous_handlers.items()):
        if signal.getsignal(signum) == _remove_then_die:
            signal.signal(signum, previous)
        del _previous_handlers[signum]


def _remove_then_die(signum: int, frame: Any) -> None:
    remove_spool()  # puts the default handler back
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
