"""Promise: `charrnn --help` and every command's help read cleanly, and a bad command line is one
line that says what was wrong once and where to read more (issue 18, item 15).

A flag takes no value, so its help row shows no type (`--help  Show this message`, never
`--help <bool>`); an option that takes a value shows its type; a repeatable one the type of one
value. An unknown command or option is `charrnn: error: ...` with the prefix once. And the
release (item 14): `charrnn --version` is 0.2.0 or later (format 2 is a new release), written
once, in charrnn/__init__.py, where pyproject.toml reads it; the license is an SPDX string.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import in_process

import charrnn
from charrnn.cli import app

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one row per option: nothing wraps between name and help


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = in_process(capsys, *args, "--help")
    assert code == 0, err
    return out


def _row(text: str, option: str) -> str:
    """The help row that starts with `option`, from the option to the end of its line."""
    found = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-]).*", text)
    assert found, f"{option} is not in the help:\n{text}"
    return found.group(0)


def test_the_commands_are_all_checked() -> None:
    assert {"train", "eval", "sample", "score", "convert", "plot", "runs", "viz"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_a_flag_shows_no_type(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, *command.split())
    assert "<bool>" not in text and "BOOLEAN" not in text, text
    assert re.search(r"--help +Show this message and exit", text), _row(text, "--help")


def test_the_root_flags_read_as_flags(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert re.search(r"--version +Print the version", text), _row(text, "--version")
    assert re.search(r"--debug +Show tracebacks", text), _row(text, "--debug")


def test_an_option_that_takes_a_value_shows_its_type(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "sample")
    assert re.search(r"--seed +(<int>|INTEGER) +Random seed", text), _row(text, "--seed")
    assert re.search(r"--json +Print the samples", text), _row(text, "--json")
    # a repeatable option takes one value each time: its type is one value's, not a list
    assert re.search(r"--stop +(<str>|TEXT) +Stop a sample", text), _row(text, "--stop")


def test_a_negatable_flag_shows_both_names_and_no_type(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "train")
    assert re.search(r"--lines +--no-lines +One example per line", text), _row(text, "--lines")


def test_an_unknown_command_says_charrnn_once(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(capsys, "frobnicate")
    assert code == 2
    assert err == "charrnn: error: No such command 'frobnicate' (see charrnn --help)\n"
    assert out == ""


def test_an_unknown_option_names_the_help_to_read(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = in_process(capsys, "sample", "runs/x", "--bogus")
    assert code == 2
    assert err.startswith("charrnn: error: No such option: --bogus")
    assert err.endswith(" (see charrnn sample --help)\n") and err.count("charrnn") == 2, err


# --- the release: one version, written once, and a license setuptools reads without a warning ---


def test_the_version_is_this_release(capsys: pytest.CaptureFixture[str]) -> None:
    """Checkpoint format 2 is a new release: 0.1.0 wrote format 1 (the .pt files)."""
    code, out, _ = in_process(capsys, "--version")
    assert (code, out) == (0, f"charrnn {charrnn.__version__}\n")
    assert tuple(int(part) for part in charrnn.__version__.split(".")[:2]) >= (0, 2)


def _setuptools_reading() -> tuple[Any, list[warnings.WarningMessage]]:
    """pyproject.toml as setuptools reads it when it builds or installs charrnn, and its warnings."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    return dist, caught


def test_the_version_is_written_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "charrnn.__version__"}
    dist, _ = _setuptools_reading()
    assert dist.metadata.version == charrnn.__version__


def test_the_license_is_an_spdx_string_setuptools_takes_without_a_warning() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    _, caught = _setuptools_reading()
    assert [str(w.message).splitlines()[0] for w in caught] == []


def test_convert_names_the_old_format_by_its_number(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "convert")
    assert "format-1" in text and "0.1" not in text
