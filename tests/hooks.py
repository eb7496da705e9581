"""Test hooks: ways for the tests to break training at a chosen point, kept out of charrnn itself.

The subprocess tests run the CLI through this file (`python tests/hooks.py ARGS`: see `CLI` in
conftest.py, and torchrun runs it the same way in test_distributed.py), which installs the hooks
that the environment asks for and then runs `charrnn.cli.main`:

  CHARRNN_TEST_NAN_STEPS="5,6"     poison the loss of the 5th and 6th update tried (a skipped update
                                   counts, so a poisoned update is not poisoned again when retried)
  CHARRNN_TEST_SIGNAL_AT_STEP=N    send the process CHARRNN_TEST_SIGNAL (INT, TERM or KILL; INT by
                                   default) right after step N: an interruption at a known point
  CHARRNN_TEST_SIGNAL_RANK=R       under torchrun, only rank R does, in the job's first attempt
  CHARRNN_TEST_SLOW_SAVE=SECONDS   hold every checkpoint that long between writing its temporary
                                   file and renaming it, so that kills and signals land mid-save

In-process tests call the functions below with pytest's `monkeypatch.setattr` as `patch`, which
undoes them at the end of the test. Each hook wraps a method or function of charrnn (the trainer's
`step` and `loss`, `atomic_write`), so the shipped code holds no test switch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any

Patch = Callable[[Any, str, Any], None]  # setattr, or monkeypatch.setattr


def poison_updates(updates: Collection[int], patch: Patch = setattr) -> None:
    """The loss of the updates numbered `updates` (1-based, counting every update a Trainer tries,
    from the step it starts or resumes at) becomes NaN."""
    from charrnn.training import Trainer

    original = Trainer.loss
    tried: weakref.WeakKeyDictionary[Trainer, int] = weakref.WeakKeyDictionary()

    def loss(self: Trainer, x: Any, y: Any) -> Any:
        value, state = original(self, x, y)
        tried[self] = tried.get(self, self.p.step) + 1
        return (value * float("nan") if tried[self] in updates else value), state

    patch(Trainer, "loss", loss)


def signal_after_step(step: int, signum: int, patch: Patch = setattr) -> None:
    """The process sends itself `signum` right after a Trainer has made update number `step`."""
    from charrnn.training import Trainer

    original = Trainer.step

    def step_then_signal(self: Trainer) -> Any:
        update = original(self)
        if update is not None and self.p.step == step:
            os.kill(os.getpid(), signum)
        return update

    patch(Trainer, "step", step_then_signal)


def slow_saves(seconds: float, patch: Patch = setattr) -> None:
    """Every checkpoint write waits `seconds` after writing its temporary file, before the rename."""
    import charrnn.checkpoint  # noqa: F401 (binds atomic_write where checkpoints are written)
    from charrnn import files

    original = files.atomic_write

    def atomic_write(path: Any, write: Callable[[Any], Any]) -> None:
        if path.suffix not in (".safetensors", ".pt"):
            return original(path, write)

        def write_then_wait(handle: Any) -> None:
            write(handle)
            time.sleep(seconds)

        return original(path, write_then_wait)

    # Every module that imported the function by name, and charrnn.files itself.
    users = [m for name, m in list(sys.modules.items()) if name.startswith("charrnn") and m is not None]
    patched = [m for m in users if getattr(m, "atomic_write", None) is original]
    assert any(m.__name__ == "charrnn.checkpoint" for m in patched), "checkpoints no longer use atomic_write"
    for module in patched:
        patch(module, "atomic_write", atomic_write)


def install_from_environment(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Install the hooks that the CHARRNN_TEST_* variables ask for (see the module docstring)."""
    if raw := environ.get("CHARRNN_TEST_NAN_STEPS", ""):
        poison_updates({int(s) for s in raw.split(",") if s.strip().isdigit()})
    at = environ.get("CHARRNN_TEST_SIGNAL_AT_STEP", "")
    only = environ.get("CHARRNN_TEST_SIGNAL_RANK")
    this_rank = environ.get("RANK", "0") == only and environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if at.isdigit() and (only is None or this_rank):
        signal_after_step(int(at), getattr(signal, f"SIG{environ.get('CHARRNN_TEST_SIGNAL', 'INT')}"))
    if slow := environ.get("CHARRNN_TEST_SLOW_SAVE"):
        slow_saves(float(slow))


if __name__ == "__main__":
    install_from_environment()
    from charrnn.cli import main

    main()
