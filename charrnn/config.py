"""Frozen configuration objects, validated once, saved inside every checkpoint.

`ModelConfig` fixes the network's shape; `TrainConfig` fixes how it is trained
and on what split of the data. Both round-trip through plain dicts
(`asdict` / `from_dict`) so a checkpoint carries them as JSON-safe values.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from charrnn.errors import CharrnnError

CELLS = ("lstm", "gru", "rnn")
SCHEDULES = ("cosine", "constant")
TOKENIZERS = ("char", "byte", "bpe", "unigram")
PRECISIONS = ("auto", "fp32", "bf16")

# The largest sizes accepted: far above anything sensible, low enough that a
# typo (`--hidden 1000000`) is refused before it allocates terabytes.
MAX_WIDTH = 65_536
MAX_LAYERS = 64


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CharrnnError(message)


def _check_fraction(name: str, value: float, *, upper_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    _check(math.isfinite(value) and ok, f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of an `RNNLanguageModel`: embedding -> stacked RNN -> linear head."""

    vocab_size: int
    cell: str = "lstm"
    num_layers: int = 2
    hidden_size: int = 512
    embed_size: int = 128
    dropout_embed: float = 0.0  # on the embedding output, before the RNN
    dropout_hidden: float = 0.1  # between stacked RNN layers
    dropout_output: float = 0.1  # on the last RNN layer's output, before the head
    tie_weights: bool = False  # share embedding and output weights (adds a projection if sizes differ)
    weight_drop: float = 0.0  # DropConnect on each layer's hidden-to-hidden weights, one mask per step

    def __post_init__(self) -> None:
        _check(self.cell in CELLS, f"unknown cell {self.cell!r}: choose one of {', '.join(CELLS)}")
        _check(1 <= self.vocab_size <= 1 << 24, f"vocabulary size must be positive, got {self.vocab_size}")
        _check(1 <= self.num_layers <= MAX_LAYERS, f"--layers must be in 1..{MAX_LAYERS}, got {self.num_layers}")
        _check(1 <= self.hidden_size <= MAX_WIDTH, f"--hidden must be in 1..{MAX_WIDTH}, got {self.hidden_size}")
        _check(1 <= self.embed_size <= MAX_WIDTH, f"--embed must be in 1..{MAX_WIDTH}, got {self.embed_size}")
        for name in ("dropout_embed", "dropout_hidden", "dropout_output", "weight_drop"):
            _check_fraction(f"--{name.replace('_', '-')}", getattr(self, name))


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the model's shape."""

    # data
    tokenizer: str = "char"
    vocab_size: int | None = None  # only for the SentencePiece kinds
    val_frac: float = 0.05
    test_frac: float = 0.0
    lines: bool = False  # one example per line: split by lines, each shuffled line ends with its break (data/lines.py)
    # optimisation
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr_frac: float = 0.05  # cosine decays to this fraction of lr
    grad_clip: float = 1.0
    # budget: training stops at whichever comes first; None means no limit
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None  # seconds
    # evaluation, early stopping, logging
    eval_interval: int = 200  # steps between validation passes
    eval_tokens: int | None = 1_000_000  # validation tokens scored during training (None: all)
    # validation pieces scored side by side during training (None: as many as the batch has streams,
    # over all torchrun ranks, who share them; 1: exact); the final evaluation is always exact
    eval_streams: int | None = None
    patience: int | None = None  # validation passes without improvement before stopping
    log_interval: int = 20  # steps between progress updates and metrics lines
    save_interval: int | None = None  # steps between saves of `last` (default: every evaluation)
    # samples while training (charrnn/train_samples.py): every sample_every evaluations (0: never)
    sample_every: int = 1
    sample_length: int = 200  # characters per sample (a --lines run: at most, per example)
    sample_prime: str = ""  # the text samples start from ("": a line break)
    # reproducibility and hardware
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        _check(
            self.tokenizer in TOKENIZERS, f"unknown tokenizer {self.tokenizer!r}: choose one of {', '.join(TOKENIZERS)}"
        )
        if self.tokenizer in ("bpe", "unigram"):
            _check(self.vocab_size is not None, f"--tokenizer {self.tokenizer} needs --vocab-size")
        if self.vocab_size is not None:
            _check(2 <= self.vocab_size <= 1 << 20, f"--vocab-size must be in 2..{1 << 20}, got {self.vocab_size}")
        _check_fraction("--val-frac", self.val_frac)
        _check_fraction("--test-frac", self.test_frac)
        _check(self.val_frac + self.test_frac < 1.0, "--val-frac plus --test-frac must leave some text to train on")
        _check(1 <= self.batch_size <= MAX_WIDTH, f"--batch-size must be in 1..{MAX_WIDTH}, got {self.batch_size}")
        _check(1 <= self.seq_len <= 1 << 20, f"--seq-len must be in 1..{1 << 20}, got {self.seq_len}")
        _check(math.isfinite(self.lr) and 0 < self.lr <= 10, f"--lr must be in (0, 10], got {self.lr}")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "--weight-decay must be >= 0")
        _check(self.warmup_steps >= 0, "--warmup must be >= 0")
        _check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        _check_fraction("--min-lr-frac", self.min_lr_frac, upper_open=False)
        _check(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "--grad-clip must be >= 0 (0 turns clipping off)")
        _check(self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1")
        _check(
            self.max_epochs is None or (math.isfinite(self.max_epochs) and self.max_epochs > 0),
            "--max-epochs must be positive",
        )
        _check(
            self.max_time is None or (math.isfinite(self.max_time) and self.max_time > 0), "--max-time must be positive"
        )
        _check(self.eval_interval >= 1, "--eval-interval must be at least 1")
        _check(self.eval_tokens is None or self.eval_tokens >= 2, "--eval-tokens must be at least 2")
        _check(
            self.eval_streams is None or 1 <= self.eval_streams <= MAX_WIDTH,
            f"--eval-streams must be 1..{MAX_WIDTH}, got {self.eval_streams}",
        )
        _check(self.patience is None or self.patience >= 1, "--patience must be at least 1")
        _check(self.log_interval >= 1, "--log-interval must be at least 1")
        _check(self.save_interval is None or self.save_interval >= 1, "--save-interval must be at least 1")
        _check(self.sample_every >= 0, "--sample-every must be >= 0 (0 turns samples off)")
        _check(1 <= self.sample_length <= 100_000, f"--sample-length must be in 1..100000, got {self.sample_length}")
        _check(
            not (self.lines and "\n" in self.sample_prime),
            "--sample-prime must not hold a line break with --lines: it starts one example",
        )
        _check(0 <= self.seed < 2**63, f"--seed must be in 0..2^63-1, got {self.seed}")
        _check(
            self.precision in PRECISIONS, f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
        )


# Presets fill in whatever the command line leaves unset. `auto` picks `gpu` on CUDA, `cpu` elsewhere.
# The figures behind each choice are in the README's "Performance" section.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "model": dict(
            cell="lstm",
            num_layers=2,
            hidden_size=256,
            embed_size=64,
            dropout_embed=0.0,
            dropout_hidden=0.1,
            dropout_output=0.1,
            tie_weights=False,
            weight_drop=0.0,
        ),
        "train": dict(batch_size=32, seq_len=128, lr=1e-2, warmup_steps=50, weight_decay=0.01),
    },
    "gpu": {
        "model": dict(
            cell="lstm",
            num_layers=3,
            hidden_size=512,
            embed_size=128,
            dropout_embed=0.1,
            dropout_hidden=0.35,
            dropout_output=0.35,
            tie_weights=False,
            weight_drop=0.0,
        ),
        "train": dict(batch_size=64, seq_len=128, lr=3e-3, warmup_steps=100, weight_decay=0.1),
    },
}
PRESET_NAMES = ("auto", "cpu", "gpu")


def preset_settings(name: str, device_type: str) -> dict[str, dict[str, Any]]:
    """The model and training settings of a preset; 'auto' goes by the device."""
    _check(name in PRESET_NAMES, f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
    if name == "auto":
        name = "gpu" if device_type == "cuda" else "cpu"
    return PRESETS[name]


Config = TypeVar("Config", ModelConfig, TrainConfig)


def asdict(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
    """Rebuild a config, ignoring keys this version does not know."""
    if not isinstance(values, dict):
        raise CharrnnError(f"malformed {cls.__name__} in checkpoint")
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in values.items() if k in known})
    except TypeError as exc:
        raise CharrnnError(f"malformed {cls.__name__} in checkpoint: {exc}") from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '2m' -> 120.0, '1.5h' -> 5400.0."""
    match = _DURATION.match(text)
    if not match:
        raise CharrnnError(f"cannot read duration {text!r}: use e.g. 90s, 2m, 1.5h")
    unit = match.group(2).lower() if match.group(2) else None
    seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    _check(seconds > 0, f"duration must be positive, got {text!r}")
    return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_SIZE = 1 << 50  # a size above a pebibyte is a typo


def parse_size(text: str) -> int:
    """'1500' -> 1500 bytes, '64M' (or 64MiB, 64mb) -> 64 × 2^20, '2G' -> 2 × 2^30: binary units."""
    match = _SIZE.match(text) if len(text) <= 40 else None
    if not match or (match.group(3) and not match.group(2) and match.group(3).lower() != "b"):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise CharrnnError(f"cannot read size {shown!r}: use e.g. 500M or 2G")
    whole, _, fraction = match.group(1).partition(".")
    unit = _UNIT_BYTES[match.group(2).lower()]
    size = int(whole or "0") * unit + (int(fraction) * unit // 10 ** len(fraction) if fraction else 0)
    _check(1 <= size <= MAX_SIZE, f"size must be from 1 byte to 1 PiB, got {text!r}")
    return size
