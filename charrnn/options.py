"""Every option of `charrnn train`, in one table that both the command line and the Python API read.

`charrnn.cli` builds the `train` command's parameters from `OPTIONS` (names, types, defaults, help
text, help panels); `charrnn.runs.train` checks its keyword options against the same table, and so
do the keys of a `--config` TOML file. An option is "given" when it was passed (a flag typed on the
command line, a keyword argument, a key in the config file); only given options count when a
preset fills in defaults or when `--resume` decides what it may change.

This module imports neither torch nor typer: it is plain data and the checks on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.config import parse_duration, parse_size
from charrnn.errors import CharrnnError

# Help panels of `charrnn train --help`, in the order they are shown; None is Typer's "Options".
DATA, MODEL, OPTIMISATION = "Data", "Model", "Optimisation"
BUDGET, OUTPUT, DEVICES = "Budget and evaluation", "Output", "Devices"
PANELS = (DATA, MODEL, OPTIMISATION, BUDGET, OUTPUT, DEVICES)

# What `--resume` does with an option that is given: REFUSED ones are fixed when a run starts (the
# model, the data, the optimiser's settings); APPLIED ones (the budget, and what is safe to change
# halfway: devices, intervals, patience) hold for the rest of the run.
REFUSED, APPLIED = "refused", "applied"

DURATION = "duration"  # the type of --max-time: "90s", "2m", "1.5h" on the command line, or seconds
FILES = "files"  # one path or a list of them (a repeatable option)
SIZE = "size"  # a number of bytes: "500M", "2G" (binary units) on the command line, or an integer


@dataclass(frozen=True)
class Option:
    """One option of `charrnn train`: `name` is its Python keyword, `--name-with-dashes` its flag."""

    name: str
    type: Any  # int, float, str, bool, Path, DURATION or FILES
    default: Any
    field: str | None  # where config.json records it: "model.<ModelConfig field>", "train.<TrainConfig field>"
    help: str
    preset: bool = False  # default None: the preset (cpu or gpu) supplies the value
    on_resume: str = REFUSED
    flags: tuple[str, ...] = ()  # the command-line spelling when it is not the plain --name
    panel: str | None = None  # set by _panel

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _panel(panel: str, *options: Option) -> tuple[Option, ...]:
    return tuple(dataclasses.replace(option, panel=panel) for option in options)


# One option a line: name, type, default, where config.json records it, help; then its marks.
# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("config", Path, None, None, "Read options from this TOML file; flags given here override it.", on_resume=APPLIED),
    *_panel(DATA,
        Option("glob", str, "*", None, "Filename pattern for directories."),
        Option("encoding", str, "utf-8", None, "Text encoding of the corpus."),
        Option("stdin_limit", SIZE, None, None, "Most of standard input (CORPUS -) copied to the temporary directory, e.g. 500M or 8G (default 2G)."),
        Option("val_file", FILES, None, None, "Validation text instead of --val-frac."),
        Option("val_frac", float, 0.05, "train.val_frac", "Fraction of the text (its end) held out for validation."),
        Option("test_frac", float, 0.0, "train.test_frac", "Fraction held out for testing (after validation)."),
        Option("lines", bool, False, "train.lines", "One example per line (names, titles): the text is split by distinct lines, shuffled by --seed; samples are whole lines."),
        Option("tokenizer", str, "char", "train.tokenizer", "char, byte, bpe or unigram."),
        Option("vocab_size", int, None, "train.vocab_size", "Vocabulary size for bpe/unigram."),
    ),
    *_panel(MODEL,
        Option("preset", str, "auto", None, "Defaults for the options marked [preset]: auto (on a CPU, the model size that fits the budget and the text; gpu on CUDA), cpu or gpu."),
        Option("init_from", Path, None, None, "Fine-tune: start from this run's best (or this checkpoint's) weights, tokenizer and architecture; a char vocabulary gains CORPUS's new characters."),
        Option("cell", str, None, "model.cell", "lstm, gru or rnn.", preset=True),
        Option("layers", int, None, "model.num_layers", "Stacked RNN layers.", preset=True),
        Option("hidden", int, None, "model.hidden_size", "Hidden units per layer.", preset=True),
        Option("embed", int, None, "model.embed_size", "Embedding size.", preset=True),
        Option("dropout", float, None, None, "Sets --dropout-hidden and --dropout-output together."),
        Option("dropout_embed", float, None, "model.dropout_embed", "Dropout on embeddings.", preset=True),
        Option("dropout_hidden", float, None, "model.dropout_hidden", "Dropout between RNN layers.", preset=True),
        Option("dropout_output", float, None, "model.dropout_output", "Dropout before the output layer.", preset=True),
        Option("tie", bool, None, "model.tie_weights", "Tie input and output embeddings.", preset=True, flags=("--tie/--no-tie",)),
        Option("weight_drop", float, None, "model.weight_drop", "DropConnect on hidden-to-hidden weights, AWD-LSTM style.", preset=True),
    ),
    *_panel(OPTIMISATION,
        Option("batch_size", int, None, "train.batch_size", "Parallel streams per step, per process under torchrun.", preset=True),
        Option("seq_len", int, None, "train.seq_len", "Tokens per stream per step, the BPTT length.", preset=True),
        Option("lr", float, None, "train.lr", "Peak learning rate of AdamW.", preset=True),
        Option("weight_decay", float, None, "train.weight_decay", "AdamW weight decay on matrices.", preset=True),
        Option("warmup", int, None, "train.warmup_steps", "Warmup steps.", preset=True),
        Option("schedule", str, "cosine", "train.schedule", "cosine or constant."),
        Option("min_lr_frac", float, 0.05, "train.min_lr_frac", "Cosine floor as a fraction of --lr."),
        Option("grad_clip", float, 1.0, "train.grad_clip", "Global gradient-norm clip (0 = off)."),
        Option("seed", int, 1337, "train.seed", "Random seed."),
    ),
    *_panel(BUDGET,
        Option("max_steps", int, None, "train.max_steps", "Stop after this many steps.", on_resume=APPLIED),
        Option("max_epochs", float, None, "train.max_epochs", "Stop after this many passes over the text.", on_resume=APPLIED),
        Option("max_time", DURATION, None, "train.max_time", "Stop after this long, e.g. 90s, 5m, 2h.", on_resume=APPLIED),
        Option("eval_interval", int, 200, "train.eval_interval", "Steps between validation passes."),
        Option("eval_tokens", int, 1_000_000, "train.eval_tokens", "Validation tokens scored during training (0 = the whole split)."),
        Option("eval_streams", int, None, "train.eval_streams", "Validation pieces scored side by side during training (default: the batch size; 1 = exact); torchrun ranks share them. The final evaluation is exact."),
        Option("patience", int, None, "train.patience", "Stop after this many evaluations without improvement.", on_resume=APPLIED),
    ),
    *_panel(OUTPUT,
        Option("run", Path, None, None, "Run directory (default: runs/<corpus>-<time>)."),
        Option("resume", Path, None, None, "Continue the run in this directory from its last checkpoint.", on_resume=APPLIED),
        Option("log_interval", int, 20, "train.log_interval", "Steps between progress updates.", on_resume=APPLIED),
        Option("save_interval", int, None, "train.save_interval", "Steps between saves of the last checkpoint (default: each evaluation).", on_resume=APPLIED),
        Option("sample_every", int, 1, "train.sample_every", "Show a sample every this many evaluations, and at the last (0 = off); kept in samples.jsonl.", on_resume=APPLIED),
        Option("sample_length", int, 200, "train.sample_length", "Characters per sample while training (--lines: per example, at most).", on_resume=APPLIED),
        Option("sample_prime", str, "", "train.sample_prime", "Text the samples while training start from (default: a line break).", on_resume=APPLIED),
        Option("quiet", bool, False, None, "No progress output.", on_resume=APPLIED),
    ),
    *_panel(DEVICES,
        Option("device", str, "auto", "train.device", "auto, cpu, cuda, cuda:N or mps.", on_resume=APPLIED),
        Option("precision", str, "auto", "train.precision", "auto (bf16 on CUDA), fp32 or bf16."),
        Option("nproc", int, None, None, "Train data-parallel on this many processes of this machine (starts torchrun).", on_resume=APPLIED),
    ),
)
# fmt: on

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
CORPUS = Option("corpus", FILES, None, None, "Text files, directories or - for stdin (default: the bundled corpus).")

# `run` and `resume` are parameters of `charrnn.runs.train` itself, not among its **options.
API_PARAMETERS = ("run", "resume")
KEYWORDS = tuple(name for name in BY_NAME if name not in API_PARAMETERS)
# A config file may hold any option but `config` and `resume`, and the corpus (CORPUS on the command line).
FILE_KEYS = ("corpus", *(name for name in BY_NAME if name not in ("config", "resume")))


def resume_applies() -> list[str]:
    """The flags `--resume` applies (all the others are fixed when a run starts)."""
    return [
        option.flag for option in OPTIONS if option.on_resume == APPLIED and option.name not in ("config", "resume")
    ]


def refused_on_resume(given: Iterable[str]) -> list[str]:
    return [BY_NAME[name].flag for name in given if name in BY_NAME and BY_NAME[name].on_resume == REFUSED]


def _suggest(name: str, known: Iterable[str]) -> str:
    if len(name) > 40:
        return ""  # no option's name is that long (and difflib is slow on long strings)
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(type_: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}
    names.update(
        {DURATION: "a duration such as 90s, 2m or 1.5h, or seconds", SIZE: "a size such as 500M or 2G, or bytes"}
    )
    return names.get(type_, "paths (one, or a list of them)")


def _shown(value: Any) -> str:
    """`value` for a message: its repr, cut short (a config file may hold a megabyte string)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a {type(value).__name__} nested too deeply"
    return text if len(text) <= 60 else text[:60] + "…"


def _path_text(value: Any, where: str) -> str:
    text = os.fspath(value)
    if isinstance(text, bytes):
        raise CharrnnError(f"{where} must be a path given as text, got {_shown(value)}")
    if "\x00" in text:
        raise CharrnnError(f"{where} must be a path, got {_shown(value)}: it holds a NUL character")
    if not text:
        raise CharrnnError(f"{where} must be a path, got an empty string")
    return text


def check_value(option: Option, value: Any, where: str) -> Any:
    """`value` as the option holds it (an int, float, str, bool, Path, seconds or list of str),
    or a CharrnnError naming `where` (the flag, keyword or config key) and what it must be."""
    if value is None and option.default is None:
        return None
    type_ = option.type
    if type_ is bool and isinstance(value, bool):
        return value
    if type_ is int and isinstance(value, int) and not isinstance(value, bool):
        if not -(1 << 63) <= value < 1 << 63:
            raise CharrnnError(f"{where} is out of range: {_shown(value)} does not fit in 64 bits")
        return value
    if type_ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_ is str and isinstance(value, str):
        return value
    if type_ is Path and isinstance(value, (str, os.PathLike)):
        return Path(_path_text(value, where))
    if type_ == DURATION:
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except CharrnnError as exc:
                raise CharrnnError(f"{where}: {exc}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            return float(value)
    if type_ == SIZE:
        if isinstance(value, str):
            try:
                return parse_size(value)
            except CharrnnError as exc:
                raise CharrnnError(f"{where}: {exc}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return parse_size(str(value))
            except CharrnnError as exc:
                raise CharrnnError(f"{where}: {exc}") from None
    if type_ == FILES:
        items = [value] if isinstance(value, (str, os.PathLike)) else value
        if isinstance(items, (list, tuple)) and items and all(isinstance(v, (str, os.PathLike)) for v in items):
            return [_path_text(v, where) for v in items]
    raise CharrnnError(f"{where} must be {_kind(type_)}, got {_shown(value)}")


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword options of `charrnn.runs.train`, checked against the table: an unknown name or a
    value of the wrong type is a CharrnnError that names it."""
    checked = {}
    for name, value in options.items():
        if name not in KEYWORDS:
            raise CharrnnError(f"unknown option {name!r} for charrnn.train{_suggest(name, KEYWORDS)}")
        checked[name] = check_value(BY_NAME[name], value, name)
    return checked


CONFIG_LIMIT = 1 << 20  # the most bytes of a --config file read: an options file is a few hundred


def read_config(path: Path) -> dict[str, Any]:
    """The options in a TOML file, keys spelled like the options (`seq-len` or `seq_len`), checked
    like keyword options; the corpus may be given as `corpus` (a path or a list of them). The file
    must be a regular file of at most CONFIG_LIMIT bytes (not /dev/zero, a pipe or a directory)."""
    raw = _parse_toml(path, _read_config_bytes(path))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in ("config", "resume"):
            raise CharrnnError(f"{path}: unknown key {key!r}: --{name} is given on the command line only")
        if name not in FILE_KEYS:
            raise CharrnnError(f"{path}: unknown key {_shown(key)}{_suggest(name, FILE_KEYS)}")
        if name in values:
            raise CharrnnError(f"{path}: {key!r} is given twice")
        option = BY_NAME.get(name) or CORPUS
        values[name] = check_value(option, value, f"{path}: {key}")
    return values


def _read_config_bytes(path: Path) -> bytes:
    try:  # O_NONBLOCK: opening a pipe that nobody writes to must not hang before the check below
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CharrnnError(f"cannot read config file {path}: {(exc.strerror or str(exc)).lower()}") from None
    except ValueError:
        raise CharrnnError(f"config file {_shown(str(path))} is not a path: it holds a NUL character") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CharrnnError(f"config file {path} is not a regular file")
    with open(fd, "rb") as handle:
        try:
            data = handle.read(CONFIG_LIMIT + 1)
        except OSError as exc:
            raise CharrnnError(f"cannot read config file {path}: {(exc.strerror or str(exc)).lower()}") from None
    if len(data) > CONFIG_LIMIT:
        raise CharrnnError(f"config file {path} is larger than {CONFIG_LIMIT >> 20} MiB: it is not an options file")
    return data


def _parse_toml(path: Path, data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is no error
    except UnicodeDecodeError as exc:
        raise CharrnnError(f"{path} is not valid TOML: it is not UTF-8 (bad byte at offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CharrnnError(f"{path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise CharrnnError(f"{path} is not an options file: its values are nested too deeply to read") from None


MAX_NPROC = 256  # --nproc starts this many processes: more is a typo, not a machine


def check_nproc(nproc: int) -> int:
    """`--nproc`, refused outside 1..MAX_NPROC before any process starts."""
    if not 1 <= nproc <= MAX_NPROC:
        raise CharrnnError(f"--nproc must be in 1..{MAX_NPROC}, got {_shown(nproc)}")
    return nproc


def to_argv(corpus: list[str], options: Mapping[str, Any]) -> list[str]:
    """The `charrnn train` command line that gives exactly these (checked) options."""
    argv = ["train"]
    for name, value in options.items():
        option = BY_NAME[name]
        if value is None:
            continue
        if option.type is bool:
            argv.append(option.flag if value else "--no-" + option.flag[2:])
        elif option.type == FILES:
            for item in value:
                argv += [option.flag, str(item)]
        else:
            argv += [option.flag, str(value)]
    return [*argv, "--", *corpus] if corpus else argv
