"""GPU benchmarks (one CUDA device): quality per second on the nanoGPT shakespeare_char
protocol, the training loop against a bare cuDNN step, and sampling speed.

    python scripts/bench_gpu.py --out bench-gpu.md
    python scripts/bench_gpu.py --only sample,loop

The quality runs use the `gpu` preset (and, with --sweep, a few alternatives);
each is a fresh child process whose timing starts before model construction and
data loading and ends after the final full validation pass.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_cpu import SHAKESPEARE, header  # noqa: E402

from charrnn.config import ModelConfig, preset_settings  # noqa: E402
from charrnn.model import RNNLanguageModel  # noqa: E402

GPU = preset_settings("gpu", "cuda")
SWEEP = {
    "gpu preset": GPU,
    "3x512, batch 64x128": {
        "model": {
            **GPU["model"],
            "hidden_size": 512,
            "dropout_embed": 0.0,
            "dropout_hidden": 0.2,
            "dropout_output": 0.2,
        },
        "train": {**GPU["train"], "batch_size": 64, "seq_len": 128, "lr": 3e-3, "weight_decay": 0.01},
    },
    "3x1536, batch 128x256": {
        "model": {**GPU["model"], "hidden_size": 1536, "dropout_hidden": 0.3, "dropout_output": 0.3},
        "train": {**GPU["train"], "lr": 1.5e-3},
    },
}


def sync_time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


# ----- sampling -----


def bench_sampling(device: str = "cuda", scale: float = 1.0) -> list[str]:
    """Sampling speed on the reference 3x512 LSTM. `--smoke` runs it on the CPU at a hundredth of
    the lengths, without CUDA graphs, to check the script before GPU time is spent on it."""
    from charrnn.data.tokenizers import train_tokenizer
    from charrnn.model import SingleStep
    from charrnn.sample import triton_chooser as generate_triton
    from charrnn.sample.settings import SampleSettings
    from charrnn.sample.torch_sampler import Chooser, GraphBlock, filter_logits, sample

    tok = train_tokenizer("char", SHAKESPEARE.read_text())
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, num_layers=3, hidden_size=512, embed_size=128)
    model = RNNLanguageModel(cfg).to(device).eval()
    rows = ["| sampling, 3x512 LSTM | chars/s |", "| --- | --- |"]
    # reference: the usual loop, one call of the fused module per character
    rnn = torch.nn.LSTM(128, 512, 3).to(device)
    x = torch.zeros(1, 1, dtype=torch.long, device=device)
    state = None
    with torch.no_grad():
        start = sync_time()
        bare = max(10, int(1000 * scale))
        for _ in range(bare):
            out, state = rnn(model.embed(x), state)
            x = torch.multinomial(torch.softmax(model.head(out[-1]) / 0.8, -1), 1).view(1, 1)
        rows.append(f"| bare loop over nn.LSTM, 1 stream | {bare / (sync_time() - start):,.0f} |")
    # correctness of the graph sampler: its first-token frequencies match the (nucleus) softmax
    logits = torch.randn(8192, tok.vocab_size, device=device)
    logits[:] = logits[0]
    step = SingleStep(model)
    gen = torch.Generator(device=device).manual_seed(0)
    for kernel in (False, True) if device == "cuda" and generate_triton.available(tok.vocab_size) else (False,):
        for top_p in (1.0, 0.9):
            chooser = Chooser(SampleSettings(temperature=1.0, top_p=top_p), tok.vocab_size, 8192, gen, kernel=kernel)
            if device == "cuda":
                first = GraphBlock(step, step.begin(model.init_state(8192)), logits, chooser, 1.0, 4).run()[0]
            else:
                first = chooser(logits, chooser.noise(1)[0])
            freq = torch.bincount(first, minlength=tok.vocab_size).float() / first.numel()
            tv = 0.5 * (freq - filter_logits(logits[:1], top_p=top_p)[0].softmax(-1)).abs().sum().item()
            rows.append(
                f"| graph sampler check, {'kernel' if kernel else 'torch'} chooser, top-p {top_p}: "
                f"total variation vs the softmax over 8192 draws (noise ~0.03) | {tv:.4f} |"
            )
    variants = {
        "1 stream, temperature 0.8": SampleSettings(length=20_000, temperature=0.8, seed=1),
        "1 stream, top-k 10": SampleSettings(length=20_000, temperature=1.0, top_k=10, seed=1),
        "1 stream, top-p 0.9": SampleSettings(length=20_000, temperature=1.0, top_p=0.9, seed=1),
        "1024 streams, temperature 0.8 (total)": SampleSettings(
            length=4_000, temperature=0.8, seed=1, num_samples=1024
        ),
        "1024 streams, top-p 0.9 (total)": SampleSettings(
            length=4_000, temperature=1.0, top_p=0.9, seed=1, num_samples=1024
        ),
    }
    variants = {name: dataclasses.replace(v, length=max(40, int(v.length * scale))) for name, v in variants.items()}
    sample(model, tok, "\n", SampleSettings(length=600, seed=1))  # warm-up
    rows.append(f"| SingleStep uses the fused cell kernel | {SingleStep(model).fused} |")
    for name, settings in variants.items():
        uses_kernel = Chooser.for_device(settings, tok.vocab_size, settings.num_samples, gen).kernel
        rates = [sample(model, tok, "\n", settings).chars_per_sec for _ in range(2)]
        rows.append(f"| charrnn sample, {name} (kernel chooser: {uses_kernel}) | {statistics.median(rates):,.0f} |")
    # Where a call's time goes: a quarter-length call and a full one, differenced, split it into
    # a fixed cost (prime, graph capture, decoding) and a cost per step; with each of the two GPU
    # levers (the fused cell kernel, the one-kernel chooser) turned off in turn, in this process.
    levers = {"both levers": (True, True), "no fused cell": (False, True), "torch chooser": (True, False)}
    for name in ("1 stream, temperature 0.8", "1 stream, top-p 0.9", "1024 streams, temperature 0.8 (total)"):
        full = variants[name]
        short = dataclasses.replace(full, length=full.length // 4)
        for lever, (fused, kernel) in levers.items():
            fixed, per_step = [], []
            for _ in range(3):
                with _gpu_levers(fused, kernel):
                    t_short = sample(model, tok, "\n", short).seconds
                    t_full = sample(model, tok, "\n", full).seconds
                step = (t_full - t_short) / (full.length - short.length)
                per_step.append(step)
                fixed.append(t_short - short.length * step)
            label = f"{name.removesuffix(' (total)')}, {lever}"
            step = statistics.median(per_step)
            rows.append(f"| {label}: fixed cost per call, s | {statistics.median(fixed):.3f} |")
            rows.append(
                f"| {label}: per step, µs (steady chars/s) | {step * 1e6:.1f} ({full.num_samples / step:,.0f}) |"
            )
    same = [sample(model, tok, "\n", SampleSettings(length=300, seed=5)).texts[0] for _ in range(2)]
    rows.append(f"| same seed gives the same text on the GPU | {same[0] == same[1]} |")
    return rows


@contextlib.contextmanager
def _gpu_levers(fused_cell: bool, kernel_chooser: bool):
    """Inside, the sampler uses the fused cell kernel and the one-kernel chooser only where allowed
    (and where each passed its own check), never otherwise."""
    from charrnn.model import SingleStep
    from charrnn.sample import triton_chooser as generate_triton

    matches, available = SingleStep.fused_cell_matches, generate_triton.available
    if not fused_cell:
        SingleStep.fused_cell_matches = lambda self: False
    if not kernel_chooser:
        generate_triton.available = lambda vocab: False
    try:
        yield
    finally:
        SingleStep.fused_cell_matches, generate_triton.available = matches, available


# ----- the training loop -----


def bench_loop(steps: int = 40) -> list[str]:
    from charrnn.config import TrainConfig
    from charrnn.data.corpus import find_corpus
    from charrnn.training import train

    m, t = GPU["model"], GPU["train"]
    batch, seq = t["batch_size"], t["seq_len"]
    torch.manual_seed(0)
    emb = torch.nn.Embedding(65, m["embed_size"]).cuda()
    rnn = torch.nn.LSTM(m["embed_size"], m["hidden_size"], m["num_layers"]).cuda()
    head = torch.nn.Linear(m["hidden_size"], 65).cuda()
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    data = torch.randint(0, 65, (8, seq + 1, batch), device="cuda")
    state = None
    times = []
    for i in range(steps):
        start = sync_time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, state = rnn(emb(data[i % 8, :-1]), state)
            loss = torch.nn.functional.cross_entropy(head(out).float().flatten(0, 1), data[i % 8, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state = tuple(s.detach() for s in state)
        if i >= 5:
            times.append(sync_time() - start)
    bare = batch * seq / statistics.median(times)
    cfg = TrainConfig(**t, max_steps=steps + 10, eval_interval=10**9, log_interval=5, val_frac=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(find_corpus([str(SHAKESPEARE)]), m, cfg, Path(tmp) / "run")
    ours = statistics.median(r["chars_per_sec"] for r in result.history[2:] if "val_loss" not in r)
    return [
        "| loop (bf16) | figure |",
        "| --- | --- |",
        f"| bare cuDNN step, {m['num_layers']}x{m['hidden_size']} LSTM, batch {batch}x{seq} | {bare:,.0f} chars/s |",
        f"| charrnn Trainer, same shape (dropout {m['dropout_hidden']}) | {ours:,.0f} chars/s |",
        f"| ratio (target >= 0.90) | {ours / bare:.3f} |",
    ]


# ----- quality per second -----

CHILD = r"""
import json, sys, time
t0 = time.monotonic()
from pathlib import Path
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.training import train
spec, budget, reserve = json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
cfg = TrainConfig(**spec["train"], val_frac=0.1, max_time=budget - reserve,
                  eval_interval=10**9, eval_tokens=None, log_interval=50, device="cuda")
result = train(find_corpus([sys.argv[1]]), spec["model"], cfg, Path(sys.argv[5]), budget_from=t0)
print(json.dumps({"val": result.last_val, "seconds": time.monotonic() - t0, "steps": result.steps,
                  "chars_per_sec": result.chars_per_sec, "params": result.parameters}))
"""


def eval_seconds(spec: dict) -> float:
    from charrnn.data.dataset import Split
    from charrnn.data.tokenizers import train_tokenizer
    from charrnn.evaluate import evaluate

    tok = train_tokenizer("char", SHAKESPEARE.read_text())
    model = RNNLanguageModel(ModelConfig(vocab_size=tok.vocab_size, **spec["model"])).cuda()
    split = Split(torch.randint(0, tok.vocab_size, (20_000,), dtype=torch.uint8), 20_000)
    evaluate(model, split, tok, autocast=True)
    start = sync_time()
    evaluate(model, split, tok, autocast=True)
    return (sync_time() - start) * 111_540 / 20_000


def bench_quality(specs: dict, budgets: list[float]) -> list[str]:
    rows = [
        "| config | budget | val loss (nats/char) | bits/char | measured s | steps | train chars/s | params |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, spec in specs.items():
        reserve = eval_seconds(spec) * 1.2 + 2.0
        for budget in spec.get("budgets", budgets):
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "CHARRNN_CACHE_DIR": str(Path(tmp) / "cache")}
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CHILD,
                        str(SHAKESPEARE),
                        json.dumps(spec),
                        str(budget),
                        str(reserve),
                        str(Path(tmp) / "run"),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
            if out.returncode != 0:
                rows.append(f"| {name} | {budget:g} s | failed: {out.stderr.strip().splitlines()[-1][:120]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                f"| {name} | {budget:g} s | {r['val']:.4f} | {r['val'] / 0.6931471805599453:.4f} | "
                f"{r['seconds']:.1f} | {r['steps']:,} | {r['chars_per_sec']:,.0f} | {r['params']:,} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="sample,loop,quality")
    parser.add_argument("--budgets", default="20,60")
    parser.add_argument("--sweep", action="store_true", help="also run the alternative configurations")
    parser.add_argument("--specs", type=Path, help='JSON: {name: {"model": {..}, "train": {..}, "budgets": [..]}}')
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="run the sampling section on the CPU, briefly")
    args = parser.parse_args()
    if args.smoke:
        print("\n".join(bench_sampling("cpu", scale=0.01)))
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    parts = set(args.only.split(","))
    command = "python scripts/bench_gpu.py " + " ".join(sys.argv[1:])
    report = ["# charrnn GPU benchmarks", "", header(command.strip()) + f"- device: {torch.cuda.get_device_name()}\n"]
    print(report[-1], flush=True)

    def section(rows: list[str]) -> None:
        report.extend([*rows, ""])
        print("\n".join(rows) + "\n", flush=True)
        if args.out:
            args.out.write_text("\n".join(report) + "\n")

    if "sample" in parts:
        section(bench_sampling())
    if "loop" in parts:
        section(bench_loop())
    if "quality" in parts:
        specs = json.loads(args.specs.read_text()) if args.specs else SWEEP if args.sweep else {"gpu preset": GPU}
        section(bench_quality(specs, [float(b) for b in args.budgets.split(",")]))


if __name__ == "__main__":
    main()
