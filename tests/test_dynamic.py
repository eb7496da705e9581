"""Dynamic evaluation (charrnn.dynamic, issue 23): a copy of the weights learns from each segment
after predicting it. Every figure depends only on what comes before it; with no learning rate the
figures are the static pass's; memory is one segment's graph; the checkpoint never changes; eval,
score and the API agree; bad options are one line. Tiny random models or the session's
`tiny_trained` run: nothing is trained here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, copied, in_process

import charrnn
from charrnn.config import ModelConfig
from charrnn.data.dataset import Split, encode_text
from charrnn.data.tokenizers import train_tokenizer
from charrnn.dynamic import Adapter, DynamicSettings, gradient_stats, settings_of
from charrnn.errors import CharrnnError
from charrnn.evaluate import evaluate
from charrnn.model import RNNLanguageModel
from charrnn.score import score_text

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form.\n" * 6
FAST = DynamicSettings(segment=16, lr=3e-3, stats_tokens=256)  # a learning rate that visibly moves tiny models


def random_model(vocab: int, cell: str = "lstm", seed: int = 0) -> RNNLanguageModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, num_layers=2, hidden_size=24, embed_size=12, cell=cell)
    return RNNLanguageModel(cfg).eval()


def adapter(net: RNNLanguageModel, tokens: torch.Tensor, settings: DynamicSettings = FAST) -> Adapter:
    """An adapter whose gradient statistics come from a "training text" of its own, not `tokens`."""
    train = torch.randint(0, net.cfg.vocab_size, (300,), generator=torch.Generator().manual_seed(99))
    return Adapter(net, settings, gradient_stats(net, train, settings) if settings.method == "rms" else None)


def dynamic_bits(net: RNNLanguageModel, tokens: torch.Tensor, settings: DynamicSettings = FAST) -> np.ndarray:
    parts = adapter(net, tokens, settings).windows(tokens, tokens.numel() - 1)
    return np.concatenate([part.bits()[:, 0] for part in parts])


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, object]:
    return {kind: train_tokenizer(kind, TEXT * 3, 300 if kind == "bpe" else None) for kind in ("char", "byte", "bpe")}


# --- the rules of the pass -----------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_later_token_changes_no_earlier_figure(cell: str) -> None:
    net = random_model(30, cell)
    tokens = torch.randint(0, 30, (200,), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[100] = (changed[100] + 1) % 30  # target 99 of the pass (mid-segment: segment 6 is 96..111)
    before, after = dynamic_bits(net, tokens), dynamic_bits(net, changed)
    assert np.array_equal(before[:99], after[:99])
    assert not np.allclose(before[99:], after[99:])  # and the pass does learn from it


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("method", ["rms", "sgd"])
def test_a_zero_learning_rate_scores_as_the_static_pass(cell: str, method: str) -> None:
    net = random_model(30, cell)
    tokenizer = train_tokenizer("char", "abcdefghijklmnopqrstuvwxyz.,;:")
    split = Split(torch.randint(0, 30, (300,), generator=torch.Generator().manual_seed(2)), 300)
    static = evaluate(net, split, tokenizer)
    zero = DynamicSettings(segment=16, lr=0.0, decay=0.5, method=method, stats_tokens=256)
    dynamic = evaluate(net, split, tokenizer, adapter=adapter(net, split.tokens, zero))
    assert abs(dynamic.bits_per_char - static.bits_per_char) < 1e-9
    moved = evaluate(net, split, tokenizer, adapter=adapter(net, split.tokens, replace(zero, lr=3e-3)))
    assert moved.bits_per_char != static.bits_per_char


def test_memory_is_one_segments_graph_whatever_the_length() -> None:
    """The tensors autograd saves between two updates do not grow with the text: the state is
    detached between segments, so no graph spans more than one."""
    net = random_model(30)
    saved: list[int] = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    most = {}
    for length in (400, 4000):
        tokens = torch.randint(0, 30, (length + 1,), generator=torch.Generator().manual_seed(3))
        fresh = adapter(net, tokens)
        per_segment = []
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            for _ in fresh.windows(tokens, length):
                per_segment.append(saved[0])
                saved[0] = 0
        most[length] = max(per_segment)
    assert most[4000] == most[400] > 0


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_every_tokenizer_scores_characters_whose_bits_add_up_to_eval(kind: str, tokenizers: dict) -> None:
    tokenizer = tokenizers[kind]
    net = random_model(tokenizer.vocab_size)
    text = TEXT[:300] + "café\n"
    split = encode_text(tokenizer, text)
    result = evaluate(net, split, tokenizer, adapter=adapter(net, split.tokens))
    score = score_text(net, tokenizer, text, adapter=adapter(net, split.tokens))
    assert math.isclose(float(np.nansum(score.bits)), result.nll / math.log(2), rel_tol=1e-9)
    assert result.bits_per_char != evaluate(net, split, tokenizer).bits_per_char


def test_the_model_given_is_never_changed() -> None:
    net = random_model(30)
    before = {key: value.clone() for key, value in net.state_dict().items()}
    tokens = torch.randint(0, 30, (200,), generator=torch.Generator().manual_seed(4))
    dynamic_bits(net, tokens)
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())


@pytest.mark.parametrize("method", ["rms", "sgd"])
def test_a_segment_s_gradient_is_clipped_to_its_limit(method: str) -> None:
    """A text far from the training text has gradients far larger than the statistics saw: the
    step takes at most `clip` training-gradient norms (rms) or a norm of `clip` (sgd)."""
    net = random_model(30)
    tokens = torch.randint(0, 30, (17,), generator=torch.Generator().manual_seed(5))
    clipped = replace(FAST, method=method, lr=1.0, decay=0.0, clip=1e-3)
    steps = {}
    for settings in (clipped, replace(clipped, clip=0.0)):
        adapt = adapter(net, tokens, settings)
        before = [p.detach().clone() for p in adapt.params]
        list(adapt.windows(tokens, 16))
        rates = [torch.as_tensor(rate) for rate in adapt.rate]
        moved = [(b - p.detach()) / r for b, p, r in zip(before, adapt.params, rates)]
        steps[settings.clip] = (math.sqrt(sum(float(m.pow(2).sum()) for m in moved)), adapt.limit)
    norm, limit = steps[1e-3]
    assert math.isclose(norm, limit, rel_tol=1e-3)
    unclipped, _ = steps[0.0]
    assert unclipped > 10 * limit  # the clip did cut this gradient down


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"segment": 0},
        {"segment": True},
        {"lr": -1e-3},
        {"lr": math.inf},
        {"decay": 1.5},
        {"clip": -1.0},
        {"clip": math.nan},
        {"method": "adam"},
        {"stats_tokens": 0},
    ],
)
def test_bad_settings_are_refused_in_the_flags_words(fields: dict) -> None:
    with pytest.raises(CharrnnError, match="--dynamic-"):
        DynamicSettings(**fields)


def test_the_api_takes_true_false_or_settings() -> None:
    assert settings_of(False) is None and settings_of(True) == DynamicSettings()
    assert settings_of(FAST) is FAST
    with pytest.raises(CharrnnError, match="DynamicSettings"):
        settings_of("yes")


# --- a run: the API, the command line, the checkpoint ---------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_trained: Path) -> charrnn.Model:
    return charrnn.load(tiny_trained / "run", device="cpu")


def test_the_api_evaluates_scores_and_adapts(model: charrnn.Model) -> None:
    static = model.evaluate(TEXT)
    dynamic = model.evaluate(TEXT, dynamic=FAST)
    assert dynamic.bits_per_char < static.bits_per_char  # a repeated text: adaptation must help
    score = model.score(TEXT, dynamic=FAST)
    assert math.isclose(score.bits_per_char, dynamic.bits_per_char, rel_tol=1e-9)
    assert abs(model.evaluate(TEXT, dynamic=DynamicSettings(lr=0.0)).bits_per_char - static.bits_per_char) < 1e-9
    with pytest.raises(CharrnnError, match="activations"):
        model.score(TEXT, dynamic=True, activations=True)
    adapted = model.adapt(TEXT, dynamic=FAST)
    assert adapted.evaluate(TEXT).bits_per_char < static.bits_per_char
    assert model.evaluate(TEXT).bits_per_char == static.bits_per_char  # the original is untouched
    assert isinstance(adapted.generate("In the", length=20, seed=1), str)


def test_score_dynamic_totals_equal_eval_dynamic(tiny_trained: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    run = str(tiny_trained / "run")
    flags = ["--dynamic", "--dynamic-lr", "0.003", "--dynamic-segment", "16"]
    for given in ([], [str(text)]):
        code, out, err = in_process(capsys, "eval", run, *given, *flags, "--json", "--no-baselines")
        assert code == 0, err
        rows = json.loads(out)
        (row,) = rows.values() if given else [rows["val"]]
        assert row["dynamic_gain"] == pytest.approx(1 - row["dynamic"]["bits_per_char"] / row["bits_per_char"])
        code, out, err = in_process(capsys, "score", run, *given, *flags, "--whole", "--json")
        assert code == 0, err
        record = json.loads(out)
        assert abs(record["bits_per_char"] - row["dynamic"]["bits_per_char"]) < 1e-6


def test_no_command_changes_the_checkpoint(tiny_trained: Path, tmp_path: Path, capsys) -> None:
    base = copied(tiny_trained, tmp_path)
    run = base / "run"
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.suffix == ".safetensors"}
    document = base / "document.txt"
    document.write_text(TEXT, encoding="utf-8")
    for args in (
        ["eval", str(run), "--dynamic", "--no-baselines"],
        ["score", str(run), str(document), "--dynamic"],
        ["viz", str(run), str(document), "--dynamic", "--html", str(base / "page.html")],
        ["sample", str(run), "--adapt", str(document), "--length", "20", "--seed", "1"],
    ):
        code, _, err = in_process(capsys, *args)
        assert code == 0, (args, err)
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.suffix == ".safetensors"} == before
    page = (base / "page.html").read_text(encoding="utf-8")
    assert '"dynamic_bits":[' in page and 'value="gain"' in page


SAMPLE = ["--prime", "And", "--length", "40", "--seed", "3"]


def test_sample_adapt_continues_the_document(tiny_trained: Path, tmp_path: Path, capsys) -> None:
    document = tmp_path / "document.txt"
    document.write_text(TEXT, encoding="utf-8")
    run = str(tiny_trained / "run")
    outs = []
    for extra in (["--dynamic-lr", "0.01"], ["--adapt-only-state"]):
        code, out, err = in_process(capsys, "sample", run, "--adapt", str(document), *extra, *SAMPLE)
        assert code == 0, err
        assert out.startswith("And") and "In the beginning" not in out  # the document primes, unprinted
        outs.append(out)
    assert outs[0] != outs[1]


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "{run}", "--dynamic", "--dynamic-lr", "-1"],
        ["eval", "{run}", "--dynamic", "--dynamic-segment", "0"],
        ["eval", "{run}", "--dynamic", "--dynamic-decay", "2"],
        ["eval", "{run}", "--dynamic", "--dynamic-method", "adam"],
        ["eval", "{run}", "--dynamic-lr", "0.1"],
        ["eval", "{run}", "--dynamic", "--streams", "2"],
        ["score", "{run}", "--dynamic", "--independent"],
        ["viz", "{run}", "--dynamic", "--dynamic-lr", "nan", "--json"],
        ["sample", "{run}", "--adapt-only-state"],
        ["sample", "{run}", "--dynamic-lr", "0.1"],
        ["sample", "{run}", "--adapt", "{run}/missing.txt"],
    ],
)
def test_bad_input_is_one_line_and_a_failure(args: list[str], tiny_trained: Path, capsys) -> None:
    code, out, err = in_process(capsys, *(arg.format(run=tiny_trained / "run") for arg in args))
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def _bench(tiny_trained: Path, tmp_path: Path, *args: str) -> dict:
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_dynamic.py"), str(tiny_trained / "run"), "--tiny", *args]
        + ["--json", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "CHARRNN_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert made.returncode == 0, made.stderr
    return json.loads((tmp_path / "out.json").read_text())


def test_the_benchmark_script_runs_at_a_toy_size(tiny_trained: Path, tmp_path: Path) -> None:
    report = _bench(tiny_trained, tmp_path, "--plot", str(tmp_path / "plot.png"))
    assert set(report["texts"]) == {"validation", "kjv-tail", "server-log"}
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_the_adapt_example_compares_both_readers(tiny_trained: Path, tmp_path: Path) -> None:
    readers = _bench(tiny_trained, tmp_path, "--adapt-example")["example"]["readers"]
    assert set(readers) == {"adapted", "only state"}
    for row in readers.values():
        assert row["sample_words"] > 0 and 0 <= row["only_in_document"] <= row["in_document"] <= 1
