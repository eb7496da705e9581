"""From a run and a text to an `Explanation`: find the text, score it in one stateful pass, rank the units."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from charrnn.errors import CharrnnError
from charrnn.viz.explain import DEFAULT_MAX_CHARS, RANK_DEPTH, TOP_K, Explanation, with_units

# Bytes of float32 states one pass may hold (every layer's h, and c, at every character).
ACTIVATION_LIMIT = 2 << 30

if TYPE_CHECKING:
    from charrnn.data.corpus import Corpus
    from charrnn.inference import Model


def explain_run(
    run: Path,
    text_file: str | None = None,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    encoding: str = "utf-8",
    device: str = "auto",
) -> Explanation:
    """Score the first `max_chars` characters of `text_file` (a file, or '-' for standard input;
    default: the run's validation text) with the run's best model, and explain them."""
    if max_chars < 1:
        raise CharrnnError(f"--max-chars must be at least 1, got {max_chars}")
    from charrnn.inference import load

    model = load(run, device=device)
    if text_file is None:
        text, total = validation_text(model, max_chars)
        source = "the run's validation text"
    else:
        text, total = file_text(text_file, max_chars, encoding)
        source = "standard input" if text_file == "-" else str(text_file)
    if total > len(text):
        source += f", its first {len(text):,} of {total:,} characters"
    return explain_text(model, text, title=_title(run), source=source, total_chars=total)


def _title(run: Path) -> str:
    run = Path(run)
    return run.name if run.is_dir() else f"{run.parent.name}/{run.name}"


def file_text(source: str, max_chars: int, encoding: str) -> tuple[str, int]:
    """The first `max_chars` characters of a text file (or '-') and its length in characters."""
    from charrnn.data.corpus import find_corpus

    corpus = find_corpus([source], encoding=encoding)
    text, total = _read(corpus, 0, max_chars)
    if total == 0:
        raise CharrnnError(f"{'standard input' if source == '-' else source} is empty: there is nothing to explain")
    return text, total


def validation_text(model: Model, max_chars: int) -> tuple[str, int]:
    """The first `max_chars` characters of the validation text the run was trained beside, read
    from the corpus itself (so characters the model never saw show as they are), and its length."""
    from charrnn.checkpoint import load_checkpoint, train_config_of
    from charrnn.data.corpus import find_corpus
    from charrnn.data.dataset import dataset_of_run

    payload = load_checkpoint(model.path, arrays=True)
    try:
        dataset = dataset_of_run(payload, train_config_of(payload))
    except CharrnnError as exc:
        raise CharrnnError(f"{exc}: pass TEXT_FILE to explain") from None
    if dataset.val is None:
        raise CharrnnError("the run has no validation split: pass TEXT_FILE to explain")
    info = payload["corpus"]
    encoding = info.get("encoding", "utf-8")
    if info.get("val_files"):
        corpus, start = find_corpus(info["val_files"], encoding=info.get("val_encoding", encoding)), 0
    else:
        corpus, start = find_corpus(info["files"], encoding=encoding), dataset.train.num_chars
    text, _ = _read(corpus, start, max_chars)
    return text, dataset.val.num_chars


def _read(corpus: Corpus, start: int, count: int) -> tuple[str, int]:
    """`count` characters of the corpus from character `start`, and how many characters follow `start`."""
    pieces: list[str] = []
    position = kept = 0
    for chunk in corpus.chunks():
        begin = max(0, start - position)
        position += len(chunk)
        if kept < count and begin < len(chunk):
            piece = chunk[begin : begin + count - kept]
            pieces.append(piece)
            kept += len(piece)
    return "".join(pieces), max(0, position - start)


def explain_text(model: Model, text: str, *, title: str, source: str, total_chars: int | None = None) -> Explanation:
    """One stateful pass of `model` over `text`, with each character's rank and the ranked units."""
    from charrnn.evaluate import compression_baselines
    from charrnn.score import char_alignment, token_labels

    cfg = model.config
    states = (2 if cfg.cell == "lstm" else 1) * cfg.num_layers * cfg.hidden_size
    if len(text) * states * 4 > ACTIVATION_LIMIT:
        raise CharrnnError(
            f"the states of {len(text):,} characters of a {cfg.num_layers} x {cfg.hidden_size} {cfg.cell} "
            f"take {len(text) * states * 4 / 1e9:.1f} GB: explain fewer with --max-chars"
        )
    tokenizer = model.tokenizer
    ids = tokenizer.encode(text).numpy()
    if tokenizer.unk_id is not None and bool((ids == tokenizer.unk_id).all()):
        raise CharrnnError(f"none of the characters of {source} is in the model's vocabulary: nothing to explain")
    score = model.score(text, top_k=min(RANK_DEPTH, model.config.vocab_size), activations=True)
    # The token each character begins with (its first, for a character of several bytes), as the
    # predictions label it: where it stands among them is the character's rank.
    _, _, char_first, _ = char_alignment(tokenizer, ids.tolist(), text)
    labels = token_labels(tokenizer)
    targets = [labels[ids[first]] for first in char_first.tolist()]
    activations = {"h": score.hidden}
    if score.cell is not None:
        activations["c"] = score.cell
    expl = Explanation(
        title=title,
        source=source,
        chars=list(text),
        bits=np.asarray(score.bits, dtype=np.float64),
        top=[predictions[:TOP_K] for predictions in score.top],
        rank=_ranks(targets, score.top, score.bits),
        unknown=np.asarray(score.unknown, dtype=bool),
        activations=activations,
        model={
            "cell": cfg.cell,
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "tokenizer": tokenizer.kind,
            "description": f"{cfg.cell.upper()}, {cfg.num_layers} x {cfg.hidden_size} units, "
            f"{tokenizer.kind} tokenizer of {cfg.vocab_size} ids",
        },
        total_chars=len(text) if total_chars is None else total_chars,
        baselines=compression_baselines(text),
    )
    return with_units(expl)


def _ranks(targets: list[str], top: list[list[tuple[str, float]]], bits: np.ndarray) -> np.ndarray:
    """1 + the position of each target among its predictions; 0 where it is not among them or not predicted."""
    ranks = np.zeros(len(targets), dtype=np.int64)
    for i, (target, predictions) in enumerate(zip(targets, top)):
        if math.isnan(bits[i]):
            continue
        for j, (label, _) in enumerate(predictions):
            if label == target:
                ranks[i] = j + 1
                break
    return ranks
