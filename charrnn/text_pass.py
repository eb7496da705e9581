"""The one pass of a model over a text, shared by eval, score (in context and line by line), viz
and the validation during training.

Streams of token ids run through the model side by side in windows of `WINDOW` tokens, the state
carried from window to window, so memory is bounded by one window whatever the text's length.
A pass may start from a given state (the text before it) and hands out the state after each
window. Each window gives the float32 logits of its targets, and, with `activations`, every
layer's hidden state (and an LSTM's cell state) after each input token: then the window runs
one token at a time through `SingleStep`'s arithmetic (the torch sampler's), which gives the
logits and the states at once (nn.LSTM hands out no cell state but the last), so they come
from the step that scores.
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
    after it; with activations, hidden and cell (width, S, layers, H) after each input (cell: LSTM only);
    with grad, `graph`: the same logits again from a forward that records a graph, for the gradient."""

    logits: torch.Tensor
    targets: torch.Tensor
    state: State
    hidden: torch.Tensor | None = None
    cell: torch.Tensor | None = None
    graph: torch.Tensor | None = None

    def nll(self) -> torch.Tensor:
        """Negative log-likelihood (nats, float32) of every target, (width, S)."""
        return token_nll(self.logits, self.targets).view(self.targets.shape)

    def bits(self) -> np.ndarray:
        """-log2 p of every target, (width, S) float64 on the host."""
        return self.nll().double().cpu().numpy() / LN2

    def graph_loss(self) -> torch.Tensor:
        """The mean NLL (nats) of the targets, from `graph` (a pass with grad): what a step descends."""
        if self.graph is None:
            raise ValueError("this window was made without grad: it has no graph")
        return token_nll(self.graph, self.targets).mean()


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
    grad: bool = False,
) -> Iterator[Window]:
    """Stream s reads tokens[starts[s] : starts[s] + length + 1] (its inputs, then its targets one
    later) from `state` (None: zeros), in windows; a grid of equal streams is its flattened rows.

    With `grad` each window also gives `graph`, its logits from a second forward that records a
    graph, for a caller that takes a gradient step on it before asking for the next window (dynamic
    evaluation, `charrnn.dynamic`). That forward starts from the carried state detached, so the
    gradient ends at the window's start and memory stays one window's. The figures and the state
    still come from the forward without grad: torch's CPU LSTM kernels differ between the two
    modes in float32's last bits, and a model whose weights do not change then scores exactly
    as the static pass scores."""
    import torch

    from charrnn.model import detach_state

    if grad and activations:
        raise ValueError("a pass with grad hands out no activations")

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
        graph = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            if grad:
                graph = model(chunk[:-1], None if state is None else detach_state(state))[0].float()
            with torch.no_grad():
                logits, _, state = model(chunk[:-1], state)
        yield Window(logits.float(), chunk[1:], state, graph=graph)


class _Stepper:
    """A window layer by layer and one token at a time through `SingleStep`'s arithmetic (float32):
    each layer's input gates and the head for the whole window at once, the cells step by step."""

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

        steps, streams = chunk[:-1].shape
        x, hidden, cell = chunk[:-1].reshape(-1), [], []
        with torch.inference_mode():
            for i, layer_state in enumerate(self.layers):
                gates = self.single.input_gates(i, x).view(steps, streams, -1)
                outs, cells = [], []
                for t in range(steps):
                    h, layer_state = self.single.cell_step(i, gates[t], layer_state)
                    outs.append(h)
                    if isinstance(layer_state, tuple):
                        cells.append(layer_state[1])
                self.layers[i] = layer_state
                hidden.append(torch.stack(outs))  # (T, S, H)
                cell += [torch.stack(cells)] if cells else []
                x = hidden[-1].view(steps * streams, -1)
            logits = self.single.head(x).view(steps, streams, -1)
        cells_out = torch.stack(cell, dim=2) if cell else None
        return Window(logits, chunk[1:], self.single.end(self.layers), torch.stack(hidden, dim=2), cells_out)


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
