"""`charrnn viz`: the explain page, its numbers, its units, the terminal and JSON views, bad input,
and the page itself driven in a real (headless) Chromium."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium, requests  # noqa: F401 (chromium is the browser fixture)
from conftest import TINY, charrnn, in_process

pytestmark = pytest.mark.usefixtures("one_thread")

HELD = "And God said unto Moses, I AM THAT I AM: and he said, Thus shalt thou say.\n" * 6


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LSTM trained for a few steps on real text, with a validation split of 3,000 characters."""
    from conftest import KJV

    base = tmp_path_factory.mktemp("viz")
    corpus = base / "corpus.txt"
    corpus.write_text(KJV.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    env = {"CHARRNN_CACHE_DIR": str(base / "cache"), "OMP_NUM_THREADS": "1"}
    done = charrnn("train", str(corpus), "--run", str(base / "run"), *TINY, "--max-steps", "30", env=env)
    assert done.returncode == 0, done.stderr
    return base / "run"


@pytest.fixture
def held(tmp_path: Path) -> Path:
    path = tmp_path / "held.txt"
    path.write_text(HELD, encoding="utf-8")
    return path


def page_data(page: Path) -> dict[str, Any]:
    """The JSON the page embeds."""
    found = re.search(
        r'<script id="data" type="application/json">(.*?)</script>', page.read_text(encoding="utf-8"), re.S
    )
    assert found, "the page embeds no data"
    return json.loads(found.group(1))


# --- the numbers -------------------------------------------------------------------------------


def test_page_bits_per_character_is_what_eval_reports_on_the_same_text(
    run: Path, held: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "explain.html"
    code, out, err = in_process(capsys, "viz", str(run), str(held), "--html", str(page))
    assert code == 0, err
    assert str(page) in out
    code, out, err = in_process(capsys, "eval", str(run), str(held), "--json", "--no-baselines")
    assert code == 0, err
    expected = next(iter(json.loads(out).values()))["bits_per_char"]
    data = page_data(page)
    assert data["summary"]["bits_per_char"] == pytest.approx(expected, abs=1e-6)
    bits = [b for b in data["bits"] if b is not None]
    assert len(bits) == len(HELD) - 1  # every character but the first is predicted
    assert sum(bits) / len(bits) == pytest.approx(expected, abs=1e-6)


def test_default_text_is_the_start_of_the_runs_validation_text(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charrnn.inference import load

    code, out, err = in_process(capsys, "viz", str(run), "--json", "--max-chars", "700")
    assert code == 0, err
    document = json.loads(out)
    text = "".join(record["char"] for record in document["chars"])
    corpus = (run.parent / "corpus.txt").read_text(encoding="utf-8")
    assert text == corpus[57_000:57_700]  # the validation split is the last 5% of the 60,000 characters
    assert document["summary"]["total_chars"] == 3_000
    assert document["summary"]["bits_per_char"] == pytest.approx(
        load(run, device="cpu").evaluate(text).bits_per_char, abs=1e-6
    )


def test_an_excerpt_is_shown_beside_the_whole_texts_figures_which_are_evals(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 18 item 6: the page set gzip and xz on the 5,000 characters shown beside the model,
    # while eval on the whole split gave other figures. Each figure now says what it was measured
    # on, and an excerpt comes with the whole text's figures, eval's own.
    from charrnn.evaluate import compression_baselines

    page = tmp_path / "explain.html"
    code, _, err = in_process(capsys, "viz", str(run), "--max-chars", "700", "--html", str(page))
    assert code == 0, err
    code, out, err = in_process(capsys, "eval", str(run), "--json")
    assert code == 0, err
    val = json.loads(out)["val"]
    data = page_data(page)
    shown = "".join(data["chars"])
    summary = data["summary"]
    assert summary["chars"] == 700 and summary["baselines"] == compression_baselines(shown)
    assert summary["whole"]["chars"] == 3_000
    assert summary["whole"]["bits_per_char"] == pytest.approx(val["bits_per_char"], abs=1e-6)
    assert summary["whole"]["baselines"] == val["baselines_bits_per_char"]
    template = page.read_text(encoding="utf-8")
    assert '" characters shown"' in template and '"On the whole text ("' in template  # the bars' labels

    code, out, err = in_process(capsys, "viz", str(run), "--term", "--max-chars", "700")
    assert code == 0, err
    line = out.splitlines()[0]
    assert "bits per character on the characters shown (700, 699 predicted)" in line
    assert f"on the whole text (3,000 characters): model {val['bits_per_char']:.4f}" in line
    assert f"xz {val['baselines_bits_per_char']['xz']:.3f}" in line


def test_an_excerpt_of_a_file_comes_with_evals_figures_on_the_whole_file(
    run: Path, held: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = in_process(capsys, "viz", str(run), str(held), "--json", "--max-chars", "100")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    code, out, err = in_process(capsys, "eval", str(run), str(held), "--json")
    assert code == 0, err
    whole = json.loads(out)[str(held)]
    assert summary["whole"]["chars"] == len(HELD) and summary["chars"] == 100
    assert summary["whole"]["bits_per_char"] == pytest.approx(whole["bits_per_char"], abs=1e-6)
    assert summary["whole"]["baselines"] == whole["baselines_bits_per_char"]
    code, out, err = in_process(capsys, "viz", str(run), str(held), "--json")  # all of it shown: no second set
    assert code == 0, err
    assert json.loads(out)["summary"]["whole"] is None


def test_json_gives_one_record_per_character_with_its_predictions(
    run: Path, held: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = in_process(capsys, "viz", str(run), str(held), "--json")
    assert code == 0, err
    records = json.loads(out)["chars"]
    assert len(records) == len(HELD)
    assert records[0]["bits"] is None  # nothing predicts the first character
    for record in records[1:]:
        assert record["probability"] == pytest.approx(2 ** -record["bits"])
        assert len(record["top"]) == 5
        assert record["rank"] is None or 1 <= record["rank"] <= 50
        if record["rank"] is not None and record["rank"] <= 5:
            assert record["top"][record["rank"] - 1][0] == record["char"]


def test_unknown_characters_are_marked_and_counted(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "odd.txt"
    text.write_text("In the beginning \u20ac was the \u0436ord.\n", encoding="utf-8")
    page = tmp_path / "odd.html"
    code, _, err = in_process(capsys, "viz", str(run), str(text), "--html", str(page))
    assert code == 0, err
    data = page_data(page)
    assert data["summary"]["unknown"] == 2
    assert [data["chars"][i] for i in data["unknown"]] == ["\u20ac", "\u0436"]


# --- the units ---------------------------------------------------------------------------------


def test_a_unit_that_counts_the_line_ranks_first_for_position_in_line() -> None:
    from charrnn.viz.cells import correlations, rank_units, text_properties, unit_table

    chars = list("the line grows\nand then it starts again\nshort\n" * 5)
    properties = text_properties(chars)
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(len(chars), 2, 8)).astype(np.float32)
    hidden[:, 1, 3] = np.tanh(properties["position in line"] / 20)  # a line-length cell
    units, series = unit_table({"h": hidden})
    r, names = correlations(series, properties)
    top = rank_units(r, names, units)[0]
    assert (top.unit.state, top.unit.layer, top.unit.index, top.prop) == ("h", 1, 3, "position in line")
    assert top.r > 0.95


def test_text_properties_follow_quotes_brackets_and_words() -> None:
    from charrnn.viz.cells import text_properties

    chars = list('a "bc" (d)\nxy')
    props = text_properties(chars)
    assert props["in quotes"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert props["in brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert props["start of a word"].tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0]
    assert props["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2]
    assert props["after a newline"].tolist() == [0] * 10 + [1, 0, 0]


def test_activations_travel_as_int8_within_half_a_step_of_their_value() -> None:
    import base64

    from charrnn.viz.cells import quantize

    series = np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32) * [1, 5, 0.01, 0]
    encoded, lo, step = quantize(series)
    q = np.frombuffer(base64.b64decode(encoded), dtype=np.int8).reshape(4, 300).T
    back = np.array(lo) + np.array(step) * (q.astype(np.float64) + 128)
    assert np.all(np.abs(back - series) <= np.array(step) / 2 + 1e-6)


def test_a_3x512_model_page_for_5000_characters_is_under_5_mb() -> None:
    from conftest import KJV

    from charrnn.viz.explain import Explanation, page_html, with_units

    # What one pass of a 3 x 512 LSTM gives for 5,000 characters (the page's size depends only
    # on these shapes): h and c of every layer, five predictions per character.
    rng = np.random.default_rng(0)
    text = KJV.read_text(encoding="utf-8")[:5_000]
    alphabet = sorted(set(text))
    shape = (len(text), 3, 512)
    expl = Explanation(
        title="3x512",
        source="kjv",
        chars=list(text),
        bits=np.concatenate([[math.nan], rng.exponential(2.0, len(text) - 1)]),
        top=[[(str(rng.choice(alphabet)), float(p)) for p in sorted(rng.random(5), reverse=True)] for _ in text],
        rank=rng.integers(0, 51, len(text)),
        unknown=np.zeros(len(text), dtype=bool),
        activations={
            "h": np.tanh(rng.normal(size=shape)).astype(np.float32),
            "c": rng.normal(size=shape).astype(np.float32),
        },
        model={"cell": "lstm", "layers": 3, "hidden": 512, "tokenizer": "char", "description": "LSTM, 3 x 512"},
        total_chars=len(text),
    )
    expl = with_units(expl)
    page = page_html(expl).encode("utf-8")
    assert len(page) < 5_000_000
    units = page_data_of(page)["units"]
    assert units["total"] == 2 * 3 * 512  # h and c of three layers
    stored = set(zip(units["state"], units["layer"], units["index"]))
    assert len(stored) > 300  # as many as fit, among them every ranked unit
    assert {(item.unit.state, item.unit.layer, item.unit.index) for item in expl.ranked} <= stored


def test_a_gru_page_offers_only_hidden_units(tmp_path: Path) -> None:
    import torch
    from conftest import CHECKPOINT_TEXT, checkpoint_payload

    from charrnn.checkpoint import save_checkpoint
    from charrnn.config import ModelConfig, asdict
    from charrnn.inference import load
    from charrnn.model import RNNLanguageModel
    from charrnn.viz import explain_text, page_html

    payload = checkpoint_payload(num_layers=2)
    cfg = ModelConfig(**{**payload["model_config"], "cell": "gru"})
    torch.manual_seed(0)
    payload = {**payload, "model_config": asdict(cfg), "model": RNNLanguageModel(cfg).state_dict()}
    save_checkpoint(tmp_path / "best.safetensors", payload)
    expl = explain_text(load(tmp_path, device="cpu"), CHECKPOINT_TEXT, title="gru", source="text")
    assert set(expl.activations) == {"h"} and expl.activations["h"].shape == (len(CHECKPOINT_TEXT), 2, 32)
    units = page_data_of(page_html(expl).encode("utf-8"))["units"]
    assert set(units["state"]) == {"h"} and units["total"] == 2 * 32


def page_data_of(page: bytes) -> dict[str, Any]:
    found = re.search(rb'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    assert found
    return json.loads(found.group(1))


# --- the terminal ------------------------------------------------------------------------------


def _marks_under(out: str, text: str) -> list[tuple[str, str]]:
    """(line of text, its line of marks) pairs of the plain view of `text`'s lines."""
    lines = out.splitlines()
    firsts = [i for i, line in enumerate(lines) if line == text.splitlines()[0] + "\u21b5"]
    assert firsts, "the text is not in the output"
    at = firsts[0]
    return [(lines[i], lines[i + 1]) for i in range(at, at + 2 * len(text.splitlines()), 2)]


def test_term_colours_on_a_terminal_and_marks_costly_characters_without_colour(
    run: Path, held: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 18 item 15: piped into a file or `less -R`, --term gave the bare text, no sign of what cost.
    from charrnn.viz.term import mark

    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    code, plain, err = in_process(capsys, "viz", str(run), str(held), "--term")
    assert code == 0, err
    assert "\x1b[" not in plain and "by bits: none below 2, '.' 2-4, '-' 4-6" in plain  # not a terminal: marks
    _, out, _ = in_process(capsys, "viz", str(run), str(held), "--json")
    records = json.loads(out)["chars"]
    pairs = _marks_under(plain, HELD)
    column = 0
    for text, marks in pairs:  # every character's mark stands under it
        assert len(text) == len(HELD.splitlines()[0]) + 1
        for i in range(len(text)):
            record = records[column + i]
            expected = mark(math.nan if record["bits"] is None else record["bits"], record["unknown"])
            assert marks.ljust(len(text))[i] == expected
        column += len(text)
    assert any(m.strip() for _, m in pairs)  # an untrained model pays a lot: there are marks to see

    monkeypatch.setenv("FORCE_COLOR", "1")
    _, forced, _ = in_process(capsys, "viz", str(run), str(held), "--term")
    assert "\x1b[" in forced and "bits:" in forced  # colours, and the legend
    _, never, _ = in_process(capsys, "viz", str(run), str(held), "--term", "--color", "never")
    assert "\x1b[" not in never and _marks_under(never, HELD) == pairs
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setenv("NO_COLOR", "1")
    _, refused, _ = in_process(capsys, "viz", str(run), str(held), "--term")
    assert "\x1b[" not in refused and _marks_under(refused, HELD) == pairs
    _, always, _ = in_process(capsys, "viz", str(run), str(held), "--term", "--color", "always")
    assert "\x1b[" in always and "bits:" in always  # for less -R: colour into a pipe, asked for
    code, out, err = in_process(capsys, "viz", str(run), str(held), "--term", "--color", "sometimes")
    assert code == 1 and err.count("\n") == 1 and "--color must be one of auto, always, never" in err


def _explanation(text: str, bits: list[float], unknown: list[bool] | None = None) -> Any:
    from charrnn.viz.explain import Explanation

    n = len(text)
    return Explanation(
        title="t",
        source="s",
        chars=list(text),
        bits=np.array(bits, dtype=np.float64),
        top=[[] for _ in text],
        rank=np.zeros(n, dtype=np.int64),
        unknown=np.array(unknown or [False] * n, dtype=bool),
        activations={"h": np.zeros((n, 1, 1), np.float32)},
        model={},
        total_chars=n,
    )


def test_the_plain_view_puts_each_mark_under_its_character_in_wide_text_tabs_and_long_lines() -> None:
    from charrnn.viz.term import marked_lines

    nan = math.nan
    assert list(marked_lines(_explanation("ab\ncd", [nan, 0.5, 9.0, 3.0, 5.0]))) == ["ab\u21b5", "  #", "cd", ".-"]
    # A wide character takes two columns, its mark the first; a tab goes to the next stop.
    wide = _explanation("さx\ty", [nan, 7.0, 0.1, 2.5])
    assert list(marked_lines(wide)) == ["さx" + " " * 5 + "y", "  +" + " " * 5 + "."]  # y at column 8
    # A combining accent takes no column: its cost shows in the mark of the letter it sits on.
    accent = _explanation("e\u0301z", [1.0, 9.0, 0.1])
    assert list(marked_lines(accent)) == ["e\u0301z", "#"]
    # A line longer than the width is cut, the marks with it; an unknown character is '?'.
    long = _explanation("abcdefghij", [nan] + [5.0] * 8 + [0.0], [False] * 9 + [True])
    assert list(marked_lines(long, width=8)) == ["abcdefgh", " -------", "ij", "-?"]


# --- bad input: one line, exit 1, nothing written ----------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "is empty"),
        ("unknown", "none of the characters"),
        ("binary", "binary"),
        ("max-chars 0", "--max-chars must be at least 1"),
        ("missing directory", "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    text = tmp_path / "text.txt"
    page = tmp_path / "out" / "explain.html"
    page.parent.mkdir()
    args = ["--html", str(page)]
    if case == "empty":
        text.write_text("")
    elif case == "unknown":
        text.write_text("\u20ac\u0436\u2603" * 10, encoding="utf-8")
    elif case == "binary":
        text.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    elif case == "max-chars 0":
        text.write_text(HELD)
        args += ["--max-chars", "0"]
    else:
        text.write_text(HELD)
        page = tmp_path / "missing" / "explain.html"
        args = ["--html", str(page)]
    code, out, err = in_process(capsys, "viz", str(run), str(text), *args)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charrnn: error:") and message in lines[0], err
    assert not page.exists() and list((tmp_path / "out").iterdir()) == []
    assert out == ""


# --- the page in a real browser ----------------------------------------------------------------


def _backgrounds(driver: Any) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#text .c'), c => c.style.backgroundColor)"
    )


def test_page_in_chromium_hover_card_unit_view_and_no_network(
    run: Path, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = tmp_path / "explain.html"
    code, _, err = in_process(capsys, "viz", str(run), "--html", str(page), "--max-chars", "1500")
    assert code == 0, err
    data = page_data(page)
    browser.get("about:blank")
    requests(browser)  # what the browser fetched for itself before the page
    browser.get(page.as_uri())
    cells = browser.find_elements(By.CSS_SELECTOR, "#text .c")
    assert len(cells) == len(data["chars"]) == 1500
    assert all(_backgrounds(browser)), "a character cell has no colour"
    bars = browser.find_element(By.ID, "bars").text  # each group of figures names its text
    assert "On the 1,500 characters shown" in bars and "On the whole text (3,000 characters)" in bars

    target = next(i for i, b in enumerate(data["bits"]) if b is not None and data["chars"][i].isalpha())
    ActionChains(browser).move_to_element(cells[target]).perform()
    card = browser.find_element(By.ID, "card")
    assert card.is_displayed()
    assert len(card.find_elements(By.CSS_SELECTOR, ".pred")) == 5
    assert f"{data['bits'][target]:.3f} bits" in card.text

    cells[target].click()  # keyboard: the focused character moves with the arrow keys
    cells[target].send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element.get_attribute("data-i") == str(target + 1)
    assert f"character {target + 2:,} of" in card.text

    before = _backgrounds(browser)
    browser.find_element(By.CSS_SELECTOR, "#ranked-list button").click()
    after = _backgrounds(browser)
    assert before != after and len(set(after)) > 10  # recoloured by the unit, over its range
    assert browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=cell]").is_selected()

    browser.save_screenshot(str(tmp_path / "explain.png"))
    assert (tmp_path / "explain.png").stat().st_size > 10_000
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert requests(browser) == [page.as_uri()]
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_ranked_units_name_a_property_and_a_correlation(
    run: Path, held: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = in_process(capsys, "viz", str(run), str(held), "--json")
    assert code == 0, err
    units = json.loads(out)["units"]
    assert units, "no unit ranked"
    from charrnn.viz.cells import PROPERTIES

    strengths = [abs(u["r"]) for u in units]
    assert strengths == sorted(strengths, reverse=True)
    assert all(u["property"] in PROPERTIES and 0 < abs(u["r"]) <= 1 + 1e-9 and not math.isnan(u["r"]) for u in units)
