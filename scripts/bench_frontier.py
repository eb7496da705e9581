"""The quality frontier on this machine (issue 24): for each training budget, every model size of a
grid, scored by the quality benchmark's protocol, the results kept as data so a sizing rule can be
fitted to them (and refitted on another machine).

    python scripts/bench_frontier.py                                   # the grid below, 90/300/900 s
    python scripts/bench_frontier.py --budgets 90 --only 2x256,2x384   # a part of it
    python scripts/bench_frontier.py --tiny --out /tmp/frontier.jsonl  # toy sizes: checks that it runs
    python scripts/bench_frontier.py --table                           # the measured points, as markdown
    python scripts/bench_frontier.py --fit                             # the sizing rule's threshold

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
import math
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cpu import KJV, QUALITY_CHILD, SHAKESPEARE, TINY_OVERRIDE, run_child  # noqa: E402

from charrnn.sizing import LADDER  # noqa: E402

OUT = ROOT / "scripts" / "results" / "frontier_cpu.jsonl"

# name -> changes to the cpu preset: the sizes `--preset auto` chooses from (charrnn.sizing.LADDER),
# and three shapes the grid measured that the ladder left out (deeper or wider at equal cost).
POINTS: dict[str, dict] = {
    **{size.name: ({"model": size.model, "train": size.train} if size.model else {}) for size in LADDER},
    "3x256": {"model": {"num_layers": 3}, "train": {"lr": 8e-3}},
    "1x512": {"model": {"num_layers": 1, "hidden_size": 512}, "train": {"lr": 6e-3}},
    "3x384": {
        "model": {"num_layers": 3, "hidden_size": 384, "dropout_hidden": 0.2, "dropout_output": 0.2},
        "train": {"lr": 5e-3},
    },
    "auto": {},  # what `--preset auto` chooses on this machine for this budget and text
}
AUTO = "auto"
GRID: dict[float, tuple[str, ...]] = {
    90: ("2x256", "2x384", "3x256", "1x512"),
    300: ("2x256", "2x384", "2x512"),
    900: ("2x256", "2x512", "3x384"),
}


def code_corpus(path: Path, chars: int = 1_115_394) -> Path:
    """A code corpus the rule was not fitted on: this Python's standard library (its .py files in
    sorted order, tests left out), cut to `chars` characters, the size of Tiny Shakespeare."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for source in sorted(stdlib.rglob("*.py")):
        relative = source.relative_to(stdlib)
        if {"test", "tests", "site-packages", "idle_test"} & set(relative.parts):
            continue
        text = source.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    path.write_text("".join(parts)[:chars], encoding="utf-8")
    return path


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
    override = merged(TINY_OVERRIDE, POINTS[name]) if tiny else dict(POINTS[name])
    if name == AUTO:
        override["auto"] = True
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
        "parameters": result["sizing"]["parameters"] if name == AUTO else parameters(override),
        "sizing": result["sizing"],
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


def _label(row: dict) -> str:
    """A point's name; for `auto`, with the size it chose."""
    sizing = row.get("sizing") or {}
    return f"auto: {sizing['size']}" if row["point"] == AUTO and sizing.get("size") else row["point"]


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
            f"| {r['corpus']} | {float(r['budget']):g} s | {_label(r)} | {r['parameters']:,} | "
            f"{r['val_nats_per_char']:.3f} | {r['seconds']:.1f} | {r['steps']:,} | {r['train_chars_per_sec']:,.0f} | "
            f"{r['train_chars']:,} | {r['commit']} |"
        )
    return "\n".join(lines)


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Each corpus and budget's points, repeated measurements of a point averaged: its parameters,
    its training characters per parameter and its score."""
    by_group: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        key = f"{r['corpus']} {float(r['budget']):g} s"
        by_group.setdefault(key, {}).setdefault(r["point"], []).append(r)
    return {
        key: [
            {
                "point": name,
                "parameters": runs[0]["parameters"],
                "ratio": statistics.mean(r["train_chars"] for r in runs) / runs[0]["parameters"],
                "loss": statistics.mean(r["val_nats_per_char"] for r in runs),
            }
            for name, runs in points.items()
        ]
        for key, points in by_group.items()
    }


def _pick(points: list[dict], k: float) -> dict:
    """The sizing rule on measured points: the largest that saw at least k characters per
    parameter, else the one that saw the most per parameter."""
    fits = [p for p in points if p["ratio"] >= k]
    return max(fits, key=lambda p: p["parameters"]) if fits else max(points, key=lambda p: p["ratio"])


def fit(rows: list[dict], corpus: str = SHAKESPEARE.name) -> dict:
    """charrnn.sizing.TOKENS_PER_PARAMETER from the grid on `corpus` (the other corpora, and the
    `auto` points, are what the rule is checked on): the range of thresholds whose picks lose the
    least to each budget's best point (the regret, in nats/char summed over budgets), and its
    geometric middle, to two figures (twice its lower end when the range has no upper end)."""
    groups = _groups([r for r in rows if r["corpus"] == corpus and r["point"] != AUTO])
    ratios = sorted({p["ratio"] for points in groups.values() for p in points})
    edges = [0.0, *ratios, math.inf]
    spans = []
    for low, high in zip(edges, edges[1:]):  # every k in (low, high] makes the same picks
        k = high if math.isfinite(high) else low * 2
        regret = sum(_pick(pts, k)["loss"] - min(p["loss"] for p in pts) for pts in groups.values())
        spans.append((regret, low, high))
    least = min(regret for regret, _, _ in spans)
    best = [(low, high) for regret, low, high in spans if regret <= least + 1e-12]
    low, high = best[0][0], best[0][1]
    for next_low, next_high in best[1:]:  # merge the first run of adjacent spans
        if next_low != high:
            break
        high = next_high
    middle = math.sqrt(low * high) if math.isfinite(high) and low > 0 else (low * 2 if low > 0 else high / 2)
    k = float(f"{middle:.2g}")
    picks = {key: _pick(points, k)["point"] for key, points in groups.items()}
    best_points = {key: min(points, key=lambda p: p["loss"])["point"] for key, points in groups.items()}
    return {
        "low": low,
        "high": high if math.isfinite(high) else None,
        "k": k,
        "regret": least,
        "picks": picks,
        "best": best_points,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", help="comma-separated seconds (default: all of the grid's)")
    parser.add_argument("--only", help="comma-separated point names (default: the grid's for each budget)")
    parser.add_argument(
        "--corpus",
        choices=("shakespeare", "kjv", "code"),
        default="shakespeare",
        help="kjv: the bundled Bible; code: this Python's standard library (checks the rule on texts it was not fitted on)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resume", action="store_true", help="skip the points --out already holds")
    parser.add_argument("--tiny", action="store_true", help="toy models, 1 s budgets, 200 KB of text")
    parser.add_argument("--table", action="store_true", help="print the points --out holds as a markdown table")
    parser.add_argument("--fit", action="store_true", help="fit the sizing rule's threshold to the points --out holds")
    args = parser.parse_args(argv)
    if args.table or args.fit:
        if not args.out.is_file():
            raise SystemExit(f"{args.out} is not there: no point has been measured yet")
        rows = [json.loads(line) for line in args.out.read_text(encoding="utf-8").splitlines() if line.strip()]
        print(table(args.out) if args.table else json.dumps(fit(rows), indent=2))
        return
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else list(GRID)
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or ()) - set(POINTS))
    if unknown:
        raise SystemExit(f"unknown point(s) {', '.join(unknown)}: choose from {', '.join(POINTS)}")
    text = KJV if args.corpus == "kjv" else SHAKESPEARE
    if not text.is_file() and args.corpus != "code":
        raise SystemExit(f"{text} is not here: the frontier needs it")
    with tempfile.TemporaryDirectory() as scratch:
        if args.corpus == "code":
            text = code_corpus(Path(scratch) / "pystdlib.txt")
        if args.tiny:
            tiny = Path(scratch) / "tiny.txt"
            tiny.write_text(KJV.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
            text, budgets = tiny, [1.0]
        skip = done_points(args.out) if args.resume else set()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for budget in budgets:
            names = only or (("2x256",) if args.tiny else GRID.get(budget, tuple(POINTS)))
            for name in names:
                if (name, budget, text.name) in skip:
                    continue
                row = measure(name, budget, text, args.tiny)
                with args.out.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
