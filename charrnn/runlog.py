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
import os
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
        if finite(value) and value > 0:
            return float(value)
        return 1.0 if self.config.get("train", {}).get("tokenizer", "char") == "char" else None

    def tokens_per_step(self) -> int | None:
        """Tokens one step trains on: streams (all torchrun ranks) x sequence length."""
        train = self.config.get("train", {})
        world = (self.config.get("torchrun") or {}).get("world_size", 1)
        try:
            return int(train["batch_size"]) * int(train["seq_len"]) * int(world)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None

    def best_val(self) -> dict[str, Any] | None:
        """The record with the lowest finite validation loss, if any."""
        scored = [r for r in self.records if finite(r.get("val_loss"))]
        return min(scored, key=lambda r: r["val_loss"]) if scored else None

    def baselines(self) -> dict[str, float]:
        """Compressor name -> bits per character on the validation text, where the run recorded it."""
        found = self.config.get("baselines")
        if not isinstance(found, dict):
            return {}
        return {name: float(bits) for name, bits in found.items() if finite(bits)}


def finite(value: Any) -> bool:
    """A JSON number that is a finite float (not a bool, not an int beyond a float's range)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def read_run(path: Path, *, strict: bool = True) -> RunLog:
    """Read a run's config and metrics. `strict`: a metrics file without records, or with a line cut
    short or unreadable, is an error (what `plot` needs); otherwise reading stops there quietly.
    A config that is not what training writes (a section that is no object, nesting thousands
    deep, a file that is no regular file) is a CharrnnError naming the file and what is wrong."""
    if not path.is_dir():
        raise CharrnnError(f"no run directory {path}" if not path.exists() else f"{path} is not a run directory")
    config_path = path / CONFIG
    if not config_path.is_file():
        if os.path.lexists(config_path):
            raise CharrnnError(f"{config_path} is not a regular file")
        raise CharrnnError(f"{path} is not a run directory (it has no {CONFIG})")
    config = _parse(config_path, _read_capped(config_path, MAX_CONFIG_BYTES).decode("utf-8", "replace"))
    if not isinstance(config, dict):
        raise CharrnnError(f"{config_path} is not a run config (not a JSON object)")
    _check_config(config_path, config)
    return RunLog(path, config, _read_records(path / METRICS, strict))


MAX_CONFIG_BYTES = 64 << 20  # a run's config.json is a few kB; a corpus of many files' paths, some MB
# What the readers here use of a config, and the type each must have where it is given.
_SECTIONS = ("train", "model", "corpus", "torchrun")


def _read_capped(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise CharrnnError(f"{path} is larger than {limit >> 20} MiB: not a run config that charrnn wrote")
    return data


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise CharrnnError(f"cannot read {path}: its JSON is nested too deeply for a run config") from None
    except ValueError as exc:
        raise CharrnnError(f"cannot read {path}: {exc}") from None


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """The parts of a config that the readers use have the types training writes."""

    def wrong(where: str, what: str) -> CharrnnError:
        return CharrnnError(f"{path}: {where} is not {what}")

    for section in _SECTIONS:
        if section in config and not isinstance(config[section], dict):
            raise wrong(f'"{section}"', "an object")
    if config.get("baselines") is not None and not isinstance(config["baselines"], dict):
        raise wrong('"baselines"', "an object")
    files = config.get("corpus", {}).get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise wrong('"corpus.files"', "a list of file names")
    tokenizer = config.get("train", {}).get("tokenizer", "char")
    if not isinstance(tokenizer, str):
        raise wrong('"train.tokenizer"', "a tokenizer's name")
    for section, key in (("model", "vocab_size"), ("train", "max_steps"), ("torchrun", "world_size")):
        value = config.get(section, {}).get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise wrong(f'"{section}.{key}"', "a whole number")
    if config.get("created") is not None and not isinstance(config["created"], str):
        raise wrong('"created"', "a date")


def _read_records(metrics: Path, strict: bool) -> list[dict[str, Any]]:
    if os.path.lexists(metrics) and not metrics.is_file():
        raise CharrnnError(f"{metrics} is not a regular file")
    try:
        text = metrics.read_bytes().decode("utf-8", "replace")  # garbage is a line that is no record
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise CharrnnError(f"cannot read {metrics}: {exc.strerror or exc}") from None
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
        except (ValueError, RecursionError):
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if type(step) is not int or not 0 <= step < 2**63:
            if strict:
                raise CharrnnError(f"line {number} of {metrics} is not a metrics record")
            break
        records.append(record)
    return records
