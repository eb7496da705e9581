"""Dynamic evaluation: a copy of the model keeps learning from the text it reads (Krause,
Kahembwe, Murray and Renals, "Dynamic Evaluation of Neural Sequence Models", ICML 2018).

The text is read in segments of `segment` tokens, the state carried from one to the next as in
the static pass (`charrnn.text_pass`, run with grad on). Each segment is scored with the current
weights first, and only then is one update taken on its mean loss, from the same forward: every
token is predicted before the model has learnt anything from it. The update, per parameter θ
with trained value θ₀, gradient g of the segment's loss and learning rate η:

    rms:  θ ← θ − η g / (√MS + ε) + min(1, λ √MS / mean(√MS)) (θ₀ − θ)
    sgd:  θ ← θ − η g + λ (θ₀ − θ)

where g is first scaled down, if need be, to a norm of at most `clip` times the training
segments' RMS gradient norm √(Σ MS) (rms) or to `clip` itself (sgd): a text far from the training
text (an unseen alphabet, a log full of digits) has gradients orders of magnitude larger than any
the statistics saw, and without the clip a few updates can wreck the weights.

MS is each weight's mean squared gradient over segments of the run's own training text (its
first `stats_tokens` tokens, with the trained weights): weights whose gradient is usually small
move further per unit of gradient, and the decay λ pulls the weights that training moved most
back toward their trained values fastest. The weights adapted are a copy; the model given, and
the checkpoint it came from, never change. docs/evaluation.md says how the defaults were chosen.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    import torch

    from charrnn.model import RNNLanguageModel, State
    from charrnn.text_pass import Window

METHODS = ("rms", "sgd")
EPSILON = 1e-5  # added to √MS: no weight's step is unbounded where its gradient was always ~0


@dataclass(frozen=True)
class DynamicSettings:
    """How the weights adapt: `segment` tokens per update, learning rate `lr`, decay toward the
    trained weights `decay`, the gradient's largest norm `clip` (0: none), `method` "rms" or "sgd",
    and (rms) the training tokens whose gradients give the statistics. Checked once, with the
    command line's flag names. The defaults come from scripts/bench_dynamic.py --sweep."""

    segment: int = 128
    lr: float = 1e-3
    decay: float = 0.001
    clip: float = 1.0
    method: str = "rms"
    stats_tokens: int = 8192

    def __post_init__(self) -> None:
        for name, value in (("segment", self.segment), ("stats-tokens", self.stats_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CharrnnError(f"--dynamic-{name} must be a whole number of at least 1, got {value!r}")
        for name, value in (("lr", self.lr), ("decay", self.decay), ("clip", self.clip)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise CharrnnError(f"--dynamic-{name} must be a finite number >= 0, got {value!r}")
        if self.decay > 1:
            raise CharrnnError(
                f"--dynamic-decay is a fraction of the way back per segment: at most 1, got {self.decay}"
            )
        if self.method not in METHODS:
            raise CharrnnError(f"--dynamic-method must be one of {', '.join(METHODS)}, got {self.method!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_of(dynamic: object) -> DynamicSettings | None:
    """The API's `dynamic=` argument: False (static), True (the defaults) or settings."""
    if dynamic is False:
        return None
    if dynamic is True:
        return DynamicSettings()
    if isinstance(dynamic, DynamicSettings):
        return dynamic
    raise CharrnnError(f"dynamic must be True, False or a DynamicSettings, got {type(dynamic).__name__}")


class Adapter:
    """A copy of a model that learns from what it reads: `windows` scores a text segment by
    segment and updates the copy after each; the state and weights carry from call to call."""

    def __init__(self, model: RNNLanguageModel, settings: DynamicSettings, stats: list[torch.Tensor] | None) -> None:
        import torch

        self.settings = settings
        self.net = copy.deepcopy(model).eval()
        self.params = [p for p in self.net.parameters()]  # a tied matrix once
        for p in self.params:
            p.requires_grad_(True)
        self.trained = [p.detach().clone() for p in self.params]
        self.state: State | None = None
        if settings.method == "rms":
            if stats is None:
                raise ValueError("the rms method needs gradient statistics")
            roots = [ms.sqrt() for ms in stats]
            mean_root = torch.cat([r.flatten() for r in roots]).mean().clamp(min=1e-30)
            self.rate: list[Any] = [settings.lr / (r + EPSILON) for r in roots]
            self.pull: list[Any] = [(settings.decay * r / mean_root).clamp(max=1.0) for r in roots]
            self.limit = settings.clip * math.sqrt(sum(float(ms.sum()) for ms in stats))
        else:
            self.rate = [settings.lr] * len(self.params)
            self.pull = [settings.decay] * len(self.params)
            self.limit = settings.clip

    def windows(self, tokens: torch.Tensor, length: int, *, autocast: bool = False) -> Iterator[Window]:
        """The `length` targets after tokens[0], a window per segment, each scored (its logits
        detached) before the update it leads to; from and to `self.state`."""
        import torch

        from charrnn.text_pass import windows

        parts = windows(
            self.net,
            tokens,
            torch.tensor([0]),
            length,
            state=self.state,
            autocast=autocast,
            window=self.settings.segment,
            grad=True,
        )
        for part in parts:
            self.step(part.graph_loss())  # its figures are in already: scored before the weights learn from it
            self.state = part.state
            yield part

    def step(self, loss: torch.Tensor) -> None:
        """One update on `loss` (the mean of a segment's), decaying toward the trained weights."""
        import torch

        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        with torch.no_grad():
            if self.settings.clip:  # scaled on the device: no host sync per segment
                norm = torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]).norm()
                factor = (self.limit / norm.clamp(min=1e-30)).clamp(max=1.0)
                grads = tuple(None if g is None else g * factor for g in grads)
            for p, g, trained, rate, pull in zip(self.params, grads, self.trained, self.rate, self.pull):
                if self.settings.decay:
                    p.lerp_(trained, pull)  # θ + pull (θ₀ − θ), from the weights before this step
                if g is not None and self.settings.lr:
                    if isinstance(rate, float):
                        p.add_(g, alpha=-rate)
                    else:
                        p.addcmul_(g, rate, value=-1)

    def weights(self) -> dict[str, Any]:
        """The adapted weights as float32 numpy arrays, by state-dict name (a tied matrix under both)."""
        return {key: value.detach().float().cpu().numpy() for key, value in self.net.state_dict().items()}


def gradient_stats(model: RNNLanguageModel, train: torch.Tensor, settings: DynamicSettings) -> list[torch.Tensor]:
    """Each parameter's mean squared gradient of a segment's mean loss, over the segments of the
    first `settings.stats_tokens` tokens of `train` (a run's training split), read in one
    stateful pass with the trained weights (none are changed)."""
    import torch

    from charrnn.text_pass import windows

    length = min(settings.stats_tokens, train.numel() - 1)
    if length < 1:
        raise CharrnnError("the run's training text is too short for dynamic evaluation's gradient statistics")
    net = copy.deepcopy(model).eval()
    params = [p.requires_grad_(True) for p in net.parameters()]
    sums = [torch.zeros_like(p) for p in params]
    count = 0
    for part in windows(net, train, torch.tensor([0]), length, window=settings.segment, grad=True):
        grads = torch.autograd.grad(part.graph_loss(), params, allow_unused=True)
        for total, g in zip(sums, grads):
            if g is not None:
                total += g * g
        count += 1
    return [total / count for total in sums]


def adapter_of_run(
    model: RNNLanguageModel, payload: dict[str, Any], dynamic: object, cache: dict[tuple[int, int], Any]
) -> Adapter:
    """A fresh adapter of `model` (`dynamic`: True or settings), whose checkpoint `payload` names
    its training text: the rms method's gradient statistics come from it, computed once per
    segment and token count and kept in `cache`."""
    settings = settings_of(dynamic)
    if settings is None:
        raise CharrnnError("an adapter adapts: dynamic must be True or a DynamicSettings, not False")
    key = (settings.segment, settings.stats_tokens)
    if settings.method == "rms" and key not in cache:
        cache[key] = gradient_stats(model, training_tokens(payload), settings)
    return Adapter(model, settings, cache.get(key))


def adapted_weights(adapter: Adapter, tokens: torch.Tensor, *, autocast: bool = False) -> dict[str, Any]:
    """The adapter's weights after reading all of `tokens` (each segment scored, then learnt from)."""
    for _ in adapter.windows(tokens, tokens.numel() - 1, autocast=autocast):
        pass
    return adapter.weights()


def training_tokens(payload: dict[str, Any]) -> torch.Tensor:
    """The training split's token ids of the run that wrote `payload`, rebuilt from its corpus."""
    from charrnn.checkpoint import train_config_of
    from charrnn.data.dataset import dataset_of_run

    try:
        dataset = dataset_of_run(payload, train_config_of(payload))
    except CharrnnError as exc:
        raise CharrnnError(
            f"{exc}: the rms method of dynamic evaluation needs the run's training text (or use --dynamic-method sgd)"
        ) from None
    return dataset.train.tokens
