"""Using a trained model from Python: `load` a run or a checkpoint, then generate, stream, evaluate, score.

    model = charrnn.load("runs/demo")
    print(model.generate("And God said", length=200, seed=1))

`load` reads the checkpoint once, as numpy arrays, without importing torch. On the CPU, every
sample comes from the numpy sampler on those arrays, so a script that only samples on the CPU
never imports torch. Another device, `evaluate` and `score` use the torch model, built from the
same arrays the first time one of them needs it. `CHARRNN_SAMPLER=torch` sends every sample to
torch. Neither sampler touches the random state of torch, numpy or `random`.
"""

from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from charrnn.arguments import flag, integer, strings
from charrnn.config import ModelConfig
from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError
from charrnn.sample.pick import numpy_serves, surely_cpu
from charrnn.sample.settings import SampleResult, SampleSettings
from charrnn.sample.text import start_ids

if TYPE_CHECKING:
    import numpy as np
    import torch

    from charrnn.data.dataset import Split
    from charrnn.data.lines import LineSets
    from charrnn.dynamic import Adapter, DynamicSettings
    from charrnn.evaluate import EvalResult
    from charrnn.model import RNNLanguageModel
    from charrnn.sample.examples import Examples
    from charrnn.score import Score

OnText = Callable[[int, str], None]


class _HasPath(Protocol):
    """A `charrnn.Run`, or anything else that names a run directory by its `path`."""

    path: Path


class CharrnnWarning(UserWarning):
    """Something worth knowing that does not stop the work (a prime character the model never saw)."""


def load(path: str | os.PathLike[str] | _HasPath, device: str = "auto") -> Model:
    """The model of a run directory (its best checkpoint, else its last; a `Run` will do) or of a
    checkpoint file, in either checkpoint format. `device`: auto (CUDA, then MPS, then the CPU),
    cpu, cuda, cuda:N or mps. A missing, damaged or hostile file is a CharrnnError, raised here."""
    from charrnn.checkpoint import arrays_from_checkpoint, load_checkpoint, resolve_checkpoint

    where = getattr(path, "path", path)
    if not isinstance(where, str | os.PathLike):
        raise CharrnnError(f"the path must be a str or a path, got {type(where).__name__}")
    file = resolve_checkpoint(Path(where))
    payload = load_checkpoint(file, arrays=True)
    config, tokenizer, weights = arrays_from_checkpoint(payload)
    model = Model(file, str(device), config, tokenizer, weights, payload)
    if model.requested_device not in ("auto", "cpu"):
        model._torch_device()  # an unknown or absent device is refused now, not at the first use
    return model


class _Scoring:
    """The part of `Model` that scores text: `evaluate`, `score`, and dynamic evaluation
    (`charrnn.dynamic`: a copy of the weights learns from each segment after predicting it; the
    model itself never changes): `dynamic_adapter`, `adapt`."""

    def evaluate(self: Any, text: str, *, streams: int = 1, dynamic: bool | DynamicSettings = False) -> EvalResult:
        """Loss, bits per character and perplexity on `text`, as `charrnn eval` reports them: one
        stateful pass (streams=1, exact) or `streams` pieces side by side (faster, slightly worse).
        dynamic=True (or a `charrnn.dynamic.DynamicSettings`): by dynamic evaluation, one stream."""
        from charrnn.data.dataset import encode_text
        from charrnn.evaluate import evaluate

        _check_text(text)
        if integer("--streams", streams) < 1:
            raise CharrnnError(f"--streams must be at least 1, got {streams!r}")
        split, module, autocast = encode_text(self.tokenizer, text), self.torch_module(), self.uses_bf16()
        return evaluate(
            module, split, self.tokenizer, streams=streams, autocast=autocast, adapter=self._adapter(dynamic)
        )

    def score(
        self: Any, text: str, *, top_k: int = 5, activations: bool = False, dynamic: bool | DynamicSettings = False
    ) -> Score:
        """Every character's bits, the model's `top_k` predictions there, whether it is unknown,
        and with activations=True every layer's state after it; see `charrnn.score` for how a
        token's bits are shared among characters. Its bits_per_char is evaluate(text)'s, with the
        same `dynamic` (the predictions are then the adapting model's; no activations)."""
        from charrnn.score import score_text

        _check_text(text)
        if integer("top_k", top_k) < 0:
            raise CharrnnError(f"top_k must be >= 0, got {top_k!r}")
        activations = flag("activations", activations)
        module, autocast, adapter = self.torch_module(), self.uses_bf16(), self._adapter(dynamic)
        return score_text(
            module, self.tokenizer, text, top_k=top_k, activations=activations, autocast=autocast, adapter=adapter
        )

    def dynamic_adapter(self: Any, dynamic: bool | DynamicSettings = True) -> Adapter:
        """A fresh `charrnn.dynamic.Adapter` of this model (gradient statistics computed once per settings)."""
        from charrnn.dynamic import adapter_of_run

        cache = self.__dict__.setdefault("_gradient_stats", {})
        return adapter_of_run(self.torch_module(), self._payload, dynamic, cache)

    def _adapter(self, dynamic: bool | DynamicSettings) -> Adapter | None:
        """The adapter that `evaluate` and `score` read with: None for the static pass (dynamic=False)."""
        from charrnn.dynamic import settings_of

        return None if settings_of(dynamic) is None else self.dynamic_adapter(dynamic)

    def adapt(self: Any, text: str, *, dynamic: bool | DynamicSettings = True) -> Model:
        """A new Model whose weights have read `text` by dynamic evaluation (this one is unchanged):
        generate(prime=the text's end) continues it in its own style, names and vocabulary."""
        from charrnn.dynamic import adapted_weights

        _check_text(text)
        adapted = adapted_weights(self.dynamic_adapter(dynamic), self.tokenizer.encode(text), autocast=self.uses_bf16())
        weights = {key: adapted[key] for key in self._weights}
        return Model(self.path, self.requested_device, self.config, self.tokenizer, weights, self._payload)


class Model(_Scoring):
    """A trained model, made by `charrnn.load`.

    config: the ModelConfig (cell, layers, sizes, vocabulary size); tokenizer: its Tokenizer;
    path: the checkpoint file it was read from; requested_device: the device asked for ("auto",
    "cpu", "cuda:1", ...); device: the device it runs on, resolved ("cpu", "cuda", "mps"); lines:
    whether it was trained with --lines, one example per line (then `examples` draws whole examples).
    """

    def __init__(
        self,
        path: Path,
        requested_device: str,
        config: ModelConfig,
        tokenizer: Tokenizer,
        weights: dict[str, np.ndarray],
        payload: dict[str, Any],
    ) -> None:
        self.path = path
        self.requested_device = requested_device
        self.config = config
        self.tokenizer = tokenizer
        self._weights = weights
        self._payload = payload  # read once: the validation text is rebuilt from it (`validation`)
        self._described = {key: payload[key] for key in ("model_config", "tokenizer")}
        train_config = payload.get("train_config")
        self.lines = isinstance(train_config, dict) and train_config.get("lines") is True
        self._line_sets: LineSets | None = None
        self._module: RNNLanguageModel | None = None
        self._resolved: torch.device | None = None

    @property
    def device(self) -> str:
        """The device the model runs on ("cpu", "cuda", "cuda:1", "mps"): `requested_device` resolved,
        without importing torch where the CPU is certain (`pick.surely_cpu`)."""
        return "cpu" if surely_cpu(self.requested_device) else str(self._torch_device())

    def __repr__(self) -> str:
        cfg, kind = self.config, self.tokenizer.kind
        shape = f"{cfg.cell} {cfg.num_layers}x{cfg.hidden_size}, {kind} tokenizer of {cfg.vocab_size} ids"
        return f"Model({str(self.path)!r}: {shape}, device={self.device!r})"

    def generate(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        num_samples: int = 1,
        stop: str | Sequence[str] = (),
    ) -> str | list[str]:
        """Continue `prime` by `length` characters; the text after the prime, or a list of
        `num_samples` texts generated side by side when more than one is asked for.

        temperature 0 is greedy; top_k (0 = off) and top_p (1 = off) narrow each draw; the same
        seed gives the same text on one device, sample i the same however many are drawn, and the
        generators of torch, numpy and `random` are never touched (docs/sampling.md); a sample
        ends before the first of its `stop` strings. A prime character the model never saw is
        read as <unk> (a CharrnnWarning).
        """
        settings = _settings(self.tokenizer, prime, length, temperature, top_k, top_p, seed, num_samples, stop)
        texts = self._sampler(prime, settings)(None).texts
        return texts[0] if num_samples == 1 else texts

    def stream(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        num_samples: int = 1,
        stop: str | Sequence[str] = (),
    ) -> Iterator[str] | Iterator[tuple[int, str]]:
        """`generate`'s text as it is produced: pieces of text (whole characters, a few at a time)
        that join to what `generate` returns for the same arguments. With num_samples > 1 the
        pieces of all samples interleave, as (sample index, piece) pairs.

        The arguments are checked now; generation starts at the first `next`, on a thread of its
        own, and stops soon after the iterator is closed or dropped."""
        settings = _settings(self.tokenizer, prime, length, temperature, top_k, top_p, seed, num_samples, stop)
        return _callback_as_iterator(self._sampler(prime, settings), single=num_samples == 1)

    def examples(
        self,
        n: int = 10,
        prime: str = "",
        *,
        unique: bool = False,
        novel: bool = False,
        length: int | None = None,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
    ) -> Examples:
        """`n` whole examples from a model trained with --lines, each starting with `prime` and
        ending at its own line break (not included), with its flag: "new", or "train", "val",
        "test" for a copy of a line of that side of the corpus (`.summary()` counts them).

        unique: no example twice; novel: only new ones. Samples are drawn in rounds until `n` are
        kept, at most 10 per example asked + 100 (then fewer come back: `.complete` is False).
        length: the most characters after the prime (default: twice the corpus's longest line, at
        least 100); a sample that runs past it without a line break is dropped. `stop` strings
        end an example early, as in `generate`.
        """
        from charrnn.sample.examples import check_example_request, draw_examples

        if not self.lines:
            raise CharrnnError(f"{self.path} was not trained with --lines: it has no examples to draw, only text")
        n, unique, novel = check_example_request(n, prime, length, unique, novel)
        sets = self.line_sets(required=novel)
        cap = length or (max(100, 2 * sets.longest) if sets else 500)
        start = "\n" + prime  # a line break first, so the model starts a fresh example
        # cap + 1 tells a cut example; the prime is checked (and an unknown character warned of) once.
        settings = _settings(
            self.tokenizer, start, cap + 1, temperature, top_k, top_p, seed, 1, ("\n", *strings("--stop", stop))
        )

        def generate(count: int, round_seed: int | None) -> list[str]:
            return self._sampler(start, replace(settings, num_samples=count, seed=round_seed))(None).texts

        return draw_examples(generate, n, prime, sets=sets, unique=unique, novel=novel, length=cap, seed=seed)

    def line_sets(self, *, required: bool = False) -> LineSets | None:
        """The line hashes of a --lines run (lines.npz beside the checkpoint), or None when the file
        is not there; `required`: a missing file is a CharrnnError."""
        if self._line_sets is None:
            self._line_sets = _read_line_sets(self.path, required)
        return self._line_sets

    def _sampler(self, prime: str, settings: SampleSettings) -> Callable[[OnText | None], SampleResult]:
        """The backend that serves this model's samples (`pick.numpy_serves`), bound to the prime
        and the settings: a call with a text callback (or None) generates."""
        if numpy_serves(self.device):
            from charrnn.sample.numpy_sampler import sample_numpy

            return functools.partial(sample_numpy, self.config, self._weights, self.tokenizer, prime, settings)
        from charrnn.sample.torch_sampler import sample

        return functools.partial(sample, self.torch_module(), self.tokenizer, prime, settings)

    # --- scoring -----------------------------------------------------------------------------

    def validation(self, purpose: str) -> tuple[Iterator[str], Split]:
        """The run's validation text and its token ids (`validation_of_checkpoint`), from the payload read once."""
        from charrnn.data.dataset import validation_of_checkpoint

        return validation_of_checkpoint(self._payload, purpose=purpose)

    def _torch_device(self) -> torch.device:
        if self._resolved is None:
            from charrnn.devices import resolve_device

            self._resolved = resolve_device(self.requested_device)
        return self._resolved

    def uses_bf16(self) -> bool:
        """Whether the torch model runs its matrix products in bfloat16 (autocast) on its device,
        as `evaluate` and `score` run it: on GPUs that have fast bf16, never on the CPU."""
        from charrnn.devices import use_bf16

        return use_bf16("auto", self._torch_device())

    def torch_module(self) -> RNNLanguageModel:
        """The model as a torch `nn.Module` in eval mode on the model's device, built the first time
        it is asked for and kept: `module(tokens, state)` takes (T, B) token ids and gives logits,
        the loss (None) and the state after them (see charrnn/model.py)."""
        if self._module is None:
            self._module = _torch_model(self._weights, self._described, self._torch_device())
        return self._module


ADAPT_CONTEXT_CHARS = 1000  # the end of an adapted document that primes its continuation


def adapt_context(text: str) -> str:
    """The end of a document that primes its continuation after `Model.adapt`: its last
    `ADAPT_CONTEXT_CHARS` characters, from a line start where one falls within them."""
    tail = text[-ADAPT_CONTEXT_CHARS:]
    cut = tail.find("\n")
    return tail[cut + 1 :] if len(text) > len(tail) and 0 <= cut < len(tail) - 1 else tail


def _torch_model(weights: dict[str, np.ndarray], described: dict[str, Any], device: torch.device) -> RNNLanguageModel:
    """The torch model of a checkpoint's arrays, in eval mode on `device`."""
    import numpy as np
    import torch

    from charrnn.checkpoint import model_from_checkpoint

    # Copies: the arrays may be read-only views of a memory-mapped file.
    tensors = {key: torch.from_numpy(np.array(value)) for key, value in weights.items()}
    # Building the module initialises weights (overwritten at once) from torch's generator:
    # the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        module, _ = model_from_checkpoint({**described, "model": tensors}, device)
    return module.eval()


def _read_line_sets(checkpoint: Path, required: bool) -> LineSets | None:
    """lines.npz beside `checkpoint`, or None when it is not there (a CharrnnError when `required`)."""
    from charrnn.data.lines import LINES_FILE, LineSets

    path = checkpoint.parent / LINES_FILE
    if not path.exists():
        if required:
            raise CharrnnError(f"{path} is missing: without the run's line hashes, new and copied lines look alike")
        return None
    return LineSets.load(path)


def _settings(
    tokenizer: Tokenizer,
    prime: str,
    length: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    num_samples: int,
    stop: str | Sequence[str],
) -> SampleSettings:
    """The checked settings of a sampling call; a prime character the model never saw is warned
    of (a CharrnnWarning pointing at the caller of `generate`, `stream` or `examples`)."""
    if not isinstance(prime, str):
        raise CharrnnError(f"the prime must be a str, got {type(prime).__name__}")
    stops = strings("--stop", stop)
    settings = SampleSettings(
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        num_samples=num_samples,
        stop=stops,
    )
    _, unknown, _ = start_ids(tokenizer, prime)  # refuses a prime of unknown characters only
    if unknown:
        message = f"{unknown} prime character(s) are not in the model's vocabulary and were read as <unk>"
        warnings.warn(message, CharrnnWarning, stacklevel=3)
    return settings


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise CharrnnError(f"the text must be a str, got {type(text).__name__}")
    if not text:
        raise CharrnnError("the text is empty")


class _Stopped(Exception):
    """Raised inside the sampler's callback once the stream's reader has gone: ends generation."""


def _callback_as_iterator(run: Callable[[OnText], SampleResult], single: bool) -> Iterator[Any]:
    """What `run` hands its text callback, as an iterator: `run` goes on a thread of its own and
    its pieces come through a queue; an exception in it is raised here; closing the iterator
    stops it at its next piece."""
    pieces: queue.Queue[tuple[int, str] | BaseException | None] = queue.Queue()
    gone = threading.Event()
    finalizing = sys.is_finalizing

    def emit(index: int, text: str) -> None:
        if gone.is_set():
            raise _Stopped
        pieces.put((index, text))

    def work() -> None:
        try:
            run(emit)
            pieces.put(None)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 (handed to the reader, raised there)
            pieces.put(exc)

    worker = threading.Thread(target=work, name="charrnn-sample", daemon=True)
    worker.start()
    try:
        while (item := pieces.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item[1] if single else item
    finally:
        gone.set()
        if not finalizing():  # at interpreter exit the worker may never run again: do not wait for it
            worker.join()
