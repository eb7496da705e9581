"""Promise: one table (charrnn.options) is every option of `charrnn train`: the command is built from
it, `charrnn.train` checks its keywords against it, and a `--config` TOML file is read through it.
`--help` groups the options in panels; flags override the config file; `--resume` refuses the
options a resume cannot change, naming them, and applies the others."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import typer
from conftest import charrnn, in_process

from charrnn import cli, options
from charrnn.checkpoint import load_checkpoint, train_config_of
from charrnn.errors import CharrnnError
from charrnn.runs import Run, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_OPTIONS = dict(hidden=32, embed=16, layers=1, batch_size=4, seq_len=16, eval_interval=10, log_interval=5)


def _train_command() -> typer.core.TyperCommand:
    group = typer.main.get_command(cli.app)
    return group.get_command(typer.Context(group), "train")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    """A 10-step run, copied by the tests that resume it."""
    root = tmp_path_factory.mktemp("short")
    (root / "corpus.txt").write_text(real_text[:20_000], encoding="utf-8")
    train(root / "corpus.txt", run=root / "run", max_steps=10, **TINY_OPTIONS)
    return root


@pytest.fixture
def work(tmp_path: Path, short_run: Path) -> Path:
    shutil.copytree(short_run, tmp_path, dirs_exist_ok=True)
    return tmp_path


# ----- the table drives the command line and the API -----


def test_the_train_command_has_exactly_the_options_of_the_table() -> None:
    command = _train_command()
    params = {param.name: param for param in command.params}
    assert set(params) == {"corpus", *options.BY_NAME}
    for option in options.OPTIONS:
        param = params[option.name]
        assert option.flag in param.opts, option.name
        assert param.default == option.default, option.name
        assert option.help.replace("[", r"\[") in param.help, option.name
        assert getattr(param, "rich_help_panel", None) == option.panel, option.name


def test_the_api_refuses_an_unknown_keyword_naming_it() -> None:
    with pytest.raises(CharrnnError, match=r"unknown option 'hiden' for charrnn.train \(did you mean 'hidden'\?\)"):
        options.check_options({"hiden": 64})


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("hidden", 64, 64),
        ("lr", 1, 1.0),
        ("max_time", "2m", 120.0),
        ("max_time", 90, 90.0),
        ("val_file", "held.txt", ["held.txt"]),
        ("val_file", [Path("a.txt"), "b.txt"], ["a.txt", "b.txt"]),
        ("tie", False, False),
        ("config", "exp.toml", Path("exp.toml")),
    ],
)
def test_the_api_takes_the_values_the_command_line_takes(name: str, value: object, expected: object) -> None:
    assert options.check_options({name: value}) == {name: expected}


@pytest.mark.parametrize(
    "name, value, phrase",
    [
        ("hidden", "lots", "hidden must be an integer, got 'lots'"),
        ("hidden", 64.0, "hidden must be an integer"),
        ("hidden", True, "hidden must be an integer"),
        ("lr", "fast", "lr must be a number"),
        ("quiet", "yes", "quiet must be true or false"),
        ("max_time", "soon", "cannot read duration 'soon'"),
        ("max_time", -5, "max_time must be a duration"),
        ("val_file", 3, "val_file must be paths"),
    ],
)
def test_the_api_refuses_a_value_of_the_wrong_type(name: str, value: object, phrase: str) -> None:
    with pytest.raises(CharrnnError, match=phrase):
        options.check_options({name: value})


def test_options_turned_back_into_a_command_line_parse_to_the_same_values() -> None:
    given = options.check_options(
        {"hidden": 48, "lr": 0.01, "tie": False, "val_file": ["a.txt", "b.txt"], "max_time": "2m", "quiet": True}
    )
    argv = options.to_argv(["corpus.txt"], given)
    ctx = _train_command().make_context("train", argv[1:])
    assert ctx.params["corpus"] == ["corpus.txt"]
    assert options.check_options({name: ctx.params[name] for name in given}) == given


# ----- help panels -----


def test_help_groups_the_options_in_panels() -> None:
    text = charrnn("train", "--help").stdout
    positions = [text.index(f"─ {panel} ─") for panel in options.PANELS]
    assert positions == sorted(positions), "panels out of order"
    for option in options.OPTIONS:
        assert option.flag in text, option.flag
    assert "[preset]" in text  # shown as written, not swallowed as markup
    assert "With --resume only --max-steps, --max-epochs, --max-time" in text


# ----- --config FILE.toml -----


def test_a_config_file_supplies_options_and_flags_override_it(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "exp.toml").write_text(
        f'corpus = "{corpus_file}"\nhidden = 24\nseq-len = 12\nbatch_size = 3\nlayers = 1\nembed = 8\nmax_time = "5m"\n'
    )
    args = ["train", "--config", str(tmp_path / "exp.toml"), "--run", str(tmp_path / "r"), "--hidden", "16"]
    code, _, err = in_process(capsys, *args, "--max-steps", "3", "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"]["hidden_size"] == 16  # the flag wins
    assert config["model"]["embed_size"] == 8 and config["train"]["seq_len"] == 12  # the file, either spelling
    assert config["train"]["batch_size"] == 3 and config["train"]["max_time"] == 300.0
    assert config["corpus"]["files"] == [str(corpus_file.resolve())]


@pytest.mark.parametrize(
    "content, phrase",
    [
        ("hiden = 64\n", "exp.toml: unknown key 'hiden' (did you mean 'hidden'?)"),
        ('hidden = "lots"\n', "exp.toml: hidden must be an integer, got 'lots'"),
        ("lr = true\n", "exp.toml: lr must be a number"),
        ("[model]\nhidden = 64\n", "exp.toml: unknown key 'model'"),
        ("resume = 'runs/x'\n", "unknown key 'resume'"),
        ("hidden = 64\nhidden = 32\n", "exp.toml is not valid TOML"),
        ("hidden = 64\nhidden-size = 1\n", "unknown key 'hidden-size'"),
        ("hidden 64\n", "exp.toml is not valid TOML: "),
        (None, "cannot read config file"),
    ],
    ids=["unknown", "type", "bool-for-float", "section", "resume", "duplicate", "config-name", "syntax", "missing"],
)
def test_a_bad_config_file_is_one_error_line(
    tmp_path: Path, content: str | None, phrase: str, capsys: pytest.CaptureFixture[str], corpus_file: Path
) -> None:
    if content is not None:
        (tmp_path / "exp.toml").write_text(content)
    code, out, err = in_process(
        capsys, "train", str(corpus_file), "--config", str(tmp_path / "exp.toml"), "--run", str(tmp_path / "r")
    )
    assert code == 1
    assert err.startswith("charrnn: error: ") and err.count("\n") == 1, err
    assert phrase in err, err
    assert not (tmp_path / "r").exists()


def test_the_same_key_in_both_spellings_is_refused(tmp_path: Path) -> None:
    (tmp_path / "exp.toml").write_text("seq_len = 8\nseq-len = 16\n")
    with pytest.raises(CharrnnError, match="'seq-len' is given twice"):
        options.read_config(tmp_path / "exp.toml")


# ----- --resume: refused and applied options (issue 15.3) -----


def test_resume_refuses_the_options_it_cannot_change_naming_them(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the fix this exited 0, having used none of --lr, --device or --run.
    before = _snapshot(work)
    args = ["train", "--resume", str(work / "run"), "--lr", "0.5", "--device", "cpu", "--run", str(work / "elsewhere")]
    code, _, err = in_process(capsys, *args)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("charrnn: error: --resume cannot change --lr, --run: ")
    assert "--device" not in err.split("(")[0]  # applied, not refused
    assert _snapshot(work) == before and not (work / "elsewhere").exists()


def test_resume_applies_the_budget_and_the_safe_options(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--resume", str(work / "run"), "--max-steps", "16", "--log-interval", "1", "--patience", "9"]
    code, _, err = in_process(capsys, *args, "--device", "cpu", "--save-interval", "3", "--quiet")
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 11, 12, 13, 14, 15, 16]  # every 5 steps before, every step after
    cfg = train_config_of(load_checkpoint(Run(work / "run").last))
    assert (cfg.max_steps, cfg.log_interval, cfg.patience, cfg.save_interval, cfg.device) == (16, 1, 9, 3, "cpu")


def test_a_config_file_counts_as_given_on_resume(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "more.toml").write_text('max_time = "1m"\nseed = 3\n')
    code, _, err = in_process(capsys, "train", "--resume", str(work / "run"), "--config", str(work / "more.toml"))
    assert code == 1 and "--resume cannot change --seed:" in err, err


def test_resume_from_python_refuses_the_same_options(work: Path) -> None:
    with pytest.raises(CharrnnError, match="--resume cannot change --hidden, --schedule:"):
        train(run=work / "run", resume=True, hidden=64, schedule="constant", max_steps=20)
