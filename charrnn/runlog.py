"""What a run directory says about its training, read for display (`charrnn plot`, `charrnn runs`).

runs/NAME/config.json is written once, when training starts: the model and training configs,
the corpus, and (since issue 12) `created`, `chars_per_token` (training characters per token)
and `baselines` (gzip/bzip2/xz bits per character on the validation text the run is scored on).
runs/NAME/metrics.jsonl gets one record per log interval: step, time (seconds of training),
train_loss (nats per *token*, the mean over the interval), lr, chars_per_sec, and at evaluations
val_loss (nats per *character*); the last record of a run that ended on its own carries `stop`,
the reason it ended.

Nothing here imports torch: a listing of many runs stays quick.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.errors import CharrnnError

CONFIG, METRICS, LOCK = "config.json", "metrics.jsonl", ".lock"


@dataclass(frozen=True)
class RunLog:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.path.name

    def chars_per_token(self) -> float | None:
        """Characters per token of the training text: recorded, or 1 for a char tokenizer."""
        value = self.config.get("chars_per_token")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
        return 1.0 if self.config.get("train", {}).get("tokenizer", "char") == "char" else None

    def tokens_per_step(self) -> int | None:
        """Tokens one step trains on: streams (all torchrun ranks) x sequence length."""
        train = self.config.get("train", {})
        world = (self.config.get("torchrun") or {}).get("world_size", 1)
        try:
            return int(train["batch_size"]) * int(train["seq_len"]) * int(world)
        except (KeyError, TypeError, ValueError):
            return None

    def best_val(self) -> dict[str, Any] | None:
        """The record with the lowest finite validation loss, if any."""
        scored = [r for r in self.records if _finite(r.get("val_loss"))]
        return min(scored, key=lambda r: r["val_loss"]) if scored else None

    def baselines(self) -> dict[str, float]:
        """Compressor name -> bits per character on the validation text, where the run recorded it."""
        found = self.config.get("baselines")
        if not isinstance(found, dict):
            return {}
        return {name: float(bits) for name, bits in found.items() if _finite(bits)}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_run(path: Path, *, strict: bool = True) -> RunLog:
    """Read a run's config and metrics. `strict`: a metrics file without records, or with a line cut
    short or unreadable, is an error (what `plot` needs); otherwise reading stops there quietly."""
    if not path.is_dir():
        raise CharrnnError(f"no run directory {path}")
    if not (path / CONFIG).is_file():
        raise CharrnnError(f"{path} is not a run directory (it has no {CONFIG})")
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CharrnnError(f"cannot read {path / CONFIG}: {exc}") from None
    if not isinstance(config, dict):
        raise CharrnnError(f"{path / CONFIG} is not a run config (not a JSON object)")
    return RunLog(path, config, _read_records(path / METRICS, strict))


def _read_records(metrics: Path, strict: bool) -> list[dict[str, Any]]:
    try:
        text = metrics.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise CharrnnError(f"cannot read {metrics}: {exc}") from None
    if strict and not text.strip():
        raise CharrnnError(
            f"run {metrics.parent} has no metrics yet: its first record comes after --log-interval steps"
        )
    *lines, torn = text.split("\n")  # a complete file ends with a newline, leaving torn == ""
    if torn and strict:
        raise CharrnnError(
            f"the last line of {metrics} is cut short (a run killed while writing it?): "
            f"`charrnn train --resume {metrics.parent}` drops it, or delete that line"
        )
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            if strict:
                raise CharrnnError(f"line {number} of {metrics} is not a metrics record")
            break
        records.append(record)
    return records
