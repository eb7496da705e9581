"""One example per line (`charrnn train --lines`): the line index, the split by lines, the line hashes.

The corpus is read once, chunk by chunk. Each non-blank line (without its line break, LF, CRLF
or a lone CR as in Python's universal newlines, or a file's byte-order mark) is written as UTF-8
to a spool file, and only its byte offset and an 8-byte blake2b digest of its text are kept, in
numpy arrays: a million lines cost 16 MB, never the strings. The distinct lines are shuffled by the seed and dealt out to
validation, test and training, so a line that occurs more than once goes wholly to one side, where
every copy is kept (repeats weigh an example as the corpus does). Each side is read back from the
spool in its own seeded order, every line followed by its line break, in blocks for the token cache.

`LineSets` holds the sorted digests of each side's lines. It is saved in the run directory
(lines.npz), so a sample can be told new, or a copy of a training or validation line, without the
corpus. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import re
import zipfile
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.data.corpus import Corpus
from charrnn.errors import CharrnnError
from charrnn.files import atomic_write

LINES_FILE = "lines.npz"  # in the run directory
MAX_LINE_CHARS = 1 << 20  # the token cache encodes 1 MiB of text at a time: a longer line is refused
BLOCK_CHARS = 1 << 20  # text handed to the encoder at once
SIDES = ("train", "val", "test")
NEW = "new"


def line_digest(text: str) -> bytes:
    """The 8-byte blake2b digest of a line's text (UTF-8, without its line break)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@dataclass(frozen=True)
class LineIndex:
    """The corpus's non-blank lines in the spool file: line i is spool[offsets[i] : offsets[i + 1]],
    its line break included."""

    spool: Path
    offsets: np.ndarray  # (n + 1,) int64 byte offsets
    digests: np.ndarray  # (n,) uint64, as line_digest's bytes read little-endian
    longest: int  # characters in the longest line
    blank: int  # blank lines left out

    @property
    def count(self) -> int:
        return len(self.digests)


def index_lines(corpus: Corpus, spool: Path) -> LineIndex:
    """Read `corpus` once, writing its non-blank lines to `spool` (see the module docstring)."""
    offsets = array("q", [0])
    digests = bytearray()
    longest = blank = position = 0
    with open(spool, "wb") as out:
        for path in corpus.files:
            for line in _lines_of(path, corpus.encoding):
                if not line.strip():
                    blank += 1
                    continue
                data = line.encode("utf-8", "surrogatepass") + b"\n"
                out.write(data)
                position += len(data)
                offsets.append(position)
                digests += hashlib.blake2b(data[:-1], digest_size=8).digest()
                longest = max(longest, len(line))
    if not digests:
        raise CharrnnError(f"{corpus.describe()} holds no line with text: --lines takes one example per line")
    return LineIndex(spool, np.frombuffer(offsets, np.int64), np.frombuffer(digests, "<u8"), longest, blank)


def _lines_of(path: Path, encoding: str) -> Iterator[str]:
    """The lines of one file, without their line breaks or a leading BOM. A line ends at "\\n",
    "\\r\\n" or a lone "\\r": exactly the breaks of Python's universal newlines
    (`io.TextIOWrapper(newline=None)`); the other characters `str.splitlines` splits at (\\v, \\f,
    \\x1c-\\x1e, \\x85, \\u2028, \\u2029) are text. A line longer than MAX_LINE_CHARS is refused as
    soon as it is seen to be."""
    pending = ""
    number = 0
    for i, chunk in enumerate(Corpus((path,), encoding).chunks()):
        text = pending + (chunk.removeprefix("\ufeff") if i == 0 else chunk)
        # A "\r" at the end may be the first half of a "\r\n" that the next chunk completes.
        end = len(text) - 1 if text.endswith("\r") else len(text)
        start = 0
        for found in _BREAK.finditer(text, 0, end):
            number += 1
            _check_length(path, number, found.start() - start)
            yield text[start : found.start()]
            start = found.end()
        pending = text[start:]
        _check_length(path, number + 1, len(pending) - pending.endswith("\r"))
    if pending:
        yield pending.removesuffix("\r")


_BREAK = re.compile("\r\n|\r|\n")


def _check_length(path: Path, number: int, length: int) -> None:
    if length > MAX_LINE_CHARS:
        raise CharrnnError(
            f"{path}: line {number:,} is longer than {MAX_LINE_CHARS:,} characters, the most --lines takes "
            "for one example (is this file one example per line?)"
        )


def split_sides(digests: np.ndarray, val_frac: float, test_frac: float, seed: int) -> np.ndarray:
    """Which side each line goes to (0 train, 1 validation, 2 test), (n,) uint8: the distinct lines,
    shuffled by `seed`, give the first round(k * val_frac) to validation (at least one when
    val_frac > 0), the next to test, the rest to training; every copy of a line goes with it."""
    distinct, inverse = np.unique(digests, return_inverse=True)
    k = len(distinct)
    n_val = max(1, round(k * val_frac)) if val_frac > 0 else 0
    n_test = max(1, round(k * test_frac)) if test_frac > 0 else 0
    if k - n_val - n_test < 1:
        held = " and ".join(
            f"--{name} {frac}" for name, frac in (("val-frac", val_frac), ("test-frac", test_frac)) if frac
        )
        raise CharrnnError(
            f"the corpus has {k} distinct line(s): too few to hold out {held} by lines and train on the rest"
        )
    order = np.random.default_rng(seed).permutation(k)
    side_of = np.zeros(k, np.uint8)
    side_of[order[:n_val]] = 1
    side_of[order[n_val : n_val + n_test]] = 2
    return side_of[inverse.reshape(-1)]


def side_order(sides: np.ndarray, side: int, seed: int) -> np.ndarray:
    """The lines of one side in the order they are trained on: shuffled by the seed and the side."""
    return np.random.default_rng([seed, side]).permutation(np.flatnonzero(sides == side))


def blocks(index: LineIndex, order: np.ndarray) -> Iterator[str]:
    """The lines `order` names, each followed by its line break, joined into blocks of about
    BLOCK_CHARS characters (whole lines only), read from the spool."""
    if not len(order):
        return
    with open(index.spool, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as spool:
        parts: list[bytes] = []
        size = 0
        for first in range(0, len(order), 1 << 16):
            piece = order[first : first + (1 << 16)]
            for start, end in zip(index.offsets[piece].tolist(), index.offsets[piece + 1].tolist()):
                parts.append(spool[start:end])
                size += end - start
                if size >= BLOCK_CHARS:
                    yield b"".join(parts).decode("utf-8", "surrogatepass")
                    parts, size = [], 0
        if parts:
            yield b"".join(parts).decode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class LineSets:
    """The distinct lines of each side, as sorted uint64 digests, and what the corpus held."""

    train: np.ndarray = field(repr=False)
    val: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    lines: tuple[int, int, int]  # lines on each side, repeats counted
    longest: int  # characters in the corpus's longest line
    blank: int  # blank lines left out

    @classmethod
    def of(cls, index: LineIndex, sides: np.ndarray) -> LineSets:
        sets = [np.unique(index.digests[sides == side]) for side in range(len(SIDES))]
        counts = tuple(int(np.count_nonzero(sides == side)) for side in range(len(SIDES)))
        return cls(*sets, lines=counts, longest=index.longest, blank=index.blank)  # type: ignore[arg-type]

    def flag(self, text: str) -> str:
        """ "train", "val" or "test" when `text` is a line of that side, else "new". Two different
        lines share a digest with odds of about (lines in the corpus) / 2^64 per sample."""
        value = np.frombuffer(line_digest(text), "<u8")[0]
        for name in SIDES:
            digests = getattr(self, name)
            at = int(np.searchsorted(digests, value))
            if at < len(digests) and digests[at] == value:
                return name
        return NEW

    def describe(self) -> str:
        train, val, test = self.lines
        distinct = len(self.train) + len(self.val) + len(self.test)
        parts = [f"{train:,} training", f"{val:,} validation"] + ([f"{test:,} test"] if test else [])
        blank = f", {self.blank:,} blank left out" if self.blank else ""
        return f"--lines: {sum(self.lines):,} lines ({distinct:,} distinct{blank}): {', '.join(parts)}"

    def write(self, handle: Any) -> None:
        """Write the sets to an open binary file, as lines.npz holds them."""
        buffer = io.BytesIO()
        numbers = np.array([*self.lines, self.longest, self.blank], np.int64)
        np.savez(buffer, train=self.train, val=self.val, test=self.test, numbers=numbers)
        handle.write(buffer.getvalue())

    def save(self, path: Path) -> None:
        atomic_write(path, self.write)

    @classmethod
    def load(cls, path: Path) -> LineSets:
        """Read a saved LineSets; a missing or damaged file is a one-line CharrnnError."""
        if path.exists() and not path.is_file():
            raise CharrnnError(f"{path} is damaged: it is not a regular file")
        try:
            sets, numbers = _read_arrays(path)
        except FileNotFoundError:
            raise CharrnnError(f"{path} is missing: the run's line hashes cannot be read") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise CharrnnError(f"{path} is damaged: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None
        ok = numbers.dtype == np.int64 and numbers.shape == (5,) and bool((numbers >= 0).all())
        for digests in sets:
            ok = (
                ok
                and digests.dtype == np.dtype("<u8")
                and digests.ndim == 1
                and bool(np.all(digests[1:] > digests[:-1]))
            )
        if not ok:
            raise CharrnnError(f"{path} is damaged: not the sorted line digests charrnn writes")
        train, val, test, longest, blank = (int(n) for n in numbers)
        for side, count, digests in zip(SIDES, (train, val, test), sets):
            if count < len(digests):
                raise CharrnnError(
                    f"{path} is damaged: it counts {count:,} {side} lines but holds {len(digests):,} distinct ones"
                )
        if not (1 if train + val + test else 0) <= longest <= MAX_LINE_CHARS:
            raise CharrnnError(
                f"{path} is damaged: its longest line of {longest:,} characters is not in "
                f"1..{MAX_LINE_CHARS:,}, what --lines takes"
            )
        return cls(*sets, lines=(train, val, test), longest=longest, blank=blank)  # type: ignore[arg-type]


def _read_arrays(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The arrays of a lines.npz file, none larger than the file (it is written uncompressed, so a
    member that claims more is damage, and is not read)."""
    size = path.stat().st_size
    with np.load(path, allow_pickle=False) as saved:
        if not isinstance(saved, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        for name in (*SIDES, "numbers"):
            if saved.zip.getinfo(f"{name}.npy").file_size > size:
                raise ValueError(f"{name} claims more bytes than the file holds")
        return [np.asarray(saved[name]) for name in SIDES], np.asarray(saved["numbers"])
