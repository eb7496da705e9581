"""charrnn: train recurrent (LSTM/GRU/RNN) language models on your own text.

The Python API, in full (docs/python-api.md has examples):

    train(corpus, *, run=None, resume=False, **options) -> Run    charrnn.runs
    load(path, device="auto") -> Model                            charrnn.inference
    Model.generate / stream / evaluate / score                    charrnn.inference
    EvalResult, Score, CharrnnError

Each name is imported when first used, so `import charrnn` is quick and imports no torch:
a script that only samples on the CPU never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The release, and the one place it is written: pyproject.toml reads it from here. 0.2.0 writes
# checkpoint format 2 (safetensors); 0.1.0 wrote format 1.
__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "train": "charrnn.runs",
    "Run": "charrnn.runs",
    "load": "charrnn.inference",
    "Model": "charrnn.inference",
    "EvalResult": "charrnn.evaluate",
    "Score": "charrnn.score",
    "CharrnnError": "charrnn.errors",
}

__all__ = ["CharrnnError", "EvalResult", "Model", "Run", "Score", "__version__", "load", "train"]

if TYPE_CHECKING:
    from charrnn.errors import CharrnnError
    from charrnn.evaluate import EvalResult
    from charrnn.inference import Model, load
    from charrnn.runs import Run, train
    from charrnn.score import Score


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
