"""nanoGPT's CPU recipe on charrnn's quality protocol, for the comparison column of
docs/performance.md, run in the same hour as charrnn's own rows.

    python scripts/bench_nanogpt.py --nanogpt ../nanoGPT --budgets 90,300

`--nanogpt` is a checkout of https://github.com/karpathy/nanoGPT: its `model.py` (GPT and
GPTConfig) is imported from there, not copied. The recipe is the one its README gives for a CPU
(`config/train_shakespeare_char.py` with `--block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`): AdamW at 1e-3, betas
(0.9, 0.99), weight decay 0.1, 100 warmup steps, cosine decay to 1e-4 over 2,000 steps, gradient
clipping at 1, random windows of the training text.

The protocol is charrnn's: the first 90% of Tiny Shakespeare trains and the last 10% is scored
whole, in nats per character, the clock running from before the text is read to the end of that
evaluation. Training stops at the recipe's 2,000 steps or when the budget, less the evaluation's
measured cost, is spent. nanoGPT carries no state across windows, so the score covers the text in
consecutive windows of the block size, every character after a window's first scored: each sees
half a block of context on average, the most this model can be given without overlapping windows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cpu import SHAKESPEARE  # noqa: E402

RECIPE = dict(
    block_size=64,
    batch_size=12,
    n_layer=4,
    n_head=4,
    n_embd=128,
    dropout=0.0,
    lr=1e-3,
    min_lr=1e-4,
    warmup=100,
    max_iters=2000,
    weight_decay=0.1,
    betas=(0.9, 0.99),
    grad_clip=1.0,
)
TINY = dict(block_size=16, batch_size=4, n_layer=1, n_head=1, n_embd=16, max_iters=50, warmup=5)


def learning_rate(step: int, recipe: dict) -> float:
    """The recipe's schedule: linear warmup, then cosine from lr to min_lr over max_iters."""
    if step < recipe["warmup"]:
        return recipe["lr"] * (step + 1) / (recipe["warmup"] + 1)
    ratio = min(1.0, (step - recipe["warmup"]) / max(1, recipe["max_iters"] - recipe["warmup"]))
    return recipe["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (recipe["lr"] - recipe["min_lr"])


@torch.no_grad()
def score(model: torch.nn.Module, val: torch.Tensor, block: int, batch: int = 64) -> float:
    """Mean nats per character over `val` in consecutive windows of `block` (+1 for the targets)."""
    model.eval()
    windows = (len(val) - 1) // block
    total, count = 0.0, 0
    for start in range(0, windows, batch):
        rows = range(start, min(windows, start + batch))
        x = torch.stack([val[i * block : (i + 1) * block] for i in rows])
        y = torch.stack([val[i * block + 1 : (i + 1) * block + 1] for i in rows])
        _, loss = model(x, y)
        total += float(loss) * y.numel()
        count += y.numel()
    model.train()
    return total / count


def run(nanogpt: Path, text_path: Path, budget: float, recipe: dict) -> dict:
    """One training run of the recipe under `budget` seconds, scored by the protocol."""
    started = time.monotonic()
    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's own module

    text = text_path.read_text(encoding="utf-8")
    chars = sorted(set(text))  # as nanoGPT's shakespeare_char/prepare.py builds its vocabulary
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(data) * 0.9)
    train, val = data[:cut], data[cut:]
    torch.manual_seed(1337)
    config = GPTConfig(
        block_size=recipe["block_size"],
        vocab_size=len(chars),
        n_layer=recipe["n_layer"],
        n_head=recipe["n_head"],
        n_embd=recipe["n_embd"],
        dropout=recipe["dropout"],
        bias=False,
    )
    with contextlib.redirect_stdout(sys.stderr):  # nanoGPT prints its parameter counts
        model = GPT(config)
        optimizer = model.configure_optimizers(recipe["weight_decay"], recipe["lr"], recipe["betas"], "cpu")
    block, batch = recipe["block_size"], recipe["batch_size"]
    probe = time.monotonic()
    score(model, val[: 20 * block + 1], block)  # the evaluation's cost, measured on 20 windows
    reserve = (time.monotonic() - probe) * (len(val) / (20 * block)) * 1.2 + 0.5
    step = 0
    while step < recipe["max_iters"] and time.monotonic() - started < budget - reserve:
        starts = torch.randint(len(train) - block - 1, (batch,))
        x = torch.stack([train[s : s + block] for s in starts])
        y = torch.stack([train[s + 1 : s + block + 1] for s in starts])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        step += 1
    trained = time.monotonic() - started
    val_loss = score(model, val, block)
    return {
        "budget": budget,
        "val_nats_per_char": val_loss,
        "seconds": time.monotonic() - started,
        "training_seconds": trained,
        "steps": step,
        "train_chars_per_sec": step * batch * block / max(trained, 1e-9),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--budgets", default="90,300", help="comma-separated seconds")
    parser.add_argument("--text", type=Path, default=SHAKESPEARE, help="default: Tiny Shakespeare")
    parser.add_argument("--tiny", action="store_true", help="a toy model and 50 steps: checks that it runs")
    args = parser.parse_args(argv)
    if not (args.nanogpt / "model.py").is_file():
        raise SystemExit(f"{args.nanogpt} holds no model.py: give a checkout of karpathy/nanoGPT")
    if not args.text.is_file():
        raise SystemExit(f"{args.text} is not here: the benchmark needs it")
    recipe = {**RECIPE, **(TINY if args.tiny else {})}
    print("| budget | val loss (nats/char) | measured s | steps | train chars/s |")
    print("| --- | --- | --- | --- | --- |")
    for budget in [float(b) for b in args.budgets.split(",")]:
        r = run(args.nanogpt, args.text, budget, recipe)
        print(
            f"| {budget:g} s | {r['val_nats_per_char']:.3f} | {r['seconds']:.1f} | {r['steps']:,} | "
            f"{r['train_chars_per_sec']:,.0f} |",
            flush=True,
        )
        print(json.dumps(r), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
