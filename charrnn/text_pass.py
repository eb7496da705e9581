"""The one pass of a model over a text, shared by eval, score (in context and line by line), viz
and the validation during training.

Streams of token ids run through the model side by side in windows of `WINDOW` tokens, the state
carried from window to window, so memory is bounded by one window whatever the text's length.
A pass may start from a given state (the text before it) and hands out the state after each
window. Each window gives the float32 logits of its targets, and, with `activations`, every
layer's hidden state (and an LSTM's cell state) after each input token: then the window runs
one token at a time through `SingleStep`, whose arithmetic gives the logits and the states at
once (nn.LSTM hands out no cell state but the last), so they come from the step that scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from charrnn.model import RNNLanguageModel, State

WINDOW = 1024  # tokens per stream per forward call
LN2 = math.log(2)


@dataclass(frozen=True)
class Window:
    """One window of a pass: logits (width, S, V) float32 predicting targets (width, S); the state
    after it; with activations, hidden and cell (width, S, layers, H) after each input (cell: LSTM only)."""

    logits: torch.Tensor
    targets: torch.Tensor
    state: State
    hidden: torch.Tensor | None = None
    cell: torch.Tensor | None = None

    def nll(self) -> torch.Tensor:
        """Negative log-likelihood (nats, float32) of every target, (width, S)."""
        return token_nll(self.logits, self.targets).view(self.targets.shape)

    def bits(self) -> np.ndarray:
        """-log2 p of every target, (width, S) float64 on the host."""
        return self.nll().double().cpu().numpy() / LN2


def windows(
    model: RNNLanguageModel,
    tokens: torch.Tensor,
    starts: torch.Tensor,
    length: int,
    *,
    state: State | None = None,
    autocast: bool = False,
    activations: bool = False,
    window: int = WINDOW,
) -> Iterator[Window]:
    """Stream s reads tokens[starts[s] : starts[s] + length + 1] (its inputs, then its targets one
    later) from `state` (None: zeros), in windows; a grid of equal streams is its flattened rows."""
    import torch

    device = model.embed.weight.device
    offsets = torch.arange(window + 1)
    step = _Stepper(model, state, len(starts)) if activations else None
    for begin in range(0, length, window):
        width = min(window, length - begin)
        idx = starts[:, None] + begin + offsets[: width + 1]  # (S, width+1)
        chunk = tokens[idx].to(device).long().t()  # (width+1, S)
        if step is not None:
            yield step.window(chunk)
            continue
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, _, state = model(chunk[:-1], state)
        yield Window(logits.float(), chunk[1:], state)


class _Stepper:
    """A window one token at a time through `SingleStep` (float32), keeping every layer's state."""

    def __init__(self, model: RNNLanguageModel, state: State | None, streams: int) -> None:
        import torch

        from charrnn.model import SingleStep

        self.single = SingleStep(model)
        cfg = model.cfg
        if state is None:
            zeros = torch.zeros(cfg.num_layers, streams, cfg.hidden_size, device=model.embed.weight.device)
            state = (zeros, zeros.clone()) if cfg.cell == "lstm" else zeros
        self.layers = self.single.begin(state)

    def window(self, chunk: torch.Tensor) -> Window:
        import torch

        logits, hidden, cell = [], [], []
        for tokens in chunk[:-1]:
            out, self.layers = self.single.advance(tokens, self.layers)
            logits.append(out)
            hidden.append(torch.stack([s[0] if isinstance(s, tuple) else s for s in self.layers], dim=1))
            if isinstance(self.layers[0], tuple):
                cell.append(torch.stack([c for _, c in self.layers], dim=1))
        cells = torch.stack(cell) if cell else None
        return Window(torch.stack(logits), chunk[1:], self.single.end(self.layers), torch.stack(hidden), cells)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats, float32) of every target: logits (T, S, V), targets (T, S) -> (T*S,)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")


def refuse_non_finite(bits: Any) -> None:
    """Refuse a pass whose figures (a number or an array) are not finite: a model whose weights are
    finite but whose scores overflow float32 has no figure to report (eval, score and viz say so)."""
    import numpy as np

    if not np.isfinite(bits).all():
        raise CharrnnError(
            "the model's scores are not finite (its weights overflow float32 arithmetic): the checkpoint is unusable"
        )
