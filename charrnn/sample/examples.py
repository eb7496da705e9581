"""Whole examples from a `--lines` model: drawn in rounds until enough are kept, each flagged new or a copy.

A round asks the sampler for some continuations of a line break and the prime, each ending at the
next line break. A continuation that runs past the length without one is not an example and is
dropped; with `unique`, so is one already kept; with `novel`, so is one that copies a line of the
corpus. Rounds go on until `n` are kept or MAX_DRAWS_PER_EXAMPLE * n + EXTRA_DRAWS samples have
been drawn, whichever comes first: then the examples found are returned, and `summary` says so.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from charrnn.arguments import flag, integer
from charrnn.data.lines import NEW, LineSets
from charrnn.errors import CharrnnError
from charrnn.sample.settings import MAX_SAMPLES

MAX_DRAWS_PER_EXAMPLE = 10
EXTRA_DRAWS = 100
UNKNOWN = "unknown"  # the flag of every example when the run's line hashes are not there
SIDE_WORDS = {"train": "a training line", "val": "a validation line", "test": "a test line"}

# generate(count, seed) -> `count` continuations of the prime, each stopped at its line break
Generate = Callable[[int, "int | None"], list[str]]


def check_example_request(
    n: object, prime: object, length: object, unique: object, novel: object
) -> tuple[int, bool, bool]:
    """`Model.examples`'s arguments checked, with the flags' messages: n, unique and novel as typed."""
    n = integer("the number of examples", n)
    if not 1 <= n <= MAX_SAMPLES:
        raise CharrnnError(f"the number of examples must be in 1..{MAX_SAMPLES}, got {n!r}")
    if not isinstance(prime, str) or "\n" in prime:
        raise CharrnnError("the prime of an example must be a str without a line break: it starts one line")
    if length is not None and integer("--length", length) < 1:
        raise CharrnnError(f"the length of an example must be at least 1 character, got {length!r}")
    return n, flag("--unique", unique), flag("--novel", novel)


def max_draws(n: int) -> int:
    return MAX_DRAWS_PER_EXAMPLE * n + EXTRA_DRAWS


@dataclass(frozen=True)
class Examples:
    """What `Model.examples` returns: the examples (prime included, without their line break), each
    one's flag ("new", or "train", "val", "test": the side of the corpus whose line it copies), and
    how the drawing went."""

    texts: list[str]
    flags: list[str]
    asked: int
    drawn: int = 0  # samples drawn to find them, those dropped included
    drawn_flags: dict[str, int] = field(default_factory=dict)  # the flags of every finished sample drawn
    repeats: int = 0  # samples dropped by `unique`: a repeat of one already kept
    cut: int = 0  # samples dropped for running past `length` characters without a line break
    length: int = 0

    @property
    def complete(self) -> bool:
        """Whether as many examples were found as were asked for."""
        return len(self.texts) == self.asked

    def counts(self) -> dict[str, int]:
        """How many of the examples are new, and how many copy a line of each side ("unknown" too,
        when the run's line hashes are not there)."""
        counts = Counter(self.flags)
        known = {flag: counts[flag] for flag in (NEW, *SIDE_WORDS)}
        return {**known, UNKNOWN: counts[UNKNOWN]} if counts[UNKNOWN] else known

    def summary(self) -> str:
        """One line: how many examples are new and how many copy a training or validation line;
        then, when samples were dropped or too few were found, how the drawing went."""
        counts = self.counts()
        if UNKNOWN in counts:
            told = "which of them copy a line of the corpus is unknown (the run's lines.npz is missing)"
        else:
            told = f"{counts[NEW]} new, {counts['train']} copy a training line, {counts['val']} a validation line"
            told += f", {counts['test']} a test line" if counts["test"] else ""
        found = len(self.texts)
        head = f"{found} example{'s' if found != 1 else ''}: {told}"
        if not self.complete:
            head = (
                f"found only {found} of the {self.asked} examples asked for within {self.drawn} draws "
                f"(the bound is {MAX_DRAWS_PER_EXAMPLE} per example asked + {EXTRA_DRAWS}): {told}"
            )
        if self.drawn == found:
            return head
        dropped = [
            f"{self.drawn_flags.get(side, 0) - counts[side]} copied {word}"
            for side, word in SIDE_WORDS.items()
            if self.drawn_flags.get(side, 0) > counts.get(side, 0)
        ]
        if self.repeats:
            dropped.append(f"{self.repeats} repeated an example already kept")
        if self.cut:
            dropped.append(f"{self.cut} ran past {self.length} characters without a line break")
        return f"{head}; {self.drawn} drawn, {self.drawn - found} dropped ({', '.join(dropped)})"


def _round_seed(seed: int | None, round_: int) -> int | None:
    """Round 0 draws with the seed itself; later rounds with seeds derived from it."""
    if seed is None or round_ == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{round_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw_examples(
    generate: Generate,
    n: int,
    prime: str,
    *,
    sets: LineSets | None,
    unique: bool,
    novel: bool,
    length: int,
    seed: int | None,
) -> Examples:
    """`n` examples, drawn in rounds through `generate` (see the module docstring). The first round
    asks for exactly `n`; later ones for twice what is missing (at least 16), within the bound."""
    texts: list[str] = []
    flags: list[str] = []
    kept: set[str] = set()
    drawn_flags: Counter[str] = Counter()
    drawn = repeats = cut = round_ = 0
    bound = max_draws(n)
    while len(texts) < n and drawn < bound:
        missing = n - len(texts)
        count = min(bound - drawn, MAX_SAMPLES, missing if round_ == 0 else max(2 * missing, 16))
        for text in generate(count, _round_seed(seed, round_)):
            if len(texts) == n:
                break
            drawn += 1
            if len(text) > length:
                cut += 1
                continue
            example = prime + text
            flag = sets.flag(example) if sets is not None else UNKNOWN
            drawn_flags[flag] += 1
            if novel and flag != NEW:
                continue
            if unique and example in kept:
                repeats += 1
                continue
            kept.add(example)
            texts.append(example)
            flags.append(flag)
        round_ += 1
    return Examples(texts, flags, n, drawn, dict(drawn_flags), repeats, cut, length)
