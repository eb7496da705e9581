"""Sampling on the CPU with numpy, without importing torch: the same model and the same draws.

For one stream, `import torch` and torch's per-call cost outweigh the arithmetic (three
matrix-vector products a step for a 2 x 256 LSTM), so `charrnn sample` on the CPU runs here, in
float32, on the weights `load_checkpoint(arrays=True)` reads. The first layer's input projection is
a row of a precomputed (vocab, gates) table, and the sigmoid gates come out of the one `tanh` over
all gates (their weights pre-halved). The CPU samples here for any number of streams, each
stream with a generator of its own; other devices sample in `torch_sampler.py`. docs/sampling.md
has the details and docs/performance.md the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import Tokenizer
from charrnn.sample.driver import drive
from charrnn.sample.settings import BLOCK_CPU, SampleResult, SampleSettings

F32 = np.float32
PRIME_CHUNK = 4096  # prime tokens whose projections are held at once
CAP = F32(80)  # the most a logit is taken to exceed the drawn one's, in top-p's test (exp(80) fits float32)


class NumpyModel:
    """A trained model's weights rearranged for stepping in numpy. State: per layer, (h, c) or h, each (B, H)."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, np.ndarray], banned: Sequence[int] = ()) -> None:
        self.cell, self.hidden, self.layers = cfg.cell, cfg.hidden_size, cfg.num_layers
        H = cfg.hidden_size
        # Per gate block, what multiplies the pre-activation so that one tanh serves every gate:
        # 1/2 for sigmoid gates (then sigmoid = 1/2 + tanh/2), 1 for tanh gates.
        halve = {"lstm": [0.5, 0.5, 1.0, 0.5], "gru": [0.5, 0.5, 1.0], "rnn": [1.0]}[cfg.cell]
        pre = np.repeat(np.array(halve, dtype=F32), H)
        # After the tanh: gates * post_mul + post_add turns the sigmoid blocks into sigmoids.
        self.post_mul = np.where(pre == 0.5, F32(0.5), F32(1.0)).astype(F32)
        self.post_add = np.where(pre == 0.5, F32(0.5), F32(0.0)).astype(F32)
        self.w_x: list[np.ndarray] = []  # (in, G*H) input-side weights; [0] only builds the table below
        self.b: list[np.ndarray] = []  # (G*H,) input-side bias (plus hidden bias where it can be summed)
        self.w_h: list[np.ndarray] = []  # (H, G*H), or for a GRU (H, 3H) with the candidate block apart
        self.b_hn: list[np.ndarray] = []  # GRU only: the hidden-side candidate bias, inside the reset gate
        for i in range(cfg.num_layers):
            w_ih = weights[f"rnns.{i}.weight_ih_l0"].astype(F32)
            w_hh = weights[f"rnns.{i}.weight_hh_l0"].astype(F32)
            b_ih = weights[f"rnns.{i}.bias_ih_l0"].astype(F32)
            b_hh = weights[f"rnns.{i}.bias_hh_l0"].astype(F32)
            if cfg.cell == "gru":
                bias = b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H, F32)])
                self.b_hn.append(b_hh[2 * H :].copy())
            else:
                bias = b_ih + b_hh
            self.w_x.append(np.ascontiguousarray(w_ih.T * pre))
            self.b.append((bias * pre).astype(F32))
            self.w_h.append(np.ascontiguousarray(w_hh.T * pre))
        embed = weights["embed.weight"].astype(F32)
        self.table = (embed @ self.w_x[0] + self.b[0]).astype(F32)  # (V, G*H): layer 0's input projection
        self.proj = weights["proj.weight"].astype(F32).T.copy() if "proj.weight" in weights else None
        self.head_w = np.ascontiguousarray(weights["head.weight"].astype(F32).T)  # (H or E, V)
        self.head_b = weights["head.bias"].astype(F32).copy()
        self.head_b[list(banned)] = -np.inf  # ids never to be produced, e.g. <unk>
        self.vocab = self.head_b.shape[0]

    def zero_state(self, batch: int) -> list:
        zeros = [np.zeros((batch, self.hidden), F32) for _ in range(self.layers)]
        return [(h, h.copy()) for h in zeros] if self.cell == "lstm" else zeros

    def _cell(self, i: int, gx: np.ndarray, state):
        """One time step of layer i: gx (B, G*H) is the input projection with its bias; returns the new state."""
        H = self.hidden
        if self.cell == "lstm":
            h, c = state
            gates = h @ self.w_h[i]
            gates += gx
            np.tanh(gates, out=gates)
            gates *= self.post_mul
            gates += self.post_add  # now sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
            c = gates[:, H : 2 * H] * c
            c += gates[:, :H] * gates[:, 2 * H : 3 * H]
            h = np.tanh(c)
            h *= gates[:, 3 * H :]
            return h, c
        if self.cell == "gru":
            h = state
            gh = h @ self.w_h[i]
            rz = gx[:, : 2 * H] + gh[:, : 2 * H]
            np.tanh(rz, out=rz)
            rz *= 0.5
            rz += 0.5  # sigmoid(r), sigmoid(z)
            gh_n = gh[:, 2 * H :] + self.b_hn[i]
            gh_n *= rz[:, :H]
            gh_n += gx[:, 2 * H :]
            n = np.tanh(gh_n)
            h = h - n
            h *= rz[:, H:]
            h += n  # (1 - z) * n + z * h
            return h
        pre = state @ self.w_h[i]
        pre += gx
        return np.tanh(pre, out=pre)

    def _head(self, x: np.ndarray, scale: float) -> np.ndarray:
        if self.proj is not None:
            x = x @ self.proj
        logits = x @ self.head_w
        logits += self.head_b
        if scale != 1.0:
            logits *= F32(scale)
        return logits

    def step(self, tokens: np.ndarray, state: list, scale: float = 1.0) -> tuple[np.ndarray, list]:
        """tokens (B,) ints -> logits (B, V) times `scale`, and the state after them."""
        new = []
        x = None
        for i in range(self.layers):
            gx = self.table[tokens] if i == 0 else x @ self.w_x[i] + self.b[i]
            layer = self._cell(i, gx, state[i])
            new.append(layer)
            x = layer[0] if self.cell == "lstm" else layer
        return self._head(x, scale), new

    def prime(self, ids: Sequence[int], batch: int, scale: float = 1.0) -> tuple[np.ndarray, list]:
        """Run one stream through `ids` from the zero state; the last logits (B, V) and the state,
        repeated for `batch` streams. Layer by layer within chunks of `PRIME_CHUNK` tokens (each
        layer's input projection for a chunk is one product), so a prime file of any length needs
        memory for one chunk only."""
        state = self.zero_state(1)
        ids = np.asarray(ids, dtype=np.int64)
        for start in range(0, len(ids), PRIME_CHUNK):
            out = self.table[ids[start : start + PRIME_CHUNK]]  # (T, G*H)
            for i in range(self.layers):
                gx = out if i == 0 else out @ self.w_x[i] + self.b[i]
                out = np.empty((len(gx), self.hidden), F32)
                for t in range(len(gx)):
                    state[i] = self._cell(i, gx[t : t + 1], state[i])
                    out[t] = state[i][0] if self.cell == "lstm" else state[i]
        logits = np.repeat(self._head(out[-1:], scale), batch, axis=0)
        if self.cell == "lstm":
            return logits, [(np.repeat(h, batch, axis=0), np.repeat(c, batch, axis=0)) for h, c in state]
        return logits, [np.repeat(h, batch, axis=0) for h in state]


class Chooser:
    """Draws the next token of every stream from scaled logits: greedy argmax, or a sample from
    the softmax of the whole vocabulary, of its top k, and/or of its top-p nucleus.

    Sampling is Gumbel-max: argmax of logits plus Gumbel noise. Every stream draws its noise from
    a generator of its own (`stream_generators`), so what a stream writes depends on the seed and
    its index, not on how many streams run beside it.

    top-p needs the nucleus, the most likely tokens that hold probability p, which takes a sort.
    The draw from the whole softmax comes first, and stands where it lies in the nucleus (the
    tokens more likely than it hold less than p): it is then the argmax over the nucleus too.
    Only the other streams sort, and draw again over their nucleus with the same noise. Either
    way the token is the Gumbel-max over the nucleus: an exact sample of its renormalized softmax.
    """

    def __init__(
        self,
        settings: SampleSettings,
        vocab: int,
        batch: int,
        rng: np.random.Generator | Sequence[np.random.Generator],
    ) -> None:
        """rng: one generator per stream, or one (for one stream; for more, spawned into one each)."""
        if isinstance(rng, np.random.Generator):
            rng = [rng] if batch == 1 else rng.spawn(batch)
        if len(rng) != batch:
            raise ValueError(f"{len(rng)} generators for {batch} streams")
        self.top_p, self.rngs, self.batch = settings.top_p, list(rng), batch
        self.greedy = settings.temperature == 0
        self.width = settings.top_k if 0 < settings.top_k < vocab else vocab
        self.noise = np.empty((0, batch, self.width), F32)
        self.used = 0
        self.rows = np.arange(batch)[:, None]  # for picking one entry per row

    def _gumbel(self) -> np.ndarray:
        if self.used == len(self.noise):  # a block of steps' worth of noise, a call per stream
            u = np.empty((self.batch, BLOCK_CPU, self.width), F32)
            for row, rng in zip(u, self.rngs):
                rng.random(dtype=F32, out=row)
            np.clip(u, 1e-10, 1 - 1e-7, out=u)
            self.noise = (-np.log(-np.log(u))).transpose(1, 0, 2)  # (steps, B, width)
            self.used = 0
        self.used += 1
        return self.noise[self.used - 1]

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits (B, V), already divided by the temperature -> token ids (B,)."""
        if self.greedy:
            return logits.argmax(axis=1)
        ids = None
        if self.width < logits.shape[1]:
            ids = np.argpartition(logits, -self.width, axis=1)[:, -self.width :]
            logits = logits[self.rows, ids]
        noise = self._gumbel()
        choice = (logits + noise).argmax(axis=1)
        if self.top_p < 1.0:
            choice = self._within_nucleus(logits, noise, choice)
        return choice if ids is None else ids[self.rows[:, 0], choice]

    def _within_nucleus(self, logits: np.ndarray, noise: np.ndarray, choice: np.ndarray) -> np.ndarray:
        """`choice` where it lies in its stream's nucleus; elsewhere the Gumbel-max over the nucleus."""
        if self.batch == 1:
            return self._within_nucleus_one(logits[0], noise[0], choice)
        drawn = logits[self.rows[:, 0], choice][:, None]
        # Probabilities relative to the drawn token's, capped at e^80 against overflow: a token
        # that much more likely puts the draw far outside the nucleus, and the test still says so.
        weights = np.exp(np.minimum(logits - drawn, CAP))
        above = np.add.reduce(weights, axis=1, where=logits > drawn)  # the more likely tokens
        outside = np.flatnonzero(above >= self.top_p * np.add.reduce(weights, axis=1))
        if not len(outside):
            return choice
        part = logits[outside]
        rows = self.rows[: len(outside)]
        order = np.argsort(part, axis=1)  # ascending: the most likely token last
        ranked = part[rows, order]
        mass = np.add.accumulate(np.exp(ranked - ranked[:, -1:]), axis=1)  # of each token and all less likely ones
        total = mass[:, -1:]
        # Drop a token when the more likely ones already hold top_p of the probability
        # (never the most likely one: 0 >= top_p * total is false).
        part[rows, order] = np.where(total - mass >= self.top_p * total, -np.inf, ranked)
        choice = choice.copy()
        choice[outside] = (part + noise[outside]).argmax(axis=1)
        return choice

    def _within_nucleus_one(self, row: np.ndarray, noise: np.ndarray, choice: np.ndarray) -> np.ndarray:
        """`_within_nucleus` for one stream: the same arithmetic on its row, so the same token, in
        fewer and cheaper numpy calls (at batch 1 every call shows)."""
        drawn = row[choice[0]]
        weights = np.exp(np.minimum(row - drawn, CAP))
        if np.add.reduce(weights, where=row > drawn) < self.top_p * np.add.reduce(weights):
            return choice
        order = np.argsort(row)
        ranked = row[order]
        mass = np.add.accumulate(np.exp(ranked - ranked[-1]))
        kept = row.copy()
        kept[order[mass[-1] - mass >= self.top_p * mass[-1]]] = -np.inf
        return (kept + noise).argmax(keepdims=True)


def stream_generators(seed: int | None, batch: int) -> list[np.random.Generator]:
    """One generator per stream, none of them numpy's global one: stream 0 draws from
    `default_rng(seed)`, as one stream always has, stream b from the seed's b-th child sequence
    (`SeedSequence` spawning; a fresh seed from the OS when `seed` is None)."""
    root = np.random.SeedSequence(seed)
    children = (np.random.SeedSequence(root.entropy, spawn_key=(b,)) for b in range(1, batch))
    return [np.random.Generator(np.random.PCG64(sequence)) for sequence in (root, *children)]


class NumpyBackend:
    """The driver's backend in numpy (see `driver.Backend`): the model stepped by `NumpyModel`,
    the draws made by `Chooser`, one generator per stream."""

    block = BLOCK_CPU
    keeps_tokens = False  # the tokens are on the host already

    def __init__(
        self, cfg: ModelConfig, weights: dict[str, np.ndarray], tokenizer: Tokenizer, settings: SampleSettings
    ) -> None:
        self.batch = settings.num_samples
        self.model = NumpyModel(cfg, weights, banned=[] if tokenizer.unk_id is None else [tokenizer.unk_id])
        # The temperature divides the logits inside the head's product; greedy needs no division.
        self.scale = 1.0 / settings.temperature if settings.temperature > 0 else 1.0
        self.chooser = Chooser(settings, self.model.vocab, self.batch, stream_generators(settings.seed, self.batch))

    def prime(self, ids: Sequence[int]) -> None:
        self.logits, self.state = self.model.prime(ids, self.batch, self.scale)

    def choose(self, allowed: bytes | None) -> np.ndarray:
        logits = self.logits
        if allowed is not None:
            logits = np.where(np.frombuffer(allowed, dtype=np.bool_).reshape(self.batch, -1), logits, F32(-np.inf))
        return self.chooser(logits)

    def step(self, tokens: np.ndarray) -> None:
        self.logits, self.state = self.model.step(tokens, self.state, self.scale)

    def stack(self, steps: list[np.ndarray]) -> np.ndarray:
        return np.stack(steps)

    def whole_block(self) -> None:
        return None


def sample_numpy(
    cfg: ModelConfig,
    weights: dict[str, np.ndarray],
    tokenizer: Tokenizer,
    prime: str,
    settings: SampleSettings,
    on_text: Callable[[int, str], None] | None = None,
) -> SampleResult:
    """Generate `settings.num_samples` continuations of `prime` from a model's weights (as
    `checkpoint.arrays_from_checkpoint` gives them), through the one sampling loop
    (`driver.drive`): `on_text(stream, text)` gets text as it is made."""
    # Scores that overflow float32 end sampling with one message (text.NOT_FINITE), not numpy's warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        return drive(NumpyBackend(cfg, weights, tokenizer, settings), tokenizer, prime, settings, on_text)
