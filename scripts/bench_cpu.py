"""CPU benchmarks for the performance targets: loop overhead, sampling speed, tokenization
and big corpora, and quality per second on the nanoGPT shakespeare_char protocol.

    python scripts/bench_cpu.py                      # everything (about 10 minutes)
    python scripts/bench_cpu.py --only loop,sample   # a subset
    python scripts/bench_cpu.py --quality 90,300 --out bench.md
    python scripts/bench_cpu.py --only quality --quality 90,300,900 --preset auto
    python scripts/bench_cpu.py --tiny --only loop   # a toy size: checks that a row runs

Every figure is measured in this process or in a child started by it, against a
baseline measured in the same run, so ratios hold on a shared machine. The
report starts with the machine, the commit and the command.

The quality row follows nanoGPT's shakespeare_char protocol: the time runs from before
data loading to the end of the final exact evaluation, interpreter start excluded. The
whole budget goes to training as `--max-time` (from the child's start, `budget_from`),
and the trainer keeps back the time the final evaluation and the last save need, as
`charrnn train --max-time` does; the row reports the seconds actually taken.

`--tiny` runs every row with a toy model, a small text and a few repetitions, a few
seconds a row, so that tests/test_bench_cpu.py can run the script; its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charrnn.config import ModelConfig, TrainConfig, preset_settings  # noqa: E402
from charrnn.model import RNNLanguageModel  # noqa: E402

# The benchmark text lives in shared/ beside the checkout (or inside it, on machines that put it there).
SHAKESPEARE = next(
    (
        p
        for p in (
            ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt",
            ROOT / "shared" / "corpora" / "tinyshakespeare.txt",
        )
        if p.is_file()
    ),
    ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt",
)
KJV = ROOT / "corpora" / "kjv.txt"
PRESET = preset_settings("cpu", "cpu")
ROWS = ("loop", "sample", "trainsample", "startup", "tokenize", "big", "quality")

# --tiny: changes to the cpu preset (for this process and the children) and the sizes of each row.
TINY_OVERRIDE = {
    "model": {"num_layers": 1, "hidden_size": 32, "embed_size": 16},
    "train": {"batch_size": 4, "seq_len": 32, "warmup_steps": 2},
}
TINY_TEXT_CHARS = 200_000  # of the bundled corpus, in place of the benchmark texts


@dataclass(frozen=True)
class Sizes:
    """How much each row does. The defaults are what the published figures measure."""

    loop_rounds: int = 3
    loop_steps: int = 30
    sample_chars: int = 4000
    sample_rounds: int = 5
    calls: int = 20_000
    trainsample_steps: int = 40
    trainsample_interval: int = 10
    trainsample_rounds: int = 4
    startup_repeats: int = 3
    tokenize_mb: float = 100
    decode_samples: int = 1024
    decode_ids: int = 4000
    big_gb: float = 1.0
    quality: str = "90,300"


TINY = Sizes(
    loop_rounds=1,
    loop_steps=10,
    sample_chars=64,
    sample_rounds=1,
    calls=50,
    trainsample_steps=4,
    trainsample_interval=2,
    trainsample_rounds=1,
    startup_repeats=1,
    tokenize_mb=1,
    decode_samples=16,
    decode_ids=400,
    big_gb=0.002,
    quality="1",
)


def with_override(preset: dict, override: dict) -> dict:
    return {part: {**preset[part], **override.get(part, {})} for part in ("model", "train")}


def header(command: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}\n"
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads\n"
        f"- commit: {commit.stdout.strip() or '?'}{' (with uncommitted changes)' if dirty else ''}\n"
        f"- command: `{command}`\n"
        f"- load average at start: {os.getloadavg()[0]:.2f}\n"
    )


def run_child(code: str, args: list[str], env: dict[str, str]) -> dict:
    """Run `python -c code args` in a fresh process (so its timing includes imports and loading);
    its last stdout line is a JSON object of results."""
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----- 1. the training loop against a bare fused step -----


def bare_step_rate(model_cfg: ModelConfig, batch: int, seq: int, steps: int) -> float:
    """chars/s of embedding -> nn.LSTM -> head -> loss -> backward -> AdamW, nothing else."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(model_cfg.vocab_size, model_cfg.embed_size)
    rnn = torch.nn.LSTM(model_cfg.embed_size, model_cfg.hidden_size, model_cfg.num_layers)
    head = torch.nn.Linear(model_cfg.hidden_size, model_cfg.vocab_size)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    data = torch.randint(0, model_cfg.vocab_size, (steps + 3, seq + 1, batch))
    state = None
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        out, state = rnn(emb(data[i, :-1]), state)
        loss = torch.nn.functional.cross_entropy(head(out).flatten(0, 1), data[i, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state = tuple(s.detach() for s in state)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


def trainer_rate(text_path: Path, steps: int) -> float:
    """chars/s that charrnn's Trainer reaches on real text, median over its logging windows."""
    from charrnn.data.corpus import find_corpus
    from charrnn.training import train

    cfg = TrainConfig(**PRESET["train"], max_steps=steps, eval_interval=10**9, log_interval=5, val_frac=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(find_corpus([str(text_path)]), PRESET["model"], cfg, Path(tmp) / "run")
    rates = [r["chars_per_sec"] for r in result.history[1:] if "val_loss" not in r]
    return statistics.median(rates)


def bench_loop(text_path: Path, rounds: int = 3, steps: int = 30) -> list[str]:
    model_cfg = ModelConfig(vocab_size=65, **PRESET["model"])
    batch, seq = PRESET["train"]["batch_size"], PRESET["train"]["seq_len"]
    bare, ours = [], []
    for _ in range(rounds):  # interleaved, so a change in machine load hits both alike
        bare.append(bare_step_rate(model_cfg, batch, seq, steps))
        ours.append(trainer_rate(text_path, steps + 5))
    b, o = statistics.median(bare), statistics.median(ours)
    return [
        "| loop | figure |",
        "| --- | --- |",
        f"| bare fused step ({model_cfg.num_layers}x{model_cfg.hidden_size} LSTM, batch {batch}x{seq}) | "
        f"{b:,.0f} chars/s |",
        f"| charrnn Trainer, same shape | {o:,.0f} chars/s |",
        f"| ratio (target >= 0.90) | {o / b:.3f} |",
    ]


# ----- 2. sampling -----


def bare_sampling_rate(model: RNNLanguageModel, n: int) -> float:
    """A plain loop calling the fused module one character at a time (the usual approach)."""
    cfg = model.cfg
    rnn = torch.nn.LSTM(cfg.embed_size, cfg.hidden_size, cfg.num_layers)  # the one fused module, all layers
    x = torch.zeros(1, 1, dtype=torch.long)
    state = None
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(n):
            out, state = rnn(model.embed(x), state)
            probs = torch.softmax(model.head(out[-1]) / 0.8, dim=-1)
            x = torch.multinomial(probs, 1, generator=gen).view(1, 1)
    return n / (time.perf_counter() - start)


def per_call_costs(hidden: int, calls: int = 20_000) -> dict[str, dict[str, float]]:
    """Microseconds per call at batch 1, numpy against torch (one thread): a gate-sized elementwise
    product of two slices, and one layer's hidden-to-hidden matrix-vector product."""

    def timed(call) -> float:
        call()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - start) / calls * 1e6

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gates, h, w = torch.randn(1, 4 * hidden), torch.randn(1, hidden), torch.randn(hidden, 4 * hidden)
    g, hn, wn = gates.numpy(), h.numpy(), w.numpy()
    with torch.inference_mode():
        try:
            return {
                "elementwise product of two gate slices": {
                    "numpy": timed(lambda: g[:, :hidden] * g[:, hidden : 2 * hidden]),
                    "torch": timed(lambda: gates[:, :hidden] * gates[:, hidden : 2 * hidden]),
                },
                f"{hidden}x{4 * hidden} matrix-vector product": {
                    "numpy": timed(lambda: hn @ wn),
                    "torch": timed(lambda: h @ w),
                },
            }
        finally:
            torch.set_num_threads(threads)


def bench_sampling(n: int = 4000, rounds: int = 5, calls: int = 20_000) -> list[str]:
    """The CPU default model, one stream and batches: the numpy sampler (what `charrnn sample` runs on
    the CPU), torch's `torch_sampler.sample` (the Python API, and what other devices run), a bare loop,
    and what one call of each library costs at batch 1 (where the time of a step goes)."""
    from charrnn.data.tokenizers import train_tokenizer
    from charrnn.sample.numpy_sampler import sample_numpy
    from charrnn.sample.settings import SampleSettings
    from charrnn.sample.torch_sampler import sample

    text = SHAKESPEARE.read_text() if SHAKESPEARE.is_file() else KJV.read_text()[:1_000_000]
    tok = train_tokenizer("char", text)
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=tok.vocab_size, **PRESET["model"])).eval()
    arrays = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    variants = {
        "temperature 0.8": SampleSettings(length=n, temperature=0.8, seed=1),
        "temperature 1.0, top-k 10": SampleSettings(length=n, temperature=1.0, top_k=10, seed=1),
        "temperature 1.0, top-p 0.9": SampleSettings(length=n, temperature=1.0, top_p=0.9, seed=1),
        "greedy": SampleSettings(length=n, temperature=0.0),
        "16 streams in one batch (total)": SampleSettings(length=n // 4, temperature=0.8, seed=1, num_samples=16),
        "64 streams in one batch (total)": SampleSettings(length=n // 8, temperature=0.8, seed=1, num_samples=64),
        "128 streams in one batch (total)": SampleSettings(length=n // 8, temperature=0.8, seed=1, num_samples=128),
        "256 streams in one batch (total)": SampleSettings(length=n // 8, temperature=0.8, seed=1, num_samples=256),
    }
    samplers = {
        "numpy": lambda settings: sample_numpy(model.cfg, arrays, tok, "\n", settings, lambda i, t: None),
        "torch": lambda settings: sample(model, tok, "\n", settings, lambda i, t: None),
    }
    rows = ["| sampling, CPU default model | numpy sampler, chars/s | torch sampler, chars/s |", "| --- | --- | --- |"]
    rows.append(f"| bare loop over nn.LSTM, one char per call | | {bare_sampling_rate(model, n // 4):,.0f} |")
    runs: dict[tuple[str, str], list[float]] = {(name, v): [] for name in samplers for v in variants}
    for _ in range(rounds):  # round robin over variants and samplers, so all see the same machine
        for variant, settings in variants.items():
            for name, run in samplers.items():
                runs[name, variant].append(run(settings).chars_per_sec)
    rates = {name: {v: statistics.median(runs[name, v]) for v in variants} for name in samplers}
    for variant in variants:
        rows.append(f"| {variant} | {rates['numpy'][variant]:,.0f} | {rates['torch'][variant]:,.0f} |")
    for name, microseconds in per_call_costs(model.cfg.hidden_size, calls).items():
        rows.append(f"| {name}, µs per call | {microseconds['numpy']:.1f} | {microseconds['torch']:.1f} |")
    one = [v for v in variants if "streams" not in v]
    worst = {name: min(rates[name][v] for v in one) / rates[name]["temperature 0.8"] for name in samplers}
    rows.append(
        f"| slowest one-stream variant / temperature-only (target >= 0.80) | {worst['numpy']:.3f} "
        f"| {worst['torch']:.3f} |"
    )
    return rows


def bench_trainsample(text_path: Path, steps: int = 40, interval: int = 10, rounds: int = 4) -> list[str]:
    """What the samples drawn while training cost: the same short run with samples on and off, in
    pairs (after a pair that warms the process up; the order alternates), and each sample's own
    time (samples.jsonl), also scaled to a `--max-time 2m` run of the default settings (an
    evaluation, so a sample, every 200 steps). The runs evaluate every `interval` steps, far more
    often than the default, so that the samples weigh more than they do."""
    from charrnn.data.corpus import find_corpus
    from charrnn.training import train

    corpus = find_corpus([str(text_path)])
    walls: dict[int, list[float]] = {1: [], 0: []}
    seconds: list[float] = []  # each sample's
    shares: list[float] = []  # the samples' time over the whole run's, per run with samples on
    for round_ in range(rounds + 1):
        for every in (1, 0) if round_ % 2 else (0, 1):
            cfg = TrainConfig(
                **PRESET["train"], max_steps=steps, eval_interval=interval, val_frac=0.01, sample_every=every
            )
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = train(corpus, PRESET["model"], cfg, Path(tmp) / "run")
                walls[every].append(time.perf_counter() - start)
                if every:
                    lines = (Path(tmp) / "run" / "samples.jsonl").read_text().splitlines()
                    drawn = [json.loads(line)["seconds"] for line in lines]
                    seconds += drawn
                    shares.append(sum(drawn) / walls[1][-1])
            if not every:
                steps_per_sec = result.steps / result.elapsed
        if round_ == 0:  # the warm-up pair
            walls, seconds, shares = {1: [], 0: []}, [], []
    on, off, one = statistics.median(walls[1]), statistics.median(walls[0]), statistics.median(seconds)
    pairs = statistics.median(a / b for a, b in zip(walls[1], walls[0]))
    in_2m = math.ceil(120 * steps_per_sec / 200) + 1  # evaluations of a 2-minute run, the final one too
    return [
        "| samples while training | figure |",
        "| --- | --- |",
        f"| {steps} steps, a sample every {interval}: sampling on | {on:.1f} s |",
        f"| the same, sampling off | {off:.1f} s |",
        f"| ratio on / off, median of the {rounds} pairs (machine noise included) | {pairs:.3f} |",
        f"| the samples' own time in the runs with sampling on | {100 * statistics.median(shares):.2f}% |",
        f"| one {cfg.sample_length}-character sample (copy of the weights, numpy sampler) | {one * 1000:.0f} ms |",
        f"| share of a --max-time 2m run: {in_2m} samples at {steps_per_sec:.1f} steps/s (target < 2%) | "
        f"{100 * in_2m * one / 120:.2f}% |",
    ]


def bench_startup(run_dir: Path, repeats: int = 3) -> list[str]:
    """Seconds from starting `charrnn sample` to its first generated character (the run's
    best.safetensors, read without torch; and the same checkpoint as charrnn 0.1's best.pt, which
    needs torch to read), and torch's import alone."""
    from charrnn.checkpoint import load_checkpoint

    legacy = run_dir.parent / "format1.pt"  # what charrnn 0.1 would have written: a torch zip, format 1
    torch.save({**load_checkpoint(run_dir), "format_version": 1}, legacy)

    def first_output(cmd: list[str]) -> float:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
        proc.stdout.read(1)
        elapsed = time.perf_counter() - start
        proc.wait()
        return elapsed

    python = sys.executable
    sample_cmd = [python, "-m", "charrnn", "sample", str(run_dir), "--length", "20", "--seed", "1"]
    legacy_cmd = [*sample_cmd[:4], str(legacy), *sample_cmd[5:]]
    import_cmd = [python, "-c", "import torch; print('x')"]
    first = statistics.median(first_output(sample_cmd) for _ in range(repeats))
    first_legacy = statistics.median(first_output(legacy_cmd) for _ in range(repeats))
    imp = statistics.median(first_output(import_cmd) for _ in range(repeats))
    return [
        "| start-up | seconds |",
        "| --- | --- |",
        f"| `charrnn sample` to first character (target <= 1.0) | {first:.2f} |",
        f"| the same from a charrnn 0.1 `.pt` checkpoint (read with torch) | {first_legacy:.2f} |",
        f"| `python -c 'import torch'` alone | {imp:.2f} |",
    ]


# ----- 3. tokenization and big corpora -----


def bench_tokenize(megabytes: float = 100, samples: int = 1024, length: int = 4000) -> list[str]:
    from charrnn.data.tokenizers import train_tokenizer

    base = KJV.read_text()
    size = int(megabytes * 2**20)
    text = (base * (size // len(base) + 1))[:size]
    tok = train_tokenizer("char", base)
    tok.encode(text[:1000])
    start = time.perf_counter()
    tok.encode(text)
    rate = len(text) / 2**20 / (time.perf_counter() - start)
    # Decoding what 1,024 streams of 4,000 characters sampled: one array row per sample (what the
    # torch sampler's bulk path hands over) against the same ids as Python lists.
    rows = tok.encode(text[: samples * length]).view(samples, length).numpy()
    lists = rows.tolist()
    decode = {}
    for name, streams in (("numpy arrays", rows), ("Python lists", lists)):
        start = time.perf_counter()
        for ids in streams:
            tok.decode(ids)
        decode[name] = time.perf_counter() - start
    return [
        "| tokenization | figure |",
        "| --- | --- |",
        f"| char encode, {megabytes:g} MB of ASCII (target >= 50 MB/s) | {rate:,.0f} MB/s |",
        *(f"| char decode, {samples:,} samples x {length:,} ids as {name} | {t:.3f} s |" for name, t in decode.items()),
    ]


BIG_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from charrnn.config import TrainConfig, preset_settings
from charrnn.data.corpus import find_corpus
from charrnn.training import Report, train
preset = preset_settings("cpu", "cpu")
override = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
preset = {part: {**preset[part], **override.get(part, {})} for part in ("model", "train")}
first = {}
def on_log(record):
    first.setdefault("step", time.perf_counter() - t0)
cfg = TrainConfig(**preset["train"], max_steps=3, log_interval=1, eval_interval=10**9, eval_tokens=100_000)
train(find_corpus([sys.argv[1]]), preset["model"], cfg, Path(sys.argv[2]), report=Report(on_log=on_log))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first_step_s": first["step"], "total_s": time.perf_counter() - t0, "peak_rss_mb": peak}))
"""


def bench_big(gigabytes: float, override: str = "{}") -> list[str]:
    rows = ["| big corpus | cache miss | cache hit |", "| --- | --- | --- |"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        big = Path(tmp) / "big.txt"
        base = KJV.read_bytes()
        target = int(gigabytes * 2**30)
        with open(big, "wb") as out:
            written = 0
            while written < target:
                out.write(base[: target - written])
                written += min(len(base), target - written)
        env = {**os.environ, "CHARRNN_CACHE_DIR": str(Path(tmp) / "cache")}
        results = []
        for attempt in ("miss", "hit"):
            results.append(run_child(BIG_CHILD, [str(big), str(Path(tmp) / f"run-{attempt}"), override], env))
    miss, hit = results
    size = f"{gigabytes:g} GB"
    rows.append(
        f"| {size}: time to the first training step (target <= 10 s on a hit) | "
        f"{miss['first_step_s']:.1f} s | {hit['first_step_s']:.1f} s |"
    )
    rows.append(
        f"| {size}: peak resident memory (target < 2048 MB) | {miss['peak_rss_mb']:,.0f} MB | "
        f"{hit['peak_rss_mb']:,.0f} MB |"
    )
    rows.append(
        f"| {size}: tokenize-and-cache rate | {gigabytes * 1024 / miss['first_step_s']:,.0f} MB/s "
        "(whole first run up to step 1) | - |"
    )
    return rows


# ----- 4. quality per second, nanoGPT's protocol -----

QUALITY_CHILD = r"""
import json, sys, time
t0 = time.monotonic()
from pathlib import Path
from charrnn.config import TrainConfig, preset_settings
from charrnn.data.corpus import find_corpus
from charrnn.training import train
budget = float(sys.argv[2])
preset = preset_settings("cpu", "cpu")
override = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
preset = {part: {**preset[part], **override.get(part, {})} for part in ("model", "train")}
# {"auto": true}: `--preset auto` chooses the size (charrnn/sizing.py), keeping the override's settings.
auto = {part: override.get(part, {}) for part in ("model", "train")} if override.get("auto") else None
# The whole budget: the trainer keeps back what the final evaluation and the last save take.
cfg = TrainConfig(**preset["train"], val_frac=0.1, max_time=budget,
                  eval_interval=10**9, eval_tokens=None, log_interval=50)
result = train(find_corpus([sys.argv[1]]), preset["model"], cfg, Path(sys.argv[3]), budget_from=t0, auto_size=auto)
sizing = json.loads((Path(sys.argv[3]) / "config.json").read_text()).get("sizing")
print(json.dumps({"val": result.last_val, "seconds": time.monotonic() - t0, "steps": result.steps,
                  "chars_per_sec": result.chars_per_sec, "sizing": sizing}))
"""


def bench_quality(budgets: list[float], override: str = "{}", text_path: Path = SHAKESPEARE) -> list[str]:
    if not text_path.is_file():
        return [f"(quality skipped: {text_path} not present)"]
    rows = [
        "| budget (model) | val loss (nats/char) | bits/char | measured seconds (incl. loading, final eval) | steps | "
        "train chars/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for budget in budgets:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "CHARRNN_CACHE_DIR": str(Path(tmp) / "cache")}
            args = [str(text_path), str(budget), str(Path(tmp) / "run"), override]
            r = run_child(QUALITY_CHILD, args, env)
        model = f"auto: {r['sizing']['size']}" if r.get("sizing") else "cpu preset"
        model += " (with --override)" if json.loads(override).keys() - {"auto"} else ""
        rows.append(
            f"| {budget:g} s ({model}) | {r['val']:.4f} | {r['val'] / 0.6931471805599453:.4f} | {r['seconds']:.1f} | "
            f"{r['steps']:,} | {r['chars_per_sec']:,.0f} |"
        )
    return rows


def main() -> None:
    global PRESET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    parser.add_argument("--quality", help=f"training budgets in seconds for the quality runs (default {Sizes.quality})")
    parser.add_argument(
        "--preset",
        choices=("cpu", "auto"),
        default="cpu",
        help="the quality row's preset: cpu (fixed, the default) or auto (the size that fits the budget)",
    )
    parser.add_argument("--big-gb", type=float, help=f"size of the synthetic big corpus (default {Sizes.big_gb:g})")
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument(
        "--override", default="{}", help='JSON changes to the cpu preset: {"model": {..}, "train": {..}}'
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="every row at a toy size, a few seconds each (a smoke test: the figures mean nothing)",
    )
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if parts - set(ROWS):
        parser.error(f"unknown rows: {', '.join(sorted(parts - set(ROWS)))} (choose from {', '.join(ROWS)})")
    command = "python scripts/bench_cpu.py " + " ".join(sys.argv[1:])
    report = ["# charrnn CPU benchmarks", "", header(command.strip())]

    def section(rows: list[str]) -> None:
        report.extend([*rows, ""])
        print("\n".join(rows) + "\n", flush=True)

    print(report[-1], flush=True)
    scratch = tempfile.TemporaryDirectory()  # the --tiny text
    sizes, big_override = Sizes(), "{}"
    text_path = SHAKESPEARE if SHAKESPEARE.is_file() else KJV
    startup_text, quality_text, quality_override = KJV, SHAKESPEARE, args.override
    if args.tiny:
        sizes, big_override = TINY, json.dumps(TINY_OVERRIDE)
        PRESET = with_override(PRESET, TINY_OVERRIDE)
        quality_override = json.dumps(with_override(TINY_OVERRIDE, json.loads(args.override)))
    if args.preset == "auto":  # the quality child then lets charrnn/sizing.py choose the size
        quality_override = json.dumps({**json.loads(quality_override), "auto": True})
        text_path = startup_text = quality_text = Path(scratch.name) / "tiny.txt"
        text_path.write_text(KJV.read_text()[:TINY_TEXT_CHARS])
    if "loop" in parts:
        section(bench_loop(text_path, sizes.loop_rounds, sizes.loop_steps))
    if "sample" in parts:
        section(bench_sampling(sizes.sample_chars, sizes.sample_rounds, sizes.calls))
    if "trainsample" in parts:
        section(
            bench_trainsample(text_path, sizes.trainsample_steps, sizes.trainsample_interval, sizes.trainsample_rounds)
        )
    if "startup" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            from charrnn.data.corpus import find_corpus
            from charrnn.training import train

            cfg = TrainConfig(**PRESET["train"], max_steps=1, eval_interval=10**9)
            train(find_corpus([str(startup_text)]), PRESET["model"], cfg, Path(tmp) / "run")
            section(bench_startup(Path(tmp) / "run", sizes.startup_repeats))
    if "tokenize" in parts:
        section(bench_tokenize(sizes.tokenize_mb, sizes.decode_samples, sizes.decode_ids))
    if "big" in parts:
        section(bench_big(args.big_gb or sizes.big_gb, big_override))
    if "quality" in parts:
        budgets = [float(b) for b in (args.quality or sizes.quality).split(",")]
        section(bench_quality(budgets, quality_override, quality_text))
    scratch.cleanup()
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
