"""A run directory: its checkpoints, config, metrics log, and the lock that makes one writer.

runs/NAME/
  best.safetensors  lowest validation loss so far (weights, config, tokenizer)
  last.safetensors  latest state, with everything `--resume` needs
  config.json       the resolved model and training config, and the corpus it read
  metrics.jsonl     one JSON object a line: step, time, train loss, val loss, lr, chars/s
  samples.jsonl     one JSON object a line: a sample drawn at an evaluation (charrnn/train_samples.py)
  lines.npz         a --lines run only: the hashes of its training, validation and test lines
  .lock             held (flock) by the `charrnn train` writing here

A run from charrnn 0.1 holds best.pt and last.pt (format 1) instead: it is still a run, and
resuming it reads last.pt and from then on writes the .safetensors files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from charrnn import jsonout
from charrnn.checkpoint import BEST, LAST, LEGACY_BEST, LEGACY_LAST
from charrnn.data.lines import LINES_FILE
from charrnn.errors import CharrnnError
from charrnn.files import atomic_write


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.best = path / BEST  # what this charrnn writes
        self.last = path / LAST
        self.legacy_best = path / LEGACY_BEST  # what charrnn 0.1 wrote, read but never written
        self.legacy_last = path / LEGACY_LAST
        self.config = path / "config.json"
        self.metrics = path / "metrics.jsonl"
        self.samples = path / "samples.jsonl"
        self.lines = path / LINES_FILE  # a --lines run's line hashes (charrnn.data.lines.LineSets)
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # directories create() made, deepest first
        self._made_lock = False

    def resume_from(self) -> Path | None:
        """The last checkpoint to resume from: last.safetensors, or a 0.1 run's last.pt; None if neither."""
        return next((path for path in (self.last, self.legacy_last) if path.is_file()), None)

    def has_checkpoint(self) -> bool:
        return any(path.exists() for path in (self.best, self.last, self.legacy_best, self.legacy_last))

    def create(self, *, fresh: bool) -> None:
        if fresh:
            self._refuse_if_used()
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

    def _refuse_if_used(self) -> None:
        """A fresh run starts only in a directory that is new, or empty but for what a `charrnn train`
        leaves of its own (its lock, its temporary files): never over a run (a checkpoint alone, best
        or last, of either format, is a run; so is a config.json or a metrics.jsonl), never over a
        file of the user's."""
        if not self.path.is_dir():
            return  # new (or not a directory at all, which mkdir reports)
        try:
            held = sorted(name for name in os.listdir(self.path) if not _left_by_charrnn(name))
        except OSError as exc:
            raise CharrnnError(f"cannot read run directory {self.path}: {exc.strerror or exc}") from None
        if not held:
            return
        holder = self._holder()
        if holder is not None:  # a live writer's run, before its first checkpoint maybe: say whose
            raise CharrnnError(f"run {self.path} is in use by another charrnn train (pid {holder})")
        if self.resume_from() is not None:
            raise CharrnnError(f"run {self.path} already exists: pass --resume to continue it, or choose another --run")
        if self._cut_short(held):
            print(
                f"charrnn: note: {self.path} holds only what a start killed before its first checkpoint "
                f"left ({', '.join(held)}): starting afresh over it",
                file=sys.stderr,
            )
            for name in held:
                (self.path / name).unlink()
            return
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        runs_files = {self.best.name, self.legacy_best.name, self.config.name, self.metrics.name}
        if runs_files & set(held) or any(name.endswith((".safetensors", ".pt")) for name in held):
            raise CharrnnError(
                f"run {self.path} already exists (it holds {shown}) and has no last checkpoint to resume: "
                "choose another --run; a new run never writes over one"
            )
        raise CharrnnError(
            f"--run {self.path} is not empty (it holds {shown}): choose a new or empty directory; "
            "a new run never writes among files of yours"
        )

    def _cut_short(self, held: list[str]) -> bool:
        """The directory holds only what a fresh `charrnn train` killed (SIGKILL: no clean-up ran)
        before its first checkpoint and its first metrics record leaves: its lock, its own
        config.json, an empty metrics.jsonl or samples.jsonl, its lines.npz. No weights, no figure:
        nothing to lose. (A config.json without the lock that wrote it is refused: a copy of a run's.)"""
        if self.has_checkpoint() or self.config.name not in held or not (self.path / ".lock").is_file():
            return False
        if not set(held) <= {self.config.name, self.metrics.name, self.samples.name, self.lines.name}:
            return False
        if any((self.path / name).is_symlink() or not (self.path / name).is_file() for name in held):
            return False
        if any(p.name in held and p.stat().st_size > 0 for p in (self.metrics, self.samples)):
            return False
        try:
            if self.config.stat().st_size > 1 << 20:
                return False
            config = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(config, dict) and isinstance(config.get("charrnn_version"), str)

    def _holder(self) -> str | None:
        """The pid of the process holding the run's lock, or None when nobody holds it."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released at once, by the close below
        except OSError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        return None

    def lock(self) -> None:
        """Take the run's lock or refuse; the kernel drops it when the process dies, however it dies."""
        self._made_lock = not (self.path / ".lock").exists()
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CharrnnError(f"cannot lock run directory {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CharrnnError(f"run {self.path} is in use by another charrnn train (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        for stale in self.path.glob(".*.tmp"):  # temporary files of a writer that was killed mid-save
            stale.unlink(missing_ok=True)

    def refuse_if_locked(self) -> None:
        """Refuse as `lock` does while another process holds the lock, without taking it or writing
        anything: a resume that is then refused for another reason leaves the run as it was."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CharrnnError(f"cannot lock run directory {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # dropped again by the close below
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise CharrnnError(f"run {self.path} is in use by another charrnn train (pid {holder})") from None
        finally:
            os.close(fd)

    def unlock(self) -> None:
        """Release the lock. A run left without any checkpoint (a `train` that failed before its
        first save) is tidied away: what this process made (lock file, directories and the config
        and metrics in them) is removed, so a failed command leaves nothing behind."""
        if self._lock_fd is None:
            return
        if not self.has_checkpoint():
            leftovers = [self.path / ".lock"] if self._made_lock else []
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

    def write_config(self, config: dict[str, Any]) -> None:
        text = jsonout.dumps(config, indent=2, sort_keys=True) + "\n"  # strict, as every file charrnn writes
        atomic_write(self.config, lambda handle: handle.write(text.encode()))

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config.read_text())
        except (OSError, ValueError) as exc:
            raise CharrnnError(f"cannot read {self.config}: {exc}") from None

    def append_metrics(self, record: dict[str, Any]) -> None:
        _append(self.metrics, record)

    def append_sample(self, record: dict[str, Any]) -> None:
        _append(self.samples, record)

    def trim_metrics(self, up_to_step: int) -> None:
        """Keep the complete records of metrics.jsonl and samples.jsonl up to `up_to_step` (those
        after the resumed checkpoint are replayed)."""
        for path in (self.metrics, self.samples):
            _trim(path, up_to_step)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        records = []
        for line in self.metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break
        return records


def _left_by_charrnn(name: str) -> bool:
    """A run's lock, or the temporary file (`.NAME.PID.tmp`) of a writer that was killed mid-save."""
    return name == ".lock" or re.fullmatch(r"\..+\.[0-9]{1,10}\.tmp", name) is not None


def _append(path: Path, record: dict[str, Any]) -> None:
    try:
        with open(path, "a") as handle:
            handle.write(jsonout.dumps(record) + "\n")  # strict JSON: a NaN loss is null
    except OSError as exc:  # a line cut short is dropped by the next resume (trim_metrics)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CharrnnError(f"could not append to {path}: {reason}") from None


def _trim(path: Path, up_to_step: int) -> None:
    """Rewrite the JSON-lines log `path` with its complete records up to `up_to_step`."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a record cut short by a kill
        try:
            record = json.loads(line)
        except ValueError:
            break
        if record.get("step", 0) > up_to_step:
            break
        kept.append(line)
    text = "".join(kept)
    atomic_write(path, lambda handle: handle.write(text.encode()))
