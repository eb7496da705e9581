"""`--lines`: one example per line, split by lines, sampled as whole lines, each told new or a copy.

The data tests read the token cache that `prepare_dataset` writes; the sampling tests share one
tiny run per module, trained with `charrnn.train(lines=True)` on a list of names in three scripts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import charrnn as run_charrnn
from conftest import in_process

import charrnn
from charrnn.checkpoint import load_checkpoint
from charrnn.config import TrainConfig
from charrnn.data import lines as lines_module
from charrnn.data.corpus import find_corpus
from charrnn.data.dataset import Dataset, prepare_dataset
from charrnn.data.lines import LINES_FILE, MAX_LINE_CHARS, LineSets
from charrnn.errors import CharrnnError
from charrnn.sample.examples import EXTRA_DRAWS, MAX_DRAWS_PER_EXAMPLE, draw_examples

NAMES = (
    "Anna Bruno Clara Dmitri Elena Felix Greta Hugo Ines Jonas Karla Lukas Mara Nils Olga Pavel "
    "Rosa Sven Tilda Udo Vera Wanda Yuri Zora Ada Boris Cleo Dora Emil Frida "
    "さくら はると ゆい そうた Анна Борис Вера Глеб"
).split()
TINY = dict(hidden=32, embed=16, layers=1, batch_size=4, seq_len=16, eval_interval=50, log_interval=50)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _prepare(path: Path, cache: Path, **cfg: object) -> Dataset:
    """The dataset of a lines corpus, with the byte tokenizer (held-out lines decode exactly)."""
    config = TrainConfig(lines=True, **{"tokenizer": "byte", **cfg})
    return prepare_dataset(find_corpus([str(path)]), config, cache_dir=cache)


def _lines(dataset: Dataset, split: str) -> list[str]:
    """The examples of one split, in stream order, from the token cache."""
    part = getattr(dataset, split)
    if part is None:
        return []
    text = dataset.tokenizer.decode(part.tokens.tolist())
    assert text.endswith("\n"), "every example ends with its line break"
    return text[:-1].split("\n")


# ----- the dataset -----


def test_every_non_blank_line_is_one_example_ending_with_its_line_break(tmp_path: Path) -> None:
    corpus = _write(tmp_path / "n.txt", "\ufeffAnna\r\nBruno\n\n   \nClara\nDmitri\nElena\nFelix\nGreta")
    dataset = _prepare(corpus, tmp_path / "cache", val_frac=0.2)
    assert Counter(_lines(dataset, "train") + _lines(dataset, "val")) == Counter(
        ["Anna", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta"]
    )  # no BOM, no carriage return, the blank and space-only lines left out, the last line without a break kept
    assert dataset.lines is not None and dataset.lines.blank == 2


def test_the_seed_shuffles_the_lines_and_chooses_the_held_out_ones(tmp_path: Path) -> None:
    corpus = _write(tmp_path / "n.txt", "".join(f"{name}\n" for name in NAMES))
    first = _prepare(corpus, tmp_path / "cache", seed=1)
    again = _prepare(corpus, tmp_path / "cache", seed=1)
    other = _prepare(corpus, tmp_path / "cache", seed=2)
    assert _lines(first, "train") == _lines(again, "train")
    assert _lines(first, "train") != _lines(other, "train")
    assert _lines(first, "train") != [name for name in NAMES if name in _lines(first, "train")]  # not file order
    assert set(_lines(first, "val")) != set(_lines(other, "val"))


def test_the_token_cache_key_holds_the_lines_mode_and_the_seed(tmp_path: Path) -> None:
    corpus = _write(tmp_path / "n.txt", "".join(f"{name}\n" for name in NAMES))
    cache = tmp_path / "cache"
    _prepare(corpus, cache, seed=1)
    _prepare(corpus, cache, seed=2)
    prepare_dataset(find_corpus([str(corpus)]), TrainConfig(), cache_dir=cache)  # the same text as running text
    assert len(list(cache.glob("*.bin"))) == 3
    assert len(list(cache.glob(f"*.{LINES_FILE}"))) == 2


def test_a_repeated_line_goes_wholly_to_one_side_and_every_copy_is_kept(tmp_path: Path) -> None:
    text = "".join(f"{name}\n" * (1 + i % 3) for i, name in enumerate(NAMES))
    dataset = _prepare(_write(tmp_path / "n.txt", text), tmp_path / "cache", val_frac=0.25, test_frac=0.1)
    sides = [_lines(dataset, split) for split in ("train", "val", "test")]
    for i, name in enumerate(NAMES):
        holding = [side for side in sides if name in side]
        assert len(holding) == 1, f"{name} is on {len(holding)} sides"
        assert holding[0].count(name) == 1 + i % 3
    assert len(set(sides[1])) == round(len(NAMES) * 0.25)  # the fraction counts distinct lines
    assert len(set(sides[2])) == round(len(NAMES) * 0.1)


def test_lines_of_a_glob_of_files_never_run_into_each_other(tmp_path: Path) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    _write(folder / "a.txt", "Anna\nBruno")  # no line break at the end
    _write(folder / "b.txt", "Clara\nDmitri\n")
    _write(folder / "skip.md", "Not\nThese\n")
    dataset = prepare_dataset(
        find_corpus([str(folder)], pattern="*.txt"),
        TrainConfig(lines=True, val_frac=0.0, tokenizer="byte"),
        cache_dir=tmp_path / "c",
    )
    assert sorted(_lines(dataset, "train")) == ["Anna", "Bruno", "Clara", "Dmitri"]


def test_lines_in_any_script_and_of_ten_thousand_characters(tmp_path: Path) -> None:
    long = ["ぁ" * 10_000, "Ж" * 9_999, "x" * 10_000]
    text = "".join(f"{line}\n" for line in [*long, *NAMES])
    dataset = _prepare(_write(tmp_path / "n.txt", text), tmp_path / "cache", val_frac=0.0)
    assert sorted(_lines(dataset, "train")) == sorted([*long, *NAMES])
    assert dataset.lines is not None and dataset.lines.longest == 10_000
    assert dataset.lines.flag("さくら") == "train" and dataset.lines.flag("Глеб") == "train"
    assert dataset.lines.flag("Глебa") == "new"


def test_the_index_keeps_offsets_and_digests_not_strings(tmp_path: Path) -> None:
    corpus = find_corpus([str(_write(tmp_path / "n.txt", "".join(f"name{i}\n" for i in range(50_000))))])
    index = lines_module.index_lines(corpus, tmp_path / "spool")
    assert (index.offsets.dtype, index.digests.dtype) == (np.int64, np.dtype("<u8"))
    assert index.offsets.nbytes + index.digests.nbytes == 16 * 50_000 + 8
    order = lines_module.side_order(np.zeros(index.count, np.uint8), 0, seed=3)
    blocks = list(lines_module.blocks(index, order))
    assert all(block.endswith("\n") for block in blocks) and len(blocks) < 10  # whole lines, about 1 MiB at once
    assert sorted("".join(blocks).split()) == sorted(f"name{i}" for i in range(50_000))


def test_a_corpus_of_blank_lines_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CharrnnError, match=r"holds no line with text: --lines takes one example per line$"):
        _prepare(_write(tmp_path / "blank.txt", "\n  \n\r\n\t\n"), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir()]  # nothing half-written in the cache


def test_a_line_longer_than_the_cache_chunk_is_refused_naming_it(tmp_path: Path) -> None:
    corpus = _write(tmp_path / "n.txt", "Anna\nBruno\n" + "x" * (MAX_LINE_CHARS + 2) + "\nClara\n")
    with pytest.raises(CharrnnError, match=r"n\.txt: line 3 is longer than 1,048,576 characters"):
        _prepare(corpus, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir()]
    exact = _write(tmp_path / "ok.txt", "Anna\n" + "y" * MAX_LINE_CHARS + "\r\nBruno\n")  # at the limit: taken
    assert _prepare(exact, tmp_path / "cache", val_frac=0.0).lines.longest == MAX_LINE_CHARS


@pytest.mark.parametrize(
    "text, message",
    [
        ("\n \n\n", "blank.txt holds no line with text: --lines takes one example per line"),
        ("Anna\n" + "x" * (MAX_LINE_CHARS + 2), "blank.txt: line 2 is longer than 1,048,576 characters"),
    ],
    ids=["blank-lines", "a-line-too-long"],
)
def test_charrnn_train_refuses_a_bad_lines_corpus_in_one_line_leaving_nothing(
    tmp_path: Path, text: str, message: str
) -> None:
    _write(tmp_path / "blank.txt", text)
    done = run_charrnn("train", "blank.txt", "--lines", "--run", "runs/x", "--quiet", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(f"charrnn: error: {message}")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_validation_file_is_refused_with_lines(tmp_path: Path) -> None:
    corpus = find_corpus([str(_write(tmp_path / "n.txt", "Anna\nBruno\n"))])
    with pytest.raises(CharrnnError, match="use --val-frac, not --val-file"):
        prepare_dataset(corpus, TrainConfig(lines=True, val_frac=0.0), val_corpus=corpus, cache_dir=tmp_path)


def test_too_few_distinct_lines_to_hold_out_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CharrnnError, match="the corpus has 1 distinct line"):
        _prepare(_write(tmp_path / "n.txt", "Anna\nAnna\nAnna\n"), tmp_path / "cache")


def test_line_sets_round_trip_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    dataset = _prepare(_write(tmp_path / "n.txt", "".join(f"{n}\n" for n in NAMES)), tmp_path / "cache")
    saved = tmp_path / LINES_FILE
    dataset.lines.save(saved)
    loaded = LineSets.load(saved)
    assert loaded.lines == dataset.lines.lines and np.array_equal(loaded.val, dataset.lines.val)
    assert [loaded.flag(line) for line in _lines(dataset, "val")] == ["val"] * len(_lines(dataset, "val"))
    saved.write_bytes(saved.read_bytes()[:100])
    with pytest.raises(CharrnnError, match=f"{LINES_FILE} is damaged"):
        LineSets.load(saved)


# ----- drawing examples (a stand-in sampler) -----


def _sets(train: list[str], val: list[str]) -> LineSets:
    def digests(texts: list[str]) -> np.ndarray:
        return np.unique(np.array([np.frombuffer(lines_module.line_digest(t), "<u8")[0] for t in texts], "<u8"))

    return LineSets(digests(train), digests(val), np.zeros(0, "<u8"), (len(train), len(val), 0), 10, 0)


def _pool(texts: list[str], asked: list[int] | None = None) -> Callable[[int, int | None], list[str]]:
    """A stand-in sampler handing out `texts` in order, then "Anna" forever; notes each round's size."""
    pool = iter(texts)

    def generate(count: int, seed: int | None) -> list[str]:
        if asked is not None:
            asked.append(count)
        return [next(pool, "Anna") for _ in range(count)]

    return generate


def test_drawing_goes_on_until_enough_examples_are_kept() -> None:
    asked: list[int] = []
    generate = _pool(["Anna", "Zed", "Zed", "Bo", "Yul", "Xi"], asked)
    made = draw_examples(generate, 3, "", sets=_sets(["Anna"], ["Bo"]), unique=True, novel=True, length=10, seed=1)
    assert made.texts == ["Zed", "Yul", "Xi"] and made.flags == ["new"] * 3
    assert asked == [3, 16]  # the first round asks for exactly what is wanted, later ones for more
    assert made.summary() == (
        "3 examples: 3 new, 0 copy a training line, 0 a validation line; "
        "6 drawn, 3 dropped (1 copied a training line, 1 copied a validation line, 1 repeated an example already kept)"
    )


def test_a_sample_without_a_line_break_within_the_length_is_dropped() -> None:
    made = draw_examples(
        _pool(["x" * 11, "Ann", "Ann"]),
        2,
        "",
        sets=_sets(["Ann"], []),
        unique=False,
        novel=False,
        length=10,
        seed=None,
    )
    assert made.texts == ["Ann", "Ann"] and made.cut == 1
    assert made.summary().endswith("1 ran past 10 characters without a line break)")


def test_drawing_stops_at_its_bound_with_what_it_found() -> None:
    made = draw_examples(
        lambda count, seed: ["Same"] * count, 5, "", sets=None, unique=True, novel=False, length=10, seed=0
    )
    assert made.texts == ["Same"] and not made.complete
    assert made.drawn == MAX_DRAWS_PER_EXAMPLE * 5 + EXTRA_DRAWS
    assert made.summary().startswith("found only 1 of the 5 examples asked for within 150 draws")


# ----- a trained lines run -----


@pytest.fixture(scope="module")
def names_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lines") / "names.txt"
    return _write(path, "".join(f"{name}\n" for name in NAMES * 3))


@pytest.fixture(scope="module")
def lines_run(names_file: Path) -> Path:
    with pytest.MonkeyPatch.context() as patch:  # a token cache of this module's own
        patch.setenv("CHARRNN_CACHE_DIR", str(names_file.parent / "cache"))
        run = charrnn.train(names_file, run=names_file.parent / "run", lines=True, val_frac=0.2, max_steps=150, **TINY)
    return run.path


@pytest.fixture(scope="module")
def sides(names_file: Path) -> dict[str, set[str]]:
    """The run's training and validation lines: its split made again (it depends on the lines and
    the seed, not on the tokenizer)."""
    dataset = _prepare(names_file, names_file.parent / "sides-cache", val_frac=0.2)
    return {"train": set(_lines(dataset, "train")), "val": set(_lines(dataset, "val"))}


def test_the_run_records_that_it_is_a_lines_run(lines_run: Path) -> None:
    assert json.loads((lines_run / "config.json").read_text())["train"]["lines"] is True
    assert load_checkpoint(lines_run / "last.safetensors", arrays=True)["train_config"]["lines"] is True
    held = round(len(NAMES) * 0.2)  # distinct lines held out, each there three times
    assert LineSets.load(lines_run / LINES_FILE).lines == (3 * (len(NAMES) - held), 3 * held, 0)
    assert charrnn.load(lines_run).lines


def test_resume_and_eval_rebuild_the_same_dataset(lines_run: Path, tmp_path: Path, names_file: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    for file in lines_run.iterdir():
        if file.is_file() and file.name != ".lock":
            (copy / file.name).write_bytes(file.read_bytes())
    env = {"CHARRNN_CACHE_DIR": str(tmp_path / "fresh-cache")}
    evaluated = run_charrnn("eval", str(copy), "--json", "--no-baselines", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    recorded = json.loads((copy / "config.json").read_text())["corpus"]["chars"]["val"]
    assert json.loads(evaluated.stdout)["val"]["chars"] == recorded - 1  # all but the first, which is not predicted
    (rebuilt,) = (tmp_path / "fresh-cache").glob(f"*.{LINES_FILE}")
    assert all(
        np.array_equal(getattr(LineSets.load(rebuilt), side), getattr(LineSets.load(copy / LINES_FILE), side))
        for side in ("train", "val", "test")
    )
    resumed = run_charrnn("train", "--resume", str(copy), "--max-steps", "155", "--quiet", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((copy / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 155


def test_sample_gives_n_examples_one_a_line_each_flagged(lines_run: Path, sides: dict[str, set[str]]) -> None:
    done = run_charrnn("sample", str(lines_run), "--num-samples", "12", "--seed", "5", "--json")
    assert done.returncode == 0, done.stderr
    samples = json.loads(done.stdout)["samples"]
    assert len(samples) == 12 and all("\n" not in s["text"] for s in samples)
    for sample in samples:
        expected = next((side for side in ("train", "val") if sample["text"] in sides[side]), "new")
        assert sample["flag"] == expected
    counts = Counter(s["flag"] for s in samples)
    line = done.stderr.strip().splitlines()[-1]
    assert line == (
        f"charrnn: 12 examples: {counts['new']} new, {counts['train']} copy a training line, "
        f"{counts['val']} a validation line"
    )
    plain = run_charrnn("sample", str(lines_run), "--num-samples", "12", "--seed", "5")
    assert plain.stdout.splitlines() == [s["text"] for s in samples]


def test_a_prime_starts_every_example_after_a_line_break(lines_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = charrnn.load(lines_run)
    primes: list[str] = []
    sampler = model._sampler
    monkeypatch.setattr(model, "_sampler", lambda prime, *rest: primes.append(prime) or sampler(prime, *rest))
    made = model.examples(6, "Ma", seed=2)
    assert all(text.startswith("Ma") and "\n" not in text for text in made.texts)
    assert set(primes) == {"\nMa"}
    with pytest.raises(CharrnnError, match="without a line break"):
        model.examples(2, "Ma\nBo")


def test_novel_keeps_only_lines_of_neither_side(lines_run: Path, sides: dict[str, set[str]]) -> None:
    made = charrnn.load(lines_run).examples(10, novel=True, seed=3)
    assert made.texts and not set(made.texts) & (sides["train"] | sides["val"])
    assert made.flags == ["new"] * len(made.texts)


def test_unique_examples_are_distinct_and_too_few_are_said(lines_run: Path) -> None:
    made = charrnn.load(lines_run).examples(8, unique=True, seed=4)
    assert len(set(made.texts)) == len(made.texts) == 8
    greedy = run_charrnn("sample", str(lines_run), "--num-samples", "3", "--unique", "--temperature", "0")
    assert greedy.returncode == 0 and len(greedy.stdout.splitlines()) == 1  # greedy: one example, again and again
    assert greedy.stderr.strip() == greedy.stderr.strip().splitlines()[0]
    assert "found only 1 of the 3 examples asked for within 130 draws" in greedy.stderr


def test_novel_on_a_run_of_running_text_is_refused(corpus_file: Path, tmp_path: Path) -> None:
    run = charrnn.train(corpus_file, run=tmp_path / "text", max_steps=2, **TINY)
    for flag in ("--novel", "--unique"):
        done = run_charrnn("sample", str(run.path), flag)
        assert done.returncode == 1 and done.stdout == ""
        assert (
            done.stderr
            == f"charrnn: error: {flag} needs a run trained with --lines (one example per line); {run.path} was not\n"
        )
    with pytest.raises(CharrnnError, match="was not trained with --lines"):
        run.load().examples(3)


def test_novel_without_the_line_hashes_is_refused_and_plain_sampling_says_unknown(
    lines_run: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "best.safetensors"
    alone.write_bytes((lines_run / "best.safetensors").read_bytes())
    model = charrnn.load(alone)
    with pytest.raises(CharrnnError, match=f"{LINES_FILE} is missing"):
        model.examples(2, novel=True)
    assert "unknown" in model.examples(2, seed=1).summary()


def test_sampling_examples_on_the_cpu_never_imports_torch(lines_run: Path) -> None:
    code = (
        "import sys, charrnn\n"
        f"made = charrnn.load({str(lines_run)!r}, 'cpu').examples(3, novel=True, seed=1)\n"
        "print(len(made.texts), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "False"]


# ----- line endings (issue 19, item 15) -----

UNIVERSAL = "Anna\r\nBruno\rClara\nDmitri\r\rElena\r\nFelix\rGreta\r"


def test_a_lone_carriage_return_ends_a_line_as_universal_newlines_do(tmp_path: Path) -> None:
    """Old code: "Bruno\rClara" was one example, and \r entered the vocabulary."""
    corpus = _write(tmp_path / "n.txt", UNIVERSAL)
    dataset = _prepare(corpus, tmp_path / "cache", val_frac=0.2)
    expected = ["Anna", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta"]
    assert Counter(_lines(dataset, "train") + _lines(dataset, "val")) == Counter(expected)
    assert dataset.lines is not None and dataset.lines.blank == 1  # the line between two lone \r
    with open(corpus, encoding="utf-8", newline=None) as handle:  # exactly Python's universal newlines
        assert [line for line in handle.read().split("\n") if line.strip()] == expected


def test_a_crlf_across_two_chunks_is_one_line_break(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charrnn.data import corpus as corpus_module

    text = "".join(f"{name}\r\n" for name in NAMES[:12])
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 5)  # every break falls somewhere across a chunk edge
    lines = list(lines_module._lines_of(_write(tmp_path / "n.txt", text), "utf-8"))
    assert lines == NAMES[:12]


def test_the_other_characters_splitlines_splits_at_are_text(tmp_path: Path) -> None:
    others = ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    text = "".join(f"a{c}b\n" for c in others)
    assert list(lines_module._lines_of(_write(tmp_path / "n.txt", text), "utf-8")) == [f"a{c}b" for c in others]


def test_a_long_line_ended_by_a_lone_carriage_return_is_still_measured(tmp_path: Path) -> None:
    corpus = _write(tmp_path / "n.txt", "short\r" + "x" * (MAX_LINE_CHARS + 1) + "\rshort\r")
    with pytest.raises(CharrnnError, match="line 2 is longer than"):
        list(lines_module._lines_of(corpus, "utf-8"))
    assert list(lines_module._lines_of(_write(tmp_path / "m.txt", "y" * MAX_LINE_CHARS + "\r"), "utf-8")) == [
        "y" * MAX_LINE_CHARS
    ]


# ----- a damaged lines.npz names the file and what is wrong (issue 19, item 13) -----


def _copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for file in run.iterdir():
        if file.is_file() and file.name != ".lock":
            (to / file.name).write_bytes(file.read_bytes())
    return to


def _numbers(path: Path, **changes: int) -> None:
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in ("train", "val", "test", "numbers")}
    names = ["train_lines", "val_lines", "test_lines", "longest", "blank"]
    for name, value in changes.items():
        arrays["numbers"][names.index(name)] = value
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


DAMAGE = {
    "a longest line of 10^12": (lambda p: _numbers(p, longest=10**12), "longest line of 1,000,000,000,000"),
    "a longest line of 0": (lambda p: _numbers(p, longest=0), "longest line of 0 characters"),
    "fewer lines than distinct": (lambda p: _numbers(p, val_lines=1), "counts 1 val lines but holds"),
    "cut short": (lambda p: p.write_bytes(p.read_bytes()[:100]), "is damaged"),
    "a directory": (lambda p: (p.unlink(), p.mkdir()), "is damaged: it is not a regular file"),
    "a link to /dev/zero": (lambda p: (p.unlink(), p.symlink_to("/dev/zero")), "is not a regular file"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_lines_file_is_named_and_never_blamed_on_an_option(
    lines_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """Old code: a longest line of 10^12 gave "--length must be in 0..100,000,000", an option never given."""
    run = _copy_run(lines_run, tmp_path / "run")
    damage, message = DAMAGE[case]
    damage(run / LINES_FILE)
    code, out, err = in_process(capsys, "sample", str(run), "--num-samples", "3", "--seed", "1")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"charrnn: error: {run / LINES_FILE} ") and message in err, err
    assert "--length" not in err and "internal error" not in err
