"""`charrnn export`: the ONNX graph computes charrnn's numbers (log-probabilities to 1e-4 nats per
character, greedy text exactly) for every cell, its metadata decodes char and byte text, the page's
weights in each precision, and refusals: an existing file, no checkpoint, a subword page.

GRU, RNN and byte models are built from random weights (scaled up so greedy choices are far
from ties) rather than trained; the LSTM is the session's trained tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CHECKPOINT_TEXT, ROOT, checkpoint_payload, copied, in_process
from random_checkpoints import random_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

HELD = "And the LORD spake unto Moses, saying, Speak unto the children of Israel.\n" * 8


def session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_nll(sess: Any, meta: dict[str, Any], ids: list[int]) -> float:
    """Total nats of ids[1:], each predicted from the ones before it, in one call from the zero state."""
    feeds = {name: np.zeros((meta["layers"], 1, meta["hidden_size"]), np.float32) for name in meta["states"]}
    logits = sess.run(["logits"], {"tokens": np.array([ids[:-1]], np.int64), **feeds})[0][0].astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_probs = logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(ids) - 1), ids[1:]].sum())


def ort_greedy(sess: Any, meta: dict[str, Any], ids: list[int], length: int) -> list[int]:
    """`length` greedy ids after the prime ids: the prime in one call, then one step a call (<unk> never chosen)."""
    state = {name: np.zeros((meta["layers"], 1, meta["hidden_size"]), np.float32) for name in meta["states"]}
    tokens, out = np.array([ids], np.int64), []
    for _ in range(length):
        logits, *new = sess.run(None, {"tokens": tokens, **state})
        state = dict(zip(meta["states"], new))
        last = logits[0, -1].copy()
        if meta["unk_id"] is not None:
            last[meta["unk_id"]] = -np.inf
        out.append(int(last.argmax()))
        tokens = np.array([[out[-1]]], np.int64)
    return out


def metadata(path: Path) -> dict[str, Any]:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["charrnn"])


def encode(meta: dict[str, Any], text: str) -> list[int]:
    """Text to ids with nothing but the metadata, as an application without charrnn would."""
    vocab = meta["tokenizer"]
    if vocab["kind"] == "byte":
        return list(text.encode("utf-8"))
    index = {t: i for i, t in enumerate(vocab["tokens"]) if t is not None}
    return [index.get(ch, meta["unk_id"]) for ch in text]


def decode(meta: dict[str, Any], ids: list[int]) -> str:
    vocab = meta["tokenizer"]
    if vocab["kind"] == "byte":
        return bytes(ids).decode("utf-8", errors="replace")
    return "".join(vocab["tokens"][i] or "\ufffd" for i in ids)


def export_onnx(capsys: pytest.CaptureFixture[str], run: Path, out: Path) -> dict[str, Any]:
    code, stdout, err = in_process(capsys, "export", str(run), "--onnx", str(out))
    assert code == 0, err
    assert f"wrote {out}" in stdout
    onnx.checker.check_model(str(out))
    return metadata(out)


def check_parity(capsys: pytest.CaptureFixture[str], run: Path, out: Path, prime: str, length: int) -> None:
    """Log-probabilities on HELD as `eval` gives them, and the greedy text of `sample --temperature 0`."""
    import charrnn

    meta = export_onnx(capsys, run, out)
    sess, model = session(out), charrnn.load(run, device="cpu")
    ids = encode(meta, HELD)
    assert ids == model.tokenizer.encode_list(HELD)
    result = model.evaluate(HELD)
    assert result.tokens == len(ids) - 1
    assert abs(ort_nll(sess, meta, ids) - result.nll) / result.chars < 1e-4
    code, printed, err = in_process(capsys, "sample", str(run), "--prime", prime, "--length", str(length),
                                    "--temperature", "0")  # fmt: skip
    assert code == 0, err
    # A byte model's characters take one to four ids: draw enough, then keep `length` characters.
    ids_needed = length * (4 if meta["tokenizer"]["kind"] == "byte" else 1)
    text = decode(meta, ort_greedy(sess, meta, encode(meta, prime), ids_needed))[:length]
    assert printed in (prime + text, prime + text + "\n")


def test_a_trained_lstm_exports_with_evals_numbers_and_samples_greedy_text(
    tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_parity(capsys, tiny_trained / "run", tmp_path / "model.onnx", "And God said", 500)


@pytest.mark.parametrize(
    "cell,kind,shape",
    [
        ("gru", "char", {}),
        ("rnn", "char", {}),
        ("lstm", "byte", {}),
        ("gru", "char", {"tie_weights": True}),  # the head shares the embedding, through a projection
    ],
)
def test_every_cell_and_the_byte_tokenizer_match_charrnn(
    cell: str, kind: str, shape: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = random_checkpoint(tmp_path / "model.safetensors", cell, kind=kind, **shape)
    check_parity(capsys, run, tmp_path / "model.onnx", "It was", 500)


def test_the_graphs_inputs_outputs_and_metadata(
    tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = export_onnx(capsys, tiny_trained / "run", tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert shapes == {
        "tokens": ["batch", "time"],
        "h": [1, "batch", 32],
        "c": [1, "batch", 32],
        "logits": ["batch", "time", meta["vocab_size"]],
        "h_out": [1, "batch", 32],
        "c_out": [1, "batch", 32],
    }
    assert meta["format"] == "charrnn-export" and meta["format_version"] == 1
    assert meta["tokenizer"]["kind"] == "char" and meta["tokenizer"]["tokens"][0] is None
    assert (meta["unk_id"], meta["states"], meta["lines"]) == (0, ["h", "c"], False)
    assert meta["tokenizer"]["tokens"][meta["start_id"]] == "\n"
    # Two streams at once, and a prime in one call then a step: the state carries over.
    sess = session(tmp_path / "m.onnx")
    zeros = np.zeros((1, 2, 32), np.float32)
    tokens = np.array([encode(meta, "In the"), encode(meta, "And Go")], np.int64)
    whole = sess.run(["logits"], {"tokens": tokens, "h": zeros, "c": zeros})[0]
    _, h, c = sess.run(None, {"tokens": tokens[:, :-1], "h": zeros, "c": zeros})
    last = sess.run(["logits"], {"tokens": tokens[:, -1:], "h": h, "c": c})[0]
    np.testing.assert_allclose(last[:, 0], whole[:, -1], atol=1e-5)


def test_a_format_1_checkpoint_exports_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = ROOT / "tests" / "fixtures" / "format1"
    code, _, err = in_process(capsys, "export", str(run), "--onnx", str(tmp_path / "f.onnx"), "--html",
                              str(tmp_path / "f.html"))  # fmt: skip
    assert code == 0, err
    import charrnn

    model, meta = charrnn.load(run, device="cpu"), metadata(tmp_path / "f.onnx")
    ids = encode(meta, HELD)
    result = model.evaluate(HELD)
    assert abs(ort_nll(session(tmp_path / "f.onnx"), meta, ids) - result.nll) / result.chars < 1e-4
    assert "charrnn-export" in (tmp_path / "f.html").read_text(encoding="utf-8")


def test_a_subword_model_exports_its_sentencepiece_model_beside_the_graph_and_no_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import charrnn
    from charrnn.checkpoint import save_checkpoint
    from charrnn.config import ModelConfig, asdict
    from charrnn.data.tokenizers import train_tokenizer
    from charrnn.model import RNNLanguageModel

    tokenizer = train_tokenizer("bpe", CHECKPOINT_TEXT * 8 + HELD, 300)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, hidden_size=16, embed_size=8)
    payload = checkpoint_payload() | {"model_config": asdict(cfg), "tokenizer": tokenizer.to_state()}
    payload["model"] = RNNLanguageModel(cfg).state_dict()
    save_checkpoint(tmp_path / "bpe.safetensors", payload)
    meta = export_onnx(capsys, tmp_path / "bpe.safetensors", tmp_path / "bpe.onnx")
    side = tmp_path / "bpe.sentencepiece.model"
    assert meta["tokenizer"]["sentencepiece_model"] == side.name and side.read_bytes() == tokenizer.model
    assert len(meta["tokenizer"]["token_bytes"]) == tokenizer.vocab_size
    ids = tokenizer.encode_list(HELD)
    pieces = b"".join(bytes.fromhex(meta["tokenizer"]["token_bytes"][i]) for i in ids)
    assert pieces.decode("utf-8") == HELD  # token_bytes decode the text with no SentencePiece
    result = charrnn.load(tmp_path / "bpe.safetensors", device="cpu").evaluate(HELD)
    assert abs(ort_nll(session(tmp_path / "bpe.onnx"), meta, ids) - result.nll) / result.chars < 1e-4
    code, out, err = in_process(capsys, "export", str(tmp_path / "bpe.safetensors"), "--html", str(tmp_path / "p.html"))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "char and byte models only" in err
    assert not (tmp_path / "p.html").exists()


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = in_process(capsys, "export", *args)
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_existing_file_is_kept_unless_force(
    tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "model.onnx"
    target.write_text("mine")
    err = _one_line_error(capsys, str(tiny_trained / "run"), "--onnx", str(target))
    assert "exists: pass --force" in err and target.read_text() == "mine"
    page = tmp_path / "page.html"
    page.write_text("mine")
    assert "exists" in _one_line_error(capsys, str(tiny_trained / "run"), "--html", str(page))
    assert page.read_text() == "mine"
    code, _, err = in_process(capsys, "export", str(tiny_trained / "run"), "--onnx", str(target), "--force")
    assert code == 0, err
    onnx.checker.check_model(str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "page.html"]  # no temporary file left


def test_bad_input_is_one_line(tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert "holds no checkpoint" in _one_line_error(capsys, str(empty), "--onnx", str(tmp_path / "a.onnx"))
    assert "no such run" in _one_line_error(capsys, str(tmp_path / "nothing"), "--html", str(tmp_path / "a.html"))
    broken = copied(tiny_trained / "run", tmp_path)
    (broken / "best.safetensors").write_bytes(b"garbage!" * 4)
    _one_line_error(capsys, str(broken / "best.safetensors"), "--onnx", str(tmp_path / "b.onnx"))
    run = str(tiny_trained / "run")
    assert "give --onnx FILE, --html FILE" in _one_line_error(capsys, run)
    assert "--precision must be one of" in _one_line_error(
        capsys, run, "--html", str(tmp_path / "p.html"), "--precision", "int4"
    )
    assert "does not exist" in _one_line_error(capsys, run, "--onnx", str(tmp_path / "no" / "m.onnx"))
    own = copied(tiny_trained / "run", tmp_path / "own")
    checkpoint = (own / "best.safetensors").read_bytes()
    err = _one_line_error(capsys, str(own), "--html", str(own / "best.safetensors"), "--force")
    assert "is the checkpoint being exported" in err and (own / "best.safetensors").read_bytes() == checkpoint
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.html"))


def test_without_onnx_installed_the_error_says_what_to_install(
    tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    err = _one_line_error(capsys, str(tiny_trained / "run"), "--onnx", str(tmp_path / "m.onnx"))
    assert "pip install 'charrnn[export]'" in err and not (tmp_path / "m.onnx").exists()


def test_weights_too_big_for_one_onnx_file_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from charrnn.errors import CharrnnError
    from charrnn.export import onnx_graph

    monkeypatch.setattr(onnx_graph, "MAX_BYTES", 1000)
    weights = {"embed.weight": np.zeros((20, 20), np.float32)}
    with pytest.raises(CharrnnError, match="1,600 bytes in float32: more than one ONNX file holds"):
        onnx_graph.onnx_bytes(None, weights, {})  # type: ignore[arg-type]


# --- the page's weights ------------------------------------------------------------------------


@pytest.mark.parametrize("precision,tolerance", [("float32", 0.0), ("float16", 1e-3), ("int8", 1 / 254)])
def test_each_precision_decodes_within_its_step(precision: str, tolerance: float) -> None:
    from charrnn.export.precision import encode

    array = np.random.default_rng(0).standard_normal((7, 9)).astype(np.float32)
    entry, decoded = encode(array, precision)
    assert entry["dtype"] == precision and entry["shape"] == [7, 9]
    peak = np.abs(array).max(axis=1, keepdims=True)
    assert np.all(np.abs(decoded - array) <= tolerance * peak + 1e-7)
    bias, decoded_bias = encode(array[0], precision)
    assert bias["dtype"] == "float32" and np.array_equal(decoded_bias, array[0])  # vectors stay float32


def test_the_page_says_what_each_precision_costs(
    tiny_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import charrnn
    from charrnn.export.precision import encode_all
    from charrnn.export.source import read_source

    page = tmp_path / "page.html"
    code, out, err = in_process(capsys, "export", str(tiny_trained / "run"), "--html", str(page), "--precision", "int8")
    assert code == 0, err
    assert out.startswith(f"wrote {page} (int8 weights: ") and "against float32)" in out
    data = page_data(page)
    costs = data["costs"]
    assert (
        data["precision"] == "int8"
        and costs["chars"] > 0
        and set(costs["bits_per_char"]) == {"float32", "float16", "int8"}
    )
    model = charrnn.load(tiny_trained / "run", device="cpu")
    text = "".join(model.validation("test")[0])[: costs["chars"]]
    assert costs["bits_per_char"]["float32"] == pytest.approx(model.evaluate(text).bits_per_char, abs=1e-9)
    source = read_source(tiny_trained / "run")
    quantised = source.model(encode_all(source.weights, "int8")[1]).evaluate(text).bits_per_char
    assert costs["bits_per_char"]["int8"] == pytest.approx(quantised, abs=1e-9)


def page_data(page: Path) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    start = text.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    return json.loads(text[start : text.index("</script>", start)])


def test_a_cpu_preset_page_is_at_most_5_mb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charrnn.config import PRESETS

    shape = {k: PRESETS["cpu"]["model"][k] for k in ("hidden_size", "embed_size", "tie_weights")}
    run = random_checkpoint(tmp_path / "cpu.safetensors", PRESETS["cpu"]["model"]["cell"],
                            layers=PRESETS["cpu"]["model"]["num_layers"], gain=1.0, **shape)  # fmt: skip
    sizes = {}
    for precision in ("float32", "float16", "int8"):
        page = tmp_path / f"{precision}.html"
        code, _, err = in_process(capsys, "export", str(run), "--html", str(page), "--precision", precision)
        assert code == 0, err
        sizes[precision] = page.stat().st_size
    print(f"cpu-preset page sizes: {sizes}")
    assert sizes["float32"] <= 5_000_000 and sizes["int8"] < sizes["float16"] < sizes["float32"]


def test_the_benchmark_script_runs() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_export.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "onnxruntime, one stream:" in done.stdout and "charrnn numpy sampler, one stream:" in done.stdout
    assert done.stdout.startswith("machine: ")
