"""One-stream generation speed of an exported ONNX graph in onnxruntime against charrnn's numpy
sampler, in the same process, on the same weights.

    python scripts/bench_export.py                 # the cpu preset's shape (2 x 256 LSTM), random weights
    python scripts/bench_export.py --run runs/kjv  # a trained run
    python scripts/bench_export.py --tiny          # a toy size: checks that the script runs

Both sides write `--chars` characters at temperature 0.8 from the same prime, one stream, one
thread (onnxruntime's intra-op pool is set to one thread; numpy's matrix-vector products at batch
one run on one anyway); the best of `--repeats` runs is reported. The onnxruntime side is the loop
of docs/export.md: the prime in one call, then one call per character, the draw made in numpy.
The report starts with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRIME = "And it came to pass"


def random_run(folder: Path, hidden: int, layers: int, embed: int) -> Path:
    """A checkpoint of the given LSTM shape with random weights and a char vocabulary of printable ASCII."""
    import torch

    from charrnn.checkpoint import save_checkpoint
    from charrnn.config import ModelConfig, TrainConfig, asdict
    from charrnn.data.tokenizers import CharTokenizer
    from charrnn.model import RNNLanguageModel

    tokenizer = CharTokenizer("\n" + "".join(chr(c) for c in range(32, 127)))
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=layers, hidden_size=hidden, embed_size=embed)
    torch.manual_seed(0)
    payload = {
        "model_config": asdict(cfg),
        "train_config": asdict(TrainConfig()),
        "tokenizer": tokenizer.to_state(),
        "model": RNNLanguageModel(cfg).state_dict(),
        "corpus": {},
        "metrics": {"step": 1, "val_loss": None, "best_val_loss": None},
    }
    save_checkpoint(folder / "model.safetensors", payload)
    return folder / "model.safetensors"


def onnx_chars_per_second(graph: Path, chars: int) -> float:
    """Characters per second of the docs' onnxruntime loop (a char model: one id a character)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["charrnn"])
    index = {t: i for i, t in enumerate(meta["tokenizer"]["tokens"]) if t is not None}
    state = {n: np.zeros((meta["layers"], 1, meta["hidden_size"]), np.float32) for n in meta["states"]}
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    tokens = np.array([[index.get(c, 0) for c in PRIME]], np.int64)
    for _ in range(chars):
        logits, *new = session.run(None, {"tokens": tokens, **state})
        state = dict(zip(meta["states"], new))
        scores = logits[0, -1].astype(np.float64) / 0.8
        scores[meta["unk_id"]] = -np.inf
        probs = np.exp(scores - scores.max())
        token = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum()))
        tokens = np.array([[min(token, len(probs) - 1)]], np.int64)
    return chars / (time.perf_counter() - started)


def numpy_chars_per_second(run: Path, chars: int) -> float:
    import charrnn

    model = charrnn.load(run, device="cpu")
    started = time.perf_counter()
    text = model.generate(PRIME, length=chars, temperature=0.8, seed=1)
    return len(text) / (time.perf_counter() - started)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _output(["lscpu"]).splitlines() if line.startswith("Model name")),
        platform.processor() or "unknown CPU",
    )
    commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip() or "unknown"
    return f"{cpu}, {os.cpu_count()} CPUs (nproc {_output(['nproc']).strip()}); commit {commit}"


def _output(command: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # nproc would report it
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, env=env).stdout
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run directory or checkpoint (default: random weights)")
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a toy model and a few characters")
    args = parser.parse_args()
    from charrnn.export.write import export

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shape = (32, 1, 16) if args.tiny else (256, 2, 64)  # hidden, layers, embed: the cpu preset's
        run = args.run or random_run(folder, *shape)
        chars, repeats = (50, 1) if args.tiny else (args.chars, args.repeats)
        export(run, onnx=folder / "model.onnx")
        ort_rate = max(onnx_chars_per_second(folder / "model.onnx", chars) for _ in range(repeats))
        numpy_rate = max(numpy_chars_per_second(run, chars) for _ in range(repeats))
    print(f"machine: {machine()}")
    print(f"command: python scripts/bench_export.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"model: {args.run or f'random weights, {shape[1]} x {shape[0]} LSTM, embed {shape[2]}'}")
    print(f"onnxruntime, one stream: {ort_rate:,.0f} chars/s")
    print(f"charrnn numpy sampler, one stream: {numpy_rate:,.0f} chars/s")
    print(f"onnxruntime / numpy: {ort_rate / numpy_rate:.2f}")


if __name__ == "__main__":
    main()
