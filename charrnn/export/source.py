"""The checkpoint an export reads: read once, as numpy arrays, without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import Tokenizer

if TYPE_CHECKING:
    from charrnn.inference import Model


@dataclass(frozen=True)
class Source:
    """A checkpoint's file, config, tokenizer, weights (float32, by name) and payload."""

    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    weights: dict[str, np.ndarray]
    payload: dict[str, Any]

    @property
    def lines(self) -> bool:
        train = self.payload.get("train_config")
        return isinstance(train, dict) and train.get("lines") is True

    def model(self, weights: dict[str, np.ndarray] | None = None) -> Model:
        """The model on the CPU, with `weights` in place of the checkpoint's where given."""
        from charrnn.inference import Model

        chosen = self.weights if weights is None else weights
        return Model(self.path, "cpu", self.config, self.tokenizer, chosen, self.payload)


def read_source(run: Path) -> Source:
    """The checkpoint of a run directory (its best, else its last) or a checkpoint file, either format."""
    from charrnn.checkpoint import arrays_from_checkpoint, load_checkpoint, resolve_checkpoint

    file = resolve_checkpoint(Path(run))
    payload = load_checkpoint(file, arrays=True)
    config, tokenizer, weights = arrays_from_checkpoint(payload)
    weights = {name: np.asarray(array, dtype=np.float32) for name, array in sorted(weights.items())}
    return Source(file, config, tokenizer, weights, payload)
