"""From a run and a text to an `Explanation`: find the text, score it in one stateful pass, rank the units."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from charrnn.errors import CharrnnError
from charrnn.viz.explain import DEFAULT_MAX_CHARS, RANK_DEPTH, TOP_K, Explanation, WholeText, with_units

# Bytes of float32 states one pass may hold (every layer's h, and c, at every character).
ACTIVATION_LIMIT = 2 << 30

if TYPE_CHECKING:
    from charrnn.data.dataset import Split
    from charrnn.dynamic import DynamicSettings
    from charrnn.inference import Model


def explain_run(
    run: Path,
    text_file: str | None = None,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    encoding: str = "utf-8",
    device: str = "auto",
    dynamic: DynamicSettings | None = None,
) -> Explanation:
    """Score the first `max_chars` characters of `text_file` (a file, or '-' for standard input;
    default: the run's validation text) with the run's best model, and explain them. Where that is
    an excerpt, the whole text is scored too, as `charrnn eval` scores it (`Explanation.whole`).
    With `dynamic`, each character's bits by dynamic evaluation too (`Explanation.dynamic_bits`)."""
    if max_chars < 1:
        raise CharrnnError(f"--max-chars must be at least 1, got {max_chars}")
    from charrnn.inference import load

    model = load(run, device=device)
    split: Split | None = None
    if text_file is None:
        whole, split = run_validation_text(model)
        source = "the run's validation text"
    else:
        whole = file_text(text_file, encoding)
        source = "standard input" if text_file == "-" else str(text_file)
    text = whole[:max_chars]
    figures = None
    if len(whole) > len(text):
        source += f", its first {len(text):,} of {len(whole):,} characters"
        figures = whole_text_figures(model, whole, split)
    expl = explain_text(model, text, title=_title(run), source=source, total_chars=len(whole), whole=figures)
    if dynamic is None:
        return expl
    return replace(expl, dynamic_bits=model.score(text, top_k=0, dynamic=dynamic).bits)


def _title(run: Path) -> str:
    run = Path(run)
    return run.name if run.is_dir() else f"{run.parent.name}/{run.name}"


def file_text(source: str, encoding: str) -> str:
    """The whole text of a file (or '-'); an empty one is refused."""
    from charrnn.data.corpus import find_corpus

    text = find_corpus([source], encoding=encoding).read_text()
    if not text:
        raise CharrnnError(f"{'standard input' if source == '-' else source} is empty: there is nothing to explain")
    return text


def run_validation_text(model: Model) -> tuple[str, Split]:
    """The validation text the run was trained beside, as `charrnn eval` and `score` read it
    (`charrnn.data.dataset.validation_text`), and the split of token ids eval scores."""
    chunks, split = model.validation("explain")
    return "".join(chunks), split


def whole_text_figures(model: Model, whole: str, split: Split | None = None) -> WholeText:
    """The model's bits per character on all of `whole` (from `split`, its token ids as the run's
    dataset holds them, where it is a run's validation text) and the compressors' on it: the
    figures `charrnn eval` reports on that text."""
    from charrnn.evaluate import compression_baselines, evaluate

    if split is None:
        result = model.evaluate(whole)
    else:
        result = evaluate(model.torch_module(), split, model.tokenizer, autocast=model.uses_bf16())
    return WholeText(chars=len(whole), bits_per_char=result.bits_per_char, baselines=compression_baselines(whole))


def explain_text(
    model: Model,
    text: str,
    *,
    title: str,
    source: str,
    total_chars: int | None = None,
    whole: WholeText | None = None,
) -> Explanation:
    """One stateful pass of `model` over `text`, with each character's rank and the ranked units;
    `text` is the first `total_chars` characters of a text whose figures are `whole`."""
    from charrnn.evaluate import compression_baselines
    from charrnn.score import token_labels

    cfg = model.config
    states = (2 if cfg.cell == "lstm" else 1) * cfg.num_layers * cfg.hidden_size
    if len(text) * states * 4 > ACTIVATION_LIMIT:
        raise CharrnnError(
            f"the states of {len(text):,} characters of a {cfg.num_layers} x {cfg.hidden_size} {cfg.cell} "
            f"take {len(text) * states * 4 / 1e9:.1f} GB: explain fewer with --max-chars"
        )
    tokenizer = model.tokenizer
    score = model.score(text, top_k=min(RANK_DEPTH, model.config.vocab_size), activations=True)
    if bool(score.unknown.all()):
        raise CharrnnError(f"none of the characters of {source} is in the model's vocabulary: nothing to explain")
    if not score.predicted:  # as eval and score refuse it: no character of it is predicted
        raise CharrnnError(f"{source} is one token long, and the first token is predicted by nothing")
    # The token each character begins with, as the predictions label it: where it stands among
    # them is the character's rank.
    labels = token_labels(tokenizer)
    targets = [labels[i] for i in score.first_token.tolist()]
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
        whole=whole,
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
