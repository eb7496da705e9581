"""What each line of a text cost the model: its bits, bits per character and most surprising character.

`charrnn score` prints these records. The text goes through the model in one stateful pass, as
`charrnn eval` reads it: the state is carried from line to line, so a line is scored in the
context of the lines before it, and the bits of all lines add up to eval's total. Each
character's bits are the ones `Model.score` gives it (the same sharing of a token's bits among
its characters, see `charrnn.score`); the line break belongs to the line it ends; the first
character of the text is predicted by nothing and has no bits, as in eval. Positions are 1-based:
line numbers, and columns counted in characters (code points).

Memory: the text is read and scored in pieces of about `PIECE_CHARS` characters, each cut after
a line break, the state carried from piece to piece, so a pass needs about 150 bytes per character
of one piece whatever the file's size, plus the records kept. A subword (bpe, unigram) model cuts
only at line breaks, so a single line longer than a piece is held whole.

With `independent=True` each line is scored on its own instead: from a fresh state that has read
one line break (the context a line starts in when it follows another), so its first character
is predicted too and no other line changes its numbers. Lines go through side by side.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from charrnn.errors import CharrnnError
from charrnn.score import char_bits
from charrnn.text_pass import WINDOW

if TYPE_CHECKING:
    from charrnn.data.tokenizers import Tokenizer
    from charrnn.dynamic import DynamicSettings
    from charrnn.inference import Model
    from charrnn.model import RNNLanguageModel, State

PIECE_CHARS = 1 << 18  # characters scored at a time: bounds the memory of a pass
LOGIT_BUDGET = 1 << 24  # float32 logits of one forward call of side-by-side lines (64 MiB)

# Per piece of text: the piece, its characters' bits (NaN where nothing predicts one) and unknown flags.
Bits = tuple[str, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class Surprise:
    """The most surprising character of a line or a text: where it is (1-based), what it cost,
    and whether it is outside the model's vocabulary (scored as <unk>). The earliest wins a tie."""

    line: int
    column: int
    char: str
    bits: float
    unknown: bool


@dataclass(frozen=True, slots=True)
class LineScore:
    """One line (with its line break, if it has one), or with `lines` > 1 a whole text.

    line: the 1-based number of the (first) line; chars: its characters; predicted: those with
    bits (all but the text's first); bits: their total; unknown: characters outside the model's
    vocabulary; worst: the most surprising character (None when nothing is predicted);
    text: the line itself (None for a whole text).
    """

    line: int
    chars: int
    predicted: int
    bits: float
    unknown: int
    worst: Surprise | None
    text: str | None = None
    lines: int = 1

    @property
    def bits_per_char(self) -> float:
        return self.bits / self.predicted if self.predicted else math.nan

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: a line's number and text, or a whole text's count of lines; NaN as None."""
        bpc = self.bits_per_char
        head: dict[str, Any] = {"lines": self.lines} if self.text is None else {"line": self.line, "text": self.text}
        return {
            **head,
            "chars": self.chars,
            "predicted": self.predicted,
            "bits": self.bits,
            "bits_per_char": None if math.isnan(bpc) else bpc,
            "unknown": self.unknown,
            "worst": None
            if self.worst is None
            else {field: getattr(self.worst, field) for field in ("line", "column", "char", "bits", "unknown")},
        }


# --- the library functions ----------------------------------------------------------------------


def score_lines(model: Model, text: str, *, whole: bool = False, independent: bool = False) -> list[LineScore]:
    """The records of every line of `text` in order, or with whole=True one record for all of it."""
    if not isinstance(text, str):
        raise CharrnnError(f"the text must be a str, got {type(text).__name__}")
    if whole and independent:
        raise CharrnnError("--independent scores each line apart: it does not go with --whole")
    records = iter_line_scores(model, [text], independent=independent, keep_text=not whole)
    return [total(records)] if whole else list(records)


def iter_line_scores(
    model: Model,
    chunks: Iterable[str],
    *,
    independent: bool = False,
    keep_text: bool = True,
    name: str = "the text",
    dynamic: DynamicSettings | None = None,
) -> Iterator[LineScore]:
    """The line records of the text that `chunks` (consecutive parts, cut anywhere) spell out, each
    as soon as its line is scored. An empty text, one the model knows no character of, or one too
    short to predict anything is a CharrnnError, raised before any record comes out. With
    `dynamic`, scored by dynamic evaluation (`Model.score(text, dynamic=...)`, the text held whole)."""
    if dynamic is not None:
        if independent:
            raise CharrnnError("--dynamic learns from the lines before: it does not go with --independent")
        pieces = _dynamic_bits(model, chunks, dynamic)
    else:
        pieces = _independent_bits(model, _lines(chunks)) if independent else _stateful_bits(model, chunks)
    tally = _Tally(keep_text)
    records = (record for piece in pieces for record in tally.add(*piece))
    yield from _checked(itertools.chain(records, tally.close()), tally, name)


def _checked(records: Iterable[LineScore], tally: _Tally, name: str) -> Iterator[LineScore]:
    """`records`, held back until one character is known and one predicted (or refused then)."""
    held: list[LineScore] = []
    known = predicted = False
    for record in records:
        if known and predicted:
            yield record
            continue
        held.append(record)
        known, predicted = known or record.unknown < record.chars, predicted or record.predicted > 0
        if known and predicted:
            yield from held
    if tally.chars == 0:
        raise CharrnnError(f"{name} is empty: there is nothing to score")
    if not known:
        raise CharrnnError(f"{name}: none of its {tally.chars:,} characters is in the model's vocabulary")
    if not predicted:
        raise CharrnnError(f"{name} is one token long, and the first token is predicted by nothing")


def total(records: Iterable[LineScore]) -> LineScore:
    """One record for all of `records` (a whole text): their bits, counts and worst character."""
    summed = _Sum()
    for record in records:
        summed.add(record)
    return summed.record()


def most_surprising(records: Iterable[LineScore], top: int | None = None) -> list[LineScore]:
    """Records by bits per character, highest first (ties in line order, lines with nothing predicted
    last); with `top`, only that many, keeping no more than `top` in memory."""

    def key(record: LineScore) -> tuple[float, int]:
        bpc = record.bits_per_char
        return (math.inf if math.isnan(bpc) else -bpc, record.line)

    return sorted(records, key=key) if top is None else heapq.nsmallest(top, records, key=key)


class FileScores:
    """The records of a text file in the order asked, produced while they are iterated; `total`
    (all lines, whatever `top` keeps) is there once they have been."""

    def __init__(
        self,
        records: Iterator[LineScore],
        *,
        name: str,
        whole: bool,
        independent: bool,
        sort: bool,
        top: int | None,
        dynamic: bool = False,
    ) -> None:
        self.name, self.whole, self.independent, self.sorted = name, whole, independent, sort or top is not None
        self.dynamic = dynamic
        self._records, self._top = records, top
        self._total: LineScore | None = None

    def __iter__(self) -> Iterator[LineScore]:
        counted = self._counted(self._records)
        if self.whole:
            yield total(counted)
        elif self.sorted:
            yield from most_surprising(counted, self._top)
        else:
            yield from counted

    def _counted(self, records: Iterator[LineScore]) -> Iterator[LineScore]:
        summed = _Sum()
        for record in records:
            summed.add(record)
            yield record
        self._total = summed.record()

    @property
    def total(self) -> LineScore:
        if self._total is None:
            raise RuntimeError("FileScores.total is known once the records have been iterated")
        return self._total


def score_file(
    run: Path,
    text_file: str | None = None,
    *,
    whole: bool = False,
    independent: bool = False,
    sort: bool = False,
    top: int | None = None,
    encoding: str = "utf-8",
    device: str = "auto",
    dynamic: DynamicSettings | None = None,
) -> FileScores:
    """`charrnn score`: the records of `text_file` (a file, or '-' for standard input; default:
    the run's validation text, the one `charrnn eval` and `viz` read) under the run's best model.
    The options are checked and the model and file opened now; the scoring happens as the records
    are iterated (only --sort and --top hold them)."""
    if whole and (sort or top is not None):
        raise CharrnnError("--sort and --top order lines: they do not go with --whole")
    if whole and independent:
        raise CharrnnError("--independent scores each line apart: it does not go with --whole")
    if dynamic is not None and independent:
        raise CharrnnError("--dynamic learns from the lines before: it does not go with --independent")
    if top is not None and top < 1:
        raise CharrnnError(f"--top must be at least 1, got {top}")
    from charrnn.data.corpus import find_corpus
    from charrnn.inference import load

    if text_file is None:
        model = load(run, device=device)
        chunks, name = model.validation("score")[0], "the run's validation text"
    else:
        if text_file != "-" and Path(text_file).expanduser().is_dir():
            raise CharrnnError(f"{text_file} is a directory: give one text file (or - for standard input)")
        corpus = find_corpus([text_file], encoding=encoding)  # missing, unreadable, binary: refused here
        model = load(run, device=device)
        chunks, name = corpus.chunks(), "standard input" if text_file == "-" else text_file
    records = iter_line_scores(model, chunks, independent=independent, keep_text=not whole, name=name, dynamic=dynamic)
    return FileScores(
        records, name=name, whole=whole, independent=independent, sort=sort, top=top, dynamic=dynamic is not None
    )


# --- per-character bits, in pieces --------------------------------------------------------------


def _dynamic_bits(model: Model, chunks: Iterable[str], dynamic: DynamicSettings) -> Iterator[Bits]:
    """Every character's bits by dynamic evaluation, the text in one piece: its segments, and so
    its figures, are those of `charrnn eval --dynamic` on the same text."""
    text = "".join(chunks)
    if not text:
        return
    score = model.score(text, top_k=0, dynamic=dynamic)
    yield text, score.bits, score.unknown


def _stateful_bits(model: Model, chunks: Iterable[str]) -> Iterator[Bits]:
    """Every character's bits in one stateful pass over the text, piece by piece: the state and the
    last token of a piece carry into the next, so the numbers are those of one pass over all of it."""
    tokenizer = model.tokenizer
    net, autocast = model.torch_module(), model.uses_bf16()
    carry: tuple[int, State | None] | None = None
    for piece in _pieces(chunks, PIECE_CHARS, anywhere=tokenizer.kind in ("char", "byte")):
        ids = tokenizer.encode(piece).numpy()
        opening = carry is None
        token_bits, carry = _token_bits(net, ids, carry, autocast)
        chars = char_bits(tokenizer, ids, piece, token_bits, opening=opening)
        yield piece, chars.bits, chars.unknown


def _token_bits(
    net: RNNLanguageModel, ids: np.ndarray, carry: tuple[int, State | None] | None, autocast: bool
) -> tuple[np.ndarray, tuple[int, State | None]]:
    """Bits of each token of `ids`, (tokens,) float64, given the carry of the text before it (its
    last token and the state before reading that token; None at the start: the first token gets
    NaN); and the carry after `ids`."""
    import torch

    from charrnn.text_pass import refuse_non_finite, windows

    previous, state = carry if carry is not None else (None, None)
    inputs = ids if previous is None else np.concatenate([[previous], ids])
    tokens = torch.from_numpy(inputs.astype(np.int64))
    parts = [np.array([math.nan])] if previous is None else []
    for part in windows(net, tokens, torch.tensor([0]), len(tokens) - 1, state=state, autocast=autocast):
        parts.append(part.bits()[:, 0])
        state = part.state
    every = np.concatenate(parts)
    refuse_non_finite(every[1:] if previous is None else every)
    return every, (int(ids[-1]), state)


def _pieces(chunks: Iterable[str], size: int, *, anywhere: bool) -> Iterator[str]:
    """The text of `chunks` again, as pieces of about `size` characters, each cut after a line break
    where there is one within `size`; else (`anywhere`) at `size`, or at the next line break."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        start = 0
        while len(pending) - start >= size:
            cut = pending.rfind("\n", start, start + size) + 1
            if cut == 0:
                cut = start + size if anywhere else pending.find("\n", start + size) + 1
                if cut == 0:
                    break  # a subword model waits for the end of this long line
            yield pending[start:cut]
            start = cut
        pending = pending[start:]
    if pending:
        yield pending


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    """The lines of the text of `chunks`, each with its line break (the last may have none)."""
    pending = ""
    for chunk in chunks:
        parts = (pending + chunk).split("\n")
        pending = parts.pop()
        for part in parts:
            yield part + "\n"
    if pending:
        yield pending


def _independent_bits(model: Model, lines: Iterable[str]) -> Iterator[Bits]:
    """Every line's character bits, each line from a fresh state after one line break (which is
    not counted); lines go through the model side by side, as many as the logit budget allows."""
    tokenizer = model.tokenizer
    net, autocast = model.torch_module(), model.uses_bf16()
    prefix = tokenizer.encode("\n").numpy()
    batch: list[tuple[str, np.ndarray]] = []
    longest = 0
    for line in lines:
        ids = tokenizer.encode(line).numpy()
        width = min(len(prefix) + len(ids), WINDOW)
        if batch and (len(batch) + 1) * max(longest, width) * tokenizer.vocab_size > LOGIT_BUDGET:
            yield from _side_by_side(net, tokenizer, prefix, batch, autocast)
            batch, longest = [], 0
        batch.append((line, ids))
        longest = max(longest, width)
    if batch:
        yield from _side_by_side(net, tokenizer, prefix, batch, autocast)


def _side_by_side(
    net: RNNLanguageModel, tokenizer: Tokenizer, prefix: np.ndarray, batch: list[tuple[str, np.ndarray]], autocast: bool
) -> Iterator[Bits]:
    """Score the lines of `batch` (each with its ids) as streams of one pass, each after `prefix`
    from a zero state; padding after a line's end changes nothing before it."""
    import torch

    from charrnn.text_pass import refuse_non_finite, windows

    length = len(prefix) + max(len(ids) for _, ids in batch)
    grid = np.zeros((len(batch), length), dtype=np.int64)  # one line per row
    for row, (_, ids) in enumerate(batch):
        grid[row, : len(prefix) + len(ids)] = np.concatenate([prefix, ids])
    starts = torch.arange(len(batch)) * length
    parts = windows(net, torch.from_numpy(grid.reshape(-1)), starts, length - 1, autocast=autocast)
    bits = np.concatenate([part.bits() for part in parts])  # (T - 1, B): the bits of token t + 1 of each line
    for column, (line, ids) in enumerate(batch):
        token_bits = bits[len(prefix) - 1 : len(prefix) - 1 + len(ids), column]
        refuse_non_finite(token_bits[1:] if len(prefix) == 0 else token_bits)
        chars = char_bits(tokenizer, ids, line, token_bits, opening=False)
        yield line, chars.bits, chars.unknown


# --- from character bits to line records ---------------------------------------------------------


class _Tally:
    """Turns consecutive pieces of a text, with their characters' bits, into line records. A piece
    may end inside a line: that part is carried and joined to the start of the next piece."""

    def __init__(self, keep_text: bool) -> None:
        self.keep_text = keep_text
        self.line = 1  # the number of the line the next character belongs to
        self.chars = 0  # characters seen
        self.part: LineScore | None = None  # the start of a line cut by the end of a piece

    def add(self, piece: str, bits: np.ndarray, unknown: np.ndarray) -> list[LineScore]:
        """The records of the lines that end in `piece` (a line's end is its line break)."""
        codes = np.frombuffer(piece.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
        stops = np.flatnonzero(codes == 10) + 1  # just after each line break
        ended = len(stops)
        if not ended or stops[-1] != len(piece):
            stops = np.append(stops, len(piece))
        starts = np.concatenate([[0], stops[:-1]])
        known = ~np.isnan(bits)
        sums = np.add.reduceat(np.where(known, bits, 0.0), starts).tolist()
        predicted = np.add.reduceat(known.astype(np.int64), starts).tolist()
        unknowns = np.add.reduceat(unknown.astype(np.int64), starts).tolist()
        segment = np.repeat(np.arange(len(starts)), stops - starts)
        order = np.lexsort((-np.where(known, bits, -np.inf), segment))  # by line, then most bits first
        worst = order[starts].tolist()
        records = []
        for i, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
            at = worst[i]
            surprise = Surprise(self.line, at - start + 1, piece[at], float(bits[at]), bool(unknown[at]))
            text = piece[start:stop] if self.keep_text else None
            part = LineScore(
                self.line, stop - start, predicted[i], sums[i], unknowns[i], surprise if predicted[i] else None, text
            )
            if i == 0 and self.part is not None:
                part = _joined(self.part, part)
            if i < ended:
                records.append(part)
                self.line += 1
            self.part = None if i < ended else part
        self.chars += len(piece)
        return records

    def close(self) -> Iterator[LineScore]:
        """The last line, when the text does not end with a line break (read once all is added)."""
        if self.part is not None:
            yield self.part
            self.part = None


def _joined(head: LineScore, tail: LineScore) -> LineScore:
    """A line cut between two pieces, whole again: the tail's columns move by the head's length."""
    worst = head.worst
    if tail.worst is not None and (worst is None or tail.worst.bits > worst.bits):
        worst = replace(tail.worst, column=tail.worst.column + head.chars)
    text = None if head.text is None or tail.text is None else head.text + tail.text
    return LineScore(
        head.line,
        head.chars + tail.chars,
        head.predicted + tail.predicted,
        head.bits + tail.bits,
        head.unknown + tail.unknown,
        worst,
        text,
    )


class _Sum:
    """Line records added up into one for the text they make."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.chars = self.predicted = self.unknown = self.lines = 0
        self.bits = 0.0
        self.worst: Surprise | None = None

    def add(self, record: LineScore) -> None:
        self.first = record.line if self.first is None else self.first
        self.chars += record.chars
        self.predicted += record.predicted
        self.unknown += record.unknown
        self.lines += record.lines
        self.bits += record.bits
        if record.worst is not None and (self.worst is None or record.worst.bits > self.worst.bits):
            self.worst = record.worst

    def record(self) -> LineScore:
        return LineScore(
            self.first or 1, self.chars, self.predicted, self.bits, self.unknown, self.worst, None, self.lines
        )


# --- rendering (rich is imported here only) -------------------------------------------------------

TEXT_WIDTH = 60  # characters of a line shown in the table


def shown(text: str) -> str:
    """`text` on one line of a table: a line break as "\\n", other invisible characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def scores_table(scores: FileScores) -> Any:
    """A rich table of a file's records, one row each (a whole text: one row), the totals below."""
    from rich.table import Table
    from rich.text import Text

    records, whole = list(scores), scores.whole
    how = "each line on its own" if scores.independent else "lines in context, the state carried"
    how += ", by dynamic evaluation" if scores.dynamic else ""
    order = ", most bits per character first" if scores.sorted else ""
    table = Table(title=f"{scores.name}: {how}{order}", caption=_caption(scores), caption_justify="left")
    first = "lines" if whole else "line"
    for name in (first, "chars", "bits", "bits/char", "unknown", "worst at (line:col)", "char", "its bits"):
        table.add_column(name, justify="right")
    if not whole:
        table.add_column("text", justify="left", no_wrap=True, max_width=TEXT_WIDTH + 1)
    for record in records:
        bpc = record.bits_per_char
        worst = record.worst
        where = "-" if worst is None else f"{worst.line}:{worst.column}"
        char = "-" if worst is None else shown(worst.char) + (" <unk>" if worst.unknown else "")
        row = [
            f"{record.lines if whole else record.line:,}",
            f"{record.chars:,}",
            f"{record.bits:,.1f}",
            "-" if math.isnan(bpc) else f"{bpc:.3f}",
            f"{record.unknown:,}" if record.unknown else "",
            where,
            char,
            "-" if worst is None else f"{worst.bits:.2f}",
        ]
        if not whole:
            line = shown(record.text or "")
            row.append(line if len(line) <= TEXT_WIDTH else line[: TEXT_WIDTH - 1] + "…")
        table.add_row(*(Text(cell) for cell in row))  # Text: a "[" in a line is not rich markup
    return table


def _caption(scores: FileScores) -> str:
    summed = scores.total
    bpc = summed.bits_per_char
    figure = "-" if math.isnan(bpc) else f"{bpc:.4f}"
    source = "" if scores.independent else f" (charrnn eval{' --dynamic' if scores.dynamic else ''}'s figure)"
    return (
        f"All {summed.lines:,} lines: {summed.chars:,} characters, {summed.predicted:,} predicted, "
        f"{summed.bits:,.1f} bits, {figure} bits per character{source}.\n"
        "Lines and columns count from 1; a line break belongs to the line it ends."
    )
