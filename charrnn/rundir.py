"""A run directory, and the one place that reads and writes it: its files, its lock, its logs.

runs/NAME/
  best.safetensors  lowest validation loss so far (weights, config, tokenizer)
  last.safetensors  latest state, with everything `--resume` needs
  config.json       written once, when training starts: the model and training configs, the
                    corpus, `created`, `chars_per_token` (training characters per token),
                    `baselines` (gzip/bzip2/xz bits per character on the run's validation text)
                    and, where `--preset auto` chose the size, `sizing` (charrnn/sizing.py)
  metrics.jsonl     one record a line: step, time (seconds of training), train_loss (nats per
                    *token*, the mean over the interval), lr, chars_per_sec, and at evaluations
                    val_loss (nats per *character*); a run that ended on its own says why (`stop`)
  samples.jsonl     one record a line: a sample drawn at an evaluation (charrnn/train_samples.py)
  lines.npz         a --lines run only: the hashes of its training, validation and test lines
  curves.png        the loss curves, redrawn at evaluations (charrnn/plot.py)
  .lock             held (flock) by the `charrnn train` writing here, its pid inside

A run from charrnn 0.1 holds best.pt and last.pt (format 1) instead: it is still a run, and
resuming it reads last.pt and from then on writes the .safetensors files.

Both logs have one reader (`_read_lines`) and one policy: a last line cut short (what a killed
writer leaves) is skipped, a bad line before it is an error. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn import __version__, jsonout
from charrnn.checkpoint import BEST, LAST, LEGACY_BEST, LEGACY_LAST
from charrnn.config import ModelConfig, TrainConfig, asdict
from charrnn.data.lines import LINES_FILE
from charrnn.errors import CharrnnError
from charrnn.files import atomic_write

if TYPE_CHECKING:
    from charrnn.data.corpus import Corpus
    from charrnn.data.dataset import Dataset

CONFIG_FILE, METRICS_FILE, SAMPLES_FILE, LOCK_FILE = "config.json", "metrics.jsonl", "samples.jsonl", ".lock"
CURVES_FILE = "curves.png"
MAX_CONFIG_BYTES = 64 << 20  # a run's config.json is a few kB; a corpus of many files' paths, some MB
_SECTIONS = ("train", "model", "corpus", "torchrun")  # the config's parts that must be objects


class RunDir:
    """The files of one run directory, its lock, and reading and writing them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best = path / BEST  # what this charrnn writes
        self.last = path / LAST
        self.legacy_best = path / LEGACY_BEST  # what charrnn 0.1 wrote, read but never written
        self.legacy_last = path / LEGACY_LAST
        self.config = path / CONFIG_FILE
        self.metrics = path / METRICS_FILE
        self.samples = path / SAMPLES_FILE
        self.lines = path / LINES_FILE  # a --lines run's line hashes (charrnn.data.lines.LineSets)
        self.lock_file = path / LOCK_FILE
        self.curves = path / CURVES_FILE
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # directories create() made, deepest first
        self._made_lock = False

    def best_checkpoint(self) -> Path | None:
        """The checkpoint of the lowest validation loss: best.safetensors, or a 0.1 run's best.pt."""
        return next((path for path in (self.best, self.legacy_best) if path.is_file()), None)

    def resume_from(self) -> Path | None:
        """The last checkpoint to resume from: last.safetensors, or a 0.1 run's last.pt; None if neither."""
        return next((path for path in (self.last, self.legacy_last) if path.is_file()), None)

    def has_checkpoint(self) -> bool:
        return any(path.exists() for path in (self.best, self.last, self.legacy_best, self.legacy_last))

    def create(self, *, fresh: bool) -> None:
        if fresh:
            _refuse_if_used(self)
        missing = self.path
        while not missing.exists() and missing != missing.parent:
            self._made.append(missing)
            missing = missing.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CharrnnError(f"cannot create run directory {self.path}: {exc.strerror or exc}") from None
        if not os.access(self.path, os.W_OK):
            raise CharrnnError(f"run directory {self.path} is not writable")

    def holder(self) -> str | None:
        """The pid of the `charrnn train` holding the run's lock ("?" where it wrote none), or None
        when nobody does: a shared flock, asked for without waiting, is refused, else dropped at once.
        (Held for microseconds, it could make a `train` starting at that instant report the run busy.)"""
        try:  # O_NONBLOCK: a named pipe put where the lock goes must not hang the question
            fd = os.open(self.lock_file, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None  # never trained here, or tidied away: no writer took it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
        except BlockingIOError:
            return _pid_in(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        return None

    def _in_use(self, holder: str) -> CharrnnError:
        return CharrnnError(f"run {self.path} is in use by another charrnn train (pid {holder})")

    def lock(self) -> None:
        """Take the run's lock or refuse; the kernel drops it when the process dies, however it dies."""
        self._made_lock = not self.lock_file.exists()
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CharrnnError(f"cannot lock run directory {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _pid_in(fd)
            os.close(fd)
            raise self._in_use(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        for stale in self.path.glob(".*.tmp"):  # temporary files of a writer that was killed mid-save
            stale.unlink(missing_ok=True)

    def refuse_if_locked(self) -> None:
        """Refuse as `lock` does while another process holds the lock, without taking it or writing
        anything: a resume that is then refused for another reason leaves the run as it was."""
        holder = self.holder()
        if holder is not None:
            raise self._in_use(holder)

    def unlock(self) -> None:
        """Release the lock. A run left without any checkpoint (a `train` that failed before its
        first save) is tidied away: what this process made (lock file, directories and the config
        and metrics in them) is removed, so a failed command leaves nothing behind."""
        if self._lock_fd is None:
            return
        if not self.has_checkpoint():
            leftovers = [self.lock_file] if self._made_lock else []
            if self._made:
                leftovers += [self.config, self.metrics, self.samples, self.lines, *self.path.glob(".*.tmp")]
            for path in leftovers:
                path.unlink(missing_ok=True)
            for directory in self._made:
                try:
                    directory.rmdir()
                except OSError:
                    break  # something else is in it: keep it
        os.close(self._lock_fd)
        self._lock_fd = None

    def begin(
        self,
        model: ModelConfig,
        train: TrainConfig,
        corpus: dict[str, Any],
        dataset: Dataset,
        *,
        chars_per_token: float,
        init_from: dict[str, Any] | None = None,
        torchrun: dict[str, Any] | None = None,
        sizing: dict[str, Any] | None = None,
    ) -> None:
        """A fresh run's config.json (`corpus` from `corpus_record`; `init_from`, `torchrun` and `sizing`
        where given), a --lines run's line hashes, and no metrics or samples of an earlier start."""
        config = {
            "model": asdict(model),
            "train": asdict(train),
            "corpus": corpus,
            "charrnn_version": __version__,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
            "chars_per_token": chars_per_token,  # train loss per char = train_loss / this
        }
        if dataset.val is not None:  # gzip/bzip2/xz for `charrnn plot`: eval's figures, on the same text
            from charrnn.data.dataset import validation_text
            from charrnn.evaluate import compression_baselines

            held_out = validation_text({"corpus": corpus, "train_config": config["train"]}, dataset)
            config["baselines"] = compression_baselines("".join(held_out))
        extra = {"init_from": init_from, "torchrun": torchrun, "sizing": sizing}
        config.update({key: value for key, value in extra.items() if value is not None})
        self.write_config(config)
        if dataset.lines is not None:  # each side's line hashes: `sample` tells new lines from copies
            dataset.lines.save(self.lines)
        self.metrics.unlink(missing_ok=True)
        self.samples.unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        text = jsonout.dumps(config, indent=2, sort_keys=True) + "\n"  # strict, as every file charrnn writes
        atomic_write(self.config, lambda handle: handle.write(text.encode()))

    def read_config(self) -> dict[str, Any]:
        """config.json, refused in one line where it is not what training writes (`_read_config`)."""
        return _read_config(self.config)

    def validation_text(self) -> Iterator[str]:
        """The run's held-out text, read from its files as its training split them (the end of the
        running text, the --val-file, or a --lines run's held-out lines: `data.dataset.validation_text`),
        from what its checkpoint records, once the files are checked to hold the text it trained on."""
        from charrnn.checkpoint import load_checkpoint, train_config_of
        from charrnn.data.dataset import dataset_of_run, validation_text

        payload = load_checkpoint(self.path, arrays=True)  # its best checkpoint, else its last
        return validation_text(payload, dataset_of_run(payload, train_config_of(payload)))

    def append_metrics(self, record: dict[str, Any]) -> None:
        _append(self.metrics, record)

    def append_sample(self, record: dict[str, Any]) -> None:
        _append(self.samples, record)

    def read_metrics(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """metrics.jsonl's records (none if there is no file), by the reading policy above."""
        return _read_lines(self.metrics, strict)[1]

    def trim_metrics(self, up_to_step: int) -> None:
        """Keep the complete records of metrics.jsonl and samples.jsonl up to `up_to_step` (those
        after the resumed checkpoint are replayed)."""
        for path in (self.metrics, self.samples):
            if os.path.lexists(path):
                lines, records = _read_lines(path, strict=False)
                kept = len(list(itertools.takewhile(lambda record: record["step"] <= up_to_step, records)))
                text = "".join(lines[:kept])
                atomic_write(path, lambda handle, text=text: handle.write(text.encode()))

    def read_log(self, *, strict: bool = True) -> RunLog:
        """The run's config and metrics, for display. `strict` (what `plot` needs): a metrics file
        without records, or whose last line is cut short or no record, is an error too."""
        if not self.path.is_dir():
            raise CharrnnError(
                f"no run directory {self.path}" if not self.path.exists() else f"{self.path} is not a run directory"
            )
        if not os.path.lexists(self.config):
            raise CharrnnError(f"{self.path} is not a run directory (it has no {CONFIG_FILE})")
        config = self.read_config()
        records = self.read_metrics(strict=strict)
        if strict and not records:
            raise CharrnnError(f"run {self.path} has no metrics yet: its first record comes after --log-interval steps")
        return RunLog(self.path, config, records)


@dataclass(frozen=True)
class RunLog:
    """What a run directory says about its training: its config and its metrics records."""

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


def corpus_record(corpus: Corpus, val_corpus: Corpus | None, dataset: Dataset) -> dict[str, Any]:
    """What a run records of the text it reads (config.json's and each checkpoint's "corpus"): the
    files and their encodings, the content hash, and each split's characters."""
    return {
        "files": [str(p.resolve()) for p in corpus.files],
        "val_files": [str(p.resolve()) for p in val_corpus.files] if val_corpus else [],
        "encoding": corpus.encoding,
        "val_encoding": val_corpus.encoding if val_corpus else None,
        "hash": dataset.corpus_hash,
        "chars": {
            "train": dataset.train.num_chars,
            "val": dataset.val.num_chars if dataset.val else 0,
            "test": dataset.test.num_chars if dataset.test else 0,
        },
    }


def finite(value: Any) -> bool:
    """A JSON number that is a finite float (not a bool, not an int beyond a float's range)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _refuse_if_used(run: RunDir) -> None:
    """A fresh run starts only in a directory that is new, or empty but for what a `charrnn train`
    leaves of its own (its lock, its temporary files): never over a run (a checkpoint alone, best
    or last, of either format, is a run; so is a config.json or a metrics.jsonl), never over a
    file of the user's."""
    if not run.path.is_dir():
        return  # new (or not a directory at all, which mkdir reports)
    try:
        held = sorted(name for name in os.listdir(run.path) if not _left_by_charrnn(name))
    except OSError as exc:
        raise CharrnnError(f"cannot read run directory {run.path}: {exc.strerror or exc}") from None
    if not held:
        return
    holder = run.holder()
    if holder is not None:  # a live writer's run, before its first checkpoint maybe: say whose
        raise run._in_use(holder)
    if run.resume_from() is not None:
        raise CharrnnError(f"run {run.path} already exists: pass --resume to continue it, or choose another --run")
    if _cut_short(run, held):
        print(
            f"charrnn: note: {run.path} holds only what a start killed before its first checkpoint "
            f"left ({', '.join(held)}): starting afresh over it",
            file=sys.stderr,
        )
        for name in held:
            (run.path / name).unlink()
        return
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    if {BEST, LEGACY_BEST, CONFIG_FILE, METRICS_FILE} & set(held) or any(
        name.endswith((".safetensors", ".pt")) for name in held
    ):
        raise CharrnnError(
            f"run {run.path} already exists (it holds {shown}) and has no last checkpoint to resume: "
            "choose another --run; a new run never writes over one"
        )
    raise CharrnnError(
        f"--run {run.path} is not empty (it holds {shown}): choose a new or empty directory; "
        "a new run never writes among files of yours"
    )


def _cut_short(run: RunDir, held: list[str]) -> bool:
    """The directory holds only what a fresh `charrnn train` killed (SIGKILL: no clean-up ran)
    before its first checkpoint and its first metrics record leaves: its lock, its own
    config.json, an empty metrics.jsonl or samples.jsonl, its lines.npz. No weights, no figure:
    nothing to lose. (A config.json without the lock that wrote it is refused: a copy of a run's.)"""
    if run.has_checkpoint() or CONFIG_FILE not in held or not run.lock_file.is_file():
        return False
    if not set(held) <= {CONFIG_FILE, METRICS_FILE, SAMPLES_FILE, LINES_FILE}:
        return False
    if any((run.path / name).is_symlink() or not (run.path / name).is_file() for name in held):
        return False
    if any(p.name in held and p.stat().st_size > 0 for p in (run.metrics, run.samples)):
        return False
    try:
        if run.config.stat().st_size > 1 << 20:
            return False
        config = run.read_config()
    except (OSError, CharrnnError):
        return False
    return isinstance(config.get("charrnn_version"), str)


def _pid_in(fd: int) -> str:
    """The pid a lock's writer put in the lock file (a few bytes), or "?"."""
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
    except OSError:
        return "?"


def _left_by_charrnn(name: str) -> bool:
    """A run's lock, or the temporary file (`.NAME.PID.tmp`) of a writer that was killed mid-save."""
    return name == LOCK_FILE or re.fullmatch(r"\..+\.[0-9]{1,10}\.tmp", name) is not None


def _read_config(path: Path) -> dict[str, Any]:
    """A run's config.json, refused in one line (naming the file and what is wrong) where it is not
    what training writes: no regular file, over MAX_CONFIG_BYTES, no JSON object, nested thousands
    deep, or a part the readers use of another type."""
    if os.path.lexists(path) and not path.is_file():
        raise CharrnnError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        limit = MAX_CONFIG_BYTES >> 20
        raise CharrnnError(f"{path} is larger than {limit} MiB: not a run config that charrnn wrote")
    try:
        config = json.loads(data.decode("utf-8", "replace"))
    except RecursionError:
        raise CharrnnError(f"cannot read {path}: its JSON is nested too deeply for a run config") from None
    except ValueError as exc:
        raise CharrnnError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise CharrnnError(f"{path} is not a run config (not a JSON object)")
    _check_config(path, config)
    return config


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


def _append(path: Path, record: dict[str, Any]) -> None:
    try:
        with open(path, "a") as handle:
            handle.write(jsonout.dumps(record) + "\n")  # strict JSON: a NaN loss is null
    except OSError as exc:  # a line cut short is dropped by the next resume (trim_metrics)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CharrnnError(f"could not append to {path}: {reason}") from None


def _read_lines(path: Path, strict: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """The JSON-lines log `path` (metrics.jsonl, samples.jsonl): its lines that hold records, as
    written, and those records (a record is an object whose step is a whole number). A last line
    cut short, or no record, is skipped (refused if `strict`); a bad line before it is an error."""
    if os.path.lexists(path) and not path.is_file():
        raise CharrnnError(f"{path} is not a regular file")
    try:
        text = path.read_bytes().decode("utf-8", "replace")  # garbage is a line that is no record
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise CharrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
    *complete, torn = text.split("\n")  # a whole file ends with a newline, leaving torn == ""
    if torn and strict:
        raise CharrnnError(
            f"the last line of {path} is cut short (a run killed while writing it?): "
            f"`charrnn train --resume {path.parent}` drops it, or delete that line"
        )
    lines = [line + "\n" for line in complete]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if type(step) is not int or not 0 <= step < 2**63:
            if number == len(lines) and not strict:
                return lines[:-1], records
            raise CharrnnError(f"line {number} of {path} is not a {path.stem} record")
        records.append(record)
    return lines, records
