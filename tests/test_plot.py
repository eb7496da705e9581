"""Loss curves: `charrnn plot` (a figure or the terminal), and the curves.png that training keeps.

Most runs here are written by hand (a config.json and a metrics.jsonl are all a plot reads);
one tiny real run checks what training records and draws.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import in_process

from charrnn import plot
from charrnn.checkpoint import load_checkpoint
from charrnn.config import TrainConfig
from charrnn.data.corpus import find_corpus
from charrnn.errors import CharrnnError
from charrnn.plot import DPI, SIZE_INCHES, CurvesWriter, curves_of, draw_figure, plot_runs
from charrnn.rundir import RunDir
from charrnn.training import Report, train

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, HEIGHT = round(SIZE_INCHES[0] * DPI), round(SIZE_INCHES[1] * DPI)
BASELINES = {"gzip": 2.9, "bzip2": 2.5, "xz": 2.6}
TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's first three colours, C0 C1 C2


def write_run(path: Path, *, floor: float = 1.2, records: int = 30, **config: Any) -> Path:
    """A run directory as training leaves it: falling losses, an evaluation every 5th record."""
    path.mkdir(parents=True)
    settings = {
        "model": {"vocab_size": 65, "cell": "lstm", "num_layers": 1, "hidden_size": 32, "embed_size": 16},
        "train": {"tokenizer": "char", "batch_size": 4, "seq_len": 16},
        "corpus": {"files": ["/texts/kjv.txt"]},
        "chars_per_token": 1.0,
        "baselines": BASELINES,
        **config,
    }
    (path / "config.json").write_text(json.dumps(settings))
    lines = []
    for i in range(1, records + 1):
        record = {"step": 10 * i, "time": 0.5 * i, "train_loss": floor + 3 * math.exp(-i / 6), "lr": 1e-3}
        if i % 5 == 0:
            record["val_loss"] = floor + 0.1 + 3 * math.exp(-i / 6)
        lines.append(json.dumps(record) + "\n")
    (path / "metrics.jsonl").write_text("".join(lines))
    return path


def plot_area(image: np.ndarray) -> np.ndarray:
    """The pixels inside the axes (the figure's fixed margins, less a few pixels of frame)."""
    height, width = image.shape[:2]
    return image[int(height * 0.07) : int(height * 0.90), int(width * 0.08) : int(width * 0.97), :3]


def has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(pixels * 255 - np.array(rgb)).max(axis=-1) < 8).sum() > 50)


def test_a_png_of_one_run_is_an_image_of_the_stated_size_with_its_curves_drawn(tmp_path: Path) -> None:
    from matplotlib.image import imread

    out = plot_runs([write_run(tmp_path / "run")], tmp_path / "curves.png")
    image = imread(out)
    assert image.shape == (HEIGHT, WIDTH, 4)
    area = plot_area(image)
    inked = (area.min(axis=-1) < 0.9).mean()  # not white
    assert 0.01 < inked < 0.5
    assert has_colour(area, TAB10[0])


def test_three_runs_share_one_figure_each_in_its_own_colour(tmp_path: Path) -> None:
    from matplotlib.image import imread

    runs = [write_run(tmp_path / name, floor=floor) for name, floor in (("a", 1.0), ("b", 1.3), ("c", 1.6))]
    image = imread(plot_runs(runs, tmp_path / "three.png"))
    assert image.shape == (HEIGHT, WIDTH, 4)
    area = plot_area(image)
    assert all(has_colour(area, rgb) for rgb in TAB10)


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".pdf", b"%PDF"), (".PNG", b"\x89PNG")])
def test_the_file_name_chooses_the_format(tmp_path: Path, suffix: str, magic: bytes) -> None:
    out = plot_runs([write_run(tmp_path / "run")], tmp_path / f"curves{suffix}")
    assert out.read_bytes().startswith(magic)


def test_the_y_axis_and_every_legend_figure_are_in_bits_per_character(tmp_path: Path) -> None:
    # issue 18 item 7: the legend gave nats ("train (last 1.705 nats/char)") beside an axis in bits.
    run = write_run(tmp_path / "run", floor=1.0)
    figure = draw_figure([curves_of(RunDir(run).read_log())], "step")  # the one figure PNG, SVG and PDF are drawn from
    axes = figure.axes[0]
    labels = axes.get_legend_handles_labels()[1]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_bits = min(r.get("val_loss", 99) for r in records) / math.log(2)
    last_bits = records[-1]["train_loss"] / math.log(2)
    assert axes.get_ylabel() == "bits per character"
    assert labels == [
        f"train (last {last_bits:.3f} bits/char)",
        f"validation (best {best_bits:.3f} bits/char)",
        f"gzip on the validation text ({BASELINES['gzip']:.3f} bits/char)",
        f"xz on the validation text ({BASELINES['xz']:.3f} bits/char)",
    ]


def test_gzip_and_xz_are_dashed_reference_lines_at_their_bits_per_character(tmp_path: Path) -> None:
    figure = draw_figure([curves_of(RunDir(write_run(tmp_path / "run")).read_log())], "step")
    lines = {
        line.get_label().split()[0]: line
        for line in figure.axes[0].get_lines()
        if "validation text" in line.get_label()
    }
    assert set(lines) == {"gzip", "xz"}
    for name, line in lines.items():
        assert line.get_ydata()[0] == pytest.approx(BASELINES[name])
        assert line.get_linestyle() == "--"


def test_a_run_that_recorded_no_baselines_is_drawn_without_them(tmp_path: Path) -> None:
    figure = draw_figure([curves_of(RunDir(write_run(tmp_path / "run", baselines=None)).read_log())], "step")
    assert not [line for line in figure.axes[0].get_lines() if "validation text" in line.get_label()]


def test_a_subword_run_has_its_train_loss_per_token_turned_into_bits_per_character(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", chars_per_token=2.5, train={"tokenizer": "bpe", "batch_size": 4, "seq_len": 16})
    curves = curves_of(RunDir(run).read_log(), "chars")
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert curves.train_bits[0] == pytest.approx(first["train_loss"] / 2.5 / math.log(2))
    assert curves.train_x[0] == 10 * 4 * 16 * 2.5  # step x streams x sequence length x chars per token


def test_the_x_axis_can_be_training_time(tmp_path: Path) -> None:
    curves = curves_of(RunDir(write_run(tmp_path / "run", floor=1.2)).read_log(), "time")
    assert curves.val_x[0] == 2.5  # the 5th record, at 0.5 s a record
    assert curves.best == (15.0, pytest.approx((1.3 + 3 * math.exp(-5)) / math.log(2)))  # the last evaluation


def test_plot_on_the_command_line_writes_curves_png_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "plot", str(write_run(tmp_path / "run")), "--x", "chars")
    assert (code, err) == (0, "")
    assert out.strip() == "wrote curves.png" and (tmp_path / "curves.png").stat().st_size > 10_000


def test_term_draws_the_curves_as_text_and_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(
        capsys, "plot", str(write_run(tmp_path / "a")), str(write_run(tmp_path / "b", floor=2)), "--term"
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert sum(any("\u2801" <= ch <= "\u28ff" for ch in line) for line in lines) >= 15  # rows of braille dots
    assert "bits/char" in out and "step" in out
    assert "a: validation (best" in out and "b: train (last" in out and "gzip on the validation text" in out
    assert "*" in out  # the best points
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal
    assert not list(tmp_path.glob("*.png"))


def test_term_gives_bits_per_character_only_and_tells_gzip_from_xz_without_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 18 item 7: --term gave nats in its legend and drew gzip and xz with the same glyph.
    from charrnn.termplot import REFERENCE_PATTERNS, sample

    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "plot", str(write_run(tmp_path / "run")), "--term")
    assert (code, err) == (0, "")
    assert "nats" not in out and "\x1b[" not in out
    gzip, xz = (sample(REFERENCE_PATTERNS[name]) for name in ("gzip", "xz"))
    assert gzip != xz  # the legend's keys are drawn by the canvas, as the lines are
    lines = out.splitlines()
    assert [line for line in lines if "validation text" in line] == [
        f"{gzip} gzip on the validation text ({BASELINES['gzip']:.3f} bits/char)",
        f"{xz} xz on the validation text ({BASELINES['xz']:.3f} bits/char)",
    ]
    rows = [line for line in lines if "│" in line or "┤" in line]
    assert [sum(name in row for row in rows) for name in ("gzip", "xz")] == [1, 1]  # each line named on the plot
    assert "train (last" in out and "bits/char)" in out and "validation (best" in out


def test_term_gives_each_of_several_runs_its_own_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 18 item 7: without colour (a pipe) two runs' curves looked the same.
    monkeypatch.chdir(tmp_path)
    runs = [str(write_run(tmp_path / name, floor=floor)) for name, floor in (("a", 1.0), ("b", 2.0))]
    code, out, err = in_process(capsys, "plot", *runs, "--term")
    assert (code, err) == (0, "")
    assert "a: validation (best" in out and out.split("a: validation (best")[1].split("\n")[0].endswith("*)")
    assert out.split("b: validation (best")[1].split("\n")[0].endswith("+)")
    canvas = "".join(line for line in out.splitlines() if "│" in line or "┤" in line)
    assert "*" in canvas and "+" in canvas


def _no_metrics(run: Path) -> None:
    (run / "metrics.jsonl").write_text("")


def _torn_last_line(run: Path) -> None:
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 310, "time": 15.5, "train_lo')


def _not_a_run(run: Path) -> None:
    (run / "config.json").unlink()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_no_metrics, "has no metrics yet"),
        (_torn_last_line, "is cut short"),
        (_not_a_run, "is not a run directory"),
    ],
)
def test_a_run_that_cannot_be_plotted_is_one_error_line_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], spoil: Any, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    run = write_run(tmp_path / "run")
    spoil(run)
    code, out, err = in_process(capsys, "plot", str(run), "-o", "out.png")
    assert code == 1 and out == ""
    assert err.startswith("charrnn: error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.glob("*.png")) and not list(run.glob("*.png"))


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("missing/dir/curves.png", "directory missing/dir does not exist"),
        ("curves.jpg", "must end in .png, .svg or .pdf"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_drawing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], output: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "plot", str(write_run(tmp_path / "run")), "-o", output)
    assert code == 1 and message in err and err.startswith("charrnn: error: ") and err.count("\n") == 1
    assert not (tmp_path / "missing").exists() and not list(tmp_path.glob("curves*"))


def test_an_unknown_x_axis_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = in_process(
        capsys, "plot", str(write_run(tmp_path / "run")), "--x", "epoch", "-o", str(tmp_path / "c.png")
    )
    assert code == 1 and "--x must be one of step, time, chars" in err


def test_an_evaluation_redraws_only_when_drawing_would_cost_little_and_the_end_always_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Path] = []
    monkeypatch.setattr(plot, "write_curves", lambda run: drawn.append(run))
    writer = CurvesWriter(tmp_path, lambda text: None)
    writer.drawn_at -= 2 * writer.FIRST_GUESS_S / writer.MAX_SHARE  # training has run long enough
    writer.refresh()
    writer.refresh()  # an instant later: not worth another picture
    assert len(drawn) == 1
    writer.refresh(final=True)
    assert len(drawn) == 2


# ----- what training does -----

CONFIG = TrainConfig(batch_size=4, seq_len=16, eval_interval=10, log_interval=5, max_steps=20, device="cpu")
MODEL = {"num_layers": 1, "hidden_size": 32, "embed_size": 16}


def test_training_records_what_the_plot_needs_and_leaves_curves_png(tmp_path: Path, corpus_file: Path) -> None:
    from matplotlib.image import imread

    result = train(find_corpus([str(corpus_file)]), MODEL, CONFIG, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config["baselines"]) == {"gzip", "bzip2", "xz"} and config["chars_per_token"] == 1.0
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["stop"] == result.stop_reason == "step budget reached"
    assert imread(tmp_path / "run" / "curves.png").shape == (HEIGHT, WIDTH, 4)


def test_a_drawing_that_fails_is_one_message_and_changes_nothing_in_training(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = find_corpus([str(corpus_file)])
    train(corpus, MODEL, CONFIG, tmp_path / "drawn")

    def broken(run: Path) -> Path:
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plot, "write_curves", broken)
    messages: list[str] = []
    train(corpus, MODEL, CONFIG, tmp_path / "broken", report=Report(on_message=messages.append))
    assert [m for m in messages if "curves.png" in m] == [
        f"could not draw {tmp_path / 'broken' / 'curves.png'}: RuntimeError: no fonts today"
    ]
    assert not (tmp_path / "broken" / "curves.png").exists()
    drawn, broke = (load_checkpoint(tmp_path / name / "last.safetensors")["model"] for name in ("drawn", "broken"))
    assert all(torch.equal(drawn[name], broke[name]) for name in drawn)  # the same weights, bit for bit


def test_refused_before_anything_is_read() -> None:
    with pytest.raises(CharrnnError, match="no run to plot"):
        plot.load_curves([])
