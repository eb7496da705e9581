"""Promise: the shipped package holds no test switch. The ways tests break training on purpose
(NaN losses, a signal at a chosen step, slow checkpoint saves) live in tests/hooks.py, which wraps
charrnn's own functions, and leave charrnn as it was when a test ends."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from hooks import poison_updates, signal_after_step, slow_saves

PACKAGE = Path(__file__).resolve().parent.parent / "charrnn"


def test_no_file_of_the_package_reads_a_test_variable() -> None:
    found = [
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*") if p.is_file() and b"CHARRNN_TEST" in p.read_bytes()
    ]
    assert not found, f"test hooks in the shipped code: {found}"


def test_the_hooks_wrap_charrnn_and_are_undone_with_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    from charrnn import checkpoint, files
    from charrnn.training import Trainer

    def hooked() -> list[object]:
        return [Trainer.step, Trainer.loss, files.atomic_write, checkpoint.atomic_write]

    before = hooked()
    with monkeypatch.context() as patch:
        poison_updates({1}, patch.setattr)
        signal_after_step(3, signal.SIGINT, patch.setattr)
        slow_saves(0.0, patch.setattr)
        assert all(now is not then for now, then in zip(hooked(), before))
    assert all(now is then for now, then in zip(hooked(), before))
