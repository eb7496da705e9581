"""`charrnn score` and charrnn.line_scores: each line's bits, bits per character and worst character.

Runs are tiny (a few steps of a 1 x 16 network), trained once for the module with `charrnn.train`;
the rules hold for any weights, trained or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import charrnn as run_charrnn
from conftest import in_process

import charrnn
from charrnn import line_scores
from charrnn.errors import CharrnnError
from charrnn.line_scores import LineScore, iter_line_scores, most_surprising, score_lines, total

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden=16, embed=8, layers=1, batch_size=4, seq_len=16, eval_interval=4, max_steps=4)
TEXT = "And God said, Let there be light.\n\nqxzj vvkkw\nIn the beginning God créated\nthe heaven"
LINES = ["And God said, Let there be light.\n", "\n", "qxzj vvkkw\n", "In the beginning God créated\n", "the heaven"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> dict[str, Path]:
    """A char, a byte and a bpe run on the same text (the bpe one of a small vocabulary)."""
    base = tmp_path_factory.mktemp("score")
    corpus = base / "corpus.txt"
    corpus.write_text("Ça, naïve café.\n" * 3 + real_text[:20_000], encoding="utf-8")
    made = {}
    with pytest.MonkeyPatch.context() as patch:  # one token cache for the module's runs
        patch.setenv("CHARRNN_CACHE_DIR", str(base / "cache"))
        for kind, sizes in {"char": {}, "byte": {}, "bpe": {"vocab_size": 400}}.items():
            made[kind] = charrnn.train(corpus, run=base / kind, tokenizer=kind, **sizes, **SMALL).path
    return made


@pytest.fixture(scope="module")
def model(runs: dict[str, Path]) -> charrnn.Model:
    return charrnn.load(runs["char"], device="cpu")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def records_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def line_bounds(text: str) -> list[tuple[int, int]]:
    ends = np.cumsum([len(line) for line in text.splitlines(keepends=True)])
    return list(zip([0, *ends[:-1]], ends))


# --- the numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_the_lines_bits_over_their_predicted_characters_is_evals_bits_per_char(
    runs: dict[str, Path], text_file: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    code, out, _ = in_process(capsys, "score", str(runs[kind]), str(text_file), "--json", "--device", "cpu")
    assert code == 0
    records = records_of(out)
    code, evaluated, _ = in_process(capsys, "eval", str(runs[kind]), str(text_file), "--json", "--no-baselines")
    assert code == 0
    expected = json.loads(evaluated)[str(text_file)]
    assert sum(r["predicted"] for r in records) == expected["chars"]
    bits_per_char = sum(r["bits"] for r in records) / sum(r["predicted"] for r in records)
    assert bits_per_char == pytest.approx(expected["bits_per_char"], abs=1e-6)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_a_lines_bits_are_the_sum_of_model_score_over_its_characters(runs: dict[str, Path], kind: str) -> None:
    model = charrnn.load(runs[kind], device="cpu")
    per_char = model.score(TEXT, top_k=0).bits
    records = score_lines(model, TEXT)
    assert [r.text for r in records] == LINES
    for record, (start, end) in zip(records, line_bounds(TEXT)):
        bits = per_char[start:end]
        assert record.bits == pytest.approx(np.nansum(bits), abs=1e-9)
        assert record.predicted == np.count_nonzero(~np.isnan(bits))
        worst = int(np.nanargmax(bits))
        assert (record.worst.column, record.worst.char) == (worst + 1, TEXT[start + worst])
        assert record.worst.bits == pytest.approx(bits[worst], abs=1e-9)


def test_lines_count_from_one_and_the_line_break_belongs_to_the_line_it_ends(model: charrnn.Model) -> None:
    records = score_lines(model, TEXT)
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert [r.chars for r in records] == [len(line) for line in LINES]
    assert records[1].text == "\n" and records[1].chars == records[1].predicted == 1  # an empty line: its break
    assert records[-1].text == "the heaven"  # the last line has no line break: none is counted
    per_char = model.score(TEXT, top_k=0).bits
    assert records[0].bits == pytest.approx(np.nansum(per_char[: len(LINES[0])]), abs=1e-9)  # its "\n" included
    assert all(r.worst.line == r.line for r in records)


def test_the_first_character_of_the_text_is_predicted_by_nothing(model: charrnn.Model) -> None:
    first, second = score_lines(model, "\nab\n")
    assert (first.chars, first.predicted, first.worst) == (1, 0, None)
    assert math.isnan(first.bits_per_char) and first.as_dict()["bits_per_char"] is None
    assert second.predicted == second.chars == 3


def test_a_whole_text_is_one_record_of_all_its_lines(model: charrnn.Model) -> None:
    lines = score_lines(model, TEXT)
    (whole,) = score_lines(model, TEXT, whole=True)
    assert (whole.lines, whole.chars, whole.predicted) == (5, len(TEXT), len(TEXT) - 1)
    assert whole.bits == pytest.approx(sum(r.bits for r in lines), abs=1e-9)
    assert whole.bits_per_char == pytest.approx(model.evaluate(TEXT).bits_per_char, abs=1e-6)
    assert whole.worst == max((r.worst for r in lines if r.worst), key=lambda w: w.bits)
    assert whole.text is None and "text" not in whole.as_dict()


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_a_text_scored_in_small_pieces_gives_the_numbers_of_one_pass(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    model = charrnn.load(runs[kind], device="cpu")
    text = TEXT + "\n" + "a long line of more characters than a piece holds, " * 3 + "\n" + TEXT
    one_pass = score_lines(model, text)
    monkeypatch.setattr(line_scores, "PIECE_CHARS", 7)
    monkeypatch.setattr(line_scores, "WINDOW", 5)
    chunks = [text[i : i + 11] for i in range(0, len(text), 11)]  # the file's chunks, cut anywhere
    in_pieces = list(iter_line_scores(model, chunks))
    assert [r.text for r in in_pieces] == [r.text for r in one_pass]
    for piecewise, whole in zip(in_pieces, one_pass):
        assert (piecewise.chars, piecewise.predicted, piecewise.unknown) == (
            whole.chars,
            whole.predicted,
            whole.unknown,
        )
        assert piecewise.bits == pytest.approx(whole.bits, abs=1e-4)
        assert (piecewise.worst.line, piecewise.worst.column) == (whole.worst.line, whole.worst.column)


def test_records_come_out_as_the_text_comes_in(model: charrnn.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(line_scores, "PIECE_CHARS", 64)
    read = []

    def chunks() -> Iterator[str]:
        for i in range(100):
            read.append(i)
            yield "And God said, Let there be light.\n"

    records = iter_line_scores(model, chunks())
    first = next(records)
    assert first.line == 1 and len(read) < 10  # scored before most of the text was read
    assert len(list(records)) == 99


# --- independent lines --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_an_independent_line_is_scored_as_if_it_followed_a_line_break_at_the_start(
    runs: dict[str, Path], kind: str
) -> None:
    model = charrnn.load(runs[kind], device="cpu")
    records = score_lines(model, TEXT, independent=True)
    for record, line in zip(records, LINES):
        alone = score_lines(model, "\n" + line)[1]  # line 2 of "\n" + line: after one break, from a zero state
        assert record.bits == pytest.approx(alone.bits, abs=1e-5)
        assert record.predicted == record.chars == len(line)  # its first character is predicted too
        assert (record.worst.column, record.worst.char) == (alone.worst.column, alone.worst.char)


def test_an_independent_line_does_not_depend_on_its_neighbours(
    model: charrnn.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    together = score_lines(model, TEXT, independent=True)
    monkeypatch.setattr(line_scores, "LOGIT_BUDGET", 1)  # one line per forward pass
    apart = score_lines(model, "".join(reversed(LINES[:-1])) + LINES[-1], independent=True)
    by_text = {r.text: r.bits for r in apart}
    for record in together:
        assert record.bits == pytest.approx(by_text[record.text], abs=1e-5)


# --- order ----------------------------------------------------------------------------------------


def test_sorted_lines_come_highest_bits_per_char_first_and_top_keeps_the_worst(model: charrnn.Model) -> None:
    records = score_lines(model, TEXT)
    ordered = most_surprising(records)
    assert sorted(r.line for r in ordered) == [1, 2, 3, 4, 5]
    values = [r.bits_per_char for r in ordered]
    assert values == sorted(values, reverse=True)
    assert most_surprising(records, top=2) == ordered[:2]


def test_top_shows_the_worst_lines_and_the_caption_counts_all(
    runs: dict[str, Path], text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = in_process(capsys, "score", str(runs["char"]), str(text_file), "--top", "2", "--json")
    assert code == 0 and len(records_of(out)) == 2
    code, out, _ = in_process(capsys, "score", str(runs["char"]), str(text_file), "--top", "2")
    assert code == 0
    assert "most bits per character first" in out
    assert f"All 5 lines: {len(TEXT)} characters, {len(TEXT) - 1} predicted" in out


def test_nan_lines_sort_last() -> None:
    empty = LineScore(1, 1, 0, 0.0, 0, None, "\n")
    scored = LineScore(2, 3, 3, 6.0, 0, None, "ab\n")
    assert most_surprising([empty, scored]) == [scored, empty]
    assert total([empty, scored]).bits_per_char == 2.0


# --- the command ------------------------------------------------------------------------------


def test_the_table_shows_every_line_with_its_worst_character(
    runs: dict[str, Path], text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = in_process(capsys, "score", str(runs["char"]), str(text_file))
    assert code == 0 and not err.replace("charrnn: note: ", "").startswith("charrnn")
    assert "lines in context, the state carried" in out
    assert "In the beginning God créated\\n" in out and "(charrnn eval's figure)" in out
    assert "Lines and columns count from 1" in out


def test_whole_json_is_one_record(runs: dict[str, Path], text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = in_process(capsys, "score", str(runs["char"]), str(text_file), "--whole", "--json")
    (record,) = records_of(out)
    assert code == 0 and record["lines"] == 5 and record["chars"] == len(TEXT)
    assert set(record["worst"]) == {"line", "column", "char", "bits", "unknown"}


def test_unknown_characters_are_counted_marked_and_noted(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "snow.txt"
    path.write_text("light\n☃☃ light\n", encoding="utf-8")
    code, out, err = in_process(capsys, "score", str(runs["char"]), str(path), "--json")
    first, second = records_of(out)
    assert code == 0 and (first["unknown"], second["unknown"]) == (0, 2)
    assert err.strip() == "charrnn: note: 2 characters are not in the model's vocabulary: scored as <unk>"
    model = charrnn.load(runs["char"], device="cpu")
    flags = model.score("light\n☃☃ light\n", top_k=0).unknown
    assert flags.sum() == 2
    worst = second["worst"]
    assert worst["unknown"] == (worst["char"] == "☃")


def test_a_latin_1_file_is_read_with_encoding(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("Ça, naïve café.\n".encode("latin-1"))
    code, out, _ = in_process(capsys, "score", str(runs["char"]), str(path), "--encoding", "latin-1", "--json")
    assert code == 0 and records_of(out)[0]["text"] == "Ça, naïve café.\n"


def test_standard_input_is_scored_like_a_file(runs: dict[str, Path], text_file: Path) -> None:
    done = run_charrnn("score", str(runs["char"]), "-", "--json", "--device", "cpu", stdin=TEXT)
    assert done.returncode == 0, done.stderr
    model = charrnn.load(runs["char"], device="cpu")
    assert [r["bits"] for r in records_of(done.stdout)] == pytest.approx([r.bits for r in score_lines(model, TEXT)])


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b"", [], "is empty: there is nothing to score"),
        ("☃☃☃☃".encode(), ["--json"], "none of its 4 characters is in the model's vocabulary"),
        (b"a", [], "is one token long, and the first token is predicted by nothing"),
        (b"\x00\x01\x02binary", [], "looks like a binary file"),
        (b"\xff\xfe bad", [], "is not valid utf-8: bad byte at offset 0"),
        (b"text\n", ["--whole", "--sort"], "--sort and --top order lines: they do not go with --whole"),
        (b"text\n", ["--whole", "--independent"], "--independent scores each line apart"),
        (b"text\n", ["--top", "0"], "--top must be at least 1, got 0"),
        (b"text\n", ["--encoding", "klingon"], "unknown encoding 'klingon'"),
    ],
)
def test_bad_input_is_one_error_line(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    args: list[str],
    message: str,
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    code, out, err = in_process(capsys, "score", str(runs["char"]), str(path), *args)
    assert code == 1 and not out
    assert err.count("\n") == 1 and err.startswith("charrnn: error: ") and message in err


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_a_missing_file_or_a_directory_is_one_error_line(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    path = tmp_path / "nothing.txt" if which == "missing" else tmp_path
    code, out, err = in_process(capsys, "score", str(runs["char"]), str(path))
    expected = "no such file or directory" if which == "missing" else "is a directory: give one text file"
    assert code == 1 and not out and err.count("\n") == 1 and expected in err


def test_score_lines_refuses_what_is_not_text(model: charrnn.Model) -> None:
    with pytest.raises(CharrnnError, match="must be a str"):
        score_lines(model, b"bytes")  # type: ignore[arg-type]
    with pytest.raises(CharrnnError, match="is empty"):
        score_lines(model, "")
