"""Dynamic evaluation against the static pass (issue 23): bits per character and speed.

    python scripts/bench_dynamic.py RUN                       # the three texts, the plot, the report
    python scripts/bench_dynamic.py RUN --sweep --segment 32,64,128 --lr 3e-4,1e-3 --decay 0,0.001,0.01
    python scripts/bench_dynamic.py RUN --tiny                # a toy size, for tests/test_scripts.py

The texts: (a) the run's own validation split, (b) the last `--kjv-chars` characters of the
bundled King James Bible (out of domain for a Shakespeare model), (c) a synthetic server log of
`--log-chars` characters, built here from a fixed seed (short, repetitive: host names, paths and
status codes recur). For each, the static pass and the dynamic one run `--repeats` times,
alternating (static, dynamic, dynamic, static, ...) in this process, so that the load of a shared
machine falls on both; the report gives the figures, the median seconds of each and their ratio.
The per-segment advantage (the share of the static bits that dynamic evaluation saves, over bins of the
text) is plotted against the position in the text, as in Krause et al.'s Figure 2.

`--adapt-example` measures what `charrnn sample --adapt` is for: the model reads the first 90% of
the Bible's tail by dynamic evaluation, then both it and the model as trained (primed alike with
the document's end) continue the document `--samples` times. Reported for each: bits per character
on the held-out last 10%, and the share of the samples' words (three letters or more) that the
document itself uses, the share the run's corpus uses, and the share only the document uses.

`--sweep` instead scores the validation split (its first `--sweep-tokens` tokens, all by default)
under every combination of --segment, --lr, --decay, --clip and --method given (comma-separated):
how the defaults of `charrnn.dynamic.DynamicSettings` were chosen (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import charrnn  # noqa: E402
from charrnn.data.dataset import Split, encode_text  # noqa: E402
from charrnn.dynamic import DynamicSettings  # noqa: E402
from charrnn.evaluate import predicted_chars  # noqa: E402
from charrnn.inference import CharrnnWarning  # noqa: E402
from charrnn.text_pass import windows  # noqa: E402

KJV = ROOT / "corpora" / "kjv.txt"
LN2 = float(np.log(2))


def synthetic_log(chars: int, seed: int = 23) -> str:
    """A server log: few hosts, paths, methods and statuses, recurring with varying numbers."""
    rng = random.Random(seed)
    hosts = ["web-01", "web-02", "db-primary", "cache-7"]
    paths = ["/api/users/{}", "/api/orders/{}/items", "/static/app.{}.js", "/healthz", "/login"]
    statuses = [("200", "OK"), ("200", "OK"), ("200", "OK"), ("404", "Not Found"), ("503", "Unavailable")]
    lines, size, second = [], 0, 0
    while size < chars:
        second += rng.randint(0, 3)
        status, reason = rng.choice(statuses)
        path = rng.choice(paths).format(rng.randint(100, 9999))
        line = (
            f"2026-12-07T08:{second // 60 % 60:02d}:{second % 60:02d}Z {rng.choice(hosts)} "
            f"{rng.choice(['GET', 'GET', 'POST'])} {path} {status} {reason} {rng.randint(2, 900)}ms\n"
        )
        lines.append(line)
        size += len(line)
    return "".join(lines)[:chars]


def token_bits(parts: object) -> np.ndarray:
    """The bits of every target of a pass (one stream), float64."""
    return np.concatenate([part.bits()[:, 0] for part in parts])  # type: ignore[attr-defined]


def static_pass(model: charrnn.Model, split: Split) -> np.ndarray:
    tokens = split.tokens
    return token_bits(windows(model.torch_module(), tokens, torch.tensor([0]), tokens.numel() - 1))


def dynamic_pass(model: charrnn.Model, split: Split, settings: DynamicSettings) -> np.ndarray:
    tokens = split.tokens
    return token_bits(model.dynamic_adapter(settings).windows(tokens, tokens.numel() - 1))


def compare(model: charrnn.Model, split: Split, settings: DynamicSettings, repeats: int) -> dict:
    """Both passes `repeats` times, alternating; bits per character and median seconds of each."""
    seconds: dict[str, list[float]] = {"static": [], "dynamic": []}
    bits: dict[str, np.ndarray] = {}
    order = ["static", "dynamic", "dynamic", "static"] * repeats
    for kind in order[: 2 * repeats]:
        start = time.perf_counter()
        bits[kind] = static_pass(model, split) if kind == "static" else dynamic_pass(model, split, settings)
        seconds[kind].append(time.perf_counter() - start)
    chars = predicted_chars(split, model.tokenizer)
    static, dynamic = bits["static"].sum() / chars, bits["dynamic"].sum() / chars
    median = {kind: statistics.median(times) for kind, times in seconds.items()}
    return {
        "chars": chars,
        "static_bits_per_char": static,
        "dynamic_bits_per_char": dynamic,
        "gain": 1 - dynamic / static,
        "static_seconds": median["static"],
        "dynamic_seconds": median["dynamic"],
        "static_chars_per_sec": chars / median["static"],
        "dynamic_chars_per_sec": chars / median["dynamic"],
        "time_ratio": median["dynamic"] / median["static"],
        "advantage": (bits["static"] - bits["dynamic"]).tolist(),  # per token, for the plot
        "static": bits["static"].tolist(),
    }


def plot(results: dict[str, dict], out: Path, bins: int) -> None:
    """The share of the static bits that dynamic evaluation saves, over each of `bins` equal
    stretches of each text (static minus dynamic, over static): texts of any difficulty on one scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for name, row in results.items():
        advantage, static = np.asarray(row["advantage"]), np.asarray(row["static"])
        edges = np.linspace(0, len(advantage), min(bins, len(advantage)) + 1).astype(int)
        means = [100 * advantage[a:b].sum() / static[a:b].sum() for a, b in zip(edges[:-1], edges[1:]) if b > a]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:]) if b > a]
        ax.plot(centres, means, label=f"{name} ({row['gain']:+.1%} overall)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("position in the text (tokens: characters for a char run)")
    ax.set_ylabel("bits saved (% of static)")
    ax.set_title("Where dynamic evaluation helps: advantage along the text")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def machine() -> dict[str, str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    return {
        "cpu": name or platform.processor(),
        "nproc": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "commit": commit.stdout.strip() or "?",
    }


def texts(model: charrnn.Model, args: argparse.Namespace) -> dict[str, Split]:
    _, val = model.validation("benchmark")
    if args.val_tokens:
        val = Split(val.tokens[: args.val_tokens], args.val_tokens)  # char runs: a token is a character
    kjv = KJV.read_text(encoding="utf-8")[-args.kjv_chars :]
    return {
        "validation": val,
        "kjv-tail": encode_text(model.tokenizer, kjv),
        "server-log": encode_text(model.tokenizer, synthetic_log(args.log_chars)),
    }


def sweep(model: charrnn.Model, args: argparse.Namespace) -> list[dict]:
    _, val = model.validation("sweep")
    if args.sweep_tokens:
        val = Split(val.tokens[: args.sweep_tokens], min(args.sweep_tokens, val.num_tokens))  # char runs
    split = val
    chars = predicted_chars(split, model.tokenizer)
    static = static_pass(model, split).sum() / chars
    print(f"static: {static:.4f} bits/char on {chars:,} characters", flush=True)
    rows = []
    grid = itertools.product(args.segment, args.lr, args.decay, args.clip, args.method)
    for segment, lr, decay, clip, method in grid:
        settings = DynamicSettings(
            segment=segment, lr=lr, decay=decay, clip=clip, method=method, stats_tokens=args.stats_tokens
        )
        start = time.perf_counter()
        dynamic = dynamic_pass(model, split, settings).sum() / chars
        row = {**settings.as_dict(), "bits_per_char": dynamic, "gain": 1 - dynamic / static}
        row["seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{3,}", text.lower()))


def adapt_example(model: charrnn.Model, args: argparse.Namespace) -> dict:
    """`sample --adapt` against `--adapt-only-state` on the Bible's tail (see the module's doc)."""
    from charrnn.inference import adapt_context

    text = KJV.read_text(encoding="utf-8")[-args.kjv_chars :]
    cut = int(len(text) * 0.9)
    document, held_out = text[:cut], text[cut:]
    prime = adapt_context(document)
    document_words = words(document)
    config = json.loads((args.run / "config.json").read_text(encoding="utf-8"))
    training_words = set().union(*(words(Path(f).read_text(encoding="utf-8")) for f in config["corpus"]["files"]))
    rows = {}
    for name, reader in (("adapted", model.adapt(document)), ("only state", model)):
        with warnings.catch_warnings():  # the document's verse numbers are not in a Shakespeare vocabulary
            warnings.simplefilter("ignore", CharrnnWarning)
            samples = reader.generate(prime, args.sample_chars, num_samples=args.samples, seed=1)
        drawn = [word for sample in samples for word in re.findall(r"[a-z]{3,}", sample.lower())]
        rows[name] = {
            "held_out_bits_per_char": reader.evaluate(prime + held_out).bits_per_char,
            "sample_words": len(drawn),
            "in_document": sum(word in document_words for word in drawn) / max(1, len(drawn)),
            "in_run_corpus": sum(word in training_words for word in drawn) / max(1, len(drawn)),
            "only_in_document": sum(w in document_words and w not in training_words for w in drawn)
            / max(1, len(drawn)),
            "first_sample": samples[0][:300],
        }
    return {"document_chars": len(document), "held_out_chars": len(held_out), "readers": rows}


def numbers(kind: type) -> object:
    return lambda text: [kind(item) for item in text.split(",")]


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--val-tokens", type=int, default=0, help="first N tokens of the validation split (0: all)")
    parser.add_argument("--kjv-chars", type=int, default=100_000)
    parser.add_argument("--log-chars", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bins", type=int, default=50)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "dynamic_advantage.png")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--adapt-example", action="store_true")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--sample-chars", type=int, default=400)
    parser.add_argument("--sweep-tokens", type=int, default=0, help="first N tokens of the validation split (0: all)")
    defaults = DynamicSettings()
    parser.add_argument("--segment", type=numbers(int), default=[defaults.segment])
    parser.add_argument("--lr", type=numbers(float), default=[defaults.lr])
    parser.add_argument("--decay", type=numbers(float), default=[defaults.decay])
    parser.add_argument("--clip", type=numbers(float), default=[defaults.clip])
    parser.add_argument("--method", type=lambda text: text.split(","), default=[defaults.method])
    parser.add_argument("--stats-tokens", type=int, default=defaults.stats_tokens)
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks that the script runs")
    args = parser.parse_args(argv)
    if args.tiny:
        args.val_tokens, args.kjv_chars, args.log_chars, args.repeats, args.stats_tokens = 300, 300, 300, 1, 256
        args.sweep_tokens, args.samples, args.sample_chars = 300, 2, 50
    return args


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    model = charrnn.load(args.run, device="cpu")
    if args.sweep:
        report: dict = {"machine": machine(), "sweep": sweep(model, args)}
    elif args.adapt_example:
        report = {"machine": machine(), "settings": DynamicSettings().as_dict(), "example": adapt_example(model, args)}
    else:
        first = dict(segment=args.segment[0], lr=args.lr[0], decay=args.decay[0], clip=args.clip[0])
        settings = DynamicSettings(**first, method=args.method[0], stats_tokens=args.stats_tokens)
        start = time.perf_counter()
        model.dynamic_adapter(settings)  # the gradient statistics, once (timed on their own)
        stats_seconds = time.perf_counter() - start
        results = {name: compare(model, split, settings, args.repeats) for name, split in texts(model, args).items()}
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(results, args.plot, args.bins)
        for row in results.values():
            row.pop("advantage"), row.pop("static")
        report = {"machine": machine(), "settings": settings.as_dict(), "stats_seconds": stats_seconds}
        report["texts"] = results
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
