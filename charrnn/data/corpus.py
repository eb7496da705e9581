"""Finding and reading the text a model trains or is evaluated on.

A corpus is one file, several files, directories searched recursively (with a
glob filter), or `-` for standard input. Files are read in chunks, never whole,
so a multi-gigabyte corpus costs a chunk of memory; decoding is strict, so a
file that is not valid in the chosen encoding is refused with its name and the
byte offset of the first bad byte.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import CharrnnError

CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class Corpus:
    """An ordered list of files read as one text, in one encoding."""

    files: tuple[Path, ...]
    encoding: str = "utf-8"

    def describe(self) -> str:
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{len(self.files)} files under {os.path.commonpath([str(f) for f in self.files])}"

    def chunks(self) -> Iterator[str]:
        """Decoded text, chunk by chunk; raises CharrnnError at the first undecodable byte."""
        for path in self.files:
            yield from _decode_file(path, self.encoding)

    def read_text(self) -> str:
        return "".join(self.chunks())

    def content_hash(self) -> str:
        """A digest of the bytes of every file and of where each file ends."""
        digest = hashlib.blake2b(digest_size=20)
        digest.update(self.encoding.encode())
        for path in self.files:
            with _open(path) as handle:
                while block := handle.read(CHUNK_BYTES):
                    digest.update(block)
            digest.update(b"\x00<end of file>\x00")
        return digest.hexdigest()


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None


def _decode_file(path: Path, encoding: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0  # bytes of the file consumed before the current block
    with _open(path) as handle:
        while True:
            try:
                block = handle.read(CHUNK_BYTES)
            except OSError as exc:
                raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
            pending = len(decoder.getstate()[0])  # undecoded tail of the previous block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                where = offset - pending + exc.start
                raise CharrnnError(
                    f"{path} is not valid {encoding}: bad byte at offset {where} "
                    f"(pass --encoding if the file uses another encoding)"
                ) from None
            except UnicodeError as exc:  # e.g. UTF-16 without a byte-order mark: no offset to give
                raise CharrnnError(f"{path} is not valid {encoding}: {exc}") from None
            if text:
                yield text
            if not block:
                return
            offset += len(block)


def check_encoding(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise CharrnnError(f"unknown encoding {encoding!r}") from None


def find_corpus(sources: Sequence[str], *, pattern: str = "*", encoding: str = "utf-8") -> Corpus:
    """Resolve command-line sources into a Corpus; '-' spools standard input to a temporary file."""
    encoding = check_encoding(encoding)
    if not sources:
        raise CharrnnError("no corpus given")
    files: list[Path] = []
    for source in sources:
        if source == "-":
            files.append(_spool_stdin())
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob(pattern) if p.is_file() and not _hidden(p, path))
            if not found:
                raise CharrnnError(f"no files matching {pattern!r} under {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise CharrnnError(f"{path} is not a regular file or directory")
        else:
            raise CharrnnError(f"no such file or directory: {path}")
    for path in files:
        if not os.access(path, os.R_OK):
            raise CharrnnError(f"cannot read {path}: permission denied")
    _refuse_binary(files, encoding)
    return Corpus(tuple(files), encoding)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _refuse_binary(files: Sequence[Path], encoding: str) -> None:
    """A NUL character in the first 8 KiB marks a binary file (as git and grep decide from NUL bytes).

    The check reads code points decoded with the corpus's encoding, not raw bytes: UTF-16 and
    UTF-32 text is full of NUL bytes and holds no NUL character, while under UTF-8 or Latin-1 a
    NUL byte is one. Undecodable bytes are left to the strict reading that follows.
    """
    for path in files:
        with _open(path) as handle:
            head = handle.read(8192)
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        try:
            text = decoder.decode(head, final=False)
        except UnicodeError:  # e.g. UTF-16 without a byte-order mark: the strict reading reports it
            continue
        if "\x00" in text:
            raise CharrnnError(
                f"{path} looks like a binary file (it holds NUL characters read as {encoding}; "
                "pass --encoding for UTF-16 or UTF-32 text)"
            )


_stdin_copy: Path | None = None


def _spool_stdin() -> Path:
    """Copy standard input to a temporary file once, so it can be read twice (hash, then tokenize)."""
    global _stdin_copy
    if _stdin_copy is None:
        handle = tempfile.NamedTemporaryFile(prefix="charrnn-stdin-", suffix=".txt", delete=False)
        with handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
        _stdin_copy = Path(handle.name)
        import atexit

        atexit.register(lambda: _stdin_copy.unlink(missing_ok=True) if _stdin_copy else None)
    return _stdin_copy
