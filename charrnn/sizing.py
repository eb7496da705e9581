"""`--preset auto` on a CPU: the model size that fits the budget, the corpus and this machine.

The rule (docs/training.md, "Presets"): of the sizes in `LADDER`, take the
largest that

- sees at least `TOKENS_PER_PARAMETER` training tokens per parameter within the budget, and
- has at most `PARAMETERS_PER_TOKEN` parameters per token of training text,

or the smallest when none does. The tokens a budget buys are `--max-steps` × batch × sequence
length, `--max-epochs` × the training text, and, for `--max-time`, the seconds left for training ×
this machine's speed for that size, measured here by a few timed steps of each size the search
visits (`calibrate`). That measurement runs inside the budget, as everything after the call does.

TOKENS_PER_PARAMETER was fitted by `python scripts/bench_frontier.py --fit` on the grid it
measured (scripts/results/frontier_cpu.jsonl); the sizes are that grid's points. CUDA keeps the `gpu`
preset until a frontier is measured there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from charrnn.config import ModelConfig, TrainConfig

# Fitted by `scripts/bench_frontier.py --fit` (tests/test_sizing.py checks it still says so).
TOKENS_PER_PARAMETER = 3.2
# Not fitted: the largest ratio the grid trained without overfitting (2×512 on 1.0 M characters,
# dropout 0.2), rounded up. No measured run has reached it yet (docs/performance.md).
PARAMETERS_PER_TOKEN = 4.0
CALIBRATION_WARMUP = 2  # untimed steps per size first: a new shape's first steps build its kernels
CALIBRATION_STEPS = 3  # timed steps per size (of the run's own shape), the median kept
EVAL_PROBE = 1024  # tokens of the one-stream forward pass that times the final evaluation
END_OF_RUN = 1.5  # seconds kept back for the last saves, sample and drawing (the trainer times them later)


@dataclass(frozen=True)
class Speed:
    """What a size costs on this machine: training tokens per second (all streams of a step), and
    tokens per second of the final evaluation's one-stream pass."""

    train: float
    evaluate: float


@dataclass(frozen=True)
class Size:
    """One size of the ladder: its changes to the `cpu` preset (the model's shape, its dropout and
    its learning rate: larger models get more dropout and a lower rate)."""

    name: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)


LADDER: tuple[Size, ...] = (
    Size("2x64", {"hidden_size": 64}),
    Size("2x128", {"hidden_size": 128}),
    Size("2x192", {"hidden_size": 192}),
    Size("2x256", {}),
    Size("2x384", {"hidden_size": 384}, {"lr": 6e-3}),
    Size("2x512", {"hidden_size": 512, "dropout_hidden": 0.2, "dropout_output": 0.2}, {"lr": 4e-3}),
    Size("3x512", {"num_layers": 3, "hidden_size": 512, "dropout_hidden": 0.25, "dropout_output": 0.25}, {"lr": 3e-3}),
)
PRESET_SIZE = "2x256"  # the cpu preset's own shape: where the search starts
SHAPE = ("num_layers", "hidden_size")  # given either, the size is the user's


@dataclass(frozen=True)
class Budget:
    """What a new run knows before it builds a model: the training text, the budget, the clock."""

    vocab_size: int
    train_tokens: int
    val_tokens: int
    chars_per_token: float
    cfg: TrainConfig
    seconds_left: float | None  # of --max-time, after everything so far; None: no time budget
    world: int = 1  # torchrun ranks: the tokens of a time budget are every rank's


@dataclass
class Choice:
    """The size chosen and why: `line()` is what `charrnn train` prints, `record()` what config.json
    keeps. `model` holds the whole model settings, `train` only the size's changes to the rest."""

    size: str
    parameters: int
    model: dict[str, Any]
    train: dict[str, Any]
    reason: str
    expected_tokens: float | None = None
    tokens_per_second: dict[str, float] = field(default_factory=dict)  # training, by size measured
    evaluation_tokens_per_second: dict[str, float] = field(default_factory=dict)  # the one-stream final pass
    calibration_seconds: float = 0.0

    def line(self) -> str:
        layers, hidden, cell = self.model["num_layers"], self.model["hidden_size"], self.model["cell"]
        return (
            f"--preset auto: {layers} × {hidden} {cell.upper()}, {_millions(self.parameters)} parameters: {self.reason}"
        )

    def record(self) -> dict[str, Any]:
        return {
            "preset": "auto",
            "size": self.size,
            "parameters": self.parameters,
            "reason": self.reason,
            "expected_tokens": self.expected_tokens,
            "tokens_per_second": self.tokens_per_second,
            "evaluation_tokens_per_second": self.evaluation_tokens_per_second,
            "calibration_seconds": self.calibration_seconds,
            "tokens_per_parameter": TOKENS_PER_PARAMETER,
            "parameters_per_token": PARAMETERS_PER_TOKEN,
        }


def _millions(count: float) -> str:
    return f"{count / 1e6:.2f} M" if count < 1e7 else f"{count / 1e6:.0f} M"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.3g} minutes" if seconds < 7200 else f"{seconds / 3600:.3g} hours"


def parameters(model: dict[str, Any], vocab_size: int) -> int:
    """The parameter count of a model of these settings, without building it."""
    from charrnn.model import RNNLanguageModel

    with torch.device("meta"):
        return sum(p.numel() for p in RNNLanguageModel(ModelConfig(vocab_size=vocab_size, **model)).parameters())


def settings_of(size: Size, preset: dict[str, dict[str, Any]], given: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The model and training settings of `size`: the preset's, changed by the size, changed by
    what the user gave (which always wins)."""
    return {part: {**preset[part], **getattr(size, part), **given.get(part, {})} for part in ("model", "train")}


def choose(
    budget: Budget,
    preset: dict[str, dict[str, Any]],
    given: dict[str, dict[str, Any]],
    device: torch.device,
    speed: Any = None,
) -> Choice:
    """The size `--preset auto` trains (see the module's docstring). `preset` is the cpu preset's
    settings, `given` the options the user set (by section), `speed(model, train)` a size's
    measured `Speed` (default: `calibrate` on `device`)."""
    speed = speed or (lambda model, train: calibrate(model, train, budget.vocab_size, device))
    if any(name in given.get("model", {}) for name in SHAPE):
        return _as_given(budget, preset, given)
    bound = PARAMETERS_PER_TOKEN * budget.train_tokens
    allowed = [s for s in LADDER if _params(s, budget, preset, given) <= bound] or list(LADDER[:1])
    search = _Search(budget, preset, given, speed, _fixed_tokens(budget))
    names = [s.name for s in allowed]
    pick = names.index(PRESET_SIZE) if PRESET_SIZE in names else len(allowed) - 1
    if search.fits(allowed[pick]):  # up while the next size still fits
        while pick + 1 < len(allowed) and search.fits(allowed[pick + 1]):
            pick += 1
    else:  # down to the first size that fits, or the smallest
        pick -= 1
        while pick > 0 and not search.fits(allowed[pick]):
            pick -= 1
        pick = max(pick, 0)
    chosen = allowed[pick]
    return search.choice(chosen, _reason(budget, search, chosen, last_allowed=chosen is allowed[-1]))


def _params(size: Size, budget: Budget, preset: dict[str, dict[str, Any]], given: dict[str, dict[str, Any]]) -> int:
    return parameters(settings_of(size, preset, given)["model"], budget.vocab_size)


def _fixed_tokens(budget: Budget) -> float | None:
    """The tokens the step and epoch budgets allow (None: neither is set)."""
    cfg, limits = budget.cfg, []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps * cfg.batch_size * cfg.seq_len * budget.world)
    if cfg.max_epochs is not None:
        limits.append(cfg.max_epochs * budget.train_tokens)
    return min(limits) if limits else None


class _Search:
    """The expected training tokens of each size visited, measuring a size's speed only when a
    time budget needs it, and each size at most once."""

    def __init__(self, budget: Budget, preset: dict, given: dict, speed: Any, fixed: float | None) -> None:
        self.budget, self.preset, self.given, self.speed, self.fixed = budget, preset, given, speed, fixed
        self.rates: dict[str, float] = {}
        self.eval_rates: dict[str, float] = {}
        self.tokens: dict[str, float] = {}
        self.seconds = 0.0

    def expected(self, size: Size) -> float:
        if size.name not in self.tokens:
            self.tokens[size.name] = self._expected(size)
        return self.tokens[size.name]

    def _expected(self, size: Size) -> float:
        left = self.budget.seconds_left
        if left is None:
            return self.fixed if self.fixed is not None else math.inf
        settings = settings_of(size, self.preset, self.given)
        started = time.monotonic()
        speed = self.speed(settings["model"], settings["train"])
        self.seconds += time.monotonic() - started
        rate = self.rates[size.name] = speed.train * self.budget.world
        self.eval_rates[size.name] = speed.evaluate
        # Kept back from the budget: the final exact evaluation (one stream, on rank 0) and the saves.
        final = self.budget.val_tokens / speed.evaluate + END_OF_RUN
        by_time = max(left - self.seconds - final, 0.0) * rate
        return by_time if self.fixed is None else min(by_time, self.fixed)

    def fits(self, size: Size) -> bool:
        return self.expected(size) >= TOKENS_PER_PARAMETER * _params(size, self.budget, self.preset, self.given)

    def choice(self, size: Size, reason: str) -> Choice:
        settings = settings_of(size, self.preset, self.given)
        tokens = self.expected(size)
        return Choice(
            size=size.name,
            parameters=_params(size, self.budget, self.preset, self.given),
            model=settings["model"],
            train={name: value for name, value in size.train.items() if name not in self.given.get("train", {})},
            reason=reason,
            expected_tokens=tokens if math.isfinite(tokens) else None,
            tokens_per_second={name: round(rate, 1) for name, rate in self.rates.items()},
            evaluation_tokens_per_second={name: round(rate, 1) for name, rate in self.eval_rates.items()},
            calibration_seconds=round(self.seconds, 3),
        )


def _reason(budget: Budget, search: _Search, size: Size, *, last_allowed: bool) -> str:
    unit = "characters" if budget.chars_per_token == 1 else "tokens"
    corpus = f"on a {_millions(budget.train_tokens * budget.chars_per_token)}-character training text"
    bound = f"the text allows no larger (at most {PARAMETERS_PER_TOKEN:g} parameters per training {unit[:-1]})"
    tokens = search.expected(size)
    if not math.isfinite(tokens):
        return f"no --max-time, --max-steps or --max-epochs was given, and {bound}"
    params = _params(size, budget, search.preset, search.given)
    if size.name in search.rates:
        within = f"{_duration(budget.cfg.max_time or 0)} on this machine"
    else:
        within = "the step or epoch budget"
    why = f"about {_millions(tokens)} {unit} fit {within} ({tokens / params:.1f} per parameter), {corpus}"
    if tokens < TOKENS_PER_PARAMETER * params:
        return f"{why}; the smallest size, though the budget buys fewer than {TOKENS_PER_PARAMETER:g} per parameter"
    if size is LADDER[-1]:
        return f"{why}; the largest size there is"
    if last_allowed:
        return f"{why}; {bound}"
    return f"{why}; a larger size would see fewer than {TOKENS_PER_PARAMETER:g} per parameter"


def _as_given(budget: Budget, preset: dict[str, dict[str, Any]], given: dict[str, dict[str, Any]]) -> Choice:
    settings = {part: {**preset[part], **given.get(part, {})} for part in ("model", "train")}
    shown = ", ".join(f"--{'layers' if n == 'num_layers' else 'hidden'}" for n in SHAPE if n in given["model"])
    return Choice(
        size="given",
        parameters=parameters(settings["model"], budget.vocab_size),
        model=settings["model"],
        train={},
        reason=f"the size given ({shown}), the rest from the cpu preset",
    )


def calibrate(model: dict[str, Any], train: dict[str, Any], vocab_size: int, device: torch.device) -> Speed:
    """The speed of a model of these settings on `device`, on random tokens: training, the median
    of CALIBRATION_STEPS timed steps of the run's own shape (forward, backward, clipping, AdamW)
    after CALIBRATION_WARMUP untimed ones; evaluation, the faster of two one-stream forward passes
    over EVAL_PROBE tokens. The generators are left as they were."""
    from charrnn.model import RNNLanguageModel, detach_state

    batch, seq = int(train["batch_size"]), int(train["seq_len"])
    with torch.random.fork_rng(devices=[]):
        net = RNNLanguageModel(ModelConfig(vocab_size=vocab_size, **model)).to(device).train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=float(train["lr"]), fused=device.type == "cuda")
        tokens = torch.randint(0, vocab_size, (CALIBRATION_WARMUP + CALIBRATION_STEPS, seq + 1, batch), device=device)
        state, times = None, []
        for window in tokens:
            started = time.perf_counter()
            _, loss, state = net(window[:-1], state, window[1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            state = detach_state(state)
            _synchronize(device)
            times.append(time.perf_counter() - started)
        net.eval()
        probe, passes = torch.randint(0, vocab_size, (EVAL_PROBE + 1, 1), device=device), []
        with torch.no_grad():
            for _ in range(2):
                started = time.perf_counter()
                net(probe[:-1], None, probe[1:])
                _synchronize(device)
                passes.append(time.perf_counter() - started)
    timed = sorted(times[CALIBRATION_WARMUP:])
    return Speed(train=batch * seq / timed[len(timed) // 2], evaluate=EVAL_PROBE / min(passes))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
