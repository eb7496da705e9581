"""Fine-tuning: a new run that starts from another model's weights, tokenizer and architecture.

`charrnn train NEW_TEXT --init-from RUN_OR_CHECKPOINT` reads the source checkpoint (a run
directory means its best) as `eval` would, and only reads it: the source run is never locked or
written to. The new run keeps the source's architecture and tokenizer; the options that would
change them are refused, while optimisation, budget, data and dropout options are free (the
source's dropout is the default, the preset's settings for the rest, as in any new run). The
optimizer, the schedule and the step counter start afresh.

A char model's vocabulary grows by the characters of the new training text it lacks. The
vocabulary stays sorted by code point, so the weight rows of the old characters move to their
new ids; each added character gets an output row of zeros and a bias of `log(p) + log Z`, where
`p` is its frequency in the new text (at most `NEW_CHAR_FREQUENCY`) and `log Z` the source's mean
log normaliser over the start of that text, and an input row that is the mean of the old ones
(zeros for tied weights, which are also the output rows). So at step 0 the old characters keep
their logits, hence their odds against each other, and the added ones share a small probability.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charrnn import options as table
from charrnn.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint, train_config_of
from charrnn.config import ModelConfig, TrainConfig, asdict
from charrnn.data.dataset import Dataset
from charrnn.data.tokenizers import CharTokenizer, Tokenizer
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel

# The options that fix what a fine-tune inherits: given, they must agree with the source.
ARCHITECTURE = ("cell", "layers", "hidden", "embed", "tie", "tokenizer", "vocab_size")
# Model options a fine-tune may change; where not given, the source's values hold.
REGULARISATION = ("dropout_embed", "dropout_hidden", "dropout_output", "weight_drop")
NEW_CHAR_FREQUENCY = 1e-3  # the most an added character's starting probability is set to
NORMALISER_TOKENS = 2048  # tokens of the new text over which the source's log normaliser is averaged


@dataclass(frozen=True)
class Source:
    """The checkpoint a fine-tune starts from, read and checked, with its file's content hash."""

    path: Path  # the checkpoint file, absolute
    digest: str  # blake2b of the file's bytes
    step: int | None  # the training step its weights are from
    model_config: ModelConfig
    train_config: TrainConfig
    tokenizer: Tokenizer
    model: RNNLanguageModel  # on the CPU, in eval mode

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def begin(self, dataset: Dataset, message: Callable[[str], None]) -> Start:
        """The weights and record a fine-tune on `dataset` starts from; says what was added."""
        added = added_chars(self, dataset.tokenizer)
        step = f" (step {self.step:,})" if self.step is not None else ""
        if isinstance(dataset.tokenizer, CharTokenizer):
            shown = f": {added[:40]!r}{' ...' if len(added) > 40 else ''}" if added else ""
            told = f"{len(added)} character{'' if len(added) == 1 else 's'} added to its vocabulary{shown}"
        else:
            told = f"its {dataset.tokenizer.kind} tokenizer kept"
        message(f"starting from {self.path}{step}: {told}")
        return Start(grown_weights(self, dataset.tokenizer, dataset.train.tokens), record(self, added))


@dataclass(frozen=True)
class Start:
    """What a fine-tune's Trainer starts from: the weights, and the record of their source."""

    weights: dict[str, torch.Tensor]
    origin: dict[str, Any]


def open_source(path: str | os.PathLike[str]) -> Source:
    """Read the checkpoint `--init-from` names (a run directory: its best); every refusal is one
    line that starts with `--init-from`."""
    try:
        return _read_source(Path(path))
    except CharrnnError as exc:
        raise CharrnnError(f"--init-from: {exc}") from None


def _read_source(path: Path) -> Source:
    file = resolve_checkpoint(path).resolve()
    before = _identity(file)
    with open(file, "rb") as handle:
        digest = hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=32)).hexdigest()
    payload = load_checkpoint(file)
    if _identity(file) != before:  # replaced while read: the source run is still training
        raise CharrnnError(f"{file} changed while it was read (is its run still training?): try again")
    model, tokenizer = model_from_checkpoint(payload)
    metrics = payload.get("metrics")
    step = metrics.get("step") if isinstance(metrics, dict) else None
    return Source(
        path=file,
        digest=digest,
        step=step if type(step) is int else None,
        model_config=model.cfg,
        train_config=train_config_of(payload),
        tokenizer=tokenizer,
        model=model.eval(),
    )


def _identity(file: Path) -> tuple[int, int, int, int]:
    try:
        info = file.stat()
    except OSError as exc:
        raise CharrnnError(f"cannot read {file}: {exc.strerror or exc}") from None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _inherited(source: Source) -> dict[str, Any]:
    """What the source has for each ARCHITECTURE option, as the option would give it."""
    cfg, tokenizer = source.model_config, source.tokenizer
    subword = tokenizer.kind in ("bpe", "unigram")
    return {
        "cell": cfg.cell,
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "embed": cfg.embed_size,
        "tie": cfg.tie_weights,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size if subword else None,
    }


def _spelled(name: str, value: Any) -> str:
    flag = table.BY_NAME[name].flag
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {'none' if value is None else value}"


def configs(
    source: Source, given: dict[str, Any], model_settings: dict[str, Any], cfg: TrainConfig
) -> tuple[dict[str, Any], TrainConfig]:
    """The model settings and TrainConfig of a fine-tune of `source`: the source's architecture and
    tokenizer, its regularisation unless `given` sets it (`model_settings` and `cfg` are what the
    options give, a preset's values included). Given options that contradict the source are
    refused together, in one line."""
    inherited = _inherited(source)
    clashes = [
        f"{_spelled(name, given[name])} (the source has {_spelled(name, inherited[name])})"
        for name in ARCHITECTURE
        if name in given and given[name] != inherited[name]
    ]
    if clashes:
        raise CharrnnError(
            f"--init-from keeps the source model's architecture and tokenizer, which {', '.join(clashes)} "
            f"would change: drop {'it' if len(clashes) == 1 else 'them'}"
        )
    model = {k: v for k, v in asdict(source.model_config).items() if k != "vocab_size"}
    for field in REGULARISATION:
        option = next(o.name for o in table.OPTIONS if o.field == f"model.{field}")
        shortcut = field in ("dropout_hidden", "dropout_output") and "dropout" in given
        if option in given or shortcut:
            model[field] = model_settings[field]
    tokenizer = dict(tokenizer=inherited["tokenizer"], vocab_size=inherited["vocab_size"])
    return model, dataclasses.replace(cfg, **tokenizer)


def added_chars(source: Source, tokenizer: Tokenizer) -> str:
    """The characters of `tokenizer` the source's vocabulary lacks ("" for byte and subword models)."""
    if not isinstance(tokenizer, CharTokenizer) or not isinstance(source.tokenizer, CharTokenizer):
        return ""
    old = set(source.tokenizer.chars)
    return "".join(c for c in tokenizer.chars if c not in old)


def record(source: Source, added: str) -> dict[str, Any]:
    """Where a fine-tuned run came from, for its config.json and checkpoints. `dataset_of_run`
    reads `added_chars` back to rebuild the vocabulary from the source's."""
    origin: dict[str, Any] = {"path": str(source.path), "blake2b": source.digest, "step": source.step}
    if isinstance(source.tokenizer, CharTokenizer):
        origin["added_chars"] = added
    return origin


@torch.no_grad()
def grown_weights(source: Source, tokenizer: Tokenizer, train_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The source's weights for a model over `tokenizer`, whose ids `train_tokens` (the new
    training split) are in: the same for byte and subword models, moved to the new ids with rows
    for the added characters for char models (see the module docstring)."""
    weights = {name: value.detach().clone() for name, value in source.model.state_dict().items()}
    if not added_chars(source, tokenizer):
        return weights
    old_id = {c: i for i, c in enumerate(source.tokenizer.chars, start=1)}
    rows = torch.tensor([0, *(old_id.get(c, -1) for c in tokenizer.chars)])  # each new id's old row; -1: added
    kept, added = rows >= 0, rows < 0

    def moved(old: torch.Tensor) -> torch.Tensor:
        grown = old.new_zeros((len(rows), *old.shape[1:]))
        grown[kept] = old[rows[kept]]
        return grown

    embed = moved(weights["embed.weight"])
    if not source.model_config.tie_weights:
        embed[added] = weights["embed.weight"][1:].mean(dim=0)  # row 0, <unk>, never trained
        weights["head.weight"] = moved(weights["head.weight"])
    else:
        weights["head.weight"] = embed  # one matrix: the added rows stay zero, as outputs must
    weights["embed.weight"] = embed
    bias = moved(weights["head.bias"])
    bias[added] = _added_bias(source, rows, train_tokens)[added]
    weights["head.bias"] = bias
    return weights


def _added_bias(source: Source, rows: torch.Tensor, train_tokens: torch.Tensor) -> torch.Tensor:
    """log(p) + the source's mean log normaliser, for every new id (only the added ones are used):
    an added character then starts at about probability p, its frequency in the new text capped."""
    counts = torch.bincount(train_tokens.long(), minlength=len(rows))[: len(rows)].double()
    frequency = (counts / counts.sum().clamp(min=1)).clamp(min=1e-12, max=NEW_CHAR_FREQUENCY)
    sample = train_tokens[:NORMALISER_TOKENS].long()
    length = min(256, sample.numel())
    streams = max(1, min(8, sample.numel() // length))
    old_ids = rows.clamp(min=0)[sample[: length * streams]].view(streams, length).T  # (T, B) in the old vocabulary
    logits, _, _ = source.model(old_ids)  # (T, B, V_old)
    log_z = torch.logsumexp(logits.double(), dim=-1).mean()
    return (frequency.log() + log_z).to(source.model.head.bias.dtype)
