"""Specification of every tokenizer through the whole pipeline: train, eval, sample, resume, checkpoint.

Runs are tiny (TINY settings, 20 steps) and trained once per module, side by side; the other
commands run in-process through `charrnn.cli.main`, which spares a Python start per call.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY, charrnn, in_process

from charrnn.checkpoint import arrays_from_checkpoint, load_checkpoint, model_from_checkpoint, train_config_of
from charrnn.config import ModelConfig
from charrnn.data.corpus import find_corpus
from charrnn.data.dataset import prepare_dataset
from charrnn.data.tokenizers import Tokenizer, train_tokenizer
from charrnn.evaluate import evaluate
from charrnn.model import RNNLanguageModel
from charrnn.sample.numpy_sampler import sample_numpy
from charrnn.sample.settings import SampleSettings
from charrnn.sample.text import Healing, heal_prime
from charrnn.sample.torch_sampler import sample

MULTILINGUAL = (
    "中文字符与日本語のテキスト、한국어 문장입니다.\n"
    "Emoji: 🙂 👍🏽 👨\u200d👩\u200d👧\u200d👦 🇫🇷🇯🇵 ✨\n"
    "Combining marks: e\u0301 a\u0308 n\u0303 Z\u0351\u0360\u0361 \u0915\u094d\u0937\n"
    "RTL: مرحبا بالعالم — שָׁלוֹם עולם \u200fend\u200e\n"
    "Mixed: naïve café Ωμέγα Привет straße ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\n"
)
VOCAB = {"char": None, "byte": None, "bpe": 1000, "unigram": 600}
KINDS = list(VOCAB)
PRIME = "And God sa"  # ends inside a word: subword primes get healed


# Tiny models gain nothing from threads, and on a shared machine threads waiting on each other cost a lot.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@dataclass(frozen=True)
class Trained:
    text: str
    corpus: Path
    cache: Path
    runs: dict[str, Path]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Trained:
    """One 20-step run per tokenizer on English with multilingual text in the training part."""
    root = tmp_path_factory.mktemp("pipeline")
    text = MULTILINGUAL * 3 + real_text
    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    cache = root / "cache"
    runs = {kind: root / kind for kind in KINDS}

    def train(kind: str) -> subprocess.CompletedProcess[str]:
        sizes = ["--vocab-size", str(VOCAB[kind])] if VOCAB[kind] else []
        # One exact stream at every evaluation, so each recorded val loss is the exact figure `eval` gives.
        args = ["train", str(corpus), "--run", str(runs[kind]), "--tokenizer", kind, *sizes, "--max-steps", "20"]
        args += ["--eval-streams", "1"]
        return charrnn(*args, *TINY, env={"CHARRNN_CACHE_DIR": str(cache), **ONE_THREAD})

    with ThreadPoolExecutor(max_workers=2) as pool:
        for kind, done in zip(KINDS, pool.map(train, KINDS)):
            assert done.returncode == 0, f"{kind}: {done.stderr}"
    return Trained(text, corpus, cache, runs)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`charrnn ARGS` in this process; its standard output."""
    code, out, err = in_process(capsys, *args)
    assert code == 0, err
    return out


def loaded(run: Path) -> tuple[RNNLanguageModel, Tokenizer]:
    return model_from_checkpoint(load_checkpoint(run), "cpu")


def whole_text_chars(tokenizer: Tokenizer, token: int) -> int:
    """Characters of a token's own text; 0 for a partial UTF-8 byte."""
    return len(tokenizer.token_texts()[token] or "")


# --- every tokenizer, end to end -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_evaluates_in_bits_per_character_of_the_raw_text(
    trained: Trained, kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(trained.cache))
    _, tokenizer = loaded(trained.runs[kind])
    val_text = trained.text[int(len(trained.text) * 0.95) :]  # the default --val-frac 0.05
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(MULTILINGUAL, encoding="utf-8")
    rows = json.loads(run_cli(capsys, "eval", str(trained.runs[kind]), str(held_out), "--json"))
    rows.update(json.loads(run_cli(capsys, "eval", str(trained.runs[kind]), "--json", "--no-baselines")))
    for name, text in (("val", val_text), (str(held_out), MULTILINGUAL)):
        row, ids = rows[name], tokenizer.encode(text)
        # Every token but the first is scored; every character but those the first token holds counts.
        assert row["tokens"] == len(ids) - 1
        assert row["chars"] == len(text) - whole_text_chars(tokenizer, int(ids[0]))
        assert row["nats_per_char"] == pytest.approx(row["loss_per_token"] * row["tokens"] / row["chars"])
        assert row["bits_per_char"] == pytest.approx(row["nats_per_char"] / math.log(2))
        assert 0 < row["bits_per_char"] < 20
    if kind == "byte":  # the first token is one byte of a three-byte character: every character is scored
        assert rows[str(held_out)]["chars"] == len(MULTILINGUAL)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_exactly_the_prime_and_then_its_continuation(
    trained: Trained, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_cli(capsys, "sample", str(trained.runs[kind]), "--prime", PRIME, "--length", "40", "--seed", "7")
    model, tokenizer = loaded(trained.runs[kind])
    cfg, _, weights = arrays_from_checkpoint(load_checkpoint(trained.runs[kind], arrays=True))
    continuation = sample_numpy(cfg, weights, tokenizer, PRIME, SampleSettings(length=40, seed=7)).texts[0]
    assert out == PRIME + continuation + "\n"  # `charrnn sample` on the CPU is the numpy sampler
    assert len(continuation) == 40
    if kind in ("bpe", "unigram"):  # the healed path: the prime's last piece was taken off and written again
        assert heal_prime(tokenizer, tokenizer.encode(PRIME))[1] != ""


@pytest.mark.parametrize("kind", KINDS)
def test_resumes_a_run_to_a_larger_step_budget(
    trained: Trained, kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(trained.cache))
    run = trained.runs[kind]
    assert load_checkpoint(run / "last.safetensors")["metrics"]["step"] == 20
    run_cli(capsys, "train", "--resume", str(run), "--max-steps", "30", "--quiet")
    payload = load_checkpoint(run / "last.safetensors")
    assert payload["metrics"]["step"] == 30
    assert payload["tokenizer"]["kind"] == kind


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trips_multilingual_text_and_scores(
    trained: Trained, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(trained.cache))
    payload = load_checkpoint(trained.runs[kind] / "best.safetensors")
    model, tokenizer = model_from_checkpoint(payload, "cpu")
    assert tokenizer.kind == kind
    for text in (MULTILINGUAL, *MULTILINGUAL.splitlines(keepends=True)):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    dataset = prepare_dataset(find_corpus([str(trained.corpus)]), train_config_of(payload))
    assert dataset.tokenizer.token_texts() == tokenizer.token_texts()
    assert torch.equal(dataset.tokenizer.encode(MULTILINGUAL), tokenizer.encode(MULTILINGUAL))
    # The loaded weights score the validation text as they did when best.safetensors was saved.
    assert dataset.val is not None
    result = evaluate(model, dataset.val, tokenizer)
    assert result.nats_per_char == pytest.approx(payload["metrics"]["val_loss"], rel=1e-5)


@pytest.mark.parametrize(("kind", "dtype"), [("char", torch.uint8), ("byte", torch.uint8), ("bpe", torch.int16)])
def test_token_cache_stores_ids_compactly(trained: Trained, kind: str, dtype: torch.dtype) -> None:
    cfg = train_config_of(load_checkpoint(trained.runs[kind]))
    dataset = prepare_dataset(find_corpus([str(trained.corpus)]), cfg, cache_dir=trained.cache)
    splits = [s for s in (dataset.train, dataset.val, dataset.test) if s is not None]
    assert all(split.tokens.dtype == dtype for split in splits)
    if kind == "bpe":
        assert dataset.tokenizer.vocab_size == 1000
    # The cache file holds every id at that width, and nothing else.
    size = sum(split.num_tokens for split in splits) * dtype.itemsize
    assert size in {path.stat().st_size for path in trained.cache.glob("*.bin")}


# --- byte output is always text ------------------------------------------------------


def test_byte_model_output_is_valid_utf8_even_at_high_temperature(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "samples.txt"
    args = [str(trained.runs["byte"]), "--length", "300", "--temperature", "3", "--seed", "1", "--prime", "中"]
    done = subprocess.run(
        [sys.executable, "-m", "charrnn", "sample", *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, **ONE_THREAD},
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.decode("utf-8")  # strict: raises on any invalid byte
    assert printed.startswith("中") and len(printed) == 1 + 300 + 1
    assert any(ord(c) > 0x7F for c in printed[1:])  # it did write multi-byte sequences (or broken ones)
    run_cli(capsys, "sample", *args, "--num-samples", "3", "--output", str(out))
    assert out.read_bytes().decode("utf-8").count("----- sample") == 3


def byte_chain(successor: dict[int, int]) -> RNNLanguageModel:
    """A byte model whose most likely next byte is `successor[previous byte]`: one-hot embeddings,
    an identity recurrence that keeps the previous byte, a head that maps it to its successor."""
    model = RNNLanguageModel(ModelConfig(vocab_size=256, cell="rnn", num_layers=1, hidden_size=256, embed_size=256))
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.weight.copy_(4 * torch.eye(256))
        model.rnns[0].weight_ih_l0.copy_(torch.eye(256))
        for previous, following in successor.items():
            model.head.weight[following, previous] = 20.0
    return model


def test_byte_stream_holds_back_a_character_until_its_last_byte() -> None:
    ring = list("é中🙂".encode())  # two-, three- and four-byte characters, in a loop
    successor = {a: b for a, b in zip(ring, ring[1:] + ring[:1])} | {ord("\n"): ring[0]}
    model, tokenizer = byte_chain(successor), train_tokenizer("byte", "")
    pieces: list[str] = []
    result = sample(model, tokenizer, "", SampleSettings(length=7, temperature=0), lambda i, t: pieces.append(t))
    assert result.texts == ["é中🙂é中🙂é"]
    assert "".join(pieces) == "é中🙂é中🙂é"
    assert all("\ufffd" not in piece for piece in pieces)  # every piece handed out is whole characters
    assert result.tokens >= 2 + 3 + 4 + 2 + 3 + 4 + 2  # tokens computed (a block may run past the end)


def test_byte_stream_turns_invalid_sequences_into_replacement_characters() -> None:
    # A lone continuation byte, then a lead byte followed by a letter: both invalid UTF-8.
    model = byte_chain({ord("\n"): 0xA9, 0xA9: ord("a"), ord("a"): 0xE4, 0xE4: ord("b")})
    tokenizer = train_tokenizer("byte", "")
    result = sample(model, tokenizer, "", SampleSettings(length=4, temperature=0))
    assert result.texts == ["\ufffda\ufffdb"]
    result.texts[0].encode("utf-8")


# --- token healing -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    text = Path(__file__).resolve().parent.parent.joinpath("corpora", "kjv.txt").read_text(encoding="utf-8")
    return train_tokenizer("bpe", text[:60_000], 1000)


def test_healing_takes_off_the_trailing_tokens_a_longer_piece_could_cover(bpe: Tokenizer) -> None:
    texts = bpe.token_texts()
    ids = bpe.encode(PRIME)
    kept, healed = heal_prime(bpe, ids)
    assert bpe.decode(kept) + healed == PRIME
    assert healed and PRIME.endswith(healed) and len(kept) < len(ids)
    assert any(t is not None and t.startswith(healed) and len(t) > len(healed) for t in texts)
    # A prime that ends where no piece continues (a newline) keeps all its tokens.
    assert torch.equal(heal_prime(bpe, bpe.encode("And God said\n"))[0], bpe.encode("And God said\n"))


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_healing_leaves_char_and_byte_primes_alone(kind: str) -> None:
    tokenizer = train_tokenizer(kind, "And God said, Let there be light")
    ids = tokenizer.encode(PRIME)
    kept, healed = heal_prime(tokenizer, ids)
    assert torch.equal(kept, ids) and healed == ""


def constant_model(tokenizer: Tokenizer, bias: dict[int, float]) -> RNNLanguageModel:
    """A model whose next-token logits are `bias` (0 elsewhere) whatever came before."""
    model = RNNLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=4, embed_size=4, num_layers=1))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        for token, value in bias.items():
            model.head.bias[token] = value
    return model


def _sampler(name: str, model: RNNLanguageModel, tokenizer: Tokenizer) -> Callable[[str, SampleSettings], Any]:
    """`generate(prime, settings)` with the torch sampler or the numpy one, on the same model."""
    if name == "torch":
        return functools.partial(sample, model, tokenizer)
    arrays = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    return functools.partial(sample_numpy, model.cfg, arrays, tokenizer)


@pytest.mark.parametrize("sampler", ["numpy", "torch"])
def test_healed_prime_continues_with_a_piece_that_completes_it(bpe: Tokenizer, sampler: str) -> None:
    texts = bpe.token_texts()
    _, healed = heal_prime(bpe, bpe.encode(PRIME))
    whole = max(
        (i for i, t in enumerate(texts) if t and t.startswith(healed) and t != healed), key=lambda i: len(texts[i])
    )
    newline = texts.index("\n")
    # The model prefers a newline above all, and the completing piece next: healing must pick the piece.
    generate = _sampler(sampler, constant_model(bpe, {newline: 10.0, whole: 5.0}), bpe)
    length = len(texts[whole]) - len(healed) + 2
    result = generate(PRIME, SampleSettings(length=length, temperature=0))
    assert PRIME + result.texts[0] == PRIME[: -len(healed)] + texts[whole] + "\n\n"
    # The same model on a prime that ends at a newline has nothing to heal: it writes newlines.
    assert generate("And\n", SampleSettings(length=3, temperature=0)).texts == ["\n\n\n"]


def test_healing_feeds_the_text_itself_when_no_piece_fits(bpe: Tokenizer) -> None:
    healing = Healing(bpe, "中", 2)  # never seen: only byte pieces write it
    forced = bpe.encode("中").tolist()
    for token in forced:
        allowed = torch.frombuffer(bytearray(healing.allowed()), dtype=torch.bool).view(2, -1)
        assert allowed.sum(dim=1).tolist() == [1, 1] and bool(allowed[:, token].all())
        healing.advance([token, token])
    assert not healing.active


# --- stop strings --------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["numpy", "torch"])
def test_stop_string_across_token_boundaries_stops_a_bpe_sample(
    trained: Trained, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    model, tokenizer = loaded(trained.runs["bpe"])
    if sampler == "torch":
        monkeypatch.setenv("CHARRNN_SAMPLER", "torch")  # the CLI below uses the same sampler
        generate = functools.partial(sample, model, tokenizer)
    else:
        cfg, _, weights = arrays_from_checkpoint(load_checkpoint(trained.runs["bpe"], arrays=True))
        generate = functools.partial(sample_numpy, cfg, weights, tokenizer)
    settings = SampleSettings(length=300, temperature=1.0, seed=3)
    full = generate("And", settings).texts[0]
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(full).tolist()]  # the text's own segmentation
    k = next(k for k in range(5, len(pieces) - 2) if len(pieces[k]) >= 2 and len(pieces[k + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1] + pieces[k + 2][:1]  # spans three tokens
    expected = full[: full.index(stop)]
    stopped = SampleSettings(length=300, temperature=1.0, seed=3, stop=(stop,))
    assert generate("And", stopped).texts == [expected]
    args = ["--prime", "And", "--length", "300", "--seed", "3", "--temperature", "1"]
    assert run_cli(capsys, "sample", str(trained.runs["bpe"]), *args) == "And" + full + "\n"
    assert run_cli(capsys, "sample", str(trained.runs["bpe"]), *args, "--stop", stop) == "And" + expected + "\n"
