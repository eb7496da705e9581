"""The `sample` command: read a checkpoint, pick the sampler, stream or write the text."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charrnn.errors import CharrnnError
from charrnn.sample.settings import NUMPY_MAX_STREAMS, SampleResult, SampleSettings
from charrnn.sample.text import start_ids


def _read_prime(prime: str, prime_file: Path | None) -> str:
    if prime_file is None:
        return prime
    if prime:
        raise CharrnnError("give --prime or --prime-file, not both")
    from charrnn.data.corpus import find_corpus

    return find_corpus([str(prime_file)]).read_text()


def _check_output(output: Path) -> None:
    """Refuse an unusable --output before spending time on generation."""
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise CharrnnError(f"cannot write {output}: directory {parent} does not exist")
    if output.is_dir():
        raise CharrnnError(f"cannot write {output}: it is a directory")
    if not os.access(parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise CharrnnError(f"cannot write {output}: permission denied")


def sample_run(
    run: Path,
    *,
    prime: str = "",
    prime_file: Path | None = None,
    output: Path | None = None,
    device: str = "cpu",
    **settings: Any,
) -> SampleResult:
    """The `sample` command: load a checkpoint, generate, stream to stdout or write `output`.

    On the CPU, up to `NUMPY_MAX_STREAMS` streams sample with numpy, from the checkpoint read
    without importing torch; more streams and other devices load it into torch.
    `CHARRNN_SAMPLER=torch` forces torch."""
    from charrnn.checkpoint import load_checkpoint
    from charrnn.files import atomic_write

    sample_settings = SampleSettings(**settings)
    if output is not None:
        _check_output(output)
    prime_text = _read_prime(prime, prime_file)
    generate: Callable[[str, SampleSettings, Callable[[int, str], None] | None], SampleResult]
    use_numpy = (
        device == "cpu"
        and sample_settings.num_samples <= NUMPY_MAX_STREAMS
        and os.environ.get("CHARRNN_SAMPLER", "numpy") != "torch"
    )
    if use_numpy:
        from charrnn.checkpoint import arrays_from_checkpoint
        from charrnn.sample.numpy_sampler import sample_numpy

        # Read, checked and refused, if need be, without importing torch.
        cfg, tokenizer, weights = arrays_from_checkpoint(load_checkpoint(run, arrays=True))

        def generate(text: str, chosen: SampleSettings, on_text: Callable[[int, str], None] | None) -> SampleResult:
            return sample_numpy(cfg, weights, tokenizer, text, chosen, on_text)
    else:
        from charrnn.checkpoint import model_from_checkpoint
        from charrnn.devices import resolve_device
        from charrnn.sample.torch_sampler import sample

        model, tokenizer = model_from_checkpoint(load_checkpoint(run), resolve_device(device))

        def generate(text: str, chosen: SampleSettings, on_text: Callable[[int, str], None] | None) -> SampleResult:
            return sample(model, tokenizer, text, chosen, on_text)

    start_ids(tokenizer, prime_text)  # refuse an unusable prime before printing it
    live = output is None and sample_settings.num_samples == 1
    if live:
        sys.stdout.write(prime_text)
        sys.stdout.flush()
    last_flush = [0.0]  # the first text is flushed at once

    def show(stream: int, text: str) -> None:
        sys.stdout.write(text)
        if time.perf_counter() - last_flush[0] > 0.05:
            sys.stdout.flush()
            last_flush[0] = time.perf_counter()

    result = generate(prime_text, sample_settings, show if live else None)
    if result.prime_unknown:
        print(
            f"charrnn: note: {result.prime_unknown} prime character(s) are not in the model's vocabulary "
            "and were read as <unk>",
            file=sys.stderr,
        )
    texts = [prime_text + t for t in result.texts]
    joined = "".join(("" if i == 0 else "\n") + f"----- sample {i + 1} -----\n{t}\n" for i, t in enumerate(texts))
    if live:
        sys.stdout.write("\n")
    elif output is None:
        sys.stdout.write(joined)
    else:
        body = texts[0] if len(texts) == 1 else joined
        atomic_write(output, lambda handle: handle.write(body.encode("utf-8")))
    sys.stdout.flush()
    return result
