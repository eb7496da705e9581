"""What two gloo processes cost against one on this machine, at the same global batch.

    python scripts/bench_distributed.py                 # 4 runs of about 30 s of training each
    python scripts/bench_distributed.py --seconds 60 --batch 64

Runs, each a real `charrnn train` on the bundled corpus with a 2 × 256 LSTM and 128-token windows:

  one      1 process × B streams, as many threads as cores     (the baseline)
  one-1t   1 process × B streams, 1 thread                      (the baseline on one core)
  two      2 processes × B/2 streams, 1 thread each (torchrun)  (the same global batch, the same cores)
  half     1 process × B/2 streams, 1 thread                    (what one rank of `two` would do alone)

Throughput is read from the run's own metrics (characters trained between two log records divided by
the time between them; the warm-up and the final validation are left out). `two / one` is the price or
gain of splitting the batch over processes on these cores (a multi-threaded process on a busy
machine suffers most: its threads wait for each other); `two / one-1t` is what a second process on a
second core buys; `two / (2 × half)` is the parallel efficiency: what is lost to the gradient
all-reduce, the synchronisation and the shared machine. The report
starts with the machine, the commit, the load and the exact commands; on a shared machine the
figures are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
KJV = ROOT / "corpora" / "kjv.txt"
MODEL = ["--cell", "lstm", "--layers", "2", "--hidden", "256", "--embed", "128", "--seq-len", "128"]
QUIET = ["--eval-interval", "1000000000", "--eval-tokens", "4096", "--log-interval", "2", "--quiet", "--device", "cpu"]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}\n"
        f"- software: Python {platform.python_version()}, torch {torch.__version__}\n"
        f"- commit: {commit.stdout.strip() or '?'}{' (with uncommitted changes)' if dirty else ''}\n"
        f"- command: {shlex.join([sys.executable, *sys.argv])}"
    )


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def throughput(run: Path, global_batch: int, skip_seconds: float) -> tuple[float | None, int]:
    """Characters per second between the first log record after the warm-up and the last one
    before the final validation, and the number of steps that covers (None: too few records,
    as when a starved process takes most of its budget for one step)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "val_loss" not in r and r["time"] >= skip_seconds]
    if len(timed) < 2:
        return None, records[-1]["step"] if records else 0
    first, last = timed[0], timed[-1]
    steps = last["step"] - first["step"]
    return steps * global_batch * 128 / (last["time"] - first["time"]), steps


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def _ratio(top: float | None, bottom: float | None) -> str:
    return f"{top / bottom:.2f}" if top is not None and bottom else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per run")
    parser.add_argument("--batch", type=int, default=64, help="global batch (streams); must be even")
    parser.add_argument("--corpus", type=Path, default=KJV)
    args = parser.parse_args()
    half = args.batch // 2
    print("# charrnn: two gloo processes against one\n")
    print(machine())
    print(f"- load average before: {load()} (1, 5, 15 min)\n")

    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        base = Path(tmp)
        env = {**os.environ, "CHARRNN_CACHE_DIR": str(base / "cache")}
        budget = ["--max-time", f"{args.seconds}s"]
        charrnn = [sys.executable, "-m", "charrnn"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        runs = {
            "one": (charrnn + ["train"], args.batch, str(os.cpu_count()), args.batch),
            "one-1t": (charrnn + ["train"], args.batch, "1", args.batch),
            "two": (torchrun + ["-m", "charrnn", "--", "train"], half, "1", args.batch),
            "half": (charrnn + ["train"], half, "1", half),
        }
        # Tokenize the corpus into the cache once, outside every timed run.
        subprocess.run(
            charrnn + ["train", str(args.corpus), "--run", str(base / "warm"), "--max-steps", "1", *MODEL, *QUIET],
            env=env,
            check=True,
        )
        rows = {}
        for name, (prefix, per_rank, threads, global_batch) in runs.items():
            run = base / name
            command = [*prefix, str(args.corpus), "--run", str(run), "--batch-size", str(per_rank), *MODEL]
            command += [*budget, *QUIET]
            print(f"- {name}: OMP_NUM_THREADS={threads} {shlex.join(command)}", flush=True)
            subprocess.run(command, env={**env, "OMP_NUM_THREADS": threads}, check=True, capture_output=True)
            rows[name] = throughput(run, global_batch, skip_seconds=min(5.0, args.seconds / 5))
        print(f"- load average after: {load()}\n")

    one, single, two, alone = (rows[name][0] for name in ("one", "one-1t", "two", "half"))
    layouts = {
        "one": f"1 × {args.batch}, {os.cpu_count()} threads",
        "one-1t": f"1 × {args.batch}, 1 thread",
        "two": f"2 × {half}, 1 thread each",
        "half": f"1 × {half}, 1 thread",
    }
    print("| run | layout | chars/s | timed steps |")
    print("|---|---|---:|---:|")
    for name, layout in layouts.items():
        print(f"| {name} | {layout} | {_rate(rows[name][0])} | {rows[name][1]} |")
    print(f"\ntwo / one = {_ratio(two, one)}   two / one-1t = {_ratio(two, single)}   ", end="")
    print(f"two / (2 × half) = {_ratio(two, 2 * alone if alone else None)} (parallel efficiency)")


if __name__ == "__main__":
    main()
