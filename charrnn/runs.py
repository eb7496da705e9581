"""Training from Python: `charrnn.train(...)` takes the options of `charrnn train` and returns a `Run`.

    run = charrnn.train("notes.txt", run="runs/notes", max_time="2m", hidden=256)
    run.best, run.history[-1]["train_loss"], run.load().generate("The ")

The options are checked against the table in `charrnn.options`, the one the command line is built
from, so a keyword here and a flag there mean the same thing. `charrnn train` calls this function
and only renders what it returns. From Python it is silent unless asked (`progress=True`).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn import options as table
from charrnn.arguments import flag
from charrnn.config import ModelConfig, TrainConfig, preset_settings
from charrnn.errors import CharrnnError
from charrnn.rundir import RunDir

if TYPE_CHECKING:
    from charrnn.inference import Model
    from charrnn.results import Report, TrainResult

PathLike = str | os.PathLike[str]


def bundled_corpus() -> Path | None:
    """corpora/kjv.txt: installed as package data (charrnn/corpora/ in site-packages), or at the top
    of a source checkout (corpora/, beside charrnn/)."""
    here = Path(__file__).resolve().parent
    for path in (here / "corpora" / "kjv.txt", here.parent / "corpora" / "kjv.txt"):
        if path.is_file():
            return path
    return None


@dataclass
class Run:
    """A run directory: its checkpoints, recorded config and metrics; `Run("runs/x")` opens one."""

    path: Path
    summary: TrainResult | None = field(default=None, repr=False)  # when this process trained it
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # this call's options, defaults filled in

    def __post_init__(self) -> None:
        if self.path is None:
            raise CharrnnError("a Run needs the path of its directory, got None")
        self.path = table.check_value(table.BY_NAME["run"], self.path, "the run's path")

    @property
    def best(self) -> Path | None:
        """The best checkpoint (lowest validation loss), or None before the first evaluation."""
        return RunDir(self.path).best_checkpoint()  # this version's file, else charrnn 0.1's

    @property
    def last(self) -> Path | None:
        """The checkpoint `resume` continues from, or None."""
        return RunDir(self.path).resume_from()

    @property
    def config(self) -> dict[str, Any]:
        """config.json: the resolved model and training configuration, and the corpus read."""
        return RunDir(self.path).read_config()

    @property
    def history(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one record per log interval (step, time, train_loss, lr, chars_per_sec,
        and val_loss where an evaluation ran); a last line cut short (a run being written) is left out."""
        return RunDir(self.path).read_metrics()

    def load(self, device: str = "auto") -> Model:
        from charrnn.inference import load

        return load(self.path, device=device)


def train(
    corpus: PathLike | Sequence[PathLike] | None = None,
    *,
    run: PathLike | None = None,
    resume: bool | PathLike = False,
    progress: bool | Report = False,
    handle_signals: bool = False,
    **options: Any,
) -> Run:
    """Train a model on `corpus` (a path or a list of paths: files, directories, "-" for standard
    input; default: the bundled corpus) into the run directory `run`, and return the `Run`.

    `options` are those of `charrnn train`, by their Python names (`hidden=256`, `max_time="2m"`
    or `max_time=120`, `config="exp.toml"`); an unknown name or a wrong type is a CharrnnError.
    `resume=True` continues `run` from its last checkpoint instead (a path continues that run);
    then only the options that a resume applies may be given (see `charrnn.options`).
    `progress=True` shows what `charrnn train` shows (or pass a `charrnn.results.Report`);
    `handle_signals=True` makes the first Ctrl-C or SIGTERM save and stop, as the command does.
    `init_from=` (a path or a `Run`) fine-tunes another model on `corpus` (docs/finetuning.md).
    """
    started = time.monotonic()  # a time budget is the whole call's: reading the text counts, as training does
    if isinstance(options.get("init_from"), Run):
        options["init_from"] = options["init_from"].path
    given = table.check_options(options)
    run = table.check_value(table.BY_NAME["run"], run, "run")  # its keywords, checked as the options are
    if not isinstance(resume, bool):
        resume = table.check_value(table.BY_NAME["resume"], resume, "resume")
    flag("handle_signals", handle_signals)
    if "config" in given:
        from_file = table.read_config(given.pop("config"))
        file_corpus, file_run = from_file.pop("corpus", None), from_file.pop("run", None)
        corpus = corpus if corpus is not None else file_corpus
        run = run if run is not None else file_run
        given = {**from_file, **given}
    values = {**{name: table.BY_NAME[name].default for name in table.KEYWORDS if name != "config"}, **given}
    if resume is not False and values["init_from"] is not None:
        raise CharrnnError("--init-from starts a new run and --resume continues one: give only one of them")
    if values["nproc"] is not None:
        return _under_torchrun(corpus, run, resume, given, quiet=not progress or values["quiet"])
    report = _report(progress, values["quiet"])
    if resume is not False:
        path, result = _continue(corpus, run, resume, given, report, handle_signals, started)
    else:
        path = Path(run) if run is not None else None
        path, result = _start(_sources(corpus), path, values, given, report, handle_signals, started)
    return Run(path, summary=result, options=values)


def _sources(corpus: PathLike | Sequence[PathLike] | None) -> list[str]:
    if corpus is None or (not isinstance(corpus, (str, os.PathLike)) and len(corpus) == 0):
        bundled = bundled_corpus()
        if bundled is None:
            raise CharrnnError("no corpus given and the bundled default corpus is not installed: pass a text file")
        return [str(bundled)]
    return table.check_value(table.CORPUS, corpus, "corpus")


def _report(progress: bool | Report, quiet: bool) -> Report:
    from charrnn import distributed
    from charrnn.results import Report

    if isinstance(progress, Report):
        return progress
    flag("progress", progress)
    if progress and not quiet and distributed.is_main_process():  # under torchrun only rank 0 reports
        from charrnn.display import train_report

        return train_report()
    return Report()


def _configs(values: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig, dict[str, dict[str, Any]] | None]:
    """The model settings and the TrainConfig the options give: a preset's values for the options
    it supplies that were not given, the table's defaults for the others. Third, for `--preset auto`
    on a CPU, the preset options that were given (by section), which the size chosen once the text
    is read (charrnn/sizing.py) must keep; None where no size is to be chosen."""
    from charrnn.devices import resolve_device

    device_type = resolve_device(values["device"]).type
    chosen = preset_settings(values["preset"], device_type)
    settings: dict[str, dict[str, Any]] = {"model": dict(chosen["model"]), "train": dict(chosen["train"])}
    given: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for option in table.OPTIONS:
        value = values.get(option.name)
        if option.field and not (option.preset and value is None):
            section, name = option.field.split(".")
            settings[section][name] = value
            if option.preset:
                given[section][name] = value
    if values["dropout"] is not None:
        settings["model"]["dropout_hidden"] = settings["model"]["dropout_output"] = values["dropout"]
        given["model"].update(dropout_hidden=values["dropout"], dropout_output=values["dropout"])
    train = settings["train"]
    train["eval_tokens"] = train["eval_tokens"] or None  # 0 means the whole split
    if values["val_file"]:
        train["val_frac"] = 0.0
    cfg = TrainConfig(**train)
    ModelConfig(vocab_size=2, **settings["model"])  # refuse bad sizes before reading any text
    sized = values["preset"] == "auto" and device_type != "cuda" and values["init_from"] is None
    return settings["model"], cfg, given if sized else None


def _start(
    sources: list[str],
    run: Path | None,
    values: dict[str, Any],
    given: dict[str, Any],
    report: Report,
    handle_signals: bool,
    started: float,
) -> tuple[Path, TrainResult]:
    from charrnn.data.corpus import STDIN, find_corpus, remove_spool
    from charrnn.training import train as train_new

    model_settings, cfg, auto_size = _configs(values)
    source = None
    if values["init_from"] is not None:  # a fine-tune: the source's architecture and tokenizer
        from charrnn import finetune

        source = finetune.open_source(values["init_from"])
        model_settings, cfg = finetune.configs(source, given, model_settings, cfg)
    if STDIN in sources and STDIN in (values["val_file"] or ()):
        raise CharrnnError("standard input can be read only once: give - as the corpus or as --val-file, not both")
    stdin = dict(spool_stdin=True, stdin_limit=values["stdin_limit"])  # train reads it twice: a bounded copy
    found = find_corpus(sources, pattern=values["glob"], encoding=values["encoding"], **stdin)
    val_corpus = find_corpus(values["val_file"], encoding=values["encoding"], **stdin) if values["val_file"] else None
    if STDIN in sources or STDIN in (values["val_file"] or ()):
        report.on_message(
            "note: standard input is not kept after training: this run cannot be resumed, "
            "and its eval, score and viz need the text given again"
        )
    path = run if run is not None else _default_run(sources)
    try:
        if source is not None and path.resolve() == source.run_dir:
            raise CharrnnError(f"--run {path} is the run --init-from reads, which is never written to: choose another")
        result = train_new(
            found,
            model_settings,
            cfg,
            path,
            val_corpus=val_corpus,
            report=report,
            handle_signals=handle_signals,
            init_from=source,
            budget_from=started,
            auto_size=auto_size,
        )
    finally:
        remove_spool()  # the copy of standard input, if one was made, is done with
    return path, result


def _default_run(sources: list[str]) -> Path:
    stem = Path(sources[0]).stem if sources[0] != "-" else "stdin"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resumed_path(corpus: Any, run: PathLike | None, resume: bool | PathLike, given: dict[str, Any]) -> Path:
    """The run to continue, once the options given are known to be ones a resume applies."""
    if corpus:
        raise CharrnnError("--resume continues the run's own corpus: give no CORPUS with it")
    refused = table.refused_on_resume(given)
    if resume is not True and run is not None:
        refused.append("--run")  # `--resume RUN` names the run; another --run would be ignored
    if refused:
        raise CharrnnError(
            f"--resume cannot change {', '.join(refused)}: they are fixed when a run starts "
            f"(a resume applies only {', '.join(table.resume_applies())})"
        )
    if resume is True:
        if run is None:
            raise CharrnnError("resume=True continues the run given as run=...: name its directory")
        return Path(run)
    return Path(resume)


def _continue(
    corpus: Any,
    run: PathLike | None,
    resume: bool | PathLike,
    given: dict[str, Any],
    report: Report,
    signals: bool,
    started: float,
) -> tuple[Path, TrainResult]:
    from charrnn.training import resume as resume_run

    path = _resumed_path(corpus, run, resume, given)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes = {name: value for name, value in given.items() if name in fields}  # budget, device, intervals
    return path, resume_run(path, budget=changes, report=report, handle_signals=signals, budget_from=started)


def _under_torchrun(
    corpus: Any, run: PathLike | None, resume: bool | PathLike, given: dict[str, Any], *, quiet: bool
) -> Run:
    """`nproc=N` from Python: `charrnn train` with the same options on N processes under torchrun,
    waited for. (The command line replaces itself by torchrun instead, see `charrnn.cli`.)"""
    from charrnn import distributed

    nproc = given.pop("nproc")
    if distributed.launched():
        raise CharrnnError("nproc starts torchrun itself: drop it when the code already runs under torchrun")
    table.check_nproc(nproc)
    options = {**given, "quiet": quiet}
    if resume is not False:
        path = _resumed_path(corpus, run, resume, given)
        options["resume"], sources = path, []
    else:
        sources = [s if s == "-" else str(Path(s).resolve()) for s in _sources(corpus)]
        path = Path(run) if run is not None else _default_run(sources)
        options["run"] = path
    command = distributed.torchrun_command(nproc, table.to_argv(sources, options))
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise CharrnnError(f"training under torchrun failed (exit status {done.returncode}): see its output above")
    return Run(path, options={**given, "nproc": nproc})
