"""Compare tokenizers fairly: the same model, the same wall-clock budget, scored in bits per character.

    python scripts/compare_tokenizers.py --budget 90s --out comparison.md

Trains one model per tokenizer (char, byte, and bpe / unigram at each of --vocab-sizes) on
tinyshakespeare through `charrnn.training.train`, every one with the same network shape and the
same training time, then scores each saved model on the validation split with the exact
protocol of `charrnn eval` (one state carried through the whole text). Bits per character
divide the summed loss by the characters of the raw text, so a tokenizer that writes fewer,
longer tokens gets no credit for that alone.

Tokenizer training and tokenizing the corpus happen before the clock starts (a cached,
one-time cost); the time budget covers training steps only. Throughput counts characters of
raw text per second, measured over the training steps after the first (which pays one-time
setup costs) and before the closing validation pass.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.config import ModelConfig, TrainConfig, parse_duration
from charrnn.data.corpus import find_corpus
from charrnn.data.dataset import prepare_dataset
from charrnn.devices import resolve_device
from charrnn.errors import CharrnnError
from charrnn.evaluate import evaluate
from charrnn.model import RNNLanguageModel
from charrnn.training import Report, train

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
NEVER = 10**9  # an evaluation interval no run reaches: the only validation pass is the closing one


@dataclass(frozen=True)
class Row:
    tokenizer: str
    vocab: int | None
    bits_per_char: float
    tokens_per_char: float
    parameters: int
    chars_per_sec: float
    steps: int
    error: str = ""


def machine() -> str:
    cpus = torch.get_num_threads()
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{_cpu_count()} CPUs ({cpus} torch threads), Python {platform.python_version()}, torch {torch.__version__}"
    )


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


class _Clock:
    """Steps and seconds of training between the first step (which pays one-time setup costs)
    and the closing validation pass."""

    def __init__(self) -> None:
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def on_log(self, record: dict[str, Any]) -> None:
        if "val_loss" in record:
            return
        if self.first is None:
            self.first = (record["step"], record["time"])
        self.last = (record["step"], record["time"])

    def steps_and_seconds(self) -> tuple[int, float] | None:
        if self.first is None or self.last is None:
            return None  # the only step ended in the validation pass: nothing clean to measure
        if self.last == self.first:
            return self.first  # one clean step: count it from the start
        return self.last[0] - self.first[0], self.last[1] - self.first[1]


def warm_up(model_settings: dict[str, Any], batch_size: int, seq_len: int, device: str) -> None:
    """A few untimed steps of the same network shape, so the first model compared does not pay
    the process's one-time costs (kernel selection, allocator growth) out of its budget."""
    target = resolve_device(device)
    model = RNNLanguageModel(ModelConfig(vocab_size=256, **model_settings)).to(target)
    optimizer = torch.optim.AdamW(model.parameters())
    for _ in range(3):
        x = torch.randint(0, 256, (seq_len + 1, batch_size), device=target)
        _, loss, _ = model(x[:-1], None, x[1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def compare_one(
    kind: str,
    vocab_size: int | None,
    corpus_path: Path,
    model_settings: dict[str, Any],
    budget: float,
    batch_size: int,
    seq_len: int,
    device: str,
    runs: Path,
) -> Row:
    cfg = TrainConfig(
        tokenizer=kind,
        vocab_size=vocab_size,
        batch_size=batch_size,
        seq_len=seq_len,
        max_time=budget,
        eval_interval=NEVER,
        log_interval=1,
        device=device,
    )
    corpus = find_corpus([str(corpus_path)])
    name = kind if vocab_size is None else f"{kind}-{vocab_size}"
    print(f"{name}: tokenizing (not timed), then training for {budget:g}s", file=sys.stderr, flush=True)
    dataset = prepare_dataset(corpus, cfg)  # fills the cache train() reads, so the budget is all training
    clock = _Clock()
    result = train(corpus, model_settings, cfg, runs / name, report=Report(on_log=clock.on_log))
    target = resolve_device(device)
    model, tokenizer = model_from_checkpoint(load_checkpoint(runs / name / "best.pt"), target)
    assert dataset.val is not None
    scored = evaluate(model, dataset.val, tokenizer, streams=1)
    chars_per_token = dataset.train.num_chars / dataset.train.num_tokens
    steps, seconds = clock.steps_and_seconds() or (0, math.nan)
    trained_chars = steps * batch_size * seq_len * chars_per_token
    return Row(
        tokenizer=kind,
        vocab=tokenizer.vocab_size,
        bits_per_char=scored.bits_per_char,
        tokens_per_char=dataset.val.num_tokens / dataset.val.num_chars,
        parameters=result.parameters,
        chars_per_sec=trained_chars / seconds if seconds > 0 else math.nan,
        steps=result.steps,
    )


def _count(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| tokenizer | vocab | val bits/char | tokens/char | parameters | train chars/s | steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error:
            lines.append(f"| {row.tokenizer} | {row.vocab or '-'} | failed: {row.error} | | | | |")
            continue
        lines.append(
            f"| {row.tokenizer} | {row.vocab} | {row.bits_per_char:.3f} | {row.tokens_per_char:.3f} | "
            f"{row.parameters:,} | {_count(row.chars_per_sec)} | {row.steps:,} |"
        )
    return "\n".join(lines)


def main(
    budget: Annotated[str, typer.Option(help="Training time per model, e.g. 90s, 5m.")] = "90s",
    out: Annotated[Optional[Path], typer.Option(help="Also write the report (markdown) to this file.")] = None,
    corpus: Annotated[Path, typer.Option(help="Text to train and validate on.")] = CORPUS,
    vocab_sizes: Annotated[str, typer.Option(help="Comma-separated bpe/unigram sizes (each above 257).")] = (
        "512,1024,4096"
    ),
    tokenizers: Annotated[str, typer.Option(help="Comma-separated kinds to compare.")] = "char,byte,bpe,unigram",
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn.")] = "lstm",
    layers: Annotated[int, typer.Option(help="Stacked RNN layers.")] = 2,
    hidden: Annotated[int, typer.Option(help="Hidden units per layer.")] = 256,
    embed: Annotated[int, typer.Option(help="Embedding size.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Parallel streams per step.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per stream per step.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    keep_runs: Annotated[Optional[Path], typer.Option(help="Keep the run directories here.")] = None,
) -> None:
    """Train one model per tokenizer for the same time and print a markdown table of the results."""
    if not corpus.is_file():
        sys.exit(
            f"compare_tokenizers: the corpus {corpus} is not there; "
            "put tinyshakespeare.txt at ../shared/corpora/ (beside the repository) or pass --corpus"
        )
    try:
        seconds = parse_duration(budget)
        sizes = [int(s) for s in vocab_sizes.split(",") if s.strip()]
        target = resolve_device(device)
    except (CharrnnError, ValueError) as exc:
        sys.exit(f"compare_tokenizers: {exc}")
    kinds = [k.strip() for k in tokenizers.split(",") if k.strip()]
    plan = [(k, None) for k in kinds if k in ("char", "byte")]
    plan += [(k, size) for k in kinds if k in ("bpe", "unigram") for size in sizes]
    unknown = [k for k in kinds if k not in ("char", "byte", "bpe", "unigram")]
    if unknown or not plan:
        sys.exit(f"compare_tokenizers: nothing to compare (unknown kinds: {', '.join(unknown) or 'none'})")
    model_settings = {"cell": cell, "num_layers": layers, "hidden_size": hidden, "embed_size": embed}
    header = [
        "# Tokenizers compared in bits per character",
        "",
        f"- machine: {machine()}; device {target}",
        f"- commit: {git_commit()}",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- corpus: {corpus.name} ({corpus.stat().st_size:,} bytes), validation = its last 5%",
        f"- every model: {cell} {layers}x{hidden}, embedding {embed}, {batch_size} streams x {seq_len} tokens "
        f"per step, {seconds:g}s of training",
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
    ]
    print("\n".join(header), flush=True)
    warm_up(model_settings, batch_size, seq_len, device)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="charrnn-compare-") as scratch:
        runs = keep_runs or Path(scratch)
        for kind, size in plan:
            try:
                row = compare_one(kind, size, corpus, model_settings, seconds, batch_size, seq_len, device, runs)
            except CharrnnError as exc:
                row = Row(kind, size, math.nan, math.nan, 0, math.nan, 0, error=str(exc))
            rows.append(row)
    report = "\n".join(header) + "\n" + table(rows) + "\n"
    print(table(rows))
    if out is not None:
        out.write_text(report, encoding="utf-8")
        print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    typer.run(main)
