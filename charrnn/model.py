"""The recurrent language model: embedding -> stacked LSTM/GRU/RNN -> linear head.

Training and evaluation run whole windows through the fused `nn.LSTM` /
`nn.GRU` / `nn.RNN` modules (cuDNN on CUDA, oneDNN on CPU), one module per
layer with the dropout between layers applied here: the fused modules' own
inter-layer dropout takes oneDNN off its fast path on the CPU. Dropout is
"locked" (variational): one mask per sequence window, the same units dropped at
every time step, which regularizes recurrent models better than a new mask per
step. Generation, which
advances one token at a time, uses `SingleStep` instead: the same weights
rearranged so that one step is a handful of matrix-vector products, with the
first layer's input projection precomputed as a table lookup.
"""

from __future__ import annotations

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
        nn.init.normal_(self.embed.weight, std=0.1 if not self.cfg.tie_weights else 0.05)
        nn.init.zeros_(self.head.bias)
        if self.cfg.cell == "lstm":
            # A forget-gate bias of 1 lets gradients flow through time from the first step.
            h = self.cfg.hidden_size
            for name, param in self.rnns.named_parameters():
                if ".bias_ih" in name:
                    with torch.no_grad():
                        param[h : 2 * h].fill_(1.0)

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
            out, layer_state = rnn(out, _layer_state(state, layer))  # (T, B, H)
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


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows, keeping the values."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def select_state(state: State, keep: Tensor) -> State:
    """The state of the streams whose `keep` entry is true (batch axis 1)."""
    if isinstance(state, tuple):
        return tuple(s[:, keep] for s in state)  # type: ignore[return-value]
    return state[:, keep]


class SingleStep:
    """One-token-at-a-time inference with the weights of a trained model.

    Per layer and step this costs one matrix product (input and hidden
    projections fused into one) plus the gate arithmetic; the first layer's
    input projection is a row of a precomputed (vocab, gates) table. This is
    several times faster than calling the fused module with a sequence of one,
    whose per-call overhead dominates at small batch sizes.
    """

    def __init__(self, model: RNNLanguageModel) -> None:
        cfg = model.cfg
        self.cell = cfg.cell
        self.hidden = cfg.hidden_size
        self.layers = cfg.num_layers
        rnns = model.rnns
        with torch.no_grad():
            w_ih0, w_hh0 = rnns[0].weight_ih_l0.float(), rnns[0].weight_hh_l0.float()
            b_ih0, b_hh0 = rnns[0].bias_ih_l0.float(), rnns[0].bias_hh_l0.float()
            self.table = model.embed.weight.float() @ w_ih0.t() + b_ih0  # (V, G*H)
            # Per layer: weights for [input, hidden] -> gates, and the hidden bias.
            self.w_hh: list[Tensor] = [w_hh0.t().contiguous()]
            self.w_cat: list[Tensor | None] = [None]
            self.b_hh: list[Tensor] = [b_hh0]
            self.b_ih: list[Tensor] = [torch.zeros_like(b_ih0)]
            for layer in range(1, cfg.num_layers):
                w_ih = rnns[layer].weight_ih_l0.float()
                w_hh = rnns[layer].weight_hh_l0.float()
                self.w_hh.append(w_hh.t().contiguous())
                self.w_cat.append(torch.cat([w_ih, w_hh], dim=1).t().contiguous())  # (2H, G*H)
                self.b_ih.append(rnns[layer].bias_ih_l0.float())
                self.b_hh.append(rnns[layer].bias_hh_l0.float())
            if cfg.cell != "gru":
                # LSTM and RNN add both biases; fold the hidden one in once.
                self.table = self.table + b_hh0
                self.b_ih = [b_ih + b_hh for b_ih, b_hh in zip(self.b_ih, self.b_hh)]
                self.b_ih[0] = torch.zeros_like(self.b_ih[0])
            self.head_w = model.head.weight.float().t().contiguous()  # (E or H, V)
            self.head_b = model.head.bias.float()
            self.proj = model.proj.weight.float().t().contiguous() if model.proj is not None else None

    @torch.no_grad()
    def __call__(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """tokens: (B,) ids; state as from `init_state`. Returns logits (B, V) and the new state."""
        if self.cell == "lstm":
            hs, cs = state  # type: ignore[misc]
            new_h, new_c = [], []
            x = None
            for layer in range(self.layers):
                h, c = hs[layer], cs[layer]
                if layer == 0:
                    gates = torch.addmm(self.table[tokens], h, self.w_hh[0])
                else:
                    gates = torch.addmm(self.b_ih[layer], torch.cat([x, h], dim=1), self.w_cat[layer])
                i, f, g, o = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                x = torch.sigmoid(o) * torch.tanh(c)
                new_h.append(x)
                new_c.append(c)
            out_state: State = (torch.stack(new_h), torch.stack(new_c))
        elif self.cell == "gru":
            new_h = []
            x = None
            for layer in range(self.layers):
                h = state[layer]  # type: ignore[index]
                if layer == 0:
                    gi = self.table[tokens]
                else:
                    gi = torch.addmm(self.b_ih[layer], x, self.w_cat[layer][: self.hidden])
                gh = torch.addmm(self.b_hh[layer], h, self.w_hh[layer])
                i_r, i_z, i_n = gi.chunk(3, dim=1)
                h_r, h_z, h_n = gh.chunk(3, dim=1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                x = n + z * (h - n)
                new_h.append(x)
            out_state = torch.stack(new_h)
        else:
            new_h = []
            x = None
            for layer in range(self.layers):
                h = state[layer]  # type: ignore[index]
                if layer == 0:
                    pre = torch.addmm(self.table[tokens], h, self.w_hh[0])
                else:
                    pre = torch.addmm(self.b_ih[layer], torch.cat([x, h], dim=1), self.w_cat[layer])
                x = torch.tanh(pre)
                new_h.append(x)
            out_state = torch.stack(new_h)
        if self.proj is not None:
            x = x @ self.proj
        return torch.addmm(self.head_b, x, self.head_w), out_state
