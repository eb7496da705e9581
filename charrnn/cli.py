"""The `charrnn` command: thin Typer wrappers over the library.

Each command parses its options, calls one library function and renders the result. `train` is
built from the option table in `charrnn.options` (the one `charrnn.train` checks its keywords
against) and calls `charrnn.runs.train`. Errors meant for users (`CharrnnError`) and bad command
lines print one line on stderr and exit 1 or 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from charrnn import __version__, jsonout
from charrnn.dynamic import DynamicSettings
from charrnn.errors import CharrnnError, Interrupted
from charrnn.options import CORPUS, DURATION, FILES, OPTIONS, SIZE, Option, check_nproc, resume_applies

if TYPE_CHECKING:
    from charrnn.runs import Run

# Typer exports click's BadParameter but not its bases, and since typer 0.22 they live in typer's
# own copy of click rather than in click: reach them through the public name, whichever it is.
_CLICK_ERRORS = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError: type[Exception] = _CLICK_ERRORS["UsageError"]
ClickException: type[Exception] = _CLICK_ERRORS["ClickException"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # rich draws the help panels; help texts are escaped, so [preset] shows as written
    help="Train character-level recurrent language models on your own text, evaluate them, sample from them.",
)

_debug = False
_argv: list[str] = []  # the command line as given, for `train --nproc` to hand on to torchrun


def _version(value: bool) -> None:
    if value:
        print(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    global _debug
    _debug = debug


# ----- train: its parameters come from the option table -----

_CLI_TYPES: dict[Any, Any] = {FILES: list[str], DURATION: str, SIZE: str}


def _escape(text: str) -> str:
    return text.replace("[", r"\[")  # rich markup would take "[preset]" for a style tag


def _typer_parameter(option: Option) -> inspect.Parameter:
    annotation = _CLI_TYPES.get(option.type, option.type)
    if option.default is None:
        annotation = Optional[annotation]
    text = option.help + (" [preset]" if option.preset else "")
    info = typer.Option(*option.flags, help=_escape(text), rich_help_panel=option.panel)
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default, annotation=Annotated[annotation, info]
    )


def _train_signature() -> inspect.Signature:
    corpus = typer.Argument(help=_escape(CORPUS.help), metavar="CORPUS", show_default=False)
    return inspect.Signature(
        [
            inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
            inspect.Parameter(
                "corpus",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=Annotated[Optional[list[str]], corpus],
            ),
            *map(_typer_parameter, OPTIONS),
        ]
    )


def _given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options typed on the command line (not left at their defaults)."""
    given = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given[name] = value
    return given


def _show_summary(run: Run) -> None:
    from charrnn import distributed

    if run.summary is None or run.options.get("quiet") or not distributed.is_main_process():
        return  # under torchrun only rank 0 reports
    from charrnn.display import console, train_summary

    console.print(train_summary(run.summary))


def train(ctx: typer.Context, corpus: Optional[list[str]] = None, **values: Any) -> None:
    from charrnn import distributed
    from charrnn.runs import train as train_run

    given = _given(ctx, values)
    if values["nproc"] is not None:  # this process becomes torchrun, which runs this command N times
        check_nproc(values["nproc"])
        announce = None if values["quiet"] else lambda line: print(f"running: {line}")
        distributed.relaunch(values["nproc"], _argv, announce=announce)
    run, resume = given.pop("run", None), given.pop("resume", None)
    result = train_run(corpus or None, run=run, resume=resume or False, progress=True, handle_signals=True, **given)
    _show_summary(result)


train.__signature__ = _train_signature()  # type: ignore[attr-defined]
train.__doc__ = (
    "Train a model on CORPUS (or continue one with --resume).\n\n"
    f"With --resume only {', '.join(resume_applies())} may be given: the budget, and what is safe "
    "to change halfway. Every other option is fixed when the run starts, and is refused."
)
app.command()(train)


@app.command()
def convert(
    path: Annotated[Path, typer.Argument(help="A format-1 checkpoint (.pt), or a run directory: all its .pt files.")],
    out: Annotated[
        Optional[Path],
        typer.Argument(
            help="Where to write: a file for one checkpoint, a directory for a run (default: beside each, as .safetensors).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rewrite format-1 (.pt) checkpoints as format-2 .safetensors files; the old files stay."""
    from charrnn.checkpoint import convert as convert_checkpoints

    def note(message: str) -> None:
        print(f"charrnn: note: {message}", file=sys.stderr)

    for old, new in convert_checkpoints(path, out, note=note):
        print(f"{old} -> {new}")


# ----- dynamic evaluation's options, shared by eval, score and viz (charrnn.dynamic) -----

DynamicFlag = Annotated[
    bool,
    typer.Option(
        "--dynamic",
        help="Also score by dynamic evaluation: a copy of the weights learns from each segment after "
        "predicting it (docs/evaluation.md).",
    ),
]
_DYN = DynamicSettings()
DynamicSegment = Annotated[
    Optional[int], typer.Option(help=f"--dynamic: tokens per update (default {_DYN.segment}).", show_default=False)
]
DynamicLr = Annotated[
    Optional[float], typer.Option(help=f"--dynamic: learning rate (default {_DYN.lr:g}).", show_default=False)
]
DynamicDecay = Annotated[
    Optional[float],
    typer.Option(help=f"--dynamic: decay toward the trained weights (default {_DYN.decay:g}).", show_default=False),
]
DynamicClip = Annotated[
    Optional[float],
    typer.Option(
        help=f"--dynamic: the gradient's largest norm, in training-gradient norms for rms (default {_DYN.clip:g}; 0: none).",
        show_default=False,
    ),
]
DynamicMethod = Annotated[
    Optional[str],
    typer.Option(help=f"--dynamic: rms (Krause et al.) or sgd (default {_DYN.method}).", show_default=False),
]


def _dynamic_settings(
    dynamic: bool,
    segment: int | None,
    lr: float | None,
    decay: float | None,
    clip: float | None,
    method: str | None,
    owner: str = "--dynamic",
) -> DynamicSettings | None:
    """The settings of --dynamic (None without it); a --dynamic-* option without it is refused."""
    given = {"segment": segment, "lr": lr, "decay": decay, "clip": clip, "method": method}
    given = {name: value for name, value in given.items() if value is not None}
    if not dynamic:
        if given:
            raise CharrnnError(f"--dynamic-{next(iter(given))} is an option of {owner}: add {owner}")
        return None
    return DynamicSettings(**given)


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    text: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Files (or -) to score; default: the run's validation and test splits.", show_default=False
        ),
    ] = None,
    encoding: Annotated[str, typer.Option(help="Encoding of the given text files.")] = "utf-8",
    streams: Annotated[
        int, typer.Option(help="Score the text as this many contiguous pieces side by side (1 = exact).")
    ] = 1,
    baselines: Annotated[
        bool, typer.Option("--baselines/--no-baselines", help="Also report gzip/bzip2/xz bits per character.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dynamic: DynamicFlag = False,
    dynamic_segment: DynamicSegment = None,
    dynamic_lr: DynamicLr = None,
    dynamic_decay: DynamicDecay = None,
    dynamic_clip: DynamicClip = None,
    dynamic_method: DynamicMethod = None,
) -> None:
    """Report loss, bits per character and perplexity of a model on held-out text.

    Under torchrun the --streams pieces are shared among the ranks; the result is the same.
    With --dynamic, the static and the dynamic figures side by side, and the gain.
    """
    from charrnn import distributed
    from charrnn.evaluate import evaluate_run

    if streams < 1:
        raise CharrnnError(f"--streams must be at least 1, got {streams}")
    settings = _dynamic_settings(dynamic, dynamic_segment, dynamic_lr, dynamic_decay, dynamic_clip, dynamic_method)
    rows = evaluate_run(
        run, text or [], encoding=encoding, streams=streams, baselines=baselines, device=device, dynamic=settings
    )
    if not distributed.is_main_process():
        return  # under torchrun every rank scores its share; rank 0 reports
    if as_json:
        print(jsonout.dumps({name: row for name, row in rows}, indent=2))
    else:
        from charrnn.display import console, eval_table

        console.print(eval_table(rows))


@app.command()
def score(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    text_file: Annotated[
        Optional[str],
        typer.Argument(
            help="Text to score, or - for standard input (default: the run's validation text).", show_default=False
        ),
    ] = None,
    whole: Annotated[bool, typer.Option("--whole", help="One record for the whole text, not one per line.")] = False,
    sort: Annotated[bool, typer.Option("--sort", help="Lines by bits per character, highest first.")] = False,
    top: Annotated[
        Optional[int], typer.Option(help="Only the N lines of most bits per character, highest first.")
    ] = None,
    independent: Annotated[
        bool,
        typer.Option("--independent", help="Score each line on its own, from a fresh state (default: in context)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines, one record per line.")] = False,
    encoding: Annotated[str, typer.Option(help="Encoding of TEXT_FILE.")] = "utf-8",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dynamic: DynamicFlag = False,
    dynamic_segment: DynamicSegment = None,
    dynamic_lr: DynamicLr = None,
    dynamic_decay: DynamicDecay = None,
    dynamic_clip: DynamicClip = None,
    dynamic_method: DynamicMethod = None,
) -> None:
    """Bits per character of each line of a text, and its most surprising character: find the odd lines.

    One stateful pass, as eval makes it: lines are scored in context, the state carried, and their
    bits add up to eval's. Lines and columns count from 1; a line break belongs to the line it
    ends. See docs/scoring.md.
    """
    from charrnn.line_scores import score_file, scores_table

    settings = _dynamic_settings(dynamic, dynamic_segment, dynamic_lr, dynamic_decay, dynamic_clip, dynamic_method)
    scores = score_file(
        run,
        text_file,
        whole=whole,
        independent=independent,
        sort=sort,
        top=top,
        encoding=encoding,
        device=device,
        dynamic=settings,
    )
    if as_json:
        for record in scores:
            print(jsonout.dumps(record.as_dict(), ensure_ascii=False))
    else:
        _console(160).print(scores_table(scores))
    if scores.total.unknown:
        unknown = f"{scores.total.unknown:,} characters are not in the model's vocabulary: scored as <unk>"
        print(f"charrnn: note: {unknown}", file=sys.stderr)


SampleLength = Annotated[
    Optional[int],
    typer.Option(
        help="New characters per sample (default 500; on a --lines run, the most per example: "
        "twice the corpus's longest line, at least 100).",
        show_default=False,
    ),
]
NumSamples = Annotated[
    int, typer.Option(help="Samples generated together as one batch (on a --lines run: examples, one a line).")
]
Adapt = Annotated[
    Optional[Path],
    typer.Option(
        help="Read this document by dynamic evaluation (the weights, a copy, learn from it), then "
        "continue it: primed with its end (and --prime), from the adapted weights.",
        show_default=False,
    ),
]
AdaptOnlyState = Annotated[
    bool, typer.Option("--adapt-only-state", help="--adapt, for comparison: primed with its end, weights as trained.")
]


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    prime: Annotated[str, typer.Option(help="Text to continue (on a --lines run: the start of every example).")] = "",
    prime_file: Annotated[Optional[Path], typer.Option(help="Read the prime from this file.")] = None,
    length: SampleLength = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1] (1 = off).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text.")] = None,
    num_samples: NumSamples = 1,
    stop: Annotated[
        Optional[list[str]], typer.Option(help="Stop a sample where this text appears (repeatable).")
    ] = None,
    unique: Annotated[bool, typer.Option("--unique", help="--lines run: no example twice.")] = False,
    novel: Annotated[
        bool, typer.Option("--novel", help="--lines run: only examples that are no line of the corpus.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the samples as JSON (on a --lines run, each with its flag).")
    ] = False,
    output: Annotated[Optional[Path], typer.Option(help="Write the samples to this file instead of stdout.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
    adapt: Adapt = None,
    adapt_only_state: AdaptOnlyState = False,
    dynamic_segment: DynamicSegment = None,
    dynamic_lr: DynamicLr = None,
    dynamic_decay: DynamicDecay = None,
    dynamic_clip: DynamicClip = None,
    dynamic_method: DynamicMethod = None,
) -> None:
    """Generate text from a trained model; from a --lines run, whole examples, one a line (and a
    line on stderr counting the examples that are new and those that copy a corpus line)."""
    import warnings

    from charrnn.inference import CharrnnWarning, load

    _check_output(output)
    prime = _prime_text(prime, prime_file)
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop or ())
    model = _check_lines_flags(load(run, device), run, unique=unique, novel=novel)  # before any adapting
    options = (dynamic_segment, dynamic_lr, dynamic_decay, dynamic_clip, dynamic_method)
    model, context = _adapted(model, adapt, adapt_only_state, options)
    count = 500 if length is None else length
    live = output is None and num_samples == 1 and not as_json and not model.lines  # shown as it is made
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", CharrnnWarning)
        if model.lines:
            made = model.examples(num_samples, prime, unique=unique, novel=novel, length=length, **settings)
        elif live:
            pieces = model.stream(context + prime, length=count, **settings)
        else:
            made = model.generate(context + prime, count, num_samples=num_samples, **settings)
    if live:
        _show_live(prime, pieces)
    else:
        _write_samples(made, prime, as_json, output)
    sys.stdout.flush()
    _relay(notes, CharrnnWarning)
    if model.lines:
        print(f"charrnn: {made.summary()}", file=sys.stderr)


def _adapted(model: Any, adapt: Path | None, only_state: bool, options: tuple) -> tuple[Any, str]:
    """--adapt: the model that read the document (or, --adapt-only-state, the model as trained;
    `options`: the --dynamic-* values), and the document's end, which primes it (before --prime;
    not printed)."""
    dynamic = _dynamic_settings(adapt is not None and not only_state, *options, owner="--adapt")
    if adapt is None:
        if only_state:
            raise CharrnnError("--adapt-only-state is an option of --adapt: name the document with --adapt")
        return model, ""
    if model.lines:
        raise CharrnnError("--adapt continues a document: a --lines run draws whole examples instead")
    from charrnn.data.corpus import find_corpus
    from charrnn.inference import adapt_context

    text = find_corpus([str(adapt)]).read_text()
    if not text:
        raise CharrnnError(f"{adapt} is empty: there is nothing to adapt to")
    return (model if dynamic is None else model.adapt(text, dynamic=dynamic)), adapt_context(text)


def _check_lines_flags(model: Any, run: Path, *, unique: bool, novel: bool) -> Any:
    """The model, once --unique and --novel are known to apply to it (a --lines run)."""
    if not model.lines and (unique or novel):
        flag = "--novel" if novel else "--unique"
        raise CharrnnError(f"{flag} needs a run trained with --lines (one example per line); {run} was not")
    return model


def _prime_text(prime: str, prime_file: Path | None) -> str:
    """The prime given with --prime, or read strictly from --prime-file (not both)."""
    if prime_file is None:
        return prime
    if prime:
        raise CharrnnError("give --prime or --prime-file, not both")
    from charrnn.data.corpus import find_corpus

    return find_corpus([str(prime_file)]).read_text()


def _relay(notes: list, ours: type[Warning]) -> None:
    """charrnn's own warnings as one 'note' line each on stderr; any other warning as Python shows it."""
    import warnings

    for note in notes:
        if issubclass(note.category, ours):
            print(f"charrnn: note: {note.message}", file=sys.stderr)
        else:
            warnings.showwarning(note.message, note.category, note.filename, note.lineno)


def _show_live(prime: str, pieces: Any) -> None:
    """One sample to stdout as it is made: the first piece flushed at once, later ones at most every 50 ms."""
    import time

    sys.stdout.write(prime)
    flushed = 0.0
    for piece in pieces:
        sys.stdout.write(piece)
        if time.perf_counter() - flushed > 0.05:
            sys.stdout.flush()
            flushed = time.perf_counter()
    sys.stdout.write("\n")


def _check_output(output: Optional[Path]) -> None:
    """An unusable --output is refused before any time goes into generating."""
    import os

    if output is None:
        return
    folder = output.parent
    if not folder.is_dir():
        raise CharrnnError(f"cannot write {output}: directory {folder} does not exist")
    if output.is_dir():
        raise CharrnnError(f"cannot write {output}: it is a directory")
    if not os.access(folder, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise CharrnnError(f"cannot write {output}: permission denied")


def _write_samples(made: Any, prime: str, as_json: bool, output: Optional[Path]) -> None:
    """The samples to stdout or --output: examples of a --lines run one a line, other samples after
    their prime (one alone, or each under a header), or as JSON."""
    from charrnn.sample.examples import Examples

    if isinstance(made, Examples):
        records = [{"text": text, "flag": flag} for text, flag in zip(made.texts, made.flags)]
        body = "".join(f"{text}\n" for text in made.texts)
    else:
        texts = [prime + text for text in (made if isinstance(made, list) else [made])]
        records = [{"text": text} for text in texts]
        blocks = "\n".join(f"----- sample {i} -----\n{text}\n" for i, text in enumerate(texts, start=1))
        body = blocks if output is None or len(texts) > 1 else texts[0]
    if as_json:
        document: dict[str, Any] = {"samples": records}
        if isinstance(made, Examples):
            document.update(counts=made.counts(), asked=made.asked, drawn=made.drawn)
        body = jsonout.dumps(document, ensure_ascii=False, indent=2) + "\n"
    if output is None:
        sys.stdout.write(body)
    else:
        from charrnn.files import atomic_write

        atomic_write(output, lambda handle: handle.write(body.encode("utf-8")))


def _quiet_when_the_reader_leaves(callback: Any) -> Any:
    """`callback`, ending with exit 0 and no message when stdout's reader goes away (`charrnn
    sample | head`): what the reader asked for it has. Typer would turn the broken pipe into a
    bare exit 1, which fails a `set -o pipefail` script for nothing."""
    import functools

    @functools.wraps(callback)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except BrokenPipeError:
            import os

            # Whatever is still buffered for the closed pipe goes nowhere, quietly, at exit too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None

    return command


class _Stdout:
    """sys.stdout for the length of a command, remembering the OSError a write or flush of it
    raised: a full disk (`charrnn sample > /dev/full`) is then told from any other OSError."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def _noted(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as exc:
            self.error = exc
            raise

    def write(self, text: str) -> int:
        return self._noted(self.stream.write, text)

    def flush(self) -> None:
        self._noted(self.stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _stdout_failed(stdout: _Stdout, exc: OSError) -> None:
    """Stdout cannot take what was written: one line, exit 1; a reader that left (a broken pipe)
    is exit 0, as in `_quiet_when_the_reader_leaves`. What is still buffered for it is dropped,
    so that the interpreter's last flush does not fail again ("Exception ignored ...")."""
    import os

    from charrnn.files import os_error_reason

    if stdout.stream is sys.__stdout__:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.stream.fileno())
        except (OSError, ValueError):
            pass
    if isinstance(exc, BrokenPipeError):
        sys.exit(0)
    _fail(f"could not write to standard output: {os_error_reason(exc)}", 1)


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"charrnn: error: {first}", file=sys.stderr)
    sys.exit(code)


def _untag_flags(command: Any) -> None:
    """A flag takes no value, but typer's rich help gives it a type like any option (`--help
    <bool>`), which reads as if it wanted one. An empty metavar leaves that column blank for
    flags, in this command and every subcommand; options that take a value keep their type. A
    repeatable option takes one value each time it is given: `--stop <str>`, not `<list[str]>`."""
    ctx = typer.Context(command)
    for param in command.get_params(ctx):  # --help included
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif getattr(param, "multiple", False) and hasattr(param, "display_type"):  # typer >= 0.22
            label = param.display_type(ctx)
            if label.startswith("<list[") and label.endswith("]>"):
                param.metavar = f"<{label[6:-2]}>"
    for sub in getattr(command, "commands", {}).values():
        _untag_flags(sub)


def main(argv: list[str] | None = None) -> None:
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    for sub in getattr(command, "commands", {}).values():
        sub.callback = _quiet_when_the_reader_leaves(sub.callback)
    _untag_flags(command)
    stdout = sys.stdout = _Stdout(sys.stdout)
    try:
        _run(command, argv, stdout)
    finally:
        try:
            stdout.flush()  # a full disk is found here, not in the interpreter's flush at exit
        except OSError as exc:
            _stdout_failed(stdout, exc)
        finally:
            sys.stdout = stdout.stream


def _run(command: Any, argv: list[str] | None, stdout: _Stdout) -> None:
    """Run the command line; every way it ends becomes an exit status (and one line on stderr)."""
    try:
        code = command.main(args=argv, prog_name="charrnn", standalone_mode=False)
        sys.stdout.flush()
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            if exc.format_message():  # the help text; with rich markup it was printed already
                print(exc.format_message())
            sys.exit(0)
        if _debug:
            raise
        # _fail says "charrnn: error:" already; the command whose help to read goes at the end
        path = exc.ctx.command_path if exc.ctx else "charrnn"
        _fail(f"{exc.format_message().rstrip('.')} (see {path} --help)", 2)
    except ClickException as exc:
        _fail(exc.format_message(), exc.exit_code or 1)
    except CharrnnError as exc:
        if _debug:
            raise
        _fail(str(exc), 1)
    except Interrupted as exc:
        from charrnn.distributed import is_main_process

        if is_main_process():  # under torchrun every rank stops; rank 0 says so
            print(f"charrnn: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a bug: one line by default, the traceback with --debug
        if isinstance(exc, OSError) and exc is stdout.error:
            _stdout_failed(stdout, exc)
        if _debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)


# ----- looking at runs: `plot` and `runs` (issue 12) -----


def _console(pipe_width: int) -> Any:
    """A rich console for plots and tables: the terminal's width, or `pipe_width` in a pipe or log."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else pipe_width)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories.", show_default=False)],
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Figure file, .png, .svg or .pdf (default: curves.png, none with --term)."),
    ] = None,
    x: Annotated[str, typer.Option("--x", help="x axis: step, time, or chars (characters trained on).")] = "step",
    term: Annotated[bool, typer.Option("--term", help="Draw the curves in the terminal.")] = False,
) -> None:
    """Draw the train and validation loss of runs in bits per character, with gzip and xz for reference.

    A run that cannot be read is left out, named on stderr; only if none can be read is it an error.
    """
    from charrnn.plot import load_curves, output_format, plot_runs

    said: set[Path] = set()

    def skip(run: Path, reason: str) -> None:
        if run not in said:  # --term with --output reads the runs twice: say it once
            said.add(run)
            print(f"charrnn: note: left out {run}: {reason}", file=sys.stderr)

    if term:
        from charrnn.termplot import terminal_figure

        if output is not None:
            output_format(output)  # refused before anything is drawn
        console = _console(100)
        console.print(terminal_figure(load_curves(runs, x, on_skip=skip), x, width=min(console.width, 120), height=20))
        if output is None:
            return
    print(f"wrote {plot_runs(runs, output or Path('curves.png'), x=x, on_skip=skip)}")


@app.command("runs")
def runs_(
    directory: Annotated[Path, typer.Argument(help="A directory of runs.")] = Path("runs"),
    sort: Annotated[str, typer.Option(help="val (best first), created (newest first), name or steps.")] = "val",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every run in DIRECTORY: corpus, size, steps, time, best validation bits per character, status."""
    from charrnn.runs_table import list_runs, runs_table

    rows = list_runs(directory, sort=sort)
    if as_json:
        print(jsonout.dumps([row.as_dict() for row in rows], indent=2))
    elif not rows:
        print(f"no runs in {directory}")
    else:
        _console(160).print(runs_table(rows, f"{len(rows)} run{'s' if len(rows) != 1 else ''} in {directory}"))


@app.command()
def viz(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    text_file: Annotated[
        Optional[str],
        typer.Argument(
            help="Text to explain, or - for stdin (default: the run's validation text).", show_default=False
        ),
    ] = None,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", help="Write the page here (default: RUN/explain.html).", show_default=False),
    ] = None,
    term: Annotated[
        bool, typer.Option("--term", help="Print the text coloured by surprisal instead of a page.")
    ] = False,
    color: Annotated[
        str,
        typer.Option(
            help="--term: auto (colour on a terminal, unless NO_COLOR), always (for less -R), or never "
            "(a line of marks under the text shows what each character cost)."
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-character records as JSON instead.")] = False,
    max_chars: Annotated[int, typer.Option(help="Explain the first N characters of the text.")] = 5000,
    encoding: Annotated[str, typer.Option(help="Encoding of TEXT_FILE.")] = "utf-8",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dynamic: DynamicFlag = False,
    dynamic_segment: DynamicSegment = None,
    dynamic_lr: DynamicLr = None,
    dynamic_decay: DynamicDecay = None,
    dynamic_clip: DynamicClip = None,
    dynamic_method: DynamicMethod = None,
) -> None:
    """Show what each character of a text cost the model, and what its units track, on one HTML page.
    With --dynamic the page can colour each character by its static or its dynamic bits."""
    from charrnn.viz import check_output, default_page, explain_run, json_document, write_page
    from charrnn.viz.term import COLOR_CHOICES, print_term

    if color not in COLOR_CHOICES:
        raise CharrnnError(f"--color must be one of {', '.join(COLOR_CHOICES)}, got {color!r}")
    if term and as_json:
        raise CharrnnError("--term and --json both print to standard output: choose one")
    page = html if html is not None or term or as_json else default_page(run)
    settings = _dynamic_settings(dynamic, dynamic_segment, dynamic_lr, dynamic_decay, dynamic_clip, dynamic_method)
    if page is not None:
        check_output(page)
    expl = explain_run(run, text_file, max_chars=max_chars, encoding=encoding, device=device, dynamic=settings)
    if page is not None:
        write_page(expl, page)
        print(f"wrote {page}: open it in a browser", file=sys.stderr if as_json else sys.stdout)
    if term:
        print_term(expl, color=color)
    if as_json:
        print(jsonout.dumps(json_document(expl), ensure_ascii=False))


# ----- serve: the limits' defaults are charrnn.serve.limits.Limits's -----


def _limit_default(name: str) -> Any:
    from charrnn.serve.limits import Limits

    return getattr(Limits, name)


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    host: Annotated[str, typer.Option(help="Address to listen on; any but loopback needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).")] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(envvar="CHARRNN_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY'."),
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Most characters one choice may ask for.")] = _limit_default(
        "max_tokens"
    ),
    max_prompt: Annotated[int, typer.Option(help="Most characters of a prompt or a text to score.")] = _limit_default(
        "max_prompt"
    ),
    max_body: Annotated[int, typer.Option(help="Most bytes of a request body.")] = _limit_default("max_body"),
    max_streams: Annotated[int, typer.Option(help="Streams stepped together in the batch.")] = _limit_default(
        "max_streams"
    ),
    max_queue: Annotated[int, typer.Option(help="Streams that may wait for room (429 beyond).")] = _limit_default(
        "max_queue"
    ),
    time_limit: Annotated[float, typer.Option(help="Seconds a request may take, waiting included.")] = _limit_default(
        "time_limit"
    ),
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a client may take to send a request's head, and its body.")
    ] = _limit_default("body_timeout"),
    grace: Annotated[float, typer.Option(help="Seconds streams in flight get on SIGINT/SIGTERM.")] = _limit_default(
        "grace"
    ),
) -> None:
    """Keep a model loaded behind an OpenAI-compatible HTTP API (/v1/completions, /v1/models,
    /v1/score) and a page at /, batching every concurrent stream into one step (docs/serving.md)."""
    from charrnn.serve import Limits
    from charrnn.serve import serve as serve_run

    limits = Limits(max_tokens, max_prompt, max_body, max_streams, max_queue, time_limit, body_timeout, grace)
    serve_run(run, host, port, api_key, limits)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    onnx: Annotated[
        Optional[Path], typer.Option("--onnx", help="Write the network as an ONNX graph here.", show_default=False)
    ] = None,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", help="Write a self-contained page that generates in the browser.", show_default=False),
    ] = None,
    precision: Annotated[str, typer.Option(help="The page's weights: float32, float16 or int8.")] = "float16",
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")] = False,
) -> None:
    """Export the model to run outside Python: an ONNX graph, and/or one offline HTML page (docs/export.md)."""
    from charrnn.export.write import export as export_run

    for line in export_run(run, onnx=onnx, html=html, precision=precision, force=force):
        print(line)
