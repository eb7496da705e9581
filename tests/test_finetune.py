"""Fine-tuning, `charrnn train NEW_TEXT --init-from RUN_OR_CHECKPOINT`, read as its specification.

A fine-tune starts a new run from another model's weights, tokenizer and architecture, with a
fresh optimizer and step counter, and never writes to the source. A char vocabulary gains the new
training text's characters without changing what the model says about the old ones at step 0.
The source run is trained once per module (a few steps of a 1 x 16 LSTM); the rules of the
weight surgery hold for any weights, so those tests also use untrained checkpoints made by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RunsACommand, in_process

import charrnn
from charrnn import finetune
from charrnn.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint, to_safetensors
from charrnn.config import ModelConfig, TrainConfig, asdict
from charrnn.data.corpus import find_corpus
from charrnn.data.dataset import Dataset, dataset_of_run, prepare_dataset
from charrnn.data.tokenizers import CharVocabCounter, Tokenizer, train_tokenizer
from charrnn.model import RNNLanguageModel
from charrnn.training import Report

SMALL = dict(hidden=16, embed=8, layers=1, batch_size=4, seq_len=16, eval_interval=4, log_interval=2)
ADDED = "½Çéï"  # in the new text's training part, never in the King James Bible; in code point order
NEW_LINE = "Ça, naïve café: ½ a pound.\n"


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> dict[str, Path]:
    """The source's text (English of the King James Bible) and a new one with four more characters."""
    folder = tmp_path_factory.mktemp("finetune")
    old, new = folder / "old.txt", folder / "new.txt"
    old.write_text(real_text[30_000:31_000] + real_text[:30_000], encoding="utf-8")
    new.write_text((NEW_LINE + real_text[30_000:31_000]) * 10, encoding="utf-8")
    return {"old": old, "new": new}


@pytest.fixture(scope="module")
def cache(texts: dict[str, Path]) -> Iterator[Path]:
    """A token cache of this module's own, for the runs the module shares."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARRNN_CACHE_DIR", str(texts["old"].parent / "cache"))
        yield texts["old"].parent / "cache"


def _files(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory, with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def source(texts: dict[str, Path], cache: Path) -> Path:
    return charrnn.train(texts["old"], run=texts["old"].parent / "source", max_steps=8, **SMALL).path


@pytest.fixture(scope="module")
def tuned(texts: dict[str, Path], source: Path, cache: Path) -> dict[str, Any]:
    """A fine-tune of the source on the new text, with what it said and the source's files before it."""
    before = _files(source)
    messages: list[str] = []
    options = dict(SMALL, dropout=0.2)  # --hidden 16 agrees with the source; dropout is free
    run = charrnn.train(
        texts["new"],
        run=source.parent / "tuned",
        init_from=charrnn.Run(source),
        max_steps=4,
        progress=Report(on_message=messages.append),
        **options,
    )
    return {"run": run, "messages": messages, "before": before}


# --- the new run ----------------------------------------------------------------------------


def test_the_source_run_is_never_written_to(source: Path, tuned: dict[str, Any]) -> None:
    assert _files(source) == tuned["before"]


def test_config_and_checkpoints_record_the_source_path_hash_and_step(source: Path, tuned: dict[str, Any]) -> None:
    best = source / "best.safetensors"
    expected = {
        "path": str(best.resolve()),
        "blake2b": hashlib.blake2b(best.read_bytes(), digest_size=32).hexdigest(),
        "step": load_checkpoint(best)["metrics"]["step"],
        "added_chars": ADDED,
    }
    run = tuned["run"]
    assert run.config["init_from"] == expected
    assert load_checkpoint(run.path / "best.safetensors")["init_from"] == expected
    assert load_checkpoint(run.path / "last.safetensors")["init_from"] == expected


def test_the_added_characters_are_counted_in_a_message(tuned: dict[str, Any]) -> None:
    told = [m for m in tuned["messages"] if m.startswith("starting from")]
    assert len(told) == 1 and f"{len(ADDED)} characters added to its vocabulary" in told[0]


def test_the_vocabulary_is_the_sources_and_the_new_characters_in_code_point_order(
    source: Path, tuned: dict[str, Any]
) -> None:
    old = load_checkpoint(source / "best.safetensors")["tokenizer"]["chars"]
    new = load_checkpoint(tuned["run"].path / "best.safetensors")["tokenizer"]["chars"]
    assert new == "".join(sorted(set(old) | set(ADDED)))


def test_architecture_is_the_sources_and_dropout_is_free(source: Path, tuned: dict[str, Any]) -> None:
    old, new = charrnn.Run(source).config["model"], tuned["run"].config["model"]
    assert new == {**old, "vocab_size": old["vocab_size"] + len(ADDED), "dropout_hidden": 0.2, "dropout_output": 0.2}


def test_the_step_counter_starts_afresh(tuned: dict[str, Any]) -> None:
    assert [record["step"] for record in tuned["run"].history] == [2, 4]
    assert tuned["run"].summary.steps == 4


def test_resume_and_eval_rebuild_the_same_vocabulary_from_the_same_cache_entry(
    tuned: dict[str, Any], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))  # the cache the fine-tune filled
    path = tuned["run"].path
    messages: list[str] = []
    charrnn.train(run=path, resume=True, max_steps=6, progress=Report(on_message=messages.append))
    assert any(m.startswith("token cache hit") for m in messages)
    payload = load_checkpoint(path / "best.safetensors")
    seen: list[str] = []
    dataset = dataset_of_run(payload, TrainConfig(**payload["train_config"]), progress=seen.append)
    assert dataset.tokenizer.to_state() == payload["tokenizer"]
    assert any(m.startswith("token cache hit") for m in seen)
    assert load_checkpoint(path / "last.safetensors")["init_from"] == tuned["run"].config["init_from"]


# --- step 0: the weight surgery ---------------------------------------------------------------


def _char_tokenizer(text: str) -> Tokenizer:
    counter = CharVocabCounter()
    counter.update(text)
    return counter.build()


def _checkpoint(path: Path, tokenizer: Tokenizer, **model: Any) -> Path:
    """An untrained checkpoint of a small model over `tokenizer`, made by hand."""
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, **{"hidden_size": 16, "embed_size": 8, **model})
    torch.manual_seed(0)
    payload = {
        "model_config": asdict(cfg),
        "train_config": asdict(TrainConfig()),
        "tokenizer": tokenizer.to_state(),
        "model": RNNLanguageModel(cfg).state_dict(),
        "corpus": {},
        "metrics": {"step": 7, "val_loss": None, "best_val_loss": None},
    }
    save_checkpoint(path, payload)
    return path


def _new_dataset(source: finetune.Source, text: Path, cache: Path) -> Dataset:
    _, cfg = finetune.configs(source, {}, {}, TrainConfig(val_frac=0.1))
    return prepare_dataset(find_corpus([str(text)]), cfg, cache_dir=cache, base=source.tokenizer)


def _probabilities(model: RNNLanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """Each position's distribution over the vocabulary, (T, V), in float64."""
    with torch.no_grad():
        logits, _, _ = model.double().eval()(ids[:, None])
    return torch.softmax(logits[:, 0], dim=-1)


MODELS = {
    "untied": {},
    "tied, projected": {"tie_weights": True},
    "tied": {"tie_weights": True, "embed_size": 16},
    "gru": {"cell": "gru"},
    "trained": None,  # the module's source run
}


@pytest.mark.parametrize("case", list(MODELS))
def test_at_step_0_old_characters_keep_their_odds_and_new_ones_start_rare(
    tmp_path: Path, texts: dict[str, Path], case: str, request: pytest.FixtureRequest
) -> None:
    if MODELS[case] is None:
        source = finetune.open_source(request.getfixturevalue("source"))
    else:
        tokenizer = _char_tokenizer(texts["old"].read_text(encoding="utf-8"))
        source = finetune.open_source(_checkpoint(tmp_path / "source.safetensors", tokenizer, **MODELS[case]))
    old_tokenizer = source.tokenizer
    dataset = _new_dataset(source, texts["new"], tmp_path / "cache")
    start = source.begin(dataset, lambda message: None)
    grown = RNNLanguageModel(ModelConfig(**{**asdict(source.model_config), "vocab_size": dataset.tokenizer.vocab_size}))
    grown.load_state_dict(start.weights)

    probe = "And the LORD spake unto Moses, saying, Speak unto the children of Israel.\n"  # old characters only
    before = _probabilities(source.model, old_tokenizer.encode(probe))  # (T, V_old)
    after = _probabilities(grown, dataset.tokenizer.encode(probe))  # (T, V_new)
    old_ids = torch.tensor([0, *(dataset.tokenizer.encode_list(c)[0] for c in old_tokenizer.chars)])
    kept = after[:, old_ids]
    ratios = (kept / kept.sum(dim=-1, keepdim=True)) / before
    assert torch.allclose(ratios, torch.ones_like(ratios), rtol=0, atol=1e-6)
    added = torch.tensor(dataset.tokenizer.encode_list(ADDED))
    new_total = after[:, added].sum(dim=-1)
    assert 0 < float(new_total.max()) < 0.02  # four characters at about 1e-3 each


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_byte_and_subword_models_keep_their_tokenizer_and_weights(
    tmp_path: Path, texts: dict[str, Path], kind: str
) -> None:
    sizes = {"vocab_size": 300} if kind == "bpe" else {}
    tokenizer = train_tokenizer(kind, texts["old"].read_text(encoding="utf-8") if kind == "bpe" else "", **sizes)
    source = finetune.open_source(_checkpoint(tmp_path / "source.safetensors", tokenizer))
    dataset = _new_dataset(source, texts["new"], tmp_path / "cache")
    said: list[str] = []
    start = source.begin(dataset, said.append)
    kept, given = dataset.tokenizer.to_state(), source.tokenizer.to_state()  # not one trained on the new text
    assert kept.keys() == given.keys() and all(
        torch.equal(kept[k], given[k]) if isinstance(given[k], torch.Tensor) else kept[k] == given[k] for k in given
    )
    assert all(torch.equal(start.weights[k], v) for k, v in source.model.state_dict().items())
    assert said == [f"starting from {source.path} (step 7): its {kind} tokenizer kept"]
    assert "added_chars" not in start.origin


# --- what is refused ------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`charrnn ARGS` in this process: exit status and stderr."""
    code, _, err = in_process(capsys, *args)
    return code, err


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, err = _cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("charrnn: error: "), err
    return lines[0]


def test_architecture_options_that_contradict_the_source_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], texts: dict[str, Path], source: Path
) -> None:
    before = _files(source)
    run = tmp_path / "run"
    args = ["train", str(texts["new"]), "--init-from", str(source), "--run", str(run), "--quiet"]
    line = _refused(capsys, *args, "--hidden", "64", "--cell", "gru", "--tie", "--tokenizer", "byte")
    for named in ("--hidden 64", "--cell gru", "--tie", "--tokenizer byte"):
        assert named in line
    assert not run.exists() and _files(source) == before


def test_a_config_file_that_contradicts_the_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], texts: dict[str, Path], source: Path
) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(f'init-from = "{source}"\nlayers = 3\nmax-steps = 2\n')
    line = _refused(capsys, "train", str(texts["new"]), "--config", str(config), "--run", str(tmp_path / "run"))
    assert "--layers 3 (the source has --layers 1)" in line
    assert not (tmp_path / "run").exists()


def _newer(path: Path) -> None:
    payload = load_checkpoint(_checkpoint(path, _char_tokenizer("abc ")))
    path.write_bytes(to_safetensors({**payload, "format": FORMAT, "format_version": FORMAT_VERSION + 1}))


def _hostile(path: Path) -> None:
    """A charrnn 0.1 (.pt, pickle) file whose unpickling would run a command."""
    payload = load_checkpoint(_checkpoint(path.with_suffix(".safetensors"), _char_tokenizer("abc ")))
    torch.save({**payload, "format_version": 1, "extra": RunsACommand(path.parent / "pwned")}, path)


def _non_finite(path: Path) -> None:
    payload = load_checkpoint(_checkpoint(path, _char_tokenizer("abc ")))
    payload["model"]["head.bias"][0] = math.nan
    save_checkpoint(path, payload)


BAD_SOURCES = {
    "missing": ("gone.safetensors", lambda path: None, "no such run or checkpoint"),
    "damaged": ("cut.safetensors", lambda path: path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{"), "corrupt"),
    "not a checkpoint": ("text.safetensors", lambda path: path.write_text("hello"), "checkpoint"),
    "hostile": ("evil.pt", _hostile, "checkpoint"),
    "non-finite": ("nan.safetensors", _non_finite, "non-finite"),
    "newer format": ("future.safetensors", _newer, "newer charrnn"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_a_bad_source_is_refused_in_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], texts: dict[str, Path], case: str
) -> None:
    name, write, phrase = BAD_SOURCES[case]
    path = tmp_path / name
    write(path)
    run = tmp_path / "runs" / "new"
    line = _refused(capsys, "train", str(texts["new"]), "--init-from", str(path), "--run", str(run), "--quiet")
    assert line.startswith("charrnn: error: --init-from: ") and phrase in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pwned").exists()


def test_init_from_with_resume_is_refused(
    capsys: pytest.CaptureFixture[str], source: Path, tuned: dict[str, Any]
) -> None:
    before = _files(tuned["run"].path)
    line = _refused(capsys, "train", "--resume", str(tuned["run"].path), "--init-from", str(source))
    assert "--init-from starts a new run and --resume continues one" in line
    assert _files(tuned["run"].path) == before


def test_the_source_run_cannot_be_the_new_run(
    capsys: pytest.CaptureFixture[str], texts: dict[str, Path], source: Path
) -> None:
    before = _files(source)
    line = _refused(capsys, "train", str(texts["new"]), "--init-from", str(source), "--run", str(source))
    assert "is the run --init-from reads" in line
    assert _files(source) == before


def test_the_api_takes_the_same_option_and_refuses_the_same_way(texts: dict[str, Path], source: Path) -> None:
    with pytest.raises(charrnn.CharrnnError, match="--embed 32 \\(the source has --embed 8\\)"):
        charrnn.train(texts["new"], run=source.parent / "api", init_from=source, embed=32)
    with pytest.raises(charrnn.CharrnnError, match="init_from must be a path"):
        charrnn.train(texts["new"], run=source.parent / "api", init_from=3)
    assert not (source.parent / "api").exists()
    assert json.loads((source / "config.json").read_text())["model"]["embed_size"] == 8


def test_a_charrnn_0_1_run_can_be_the_source(tmp_path: Path, texts: dict[str, Path]) -> None:
    old = Path(__file__).parent / "fixtures" / "format1"
    before = _files(old)
    run = charrnn.train(texts["new"], run=tmp_path / "run", init_from=old, max_steps=2, batch_size=4, seq_len=16)
    assert run.config["init_from"]["path"] == str((old / "best.pt").resolve())
    assert _files(old) == before
