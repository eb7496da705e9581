"""Promise: whatever bytes a corpus holds and whatever strings a prime or stop string holds, charrnn
either works or raises CharrnnError (a one-line message); never another exception.

Hypothesis generates the inputs: corpora as raw bytes (often invalid UTF-8, NUL bytes, lone
surrogates' encodings, single repeated symbols) and as real text; primes and stop strings from the
whole of Unicode, lone surrogates included (which is what invalid bytes in a command line become);
sampling settings across their valid range; and damaged copies of a real checkpoint. Each test
counts the cases it ran, so the report below is a fact, not a setting: a few thousand in all.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
from conftest import in_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charrnn.config import ModelConfig, TrainConfig, asdict
from charrnn.data.batcher import StreamBatcher, fit_batch_size
from charrnn.data.corpus import find_corpus
from charrnn.data.dataset import prepare_dataset
from charrnn.data.tokenizers import ByteTokenizer, CharVocabCounter
from charrnn.errors import CharrnnError
from charrnn.model import RNNLanguageModel
from charrnn.sample.settings import SampleSettings
from charrnn.sample.torch_sampler import sample
from charrnn.training import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FUZZ = settings(
    deadline=None,
    database=None,  # write nothing into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Bytes that make corpora interesting: UTF-8 lead and continuation bytes, encoded surrogates,
# overlong forms, BOMs, NUL, newlines, plain ASCII.
TRICKY = [b"\xff", b"\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b"\n", b"\r\n", b"\xe2\x96\x81"]
corpus_bytes = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=600).map(lambda t: t.encode("utf-8")),
    st.lists(st.sampled_from([*TRICKY, b"a", b"hello ", b"\xc3\xa9"]), max_size=200).map(b"".join),
    st.tuples(st.sampled_from([b"a", b"\xc3\xa9", b" "]), st.integers(1, 400)).map(lambda p: p[0] * p[1]),
)
long_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=60, max_size=600).map(str.encode)
any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40)  # lone surrogates too


def test_random_corpora_either_prepare_or_fail_cleanly(tmp_path: Path) -> None:
    ran = itertools.count()
    cache = tmp_path / "cache"

    @settings(FUZZ, max_examples=500)
    @given(
        data=corpus_bytes,
        encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-32", "ascii"]),
        tokenizer=st.sampled_from(["char", "byte"]),
        val_frac=st.sampled_from([0.0, 0.05, 0.5]),
        test_frac=st.sampled_from([0.0, 0.1]),
        batch=st.integers(1, 8),
        seq_len=st.integers(1, 64),
    )
    def check(
        data: bytes, encoding: str, tokenizer: str, val_frac: float, test_frac: float, batch: int, seq_len: int
    ) -> None:
        next(ran)
        path = tmp_path / "corpus.txt"
        path.write_bytes(data)
        cfg = TrainConfig(
            tokenizer=tokenizer, val_frac=val_frac, test_frac=test_frac, batch_size=batch, seq_len=seq_len
        )
        try:
            dataset = prepare_dataset(find_corpus([str(path)], encoding=encoding), cfg, cache_dir=cache)
            streams = fit_batch_size(dataset.train.num_tokens, batch, seq_len, lambda message: None)
            batcher = StreamBatcher(dataset.train.tokens, streams, seq_len)
            x, y = batcher.batch(batcher.steps_per_epoch - 1)
            assert x.shape == y.shape == (seq_len, streams)
            assert int(x.max()) < dataset.tokenizer.vocab_size
        except CharrnnError as exc:
            assert str(exc) and "\n" not in str(exc)

    check()
    assert next(ran) >= 500


def test_valid_text_in_wide_encodings_always_trains(tmp_path: Path) -> None:
    """Random bytes read as UTF-16 are mostly refused, rightly; valid text encoded as UTF-16 or
    UTF-32 never is: it prepares, batches and takes a training step."""
    ran = itertools.count()
    cache = tmp_path / "cache"
    model_cfg = {"num_layers": 1, "hidden_size": 8, "embed_size": 4}

    @settings(FUZZ, max_examples=30)
    @given(
        text=st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=40, max_size=400).filter(
            lambda t: len(set(t)) > 1
        ),
        encoding=st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]),
    )
    def check(text: str, encoding: str) -> None:
        run = tmp_path / f"run-{next(ran)}"
        path = tmp_path / "corpus.txt"
        path.write_bytes(text.encode(encoding))
        corpus = find_corpus([str(path)], encoding=encoding)
        assert corpus.read_text() == text
        cfg = TrainConfig(val_frac=0.0, batch_size=2, seq_len=4, max_steps=1, device="cpu")
        result = train(corpus, model_cfg, cfg, run, cache_dir=cache)
        assert result.steps == 1 and result.train_loss is not None

    check()
    assert next(ran) >= 30


@pytest.fixture(scope="module")
def models() -> list[tuple[RNNLanguageModel, object]]:
    """Tiny untrained models: a char model that has seen little text (so most of Unicode is
    unknown to it), a byte model, and a GRU with tied weights."""
    counter = CharVocabCounter()
    counter.update("the quick brown fox jumps over the lazy dog\nTHE END. 123!?")
    char = counter.build()
    byte = ByteTokenizer()
    torch.manual_seed(0)
    built = []
    for tokenizer, extra in ((char, {}), (byte, {}), (char, {"cell": "gru", "tie_weights": True})):
        cfg = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=2, hidden_size=16, embed_size=8, **extra)
        built.append((RNNLanguageModel(cfg).eval(), tokenizer))
    return built


def test_random_primes_and_stops_either_sample_or_fail_cleanly(models: list) -> None:
    ran = itertools.count()

    @settings(FUZZ, max_examples=1000)
    @given(
        which=st.integers(0, 2),
        prime=any_text,
        stops=st.lists(any_text, max_size=3),
        length=st.integers(0, 40),
        temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
        top_k=st.integers(0, 300),
        top_p=st.sampled_from([1.0, 0.9, 0.3, 1e-6]),
        num_samples=st.integers(1, 3),
        seed=st.integers(0, 2**63 - 1),
    )
    def check(
        which: int,
        prime: str,
        stops: list[str],
        length: int,
        temperature: float,
        top_k: int,
        top_p: float,
        num_samples: int,
        seed: int,
    ) -> None:
        next(ran)
        model, tokenizer = models[which]
        streamed: dict[int, str] = {}
        try:
            settings_ = SampleSettings(length, temperature, top_k, top_p, seed, num_samples, tuple(stops))
            result = sample(
                model,
                tokenizer,
                prime,
                settings_,
                on_text=lambda i, t: streamed.__setitem__(i, streamed.get(i, "") + t),
            )
        except CharrnnError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert len(result.texts) == num_samples
        for i, text in enumerate(result.texts):
            assert len(text) <= length
            assert not any(stop in text for stop in stops)
            assert streamed.get(i, "") == text
            text.encode("utf-8")  # printable: no lone surrogates come out

    check()
    assert next(ran) >= 1000


def test_damaged_checkpoints_either_load_or_are_refused(tmp_path: Path, models: list) -> None:
    model, tokenizer = models[0]
    good = tmp_path / "good.pt"
    save_checkpoint(
        good,
        {
            "model_config": asdict(model.cfg),
            "train_config": asdict(TrainConfig()),
            "tokenizer": tokenizer.to_state(),
            "model": model.state_dict(),
        },
    )
    original = good.read_bytes()
    ran = itertools.count()

    @settings(FUZZ, max_examples=400)
    @given(
        seed=st.integers(0, 2**32 - 1),
        flips=st.integers(1, 8),
        cut=st.one_of(st.none(), st.integers(0, len(original))),
    )
    def check(seed: int, flips: int, cut: int | None) -> None:
        next(ran)
        rng = random.Random(seed)
        data = bytearray(original if cut is None else original[:cut])
        for _ in range(flips if data else 0):
            # The pickle and zip headers sit in the first kilobytes, the zip directory at the end:
            # damage there most of the time, in the tensor data the rest.
            region = rng.choice([(0, 2048), (len(data) - 1024, len(data)), (0, len(data))])
            data[rng.randrange(max(0, region[0]), min(len(data), region[1]))] = rng.randrange(256)
        path = tmp_path / "damaged.pt"
        path.write_bytes(bytes(data))
        try:
            loaded, _ = model_from_checkpoint(load_checkpoint(path))
        except CharrnnError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert all(torch.isfinite(p).all() for p in loaded.parameters())

    check()
    assert next(ran) >= 400


def test_the_cli_on_random_corpora_and_primes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A few dozen whole commands in this process: train on random bytes, sample with random strings."""
    ran = itertools.count()
    runs = itertools.count()
    trained = itertools.count()
    tiny = ["--hidden", "8", "--embed", "4", "--layers", "1", "--batch-size", "2", "--seq-len", "4", "--quiet"]

    @settings(FUZZ, max_examples=60)
    @given(text=st.booleans(), long=long_text, raw=corpus_bytes, prime=any_text, stop=any_text)
    def check(text: bool, long: bytes, raw: bytes, prime: str, stop: str) -> None:
        next(ran)
        data = long if text else raw  # half the corpora long enough to train on
        corpus, run = tmp_path / "corpus.txt", tmp_path / f"run-{next(runs)}"
        corpus.write_bytes(data)
        code = _cli(capsys, ["train", str(corpus), "--run", str(run), *tiny, "--max-steps", "2", "--device", "cpu"])
        if code != 0:
            assert not run.exists(), "a failed train left a run directory behind"
            return
        next(trained)
        code = _cli(capsys, ["sample", str(run), "--prime", prime, "--stop", stop, "--length", "30", "--seed", "1"])
        assert code in (0, 1)

    check()
    assert next(ran) >= 60
    assert next(trained) >= 10, "too few random corpora were trainable to exercise sample"


def _cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> int:
    code, _, err = in_process(capsys, *args)
    if code:
        assert code == 1, err
        assert err.startswith("charrnn: error: ") and err.count("\n") == 1, err
        assert "internal error" not in err, err
    return code
