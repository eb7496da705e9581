"""A run's validation text, rebuilt from its files by one function (`dataset.validation_text`):
the same text for `charrnn eval`, `viz` and `score`, whatever the run held out (the end of the
running text, a --val-file, or --lines' shuffled lines). Issue 18, item 5.

Three tiny runs, trained for a few steps once for the module: what is checked is which text
each command reads, not what the model learnt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import KJV, in_process

import charrnn
from charrnn.checkpoint import load_checkpoint, train_config_of
from charrnn.data.dataset import Dataset, dataset_of_run
from charrnn.data.lines import LINES_FILE, LineSets
from charrnn.evaluate import compression_baselines

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

TINY = dict(hidden=32, embed=16, layers=1, batch_size=4, seq_len=16, eval_interval=50, log_interval=50, max_steps=8)
NAMES = (
    "Anna Bruno Clara Dmitri Elena Felix Greta Hugo Ines Jonas Karla Lukas Mara Nils Olga Pavel "
    "Rosa Sven Tilda Udo Vera Wanda Yuri Zora Ada Boris Cleo Dora Emil Frida Gerd Hanne Ivo Jana"
).split()
KINDS = ("text", "val-file", "lines")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run of each kind. The running text has a '€' in its validation part only: a character
    the model never saw, which the validation text must hold as it is."""
    base = tmp_path_factory.mktemp("validation-text")
    kjv = KJV.read_text(encoding="utf-8")
    text = kjv[:18_500] + "\u20ac" + kjv[18_501:20_000]  # train 18,000, validation 1,000, test 1,000
    files = {"text": base / "text.txt", "val-file": base / "train.txt", "lines": base / "names.txt"}
    files["text"].write_text(text, encoding="utf-8")
    files["val-file"].write_text(kjv[:10_000], encoding="utf-8")
    (base / "held.txt").write_text(kjv[30_000:31_000], encoding="utf-8")
    files["lines"].write_text("".join(f"{name}\n" for name in NAMES * 2), encoding="utf-8")
    options = {
        "text": dict(val_frac=0.05, test_frac=0.05),
        "val-file": dict(val_file=str(base / "held.txt"), test_frac=0.1),
        "lines": dict(lines=True, val_frac=0.25),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARRNN_CACHE_DIR", str(base / "cache"))
        return {kind: charrnn.train(files[kind], run=base / kind, **TINY, **options[kind]).path for kind in KINDS}


def _dataset(run: Path) -> tuple[dict, Dataset]:
    payload = load_checkpoint(run, arrays=True)
    return payload, dataset_of_run(payload, train_config_of(payload))


@pytest.mark.parametrize("kind", KINDS)
def test_the_validation_text_is_the_text_the_runs_split_holds(runs: dict[str, Path], kind: str) -> None:
    from charrnn.data.dataset import validation_text

    payload, dataset = _dataset(runs[kind])
    for name in ("val", "test"):
        split = getattr(dataset, name)
        text = "".join(validation_text(payload, dataset, split=name))
        if split is None:
            assert text == ""
            continue
        assert len(text) == split.num_chars
        ids = dataset.tokenizer.encode(text).to(split.tokens.dtype)
        assert ids.tolist() == split.tokens.tolist()  # what the run scored, token for token
    val = "".join(validation_text(payload, dataset))
    if kind == "text":
        corpus = (runs[kind].parent / "text.txt").read_text(encoding="utf-8")
        assert val == corpus[18_000:19_000] and "\u20ac" in val  # from the file: the unknown '€' is there
    elif kind == "val-file":
        assert val == (runs[kind].parent / "held.txt").read_text(encoding="utf-8")
    else:
        sets = LineSets.load(runs[kind] / LINES_FILE)
        assert {sets.flag(line) for line in val.splitlines()} == {"val"}


def test_viz_on_a_lines_run_shows_validation_lines_only(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The old viz took the corpus's tail by the training split's character count: training lines.
    run = runs["lines"]
    code, out, err = in_process(capsys, "viz", str(run), "--json")
    assert code == 0, err
    shown = "".join(record["char"] for record in json.loads(out)["chars"])
    sets = LineSets.load(run / LINES_FILE)
    flags = [sets.flag(line) for line in shown.splitlines()]
    assert len(flags) == sets.lines[1] and set(flags) == {"val"}  # every validation line, no training line


@pytest.mark.parametrize("kind", KINDS)
def test_eval_viz_and_score_see_the_same_validation_text(
    runs: dict[str, Path], kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from charrnn.data.dataset import validation_text

    run = runs[kind]
    payload, dataset = _dataset(run)
    text = "".join(validation_text(payload, dataset))
    code, out, err = in_process(capsys, "eval", str(run), "--json")
    assert code == 0, err
    evaluated = json.loads(out)["val"]
    assert evaluated["chars"] == len(text) - 1  # all but the first, which nothing predicts
    assert evaluated["baselines_bits_per_char"] == compression_baselines(text)  # the text itself, not its ids

    code, out, err = in_process(capsys, "viz", str(run), "--json", "--max-chars", str(len(text)))
    assert code == 0, err
    explained = json.loads(out)
    assert "".join(record["char"] for record in explained["chars"]) == text
    assert explained["summary"]["bits_per_char"] == pytest.approx(evaluated["bits_per_char"], abs=1e-6)
    assert explained["summary"]["baselines"] == evaluated["baselines_bits_per_char"]

    code, out, err = in_process(capsys, "score", str(run), "--whole", "--json")  # no TEXT_FILE: the run's own
    assert code == 0, err
    scored = json.loads(out)
    assert scored["chars"] == len(text) and scored["predicted"] == evaluated["chars"]
    assert scored["bits_per_char"] == pytest.approx(evaluated["bits_per_char"], abs=1e-6)
    code, out, err = in_process(capsys, "score", str(run), "--json")
    assert code == 0, err
    assert "".join(json.loads(line)["text"] for line in out.splitlines()) == text
