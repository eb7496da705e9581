"""Promise: `charrnn train --resume` restores only a training state that checks out whole, and the
token cache it (and every training run) reads is rebuilt when an entry does not check out.

A run's last checkpoint holds, beside the weights, the optimizer's state, the loop's counters, the
hidden state of every stream and the random generators. Tampered or damaged, any of them is
refused before a step is trained or a file written: one line naming the value that is wrong, exit
status 1, the run directory byte for byte as it was (its metrics not trimmed). Each case edits one
value of a real run's last checkpoint, in format 2 (last.safetensors) and, for a few, format 1
(a charrnn 0.1 last.pt).

The token cache is a cache: an entry whose tokenizer file does not read, holds no tokenizer or
another one, or whose ids fall outside the vocabulary is built again, with a one-line note, and
torch's advice to load a file with code execution never reaches the user.
"""

from __future__ import annotations

import glob
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RunsACommand, in_process

import charrnn
from charrnn.checkpoint import load_checkpoint, to_safetensors
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.data.dataset import prepare_dataset
from charrnn.errors import CharrnnError

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

SMALL = dict(hidden=16, embed=8, layers=1, batch_size=4, seq_len=16, eval_interval=5, log_interval=5)
STEPS = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    """A tiny run of STEPS steps, with best and last checkpoints and its metrics."""
    folder = tmp_path_factory.mktemp("resume")
    corpus = folder / "corpus.txt"
    corpus.write_text(real_text[:20_000], encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARRNN_CACHE_DIR", str(folder / "cache"))
        return charrnn.train(corpus, run=folder / "run", max_steps=STEPS, **SMALL).path


def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes (the lock file by name only: resume rewrites its pid)."""
    return {p.name: b"" if p.name == ".lock" else p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


Edit = Callable[[dict[str, Any]], Any]  # changes a last checkpoint's payload in place


def _state(change: Callable[[dict[str, Any]], Any]) -> Edit:
    return lambda payload: change(payload["train_state"])


def _moment(key: str, value: Callable[[torch.Tensor], Any], index: int = 0) -> Edit:
    def edit(payload: dict[str, Any]) -> None:
        entry = payload["train_state"]["optimizer"]["state"][index]
        entry[key] = value(entry[key])

    return edit


def _progress(key: str, value: Any) -> Edit:
    return _state(lambda state: state["progress"].__setitem__(key, value))


def _group(key: str, value: Any) -> Edit:
    return _state(lambda state: state["optimizer"]["param_groups"][0].__setitem__(key, value))


def _poisoned(value: float, dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], torch.Tensor]:
    def make(tensor: torch.Tensor) -> torch.Tensor:
        poisoned = tensor.to(dtype).clone()
        poisoned.view(-1)[0] = value
        return poisoned

    return make


def _weight(value: float, dtype: torch.dtype = torch.float32) -> Edit:
    def edit(payload: dict[str, Any]) -> None:
        payload["model"] = {**payload["model"], "head.bias": _poisoned(value, dtype)(payload["model"]["head.bias"])}

    return edit


def _hidden(value: Callable[[list[torch.Tensor]], Any]) -> Edit:
    return _state(lambda state: state.__setitem__("hidden", value(state["hidden"])))


def _set(key: str, value: Any) -> Edit:
    return _state(lambda state: state.__setitem__(key, value))


def _config(part: str, key: str, value: Any) -> Edit:
    return lambda payload: payload[part].__setitem__(key, value)


def _optimizer(change: Callable[[dict[str, Any]], Any]) -> Edit:
    return _state(lambda state: change(state["optimizer"]))


# name -> (the edit, a phrase the refusal must hold)
CASES: dict[str, tuple[Edit, str]] = {
    # the optimizer's state, against the model's parameters
    "an optimizer moment of the wrong shape": (_moment("exp_avg", lambda t: torch.zeros(3)), "has shape (3,)"),
    "a NaN optimizer moment": (_moment("exp_avg", _poisoned(math.nan)), "non-finite"),
    "an infinite second moment": (_moment("exp_avg_sq", _poisoned(math.inf)), "non-finite"),
    "a float64 moment beyond float32": (_moment("exp_avg", _poisoned(1e300, torch.float64)), "non-finite"),
    "a negative second moment": (_moment("exp_avg_sq", lambda t: -torch.ones_like(t)), "negative"),
    "an integer moment": (_moment("exp_avg", lambda t: t.long()), "floating-point"),
    "a moment that is a string": (_moment("exp_avg", lambda t: "zeros"), "must be a tensor"),
    "a NaN optimizer step": (_moment("step", lambda t: torch.tensor(math.nan)), "optimizer step"),
    "a negative optimizer step": (_moment("step", lambda t: torch.tensor(-5.0)), "optimizer step"),
    "an optimizer step of two numbers": (_moment("step", lambda t: torch.zeros(2)), "one number"),
    "a half-made optimizer state": (
        _optimizer(lambda o: o["state"][0].pop("exp_avg_sq")),
        "lacks exp_avg_sq",
    ),
    "optimizer state for a parameter the model lacks": (
        _optimizer(lambda o: o["state"].__setitem__(99, dict(o["state"][0]))),
        "does not have",
    ),
    "an optimizer group over other parameters": (_group("params", [0]), "other parameters"),
    "a parameter group missing": (
        _optimizer(lambda o: o.__setitem__("param_groups", o["param_groups"][:1])),
        "1 parameter groups",
    ),
    "a negative learning rate": (_group("lr", -1.0), "group 0.lr"),
    "a NaN weight decay": (_group("weight_decay", math.nan), "weight_decay"),
    "betas of 1.5": (_group("betas", (1.5, 0.99)), "betas"),
    "an eps that is a string": (_group("eps", "tiny"), "eps"),
    "amsgrad that is a number": (_group("amsgrad", 3), "amsgrad"),
    "the optimizer is a list": (_set("optimizer", [1, 2]), "optimizer must be a mapping"),
    # the loop's counters
    "step 'twenty'": (_progress("step", "twenty"), "progress.step must be an integer"),
    "step -100": (_progress("step", -100), "progress.step must be an integer >= 0"),
    "step 3.5": (_progress("step", 3.5), "progress.step"),
    "step true": (_progress("step", True), "progress.step"),
    "step of 10^30": (_progress("step", 10**30), "progress.step"),
    "a negative epoch": (_progress("epoch", -1), "progress.epoch"),
    "a negative step in the epoch": (_progress("step_in_epoch", -3), "progress.step_in_epoch"),
    "a NaN elapsed time": (_progress("elapsed", math.nan), "progress.elapsed"),
    "a negative elapsed time": (_progress("elapsed", -5.0), "progress.elapsed"),
    "an infinite best validation loss": (_progress("best_val", math.inf), "progress.best_val"),
    "a last validation loss that is a string": (_progress("last_val", "good"), "progress.last_val"),
    "a window loss that is a list": (_progress("window_loss", [1.0]), "progress.window_loss"),
    "an unknown counter": (_progress("rocket_fuel", 1), "unknown counter"),
    "progress that is a list": (_set("progress", [1, 2]), "progress must be a mapping"),
    # the streams and their hidden state
    "batch_size 'x'": (_set("batch_size", "x"), "batch_size must be an integer"),
    "batch_size 0": (_set("batch_size", 0), "batch_size must be an integer >= 1"),
    "world_size 0": (_set("world_size", 0), "world_size"),
    "streams that its ranks cannot share": (
        _state(lambda s: s.update(world_size=3)),
        "not shared equally",
    ),
    "a hidden state of the wrong width": (_hidden(lambda h: [t[..., :8] for t in h]), "has shape"),
    "a hidden state of other streams": (_hidden(lambda h: [t[:, :2] for t in h]), "has shape"),
    "one hidden tensor for an lstm": (_hidden(lambda h: h[:1]), "list of 2"),
    "an infinite hidden state": (_hidden(lambda h: [_poisoned(math.inf)(h[0]), h[1]]), "non-finite"),
    "a NaN cell state": (_hidden(lambda h: [h[0], _poisoned(math.nan)(h[1])]), "non-finite"),
    "a hidden state beyond float32": (
        _hidden(lambda h: [_poisoned(-1e300, torch.float64)(h[0]), h[1]]),
        "non-finite",
    ),
    "an integer hidden state": (_hidden(lambda h: [t.long() for t in h]), "floating-point"),
    "a hidden state that is a string": (_set("hidden", "zeros"), "hidden state"),
    # the generators
    "a CPU generator state of 100 bytes": (_set("rng_cpu", torch.zeros(100, dtype=torch.uint8)), "100 bytes"),
    "a CPU generator state of floats": (_set("rng_cpu", torch.zeros(5056)), "uint8"),
    "a CPU generator state of garbage": (
        _set("rng_cpu", torch.zeros(5056, dtype=torch.uint8)),
        "not a valid generator state",
    ),
    "no CPU generator state": (_state(lambda s: s.pop("rng_cpu")), "rng_cpu must be a 1-D uint8 tensor"),
    "CUDA generator states that are a string": (_set("rng_cuda", "none"), "rng_cuda"),
    "a CUDA generator state of floats": (_set("rng_cuda", [torch.zeros(16)]), "rng_cuda [0]"),
    "per-rank generators for other ranks": (
        _set("rng_ranks", [{"cpu": torch.get_rng_state()}] * 2),
        "rng_ranks",
    ),
    # the weights and configs, checked for every reader
    "a NaN weight": (_weight(math.nan), "non-finite"),
    "a float64 weight beyond float32": (_weight(1e300, torch.float64), "non-finite"),
    "train config batch_size 4.0": (_config("train_config", "batch_size", 4.0), "batch_size must be an integer"),
    "train config lr 'fast'": (_config("train_config", "lr", "fast"), "lr must be a number"),
    "train config lines 'yes'": (_config("train_config", "lines", "yes"), "lines must be true or false"),
    "model config hidden_size 16.0": (_config("model_config", "hidden_size", 16.0), "hidden_size must be an integer"),
    "no training state": (lambda payload: payload.pop("train_state"), "no training state"),
}

# The few cases also tried on a charrnn 0.1 run's last.pt.
FORMAT1 = [
    "an optimizer moment of the wrong shape",
    "step 'twenty'",
    "step -100",
    "an infinite hidden state",
    "a CPU generator state of 100 bytes",
    "a float64 weight beyond float32",
]


def _tampered(trained: Path, tmp_path: Path, edit: Edit, *, legacy: bool = False) -> Path:
    """A copy of the trained run whose last checkpoint holds `edit`'s change (as last.pt, format 1, with `legacy`)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    payload = load_checkpoint(run / "last.safetensors")
    edit(payload)
    if legacy:
        (run / "last.safetensors").unlink()
        torch.save({**payload, "format_version": 1}, run / "last.pt")
    else:
        (run / "last.safetensors").write_bytes(to_safetensors(payload))
    return run


def _resume(capsys: pytest.CaptureFixture[str], run: Path) -> tuple[int, str, str]:
    return in_process(capsys, "train", "--resume", str(run), "--max-steps", str(STEPS + 4), "--quiet")


@pytest.mark.parametrize("legacy", [False, True], ids=["safetensors", "pt"])
def test_an_untampered_rewritten_run_resumes(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], legacy: bool
) -> None:
    """The control: the same rewriting, with nothing changed, resumes and trains on."""
    run = _tampered(trained, tmp_path, lambda payload: None, legacy=legacy)
    code, _, err = _resume(capsys, run)
    assert code == 0, err
    assert load_checkpoint(run / "last.safetensors")["train_state"]["progress"]["step"] == STEPS + 4


def _refused(capsys: pytest.CaptureFixture[str], run: Path, phrase: str) -> str:
    before = _files(run)
    code, out, err = _resume(capsys, run)
    assert code == 1, err
    assert err.startswith("charrnn: error: ") and err.count("\n") == 1, err
    assert phrase in err, err
    for wrong in ("internal error", "Traceback", "training diverged", "last good checkpoint"):
        assert wrong not in err, err
    assert _files(run) == before  # nothing trained, written or trimmed
    return err


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_training_state_is_refused_before_anything_is_written(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    edit, phrase = CASES[case]
    run = _tampered(trained, tmp_path, edit)
    err = _refused(capsys, run, phrase)
    assert str(run / "last.safetensors") in err  # the file that is wrong is named


@pytest.mark.parametrize("case", FORMAT1)
def test_a_tampered_format1_training_state_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    edit, phrase = CASES[case]
    run = _tampered(trained, tmp_path, edit, legacy=True)
    assert str(run / "last.pt") in _refused(capsys, run, phrase)


# --- the token cache -------------------------------------------------------------------------------


def _entry(cache: Path, ext: str) -> Path:
    (found,) = glob.glob(str(cache / f"*.{ext}"))
    return Path(found)


def _garbage(cache: Path, marker: Path) -> None:
    _entry(cache, "tok.pt").write_bytes(b"not a torch file at all " * 10)


def _truncated(cache: Path, marker: Path) -> None:
    path = _entry(cache, "tok.pt")
    path.write_bytes(path.read_bytes()[:100])


def _empty(cache: Path, marker: Path) -> None:
    _entry(cache, "tok.pt").write_bytes(b"")


def _missing(cache: Path, marker: Path) -> None:
    _entry(cache, "tok.pt").unlink()


def _a_directory(cache: Path, marker: Path) -> None:
    path = _entry(cache, "tok.pt")
    path.unlink()
    path.mkdir()


def _runs_a_command(cache: Path, marker: Path) -> None:
    torch.save({"kind": "char", "chars": "ab", "x": RunsACommand(marker)}, _entry(cache, "tok.pt"))


def _not_a_tokenizer(cache: Path, marker: Path) -> None:
    torch.save([1, 2, 3], _entry(cache, "tok.pt"))


def _another_tokenizer(cache: Path, marker: Path) -> None:
    """A char tokenizer of the same size (so the ids' width agrees), but other characters."""
    path = _entry(cache, "tok.pt")
    state = torch.load(path, weights_only=True)
    state["chars"] = "".join(chr(ord(c) + 0x400) for c in state["chars"])
    torch.save(state, path)


def _byte_tokenizer(cache: Path, marker: Path) -> None:
    torch.save({"kind": "byte"}, _entry(cache, "tok.pt"))


def _ids_out_of_range(cache: Path, marker: Path) -> None:
    path = _entry(cache, "bin")
    data = bytearray(path.read_bytes())
    data[7] = 250  # a char vocabulary of this text has far fewer ids
    path.write_bytes(bytes(data))


def _old_entry_with_bad_ids(cache: Path, marker: Path) -> None:
    """An entry of an older charrnn (its metadata records no tokenizer digest), its ids damaged."""
    meta = _entry(cache, "json")
    meta.write_text(meta.read_text().replace(', "tokenizer": ', ', "was": '))
    _ids_out_of_range(cache, marker)


def _counts_that_lie(cache: Path, marker: Path) -> None:
    path = _entry(cache, "json")
    import json

    meta = json.loads(path.read_text())
    train, val, test = meta["tokens"]
    meta["tokens"] = [train + val + 5, -5, test]  # the same sum, so the file's size agrees
    path.write_text(json.dumps(meta))


CACHE_CASES: dict[str, Callable[[Path, Path], None]] = {
    "garbage tokenizer file": _garbage,
    "truncated tokenizer file": _truncated,
    "empty tokenizer file": _empty,
    "missing tokenizer file": _missing,
    "a tokenizer file whose pickle runs a command": _runs_a_command,
    "a tokenizer file holding a list": _not_a_tokenizer,
    "a tokenizer file of other characters": _another_tokenizer,
    "a byte tokenizer for char ids": _byte_tokenizer,
    "ids outside the vocabulary": _ids_out_of_range,
    "an older entry with ids outside the vocabulary": _old_entry_with_bad_ids,
    "split counts that lie": _counts_that_lie,
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_a_damaged_token_cache_entry_is_rebuilt_with_a_note(tmp_path: Path, real_text: str, case: str) -> None:
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text(real_text[:8_000], encoding="utf-8")
    corpus, cfg, cache = find_corpus([str(corpus_file)]), TrainConfig(), tmp_path / "cache"
    fresh = prepare_dataset(corpus, cfg, cache_dir=cache)
    ids = {side: getattr(fresh, side).tokens.clone() for side in ("train", "val")}  # the cache's file is mapped
    CACHE_CASES[case](cache, tmp_path / "MARKER")
    notes: list[str] = []
    again = prepare_dataset(corpus, cfg, cache_dir=cache, progress=notes.append)
    assert not (tmp_path / "MARKER").exists(), "the cache ran a command"
    rebuilt = [note for note in notes if "does not check out" in note]
    assert len(rebuilt) == 1 and rebuilt[0].endswith(": rebuilding it"), notes
    assert not any("weights_only" in note or "arbitrary code" in note for note in notes), notes
    assert again.tokenizer.to_state() == fresh.tokenizer.to_state()
    for side in ("train", "val"):
        assert torch.equal(getattr(again, side).tokens, ids[side])
    # the entry is whole again: the next read is a plain hit
    notes.clear()
    prepare_dataset(corpus, cfg, cache_dir=cache, progress=notes.append)
    assert [note for note in notes if "cache" in note] == [f"token cache hit: {_entry(cache, 'bin')}"]


def test_a_directory_in_place_of_the_tokenizer_file_is_named_not_deleted(tmp_path: Path, real_text: str) -> None:
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text(real_text[:8_000], encoding="utf-8")
    corpus, cfg, cache = find_corpus([str(corpus_file)]), TrainConfig(), tmp_path / "cache"
    prepare_dataset(corpus, cfg, cache_dir=cache)
    _a_directory(cache, tmp_path / "MARKER")
    with pytest.raises(CharrnnError, match="is a directory"):
        prepare_dataset(corpus, cfg, cache_dir=cache)
    assert _entry(cache, "tok.pt").is_dir()


def test_eval_of_a_run_rebuilds_a_garbage_cache_entry(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: the run's own validation split is read from a cache whose tokenizer file
    is garbage; eval rebuilds it and reports, and nothing recommends weights_only=False."""
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache"))
    assert in_process(capsys, "eval", str(trained), "--device", "cpu")[0] == 0  # fills this test's cache
    _garbage(tmp_path / "cache", tmp_path / "MARKER")
    code, out, err = in_process(capsys, "eval", str(trained), "--device", "cpu")
    assert code == 0, err
    assert "weights_only" not in out + err and "internal error" not in out + err
