"""The quality frontier on this machine (issue 24): for each training budget, every model size of a
grid, scored by the quality benchmark's protocol, the results kept as data so a sizing rule can be
fitted to them (and refitted on another machine).

    python scripts/bench_frontier.py                                   # the grid below, 90/300/900 s
    python scripts/bench_frontier.py --budgets 90 --only 2x256,2x384   # a part of it
    python scripts/bench_frontier.py --tiny --out /tmp/frontier.jsonl  # toy sizes: checks that it runs
    python scripts/bench_frontier.py --table                           # the measured points, as markdown

Each point is one training run of `scripts/bench_cpu.py`'s quality child (the first 90% of Tiny
Shakespeare trains, one full stateful pass over the last 10% scores, the clock running from before
data loading to the end of that pass), with the `cpu` preset changed by the point's settings.
Every finished point is appended at once to `--out` (JSON lines: the point, the budget, the
figures, the commit, the load average before and after), so an interrupted grid keeps what it
measured and a rerun with `--resume` skips the points already there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cpu import KJV, QUALITY_CHILD, SHAKESPEARE, TINY_OVERRIDE, run_child  # noqa: E402

OUT = ROOT / "scripts" / "results" / "frontier_cpu.jsonl"

# name -> changes to the cpu preset. Larger models get more dropout (a 1 MB corpus) and a lower lr.
POINTS: dict[str, dict] = {
    "2x256": {},
    "2x384": {"model": {"hidden_size": 384}, "train": {"lr": 6e-3}},
    "3x256": {"model": {"num_layers": 3}, "train": {"lr": 8e-3}},
    "1x512": {"model": {"num_layers": 1, "hidden_size": 512}, "train": {"lr": 6e-3}},
    "2x512": {
        "model": {"hidden_size": 512, "dropout_hidden": 0.2, "dropout_output": 0.2},
        "train": {"lr": 4e-3},
    },
    "3x384": {
        "model": {"num_layers": 3, "hidden_size": 384, "dropout_hidden": 0.2, "dropout_output": 0.2},
        "train": {"lr": 5e-3},
    },
}
GRID: dict[float, tuple[str, ...]] = {
    90: ("2x256", "2x384", "3x256", "1x512"),
    300: ("2x256", "2x384", "2x512"),
    900: ("2x256", "2x512", "3x384"),
}


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "?"


def parameters(override: dict, vocab: int = 65) -> int:
    """The parameter count of the cpu preset changed by `override` (a char model of `vocab`)."""
    from charrnn.config import ModelConfig, preset_settings
    from charrnn.model import RNNLanguageModel

    model = {**preset_settings("cpu", "cpu")["model"], **override.get("model", {})}
    return sum(p.numel() for p in RNNLanguageModel(ModelConfig(vocab_size=vocab, **model)).parameters())


def merged(*overrides: dict) -> dict:
    out: dict = {"model": {}, "train": {}}
    for override in overrides:
        for part in out:
            out[part].update(override.get(part, {}))
    return out


def measure(name: str, budget: float, text: Path, tiny: bool) -> dict:
    override = merged(TINY_OVERRIDE, POINTS[name]) if tiny else POINTS[name]
    from charrnn.config import preset_settings

    train = {**preset_settings("cpu", "cpu")["train"], **override.get("train", {})}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CHARRNN_CACHE_DIR": str(Path(tmp) / "cache")}
        result = run_child(QUALITY_CHILD, [str(text), str(budget), str(Path(tmp) / "run"), json.dumps(override)], env)
    return {
        "point": name,
        "budget": budget,
        "settings": POINTS[name],
        "parameters": parameters(override),
        "val_nats_per_char": result["val"],
        "seconds": result["seconds"],
        "steps": result["steps"],
        "train_chars_per_sec": result["chars_per_sec"],
        "train_chars": result["steps"] * train["batch_size"] * train["seq_len"],
        "corpus": text.name,
        "commit": commit(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def done_points(out: Path) -> set[tuple[str, float, str]]:
    if not out.is_file():
        return set()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(row["point"], float(row["budget"]), row["corpus"]) for row in rows}


def table(out: Path) -> str:
    """The points of `out` as a markdown table: by corpus and budget, the best first."""
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["corpus"], float(r["budget"]), r["val_nats_per_char"]))
    lines = [
        "| corpus | budget | model | parameters | val nats/char | measured s | steps | train chars/s | chars seen | commit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['corpus']} | {float(r['budget']):g} s | {r['point']} | {r['parameters']:,} | "
            f"{r['val_nats_per_char']:.3f} | {r['seconds']:.1f} | {r['steps']:,} | {r['train_chars_per_sec']:,.0f} | "
            f"{r['train_chars']:,} | {r['commit']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", help="comma-separated seconds (default: all of the grid's)")
    parser.add_argument("--only", help="comma-separated point names (default: the grid's for each budget)")
    parser.add_argument("--corpus", choices=("shakespeare", "kjv"), default="shakespeare")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resume", action="store_true", help="skip the points --out already holds")
    parser.add_argument("--tiny", action="store_true", help="toy models, 1 s budgets, 200 KB of text")
    parser.add_argument("--table", action="store_true", help="print the points --out holds as a markdown table")
    args = parser.parse_args(argv)
    if args.table:
        if not args.out.is_file():
            raise SystemExit(f"{args.out} is not there: no point has been measured yet")
        print(table(args.out))
        return
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else list(GRID)
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or ()) - set(POINTS))
    if unknown:
        raise SystemExit(f"unknown point(s) {', '.join(unknown)}: choose from {', '.join(POINTS)}")
    text = KJV if args.corpus == "kjv" else SHAKESPEARE
    if not text.is_file():
        raise SystemExit(f"{text} is not here: the frontier needs it")
    with tempfile.TemporaryDirectory() as scratch:
        if args.tiny:
            tiny = Path(scratch) / "tiny.txt"
            tiny.write_text(KJV.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
            text, budgets = tiny, [1.0]
        skip = done_points(args.out) if args.resume else set()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for budget in budgets:
            names = only or GRID.get(budget, tuple(POINTS))
            for name in names if not args.tiny else names[:1]:
                if (name, budget, text.name) in skip:
                    continue
                row = measure(name, budget, text, args.tiny)
                with args.out.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
