"""The exported page in a real (headless) Chromium: it makes no request, its greedy text is
`charrnn sample --temperature 0`'s, a seed gives the same text on every load, a --lines run writes
one example a line, the top-5 follow the prime as it is typed, an int8 page writes what its
weights do in Python; and how fast it writes (printed)."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import torch
from browser import chromium, requests  # noqa: F401 (chromium is the browser fixture)
from conftest import in_process
from random_checkpoints import random_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def export_page(capsys: pytest.CaptureFixture[str], run: Path, page: Path, precision: str = "float32") -> Path:
    code, _, err = in_process(capsys, "export", str(run), "--html", str(page), "--precision", precision)
    assert code == 0, err
    return page


def run_page(browser: Any, page: Path, timeout: float = 60, **params: Any) -> str:
    """Open the page with these URL parameters and autorun; the text of #output once it is done."""
    query = urllib.parse.urlencode({**params, "autorun": 1})
    browser.get(f"{page.as_uri()}?{query}")
    deadline = time.monotonic() + timeout
    while not browser.execute_script("return document.getElementById('output').hasAttribute('data-done')"):
        assert time.monotonic() < deadline, "the page did not finish"
        time.sleep(0.05)
    return browser.execute_script("return document.getElementById('output').textContent")


def greedy_sample(capsys: pytest.CaptureFixture[str], run: Path, prime: str, length: int) -> str:
    code, out, err = in_process(
        capsys, "sample", str(run), "--prime", prime, "--length", str(length), "--temperature", "0"
    )
    assert code == 0, err
    assert out.startswith(prime)
    return out[len(prime) :].removesuffix("\n")


@pytest.mark.parametrize("which", ["trained lstm", "random gru", "random byte lstm"])
def test_greedy_text_is_samples_and_the_page_makes_no_request(
    which: str, tiny_trained: Path, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if which == "trained lstm":
        run = tiny_trained / "run"
    else:
        cell, kind = ("gru", "char") if which == "random gru" else ("lstm", "byte")
        # The GRU's head is its embedding, through a projection: the page stores it once.
        tied = {"tie_weights": True} if cell == "gru" else {}
        run = random_checkpoint(tmp_path / "model.safetensors", cell, kind=kind, **tied)
    page = export_page(capsys, run, tmp_path / "page.html")
    browser.get("about:blank")
    requests(browser)  # what the browser fetched for itself before the page
    prime = "And God said" if which == "trained lstm" else "It was"
    text = run_page(browser, page, prime=prime, length=300, temperature=0)
    assert len(text) == 300 and text == greedy_sample(capsys, run, prime, 300)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert requests(browser) == [
        f"{page.as_uri()}?prime={urllib.parse.quote_plus(prime)}&length=300&temperature=0&autorun=1"
    ]
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    colours = browser.execute_script(
        "return Array.from(document.querySelectorAll('#output .c'), c => c.style.backgroundColor)"
    )
    assert colours and all(colours), "a character has no surprisal colour"


def test_a_seed_gives_the_same_text_on_every_load(
    tiny_trained: Path, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charrnn.export.precision import encode_all
    from charrnn.export.source import read_source

    page = export_page(capsys, tiny_trained / "run", tmp_path / "page.html", precision="int8")
    first = run_page(browser, page, prime="In the", length=200, temperature=1.0, seed=7)
    again = run_page(browser, page, prime="In the", length=200, temperature=1.0, seed=7)
    other = run_page(browser, page, prime="In the", length=200, temperature=1.0, seed=8)
    assert len(first) == 200 and first == again and first != other
    # The page computes with the int8 weights whose cost the export measured: its greedy text is theirs.
    source = read_source(tiny_trained / "run")
    quantised = source.model(encode_all(source.weights, "int8")[1])
    expected = quantised.generate("In the", length=200, temperature=0)
    assert run_page(browser, page, prime="In the", length=200, temperature=0) == expected
    assert (
        "int8" in browser.find_element("id", "about").text
        and "against float32" in browser.find_element("id", "about").text
    )


def test_a_lines_run_writes_one_example_a_line(
    browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = random_checkpoint(tmp_path / "lines.safetensors", lines=True, gain=1.0)
    page = export_page(capsys, run, tmp_path / "page.html")
    text = run_page(browser, page, prime="It", length=40, temperature=1.0, seed=3)
    examples = text.split("\n")
    assert examples[-1] == "" and len(examples) == 6  # five examples, each ended by its line break
    assert all(e.startswith("It") and len(e) <= 42 for e in examples[:-1])


def test_the_top_5_follow_the_prime_and_a_cpu_preset_page_reports_its_speed(
    browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charrnn.config import PRESETS

    preset = PRESETS["cpu"]["model"]
    run = random_checkpoint(tmp_path / "cpu.safetensors", preset["cell"], layers=preset["num_layers"], gain=1.0,
                            hidden_size=preset["hidden_size"], embed_size=preset["embed_size"])  # fmt: skip
    page = export_page(capsys, run, tmp_path / "cpu.html", precision="float16")
    assert page.stat().st_size <= 5_000_000
    text = run_page(browser, page, prime="It was", length=500, temperature=0.8, seed=1)
    assert len(text) == 500
    rate = browser.execute_script("return document.getElementById('output').dataset.charsPerSecond")
    print(f"\ncpu-preset page ({page.stat().st_size:,} bytes, float16) in Chromium: {rate} characters per second")
    before = browser.find_element("id", "top5").text
    box = browser.find_element("id", "prime")
    box.send_keys(" the")
    deadline = time.monotonic() + 10
    while browser.find_element("id", "top5").text == before:
        assert time.monotonic() < deadline, "the top 5 did not follow the prime"
        time.sleep(0.05)
    shown = [span.text.rsplit(" ", 1)[0] for span in browser.find_elements("css selector", "#top5 span")]
    assert shown == top_5(run, "It was the")


def top_5(run: Path, prime: str) -> list[str]:
    """The five likeliest next characters after `prime` (<unk> left out), as the page writes them."""
    import charrnn

    model = charrnn.load(run, device="cpu")
    ids = torch.tensor(model.tokenizer.encode_list(prime))[:, None]
    with torch.no_grad():
        logits = model.torch_module()(ids)[0][-1, 0]
    logits[model.tokenizer.unk_id] = -torch.inf
    return [json.dumps(model.tokenizer.token_texts()[i], ensure_ascii=False) for i in logits.topk(5).indices.tolist()]
