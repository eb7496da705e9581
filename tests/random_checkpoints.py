"""Checkpoints of random weights for the export tests: any cell, char or byte, any shape, with no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import checkpoint_payload


def random_checkpoint(
    path: Path,
    cell: str = "lstm",
    *,
    kind: str = "char",
    layers: int = 2,
    gain: float = 3.0,
    lines: bool = False,
    **shape: Any,
) -> Path:
    """A format-2 checkpoint of random weights (times `gain`, so that greedy choices are far from
    ties), written to `path`; `lines`: as a --lines run wrote it."""
    from charrnn.checkpoint import save_checkpoint
    from charrnn.config import ModelConfig, asdict
    from charrnn.model import RNNLanguageModel

    payload = checkpoint_payload()
    if kind == "byte":
        payload["tokenizer"] = {"kind": "byte"}
    vocab = 256 if kind == "byte" else payload["model_config"]["vocab_size"]
    sizes = {"hidden_size": 32, "embed_size": 16} | shape
    cfg = ModelConfig(vocab_size=vocab, cell=cell, num_layers=layers, **sizes)
    torch.manual_seed(1)
    module = RNNLanguageModel(cfg)
    with torch.no_grad():
        for param in module.parameters():
            param.mul_(gain)
    payload["model_config"] = asdict(cfg)
    payload["train_config"]["lines"] = lines
    payload["model"] = module.state_dict()
    save_checkpoint(path, payload)
    return path
