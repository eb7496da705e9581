"""The torch sampler: any device, any number of streams, temperature, top-k, top-p, stop strings.

The prime runs through the fused RNN in one call; then all streams advance together, one
`SingleStep` per token, until each has met a stop string or its length. On a GPU a block of steps
replays as one CUDA graph (`GraphBlock`) and one Triton kernel chooses the token
(`triton_chooser.py`); docs/sampling.md has the details.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Sequence

import numpy as np
import torch

from charrnn.data.tokenizers import Tokenizer
from charrnn.model import RNNLanguageModel, SingleStep, flat_state
from charrnn.sample import triton_chooser
from charrnn.sample.driver import drive
from charrnn.sample.settings import BLOCK_CPU, SampleResult, SampleSettings


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top k, and outside the smallest set whose probability
    reaches top_p (the most likely token always stays). logits: (B, V)."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass ranked above each token
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Chooser:
    """Draws tokens by the Gumbel-max trick: argmax(logits + G), G = -log(-log(U)) for uniform U,
    is an exact sample of softmax(logits). The noise for a block of steps is drawn in one call
    from the seeded generator, so a step costs an add and an argmax, and the same code runs
    eagerly on the CPU and inside a captured CUDA graph. top-k keeps the k largest logits
    (topk returns them sorted); top-p then drops the sorted tail past probability p. With
    `kernel`, all of that is one Triton kernel on noise over the whole vocabulary.
    """

    def __init__(
        self, settings: SampleSettings, vocab: int, batch: int, generator: torch.Generator, kernel: bool = False
    ) -> None:
        self.settings, self.batch, self.generator = settings, batch, generator
        self.width = settings.top_k if 0 < settings.top_k < vocab else vocab
        # On CUDA, one Triton kernel draws the token, whatever the top-k and top-p: the noise then
        # covers the whole vocabulary (`triton_chooser.py`).
        self.kernel = kernel
        if kernel:
            self.width = vocab

    @classmethod
    def for_device(cls, settings: SampleSettings, vocab: int, batch: int, generator: torch.Generator) -> Chooser:
        """The kernel chooser where it runs and agrees with the torch one (checked once), else the torch one."""
        chooser = cls(settings, vocab, batch, generator)
        if generator.device.type != "cuda" or settings.temperature == 0 or not triton_chooser.available(vocab):
            return chooser
        kernel = cls(settings, vocab, batch, generator, kernel=True)
        return kernel if _kernel_agrees(str(generator.device), vocab, settings.top_k, settings.top_p) else chooser

    def agrees_with_torch(self, rows: int = 4096) -> bool:
        """Whether the kernel picks what the torch chooser picks for the same logits and noise."""
        device = self.generator.device
        check = torch.Generator(device=device).manual_seed(0)
        vocab = self.width
        logits = torch.randn(rows, vocab, device=device, generator=check) * 2
        logits[:, vocab // 3] = float("-inf")  # as a banned id is
        noise = _gumbel_(torch.rand(rows, vocab, device=device, generator=check))
        try:
            got = triton_chooser.choose(
                logits, noise, self.settings.top_k, self.settings.top_p, torch.empty_like(noise[:, 0], dtype=torch.long)
            )
        except Exception:  # noqa: BLE001 (a Triton or driver too old, a compile failure: keep the torch chooser)
            return False
        kept = filter_logits(logits, self.settings.top_k, self.settings.top_p)
        expected = (kept + noise).argmax(dim=-1)
        # Float sums in another order can move a token across the top-p boundary now and then.
        return bool((got == expected).float().mean() > 0.99)

    def noise(self, steps: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Gumbel noise for `steps` steps: (steps, B, width)."""
        shape = (steps, self.batch, self.width)
        device = self.generator.device
        return _gumbel_(torch.rand(shape, device=device, generator=self.generator, out=out))

    def __call__(
        self, logits: torch.Tensor, gumbel: torch.Tensor | None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """logits (B, V), already divided by the temperature; gumbel (B, width) or None for greedy.
        The tokens (B,) go to `out` when given (and are returned)."""
        if gumbel is None:
            return torch.argmax(logits, dim=-1, out=out)
        if self.kernel:
            out = out if out is not None else torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
            return triton_chooser.choose(logits.contiguous(), gumbel, self.settings.top_k, self.settings.top_p, out)
        choice = self._torch_choice(logits, gumbel)
        return choice if out is None else out.copy_(choice)

    def _torch_choice(self, logits: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
        ids = None
        if self.width < logits.shape[-1]:
            logits, ids = torch.topk(logits, self.width, dim=-1)
        if self.settings.top_p < 1.0:
            if ids is None:
                logits, ids = torch.sort(logits, dim=-1, descending=True)
            probs = logits.softmax(dim=-1)
            logits = logits.masked_fill(probs.cumsum(dim=-1) - probs >= self.settings.top_p, float("-inf"))
        choice = (logits + gumbel).argmax(dim=-1, keepdim=True)
        return (choice if ids is None else ids.gather(1, choice)).squeeze(1)


def _gumbel_(u: torch.Tensor) -> torch.Tensor:
    """Uniform noise turned into Gumbel noise, -log(-log(u)), in place."""
    return u.clamp_(1e-10, 1 - 1e-7).log_().neg_().log_().neg_()


@functools.cache
def _kernel_agrees(device: str, vocab: int, top_k: int, top_p: float) -> bool:
    """`Chooser.agrees_with_torch`, once per process for each device and filter setting."""
    settings = SampleSettings(temperature=1.0, top_k=top_k, top_p=top_p)
    generator = torch.Generator(device=device)
    return Chooser(settings, vocab, 1, generator, kernel=True).agrees_with_torch()


@torch.no_grad()
def sample(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    prime: str = "",
    settings: SampleSettings | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> SampleResult:
    """Generate `settings.num_samples` continuations of `prime` through the one sampling loop
    (`driver.drive`); `on_text(stream, text)` gets text as it is made."""
    settings = settings or SampleSettings()
    cuda = model.embed.weight.device.type == "cuda"
    previous_tf32, previous_threads = torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = previous_tf32 or cuda  # TF32 matrix units: ample precision here
    if not cuda and settings.num_samples == 1:
        torch.set_num_threads(1)  # one stream's products are too small to split: threads only add waiting
    try:
        return drive(TorchBackend(model, tokenizer, settings), tokenizer, prime, settings, on_text)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
        torch.set_num_threads(previous_threads)


class TorchBackend:
    """The driver's backend in torch (see `driver.Backend`), on any device: the prime through the
    fused model in one call, then one `SingleStep` per token. On a GPU whole blocks of steps replay
    as a CUDA graph (`GraphBlock`) and the tokens may stay there until the end (bulk decoding)."""

    keeps_tokens = True

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer, settings: SampleSettings) -> None:
        self.model, self.settings, self.unk_id = model.eval(), settings, tokenizer.unk_id
        self.device = model.embed.weight.device
        self.batch = settings.num_samples
        self.generator = torch.Generator(device=self.device)  # its own: torch's global generators are never touched
        self.generator.manual_seed(settings.seed if settings.seed is not None else secrets.randbits(63))
        # The temperature divides the logits inside the step's last product; greedy needs no division.
        self.scale = 1.0 / settings.temperature if settings.temperature > 0 else 1.0
        self.greedy = settings.temperature == 0
        self.block = BLOCK_CPU if self.device.type == "cpu" else 256
        self.graph: GraphBlock | None = None
        self.graph_failed = False
        self.noise, self.noise_used = torch.empty(0), 0  # Gumbel noise drawn a block ahead, and how much is spent

    def prime(self, ids: Sequence[int]) -> None:
        """The prime ids through the fused model for every stream: the first logits, <unk> banned,
        the one-token step and its per-layer state."""
        tokens = torch.tensor(ids, dtype=torch.long, device=self.device)
        with torch.no_grad():
            logits, _, state = self.model(tokens[:, None].expand(-1, self.batch))
        self.logits = logits[-1].float() * self.scale
        banned = [] if self.unk_id is None else [self.unk_id]
        self.logits[:, banned] = float("-inf")  # never generate <unk>
        self.single = SingleStep(self.model, banned=banned)  # inside the step's head from here on
        self.layers = self.single.begin(state)
        self.chooser = Chooser.for_device(self.settings, self.logits.shape[-1], self.batch, self.generator)

    def choose(self, allowed: bytes | None) -> torch.Tensor:
        logits = self.logits
        if allowed is not None:
            mask = torch.frombuffer(bytearray(allowed), dtype=torch.bool).view(self.batch, -1)
            logits = logits.masked_fill(~mask.to(self.device), float("-inf"))
        gumbel = None
        if not self.greedy:
            if self.noise_used == len(self.noise):  # while healing, one step's noise at a time
                self.noise, self.noise_used = self.chooser.noise(1 if allowed is not None else self.block), 0
            gumbel = self.noise[self.noise_used]
            self.noise_used += 1
        return self.chooser(logits, gumbel)

    def step(self, tokens: torch.Tensor) -> None:
        self.logits, self.layers = self.single.advance(tokens, self.layers, self.scale)

    def stack(self, steps: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(steps)

    def whole_block(self) -> torch.Tensor | None:
        """On a GPU, a block of steps replayed as one captured CUDA graph (a copy of its tokens)."""
        if self.device.type != "cuda" or self.greedy or self.graph_failed:
            return None
        if self.graph is None:
            self.graph = GraphBlock.build(self.single, self.layers, self.logits, self.chooser, self.scale, self.block)
            self.graph_failed = self.graph is None
        return None if self.graph is None else self.graph.run().clone()

    def on_host(self, blocks: list[torch.Tensor], length: int) -> np.ndarray:
        return torch.cat(blocks)[:length].t().cpu().numpy()


_WARMUP_STEPS = 3  # eager steps before a CUDA graph is captured


class GraphBlock:
    """`block` sampling steps captured once as a CUDA graph and replayed: one launch per block
    instead of some thirty kernel launches per step, which is what bounds one stream on a GPU.
    Before each replay, fresh noise is drawn into the captured buffer (see `Chooser`).
    """

    def __init__(
        self, step: SingleStep, layers: list, logits: torch.Tensor, chooser: Chooser, scale: float, block: int
    ) -> None:
        self.step, self.chooser, self.scale, self.block = step, chooser, scale, block
        self.noise = chooser.noise(block)
        self.tokens = torch.zeros(block, logits.shape[0], dtype=torch.long, device=logits.device)
        self.logits = logits.clone()
        self.layers = _clone_layers(layers)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            # Warm up outside the capture, as CUDA graphs require (cuBLAS and the allocator set
            # themselves up on first use). A few steps run every kernel of the block; running
            # all `block` of them eagerly cost ~0.2 s of launches before the first replay.
            for _ in range(2):
                self._steps(self.logits.clone(), _clone_layers(self.layers), min(block, _WARMUP_STEPS), scratch=True)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self._steps(self.logits, self.layers, block, scratch=False)

    @classmethod
    def build(cls, *args) -> GraphBlock | None:
        # An older driver or torch without graph support, or a capture that fails for any other
        # reason (a kernel it cannot capture): stay eager, which runs the same steps uncaptured.
        try:
            return cls(*args)
        except Exception:  # noqa: BLE001
            return None

    def _steps(self, logits: torch.Tensor, layers: list, steps: int, scratch: bool) -> None:
        for k in range(steps):
            # The warm-up writes into the same buffers as the capture: a Triton kernel is compiled
            # for the alignments of its pointers, and must not be compiled while being captured.
            token = self.chooser(logits, self.noise[k], out=self.tokens[k])
            logits, layers = self.step.advance(token, layers, self.scale)
        if not scratch:  # the state after the block is the next block's starting point
            self.logits.copy_(logits)
            for static, new in zip(flat_state(self.layers), flat_state(layers)):
                static.copy_(new)

    def run(self) -> torch.Tensor:
        """Replay one block; returns its tokens, (block, B)."""
        self.chooser.noise(self.block, out=self.noise)
        self.graph.replay()
        return self.tokens


def _clone_layers(layers: list) -> list:
    return [tuple(t.clone() for t in s) if isinstance(s, tuple) else s.clone() for s in layers]
