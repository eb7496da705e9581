"""The Python API, read as its documentation: charrnn.load, and what a Model does.

Runs are tiny (a few steps of a 2 x 16 network) and trained once per module with `charrnn.train`;
the rules of `Model.score` hold for any weights, trained or not.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import charrnn as run_charrnn

import charrnn
from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.inference import CharrnnWarning

MULTILINGUAL = "Ça, naïve café: 中文字符 and ünïcödé.\n"
HELD_OUT = "And God said, Let there be light: and there was light. 中文 and ☃ snow.\n"  # ☃ is unseen
KINDS = {"char": None, "byte": None, "bpe": 600, "unigram": 600}
SMALL = dict(hidden=16, embed=8, layers=2, batch_size=4, seq_len=16, eval_interval=4, max_steps=4)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    path = tmp_path_factory.mktemp("api") / "corpus.txt"
    path.write_text(MULTILINGUAL * 5 + real_text[:30_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(corpus: Path) -> dict[str, Path]:
    """One run per tokenizer, and a GRU."""
    made = {}
    with pytest.MonkeyPatch.context() as patch:  # a token cache of this module's own
        patch.setenv("CHARRNN_CACHE_DIR", str(corpus.parent / "cache"))
        for kind, vocab in KINDS.items():
            sizes = {"vocab_size": vocab} if vocab else {}
            made[kind] = charrnn.train(corpus, run=corpus.parent / kind, tokenizer=kind, **sizes, **SMALL).path
        made["gru"] = charrnn.train(corpus, run=corpus.parent / "gru", cell="gru", **SMALL).path
    return made


@pytest.fixture(scope="module")
def model(runs: dict[str, Path]) -> charrnn.Model:
    return charrnn.load(runs["char"], device="cpu")


def token_bits(path: Path, text: str) -> np.ndarray:
    """Bits of every token of `text` after the first, computed straight from the torch model."""
    net, tokenizer = model_from_checkpoint(load_checkpoint(path))
    ids = tokenizer.encode(text)
    with torch.no_grad():
        logits, _, _ = net.eval()(ids[:-1, None])
    logp = torch.log_softmax(logits[:, 0].double(), dim=-1)
    return (-logp.gather(1, ids[1:, None])[:, 0] / math.log(2)).numpy()


# --- loading -----------------------------------------------------------------------------


def test_load_takes_a_run_directory_or_one_of_its_checkpoint_files(runs: dict[str, Path]) -> None:
    model = charrnn.load(runs["char"])
    assert model.path == runs["char"] / "best.safetensors"
    assert charrnn.load(model.path).config == model.config
    assert charrnn.load(charrnn.Run(runs["char"])).path == model.path
    assert model.config.hidden_size == 16 and model.config.num_layers == 2
    assert model.tokenizer.kind == "char" and "lstm 2x16" in repr(model)


def test_load_reads_charrnn_0_1_checkpoints() -> None:
    old = Path(__file__).parent / "fixtures" / "format1"
    expected = json.loads((old / "expected.json").read_text())
    model = charrnn.load(old, device="cpu")
    held = (old / "held.txt").read_text()
    assert model.evaluate(held).bits_per_char == pytest.approx(expected["eval_held"]["bits_per_char"], abs=1e-6)
    assert "And God" + model.generate("And God", length=80, seed=7) + "\n" == expected["sample_numpy"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda run: charrnn.load(run.parent / "missing"), "no such run"),
        (lambda run: charrnn.load(run.parent / "corpus.txt"), "checkpoint"),
        (lambda run: charrnn.load(run, device="tpu"), "unknown device"),
        (lambda run: charrnn.load(run).generate(top_p=2), "top-p"),
        (lambda run: charrnn.load(run).generate(length=-1), "length"),
        (lambda run: charrnn.load(run).generate("☃☃"), "only characters the model never saw"),
        (lambda run: charrnn.load(run).generate(stop=[""]), "stop"),
        (lambda run: charrnn.load(run).generate(prime=3), "prime must be a str"),
        (lambda run: charrnn.load(run).evaluate(""), "empty"),
        (lambda run: charrnn.load(run).evaluate("text", streams=0), "streams"),
        (lambda run: charrnn.load(run).score(b"bytes"), "must be a str"),
        (lambda run: charrnn.load(run).score("text", top_k=-1), "top_k"),
    ],
)
def test_bad_input_is_a_charrnn_error(runs: dict[str, Path], call, message: str) -> None:
    with pytest.raises(charrnn.CharrnnError, match=message):
        call(runs["char"])


def test_import_and_load_without_torch(runs: dict[str, Path]) -> None:
    """`import charrnn` stays light, and sampling on the CPU never loads torch (it would cost seconds)."""

    def fresh(code: str, **env: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return done.stdout.strip()

    assert fresh("import charrnn, sys; charrnn.load; print('torch' in sys.modules)") == "False"
    sample = f"import charrnn, sys; charrnn.load({str(runs['char'])!r}, device='cpu').generate(length=20); "
    assert fresh(sample + "print('torch' in sys.modules)") == "False"
    assert fresh(sample + "print('torch' in sys.modules)", CHARRNN_SAMPLER="torch") == "True"
    if not (torch.cuda.is_available() or Path("/dev/nvidiactl").exists()):  # "auto" is the CPU here
        auto = sample.replace(", device='cpu'", "")
        assert fresh(auto + "print('torch' in sys.modules)") == "False"


def test_the_package_lists_its_api() -> None:
    assert set(charrnn.__all__) == {
        "train",
        "Run",
        "load",
        "Model",
        "EvalResult",
        "Score",
        "CharrnnError",
        "__version__",
    }
    assert set(charrnn.__all__) <= set(dir(charrnn))
    assert callable(charrnn.train)  # the function (charrnn.runs.train)


def test_train_is_the_function_and_training_the_module() -> None:
    import charrnn.runs
    import charrnn.training

    assert charrnn.train is charrnn.runs.train  # importing the trainer's module leaves the function in place
    assert isinstance(charrnn.training.Trainer, type) and charrnn.training.train is not charrnn.train
    assert charrnn.runs.train.__doc__ and "charrnn.results.Report" in charrnn.runs.train.__doc__


# --- generating ----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_text(model: charrnn.Model) -> None:
    text = model.generate("And God", length=60, seed=5)
    assert isinstance(text, str) and len(text) == 60
    assert model.generate("And God", length=60, seed=5) == text
    assert model.generate("And God", length=60, seed=6) != text


def test_several_samples_come_as_a_list(model: charrnn.Model) -> None:
    texts = model.generate("The ", length=30, seed=1, num_samples=3)
    assert isinstance(texts, list) and len(texts) == 3 and all(len(t) == 30 for t in texts)


def test_streamed_pieces_join_to_the_generated_text(model: charrnn.Model) -> None:
    pieces = list(model.stream("And God", length=100, seed=2))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == model.generate("And God", length=100, seed=2)


def test_several_streamed_samples_come_as_index_and_piece(model: charrnn.Model) -> None:
    joined = ["", ""]
    for index, piece in model.stream("The ", length=50, seed=3, num_samples=2):
        joined[index] += piece
    assert joined == model.generate("The ", length=50, seed=3, num_samples=2)


def test_a_stream_closed_early_stops_generating(model: charrnn.Model) -> None:
    pieces = model.stream(length=1_000_000, seed=1)
    first = next(pieces)
    pieces.close()  # returns once the sampler has stopped, long before a million characters
    assert first


def test_a_sample_ends_before_its_stop_string(model: charrnn.Model) -> None:
    full = model.generate("And", length=200, seed=4)
    stop = full[20:22]
    stopped = model.generate("And", length=200, seed=4, stop=stop)
    assert stopped == full[: full.index(stop)]
    assert model.generate("And", length=200, seed=4, stop=[stop, "zzz"]) == stopped


def test_an_unknown_prime_character_is_a_warning(model: charrnn.Model) -> None:
    with pytest.warns(CharrnnWarning, match="1 prime character"):
        text = model.generate("And ☃", length=10, seed=1)
    assert len(text) == 10


def test_the_torch_sampler_serves_the_same_api(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARRNN_SAMPLER", "torch")
    model = charrnn.load(runs["char"], device="cpu")
    text = model.generate("And", length=40, seed=9)
    assert len(text) == 40 and "".join(model.stream("And", length=40, seed=9)) == text


# --- evaluating and scoring ------------------------------------------------------------------


def test_evaluate_gives_the_numbers_charrnn_eval_prints(runs: dict[str, Path], tmp_path: Path) -> None:
    held = tmp_path / "held.txt"
    held.write_text(HELD_OUT, encoding="utf-8")
    args = ["eval", str(runs["char"]), str(held), "--json", "--no-baselines", "--device", "cpu"]
    done = run_charrnn(*args, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)[str(held)]
    result = charrnn.load(runs["char"], device="cpu").evaluate(HELD_OUT)
    assert isinstance(result, charrnn.EvalResult)
    assert result.as_dict() == pytest.approx(printed, rel=1e-9)
    assert result.unknown == 1  # the snowman


@pytest.mark.parametrize("kind", [*KINDS, "gru"])
def test_score_bits_per_char_is_evaluates(runs: dict[str, Path], kind: str) -> None:
    model = charrnn.load(runs[kind], device="cpu")
    for text in (HELD_OUT, "é" + HELD_OUT, "x", "a lone \ud800 surrogate"):
        score, result = model.score(text), model.evaluate(text)
        assert isinstance(score, charrnn.Score) and len(score) == len(text)
        assert score.predicted == result.chars
        if result.chars:
            assert score.bits_per_char == pytest.approx(result.bits_per_char, abs=1e-6)
        else:
            assert math.isnan(score.bits_per_char)
    activated = model.score(HELD_OUT, activations=True)
    assert activated.bits_per_char == pytest.approx(model.evaluate(HELD_OUT).bits_per_char, abs=1e-6)


def test_the_characters_of_the_first_token_have_no_bits(runs: dict[str, Path]) -> None:
    for kind in KINDS:
        model = charrnn.load(runs[kind], device="cpu")
        first = model.tokenizer.token_texts()[int(model.tokenizer.encode(HELD_OUT)[0])]
        score = model.score(HELD_OUT)
        assert np.isnan(score.bits[: len(first)]).all() and not np.isnan(score.bits[len(first) :]).any()
        assert score.top[0] == []


def test_a_character_begun_by_the_first_token_counts_the_rest_of_its_bytes(runs: dict[str, Path]) -> None:
    score = charrnn.load(runs["byte"], device="cpu").score("é and")  # é is two bytes: C3 A9
    assert score.bits[0] == pytest.approx(token_bits(runs["byte"], "é and")[0], rel=1e-5)


def test_a_characters_bytes_add_up_on_it(runs: dict[str, Path]) -> None:
    score = charrnn.load(runs["byte"], device="cpu").score(HELD_OUT)
    bits = token_bits(runs["byte"], HELD_OUT)
    ends = np.cumsum([len(c.encode()) for c in HELD_OUT]) - 1  # each character's last byte, as a token index
    starts = ends - [len(c.encode()) - 1 for c in HELD_OUT]
    expected = [bits[max(s, 1) - 1 : e].sum() for s, e in zip(starts, ends)]  # bits[j - 1] is token j's
    assert score.bits[1:] == pytest.approx(expected[1:], rel=1e-5)
    assert "中" in HELD_OUT and score.bits[HELD_OUT.index("中")] > 0


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_tokens_bits_are_split_evenly_among_its_characters(runs: dict[str, Path], kind: str) -> None:
    model = charrnn.load(runs[kind], device="cpu")
    ids = model.tokenizer.encode_list(HELD_OUT)
    texts, pieces = model.tokenizer.token_texts(), model.tokenizer.token_bytes()
    bits, score = token_bits(runs[kind], HELD_OUT), model.score(HELD_OUT)
    raw, offset, checked = HELD_OUT.encode(), 0, 0
    for j, token in enumerate(ids):
        text = texts[token]
        if j and text is not None and len(text) > 1:  # a piece of several characters, from `at` on
            at = len(raw[:offset].decode())
            assert score.bits[at : at + len(text)] == pytest.approx([bits[j - 1] / len(text)] * len(text), rel=1e-5)
            checked += 1
        offset += len(pieces[token])
    assert checked > 5


def test_unknown_characters_are_marked(model: charrnn.Model) -> None:
    score = model.score(HELD_OUT)
    assert score.unknown.tolist() == [c == "☃" for c in HELD_OUT]
    assert math.isfinite(score.bits[HELD_OUT.index("☃")])  # <unk> has a probability like any id


def test_top_predictions_are_the_distribution_before_each_character(model: charrnn.Model) -> None:
    score = model.score(HELD_OUT, top_k=3)
    assert all(len(top) == 3 for top in score.top[1:])
    for top in score.top[1:]:
        probabilities = [p for _, p in top]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    every = model.score(HELD_OUT, top_k=model.config.vocab_size)  # the whole distribution
    for i, char in enumerate(HELD_OUT[1:], start=1):
        probability = dict(every.top[i])["<unk>" if char == "☃" else char]
        assert probability == pytest.approx(2 ** -every.bits[i], rel=1e-4)
    assert model.score(HELD_OUT, top_k=0).top[5] == []


def test_a_byte_models_predictions_name_partial_characters_by_their_byte(runs: dict[str, Path]) -> None:
    score = charrnn.load(runs["byte"], device="cpu").score("a中", top_k=256)
    labels = [text for text, _ in score.top[1]]
    assert "<0xE4>" in labels and "a" in labels and len(labels) == 256  # 中 is E4 B8 AD


@pytest.mark.parametrize("kind", ["char", "gru"])
def test_activations_are_every_layers_state_after_each_character(runs: dict[str, Path], kind: str) -> None:
    model = charrnn.load(runs[kind], device="cpu")
    score = model.score(HELD_OUT, activations=True)
    assert score.hidden.shape == (len(HELD_OUT), 2, 16) and score.hidden.dtype == np.float32
    net, tokenizer = model_from_checkpoint(load_checkpoint(runs[kind]))
    with torch.no_grad():
        _, _, state = net.eval()(tokenizer.encode(HELD_OUT)[:, None])  # the state after the whole text
    if kind == "gru":
        assert score.cell is None
        np.testing.assert_allclose(score.hidden[-1], state[:, 0].numpy(), atol=1e-5)
    else:
        assert score.cell.shape == score.hidden.shape
        np.testing.assert_allclose(score.hidden[-1], state[0][:, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(score.cell[-1], state[1][:, 0].numpy(), atol=1e-5)
    assert model.score(HELD_OUT).hidden is None
