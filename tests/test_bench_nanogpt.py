"""Promise: scripts/bench_nanogpt.py, the harness that runs nanoGPT's CPU recipe on the quality
protocol, trains within its budget and scores the whole held-out tenth. A stand-in for nanoGPT's
model.py (a bigram model with its interface) is used, so no checkout is needed; no figure is
judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_nanogpt.py"

STAND_IN = """
from dataclasses import dataclass
import torch
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 8
    vocab_size: int = 2
    n_layer: int = 1
    n_head: int = 1
    n_embd: int = 4
    dropout: float = 0.0
    bias: bool = True


class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.table = torch.nn.Embedding(config.vocab_size, config.vocab_size)
        print("number of parameters:", config.vocab_size ** 2)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
"""


def test_the_recipe_trains_within_its_budget_and_scores_the_held_out_text(tmp_path: Path) -> None:
    (tmp_path / "nanogpt").mkdir()
    (tmp_path / "nanogpt" / "model.py").write_text(STAND_IN)
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 200)
    command = [sys.executable, str(SCRIPT), "--nanogpt", str(tmp_path / "nanogpt"), "--text", str(text)]
    done = subprocess.run([*command, "--tiny", "--budgets", "10"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert 0 < result["val_nats_per_char"] < 5.0 and result["steps"] == 50  # the tiny recipe's steps, in time
    assert result["seconds"] <= 10.5
    assert "| 10 s |" in done.stdout and "number of parameters" not in done.stdout


def test_a_folder_without_nanogpt_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--nanogpt", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "no model.py" in done.stderr and "Traceback" not in done.stderr
