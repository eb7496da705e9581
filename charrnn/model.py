"""The recurrent language model: embedding -> stacked LSTM/GRU/RNN -> linear head.

`RNNLanguageModel` scores whole windows, (T, B) ids -> (T, B, V) logits, with one fused
cuDNN/oneDNN module per layer, locked dropout (one mask per window) between them and optional
DropConnect on the hidden-to-hidden weights. `SingleStep` holds the same weights rearranged for
generation, one token of every stream per call. docs/training.md says why it is built this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charrnn.config import ModelConfig

# LSTM state is (h, c); GRU and RNN state is h. Each is (layers, B, H).
State = Tensor | tuple[Tensor, Tensor]

_RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class LockedDropout(nn.Module):
    """Dropout with one mask per window: x (T, B, C) loses the same units at every time step."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty(1, x.shape[1], x.shape[2], device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * mask / (1 - self.p)


def _layer_state(state: State | None, layer: int) -> State | None:
    if state is None:
        return None
    if isinstance(state, tuple):
        return (state[0][layer : layer + 1], state[1][layer : layer + 1])
    return state[layer : layer + 1]


class RNNLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        self.drop_embed = LockedDropout(cfg.dropout_embed)
        cell = _RNN_CLASSES[cfg.cell]
        self.rnns = nn.ModuleList(
            cell(cfg.embed_size if layer == 0 else cfg.hidden_size, cfg.hidden_size) for layer in range(cfg.num_layers)
        )
        self.drop_hidden = LockedDropout(cfg.dropout_hidden)
        self.drop_output = LockedDropout(cfg.dropout_output)
        head_in = cfg.hidden_size
        self.proj: nn.Linear | None = None
        if cfg.tie_weights and cfg.hidden_size != cfg.embed_size:
            self.proj = nn.Linear(cfg.hidden_size, cfg.embed_size, bias=False)
            head_in = cfg.embed_size
        self.head = nn.Linear(head_in, cfg.vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # Unit-scale embeddings reach the gates at full strength (small ones slow the first
        # hundreds of steps); tied embeddings are also the output weights, so they start small.
        nn.init.normal_(self.embed.weight, std=1.0 if not self.cfg.tie_weights else 0.05)
        nn.init.zeros_(self.head.bias)
        if self.cfg.cell == "lstm":
            # A forget-gate bias of 1 lets gradients flow through time from the first step.
            h = self.cfg.hidden_size
            for name, param in self.rnns.named_parameters():
                if ".bias_ih" in name:
                    with torch.no_grad():
                        param[h : 2 * h].fill_(1.0)

    @torch.no_grad()
    def init_output_bias(self, counts: Tensor, floor: float = -10.0) -> None:
        """Start the head's bias at the log-frequencies of the training tokens, so the first
        steps need not learn which ids never occur (a byte model on ASCII text uses 90 of 256)."""
        probs = counts.double() / counts.sum().clamp(min=1)
        self.head.bias.copy_(probs.log().clamp(min=floor).to(self.head.bias.dtype))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        device = device or self.embed.weight.device
        zeros = torch.zeros(self.cfg.num_layers, batch_size, self.cfg.hidden_size, device=device)
        return (zeros, zeros.clone()) if self.cfg.cell == "lstm" else zeros

    def forward(
        self, idx: Tensor, state: State | None = None, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, State]:
        """idx and targets: (T, B) token ids. Returns logits (T, B, V), mean loss or None, new state."""
        out = self.drop_embed(self.embed(idx))  # (T, B, E)
        layer_states = []
        for layer, rnn in enumerate(self.rnns):
            if layer:
                out = self.drop_hidden(out)
            out, layer_state = self._run_layer(rnn, out, _layer_state(state, layer))  # (T, B, H)
            layer_states.append(layer_state)
        if self.cfg.cell == "lstm":
            state = (torch.cat([s[0] for s in layer_states]), torch.cat([s[1] for s in layer_states]))
        else:
            state = torch.cat(layer_states)
        out = self.drop_output(out)
        if self.proj is not None:
            out = self.proj(out)
        logits = self.head(out)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss, state

    def _run_layer(self, rnn: nn.Module, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        p = self.cfg.weight_drop
        if not self.training or p == 0:
            return rnn(x, state)
        # Inverted dropout on the weights: the expected matrix is the trained one, used as is in eval.
        params = {**dict(rnn.named_parameters()), "weight_hh_l0": F.dropout(rnn.weight_hh_l0, p)}
        with warnings.catch_warnings():  # cuDNN notes the masked matrix is outside its flat weight buffer
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            return torch.func.functional_call(rnn, params, (x, state))


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows, keeping the values."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


# torch's fused cell kernels (CUDA only): gates (B, G*H) from the input and from the hidden
# state, in nn.LSTM / nn.GRU's gate order, with optional biases -> the new state (and a
# workspace for backward, unused here). Looked up through this dict so that tests can stand
# a reference implementation in for them on the CPU.
_FUSED_CELLS = {
    "lstm": torch.ops.aten._thnn_fused_lstm_cell,
    "gru": torch.ops.aten._thnn_fused_gru_cell,
}


def flat_state(layers: list) -> list[Tensor]:
    """Every tensor of a per-layer state list, in order."""
    return [t for s in layers for t in (s if isinstance(s, tuple) else (s,))]


class SingleStep:
    """One-token-at-a-time inference with the weights of a trained model.

    At batch size one, each torch call costs more in dispatch than in
    arithmetic, so the step is written to make as few calls as possible: the
    first layer's input projection (embedding times input weights plus both
    biases) is a precomputed (vocab, gates) table, so it costs one row lookup;
    each later layer costs two matrix products; an LSTM cell's gates take one
    sigmoid over all four gates and one tanh. The state travels between steps
    as per-layer lists (`begin` / `end` convert from and to the model's
    stacked layout), and a temperature is folded into the head's product.

    On a GPU, where a step is bound by its number of kernels, an LSTM or GRU layer
    runs as two matrix products and torch's fused CUDA cell kernel (the one
    `nn.LSTMCell` uses: all the gate arithmetic in one kernel), instead of some
    eight kernels. `fused` says whether it does: it is switched on only after one
    step on random states matched the unfused arithmetic (`fused_cell_matches`).
    """

    def __init__(self, model: RNNLanguageModel, banned: Sequence[int] = ()) -> None:
        cfg = model.cfg
        self.cell, self.hidden, self.layers = cfg.cell, cfg.hidden_size, cfg.num_layers
        rnns = model.rnns
        with torch.no_grad():
            first = rnns[0]
            self.table = torch.addmm(
                first.bias_ih_l0.float(), model.embed.weight.float(), first.weight_ih_l0.float().t()
            )
            if cfg.cell != "gru":  # GRU keeps the hidden bias apart: it sits inside the reset gate
                self.table += first.bias_hh_l0.float()
            self.w_ih = [rnn.weight_ih_l0.float().t().contiguous() for rnn in rnns]  # (in, G*H); [0] unused
            self.w_hh = [rnn.weight_hh_l0.float().t().contiguous() for rnn in rnns]  # (H, G*H)
            self.b_ih = [rnn.bias_ih_l0.float() + (0 if cfg.cell == "gru" else rnn.bias_hh_l0.float()) for rnn in rnns]
            self.b_hh = [rnn.bias_hh_l0.float() for rnn in rnns]
            self.head_w = model.head.weight.float().t().contiguous()  # (E or H, V)
            self.head_b = model.head.bias.float().clone()
            self.head_b[list(banned)] = float("-inf")  # ids that must never be produced, e.g. <unk>
            self.proj = model.proj.weight.float().t().contiguous() if model.proj is not None else None
        self.fused = False
        if self.table.device.type == "cuda":
            self.fused = self.fused_cell_matches()

    def fused_cell_matches(self) -> bool:
        """Whether the fused cell kernel runs here and gives this step's results (checked on random states)."""
        if self.cell not in _FUSED_CELLS:
            return False
        device = self.table.device
        generator = torch.Generator(device=device).manual_seed(0)  # leaves the global generator alone
        batch = 3
        tokens = torch.randint(0, self.table.shape[0], (batch,), device=device, generator=generator)

        def random_state() -> Tensor:
            return torch.rand(batch, self.hidden, device=device, generator=generator) * 2 - 1

        layers = [
            (random_state(), random_state()) if self.cell == "lstm" else random_state() for _ in range(self.layers)
        ]
        expected = self.advance(tokens, layers, fused=False)
        try:
            got = self.advance(tokens, layers, fused=True)
        except (RuntimeError, NotImplementedError):  # no kernel for this device or this torch
            return False
        finite = torch.isfinite(expected[0])  # banned ids are -inf in both
        pairs = [(expected[0][finite], got[0][finite]), *zip(flat_state(expected[1]), flat_state(got[1]))]
        return all(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in pairs)

    def begin(self, state: State) -> list:
        """The model's stacked state as per-layer entries."""
        if isinstance(state, tuple):
            return [(state[0][i], state[1][i]) for i in range(self.layers)]
        return [state[i] for i in range(self.layers)]

    def end(self, layers: list) -> State:
        if self.cell == "lstm":
            return (torch.stack([h for h, _ in layers]), torch.stack([c for _, c in layers]))
        return torch.stack(layers)

    @torch.inference_mode()
    def advance(
        self, tokens: Tensor, layers: list, scale: float = 1.0, fused: bool | None = None
    ) -> tuple[Tensor, list]:
        """tokens (B,) -> logits (B, V) times `scale`, and the per-layer state after them.
        `fused` overrides `self.fused` (the check of the fused kernel runs both ways)."""
        fused = self.fused if fused is None else fused
        out: list = []
        x = None
        for i, layer_state in enumerate(layers):
            if fused:
                x, new_state = self._fused_layer(i, tokens, x, layer_state)
            else:
                x, new_state = self.cell_step(i, self.input_gates(i, tokens if i == 0 else x), layer_state)
            out.append(new_state)
        return self.head(x, scale), out

    def input_gates(self, i: int, inputs: Tensor) -> Tensor:
        """Layer i's gates from its input, biases included ((N, G*H)): token ids (N,) for the
        first layer, a row of the table; the layer below's output (N, H) for the others."""
        return self.table[inputs] if i == 0 else torch.addmm(self.b_ih[i], inputs, self.w_ih[i])

    def cell_step(self, i: int, gates_in: Tensor, layer_state: Tensor | tuple) -> tuple[Tensor, Tensor | tuple]:
        """One step of layer i from its input gates: (its output h, its new state)."""
        h_size = self.hidden
        if self.cell == "lstm":
            h, c = layer_state
            gates = torch.addmm(gates_in, h, self.w_hh[i])
            s = gates.sigmoid()
            c = torch.addcmul(s[:, h_size : 2 * h_size] * c, s[:, :h_size], gates[:, 2 * h_size : 3 * h_size].tanh())
            h = s[:, 3 * h_size :] * c.tanh()
            return h, (h, c)
        if self.cell == "gru":
            gh = torch.addmm(self.b_hh[i], layer_state, self.w_hh[i])
            rz = (gates_in[:, : 2 * h_size] + gh[:, : 2 * h_size]).sigmoid()
            n = torch.addcmul(gates_in[:, 2 * h_size :], rz[:, :h_size], gh[:, 2 * h_size :]).tanh()
            h = torch.addcmul(n, rz[:, h_size:], layer_state - n)
            return h, h
        h = torch.addmm(gates_in, layer_state, self.w_hh[i]).tanh()
        return h, h

    def head(self, x: Tensor, scale: float = 1.0) -> Tensor:
        """The top layer's output (N, H) -> logits (N, V) times `scale`."""
        if self.proj is not None:
            x = x @ self.proj
        return torch.addmm(self.head_b, x, self.head_w, beta=scale, alpha=scale)

    def _fused_layer(self, i: int, tokens: Tensor, x: Tensor | None, layer_state: Tensor | tuple) -> tuple:
        """Layer i as two products and the fused cell kernel: (its output, its new state)."""
        h = layer_state[0] if self.cell == "lstm" else layer_state
        input_gates = self.table[tokens] if i == 0 else torch.mm(x, self.w_ih[i])
        input_bias = None if i == 0 else self.b_ih[i]  # the table holds layer 0's input bias
        hidden_gates = torch.mm(h, self.w_hh[i])
        if self.cell == "lstm":  # both biases sit in b_ih (and in the table)
            h, c, _ = _FUSED_CELLS["lstm"](input_gates, hidden_gates, layer_state[1].contiguous(), input_bias)
            return h, (h, c)
        h, _ = _FUSED_CELLS["gru"](input_gates, hidden_gates, h.contiguous(), input_bias, self.b_hh[i])
        return h, h

    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """tokens (B,) and the model's state -> logits (B, V) and the new state."""
        logits, layers = self.advance(tokens, self.begin(state))
        return logits, self.end(layers)
