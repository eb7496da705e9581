"""The `charrnn` command: thin Typer wrappers over the library.

Each command parses its options, builds a config, calls one library function
and renders the result. Errors meant for users (`CharrnnError`) and bad
command lines print one line on stderr and exit 1 or 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # Typer >= 0.22 carries its own copy of click; older releases use click itself
    from typer._click import exceptions as click_errors
except ImportError:
    from click import exceptions as click_errors

from charrnn import __version__
from charrnn.errors import CharrnnError, Interrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train character-level recurrent language models on your own text, evaluate them, sample from them.",
)

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "kjv.txt"
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


@app.command()
def train(
    corpus: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Text files, directories or - for stdin (default: the bundled corpus).", show_default=False
        ),
    ] = None,
    run: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/<corpus>-<time>).")] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="Continue the run in this directory from its last checkpoint.")
    ] = None,
    glob: Annotated[str, typer.Option(help="Filename pattern for directories.")] = "*",
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus.")] = "utf-8",
    val_file: Annotated[Optional[list[str]], typer.Option(help="Validation text instead of --val-frac.")] = None,
    val_frac: Annotated[float, typer.Option(help="Fraction of the text (its end) held out for validation.")] = 0.05,
    test_frac: Annotated[float, typer.Option(help="Fraction held out for testing (after validation).")] = 0.0,
    preset: Annotated[
        str, typer.Option(help="Defaults for the options marked [preset]: auto (gpu on CUDA, else cpu), cpu or gpu.")
    ] = "auto",
    tokenizer: Annotated[str, typer.Option(help="char, byte, bpe or unigram.")] = "char",
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size for bpe/unigram.")] = None,
    cell: Annotated[Optional[str], typer.Option(help="lstm, gru or rnn [preset].")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Stacked RNN layers [preset].")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden units per layer [preset].")] = None,
    embed: Annotated[Optional[int], typer.Option(help="Embedding size [preset].")] = None,
    dropout: Annotated[
        Optional[float], typer.Option(help="Sets --dropout-hidden and --dropout-output together.")
    ] = None,
    dropout_embed: Annotated[Optional[float], typer.Option(help="Dropout on embeddings [preset].")] = None,
    dropout_hidden: Annotated[Optional[float], typer.Option(help="Dropout between RNN layers [preset].")] = None,
    dropout_output: Annotated[Optional[float], typer.Option(help="Dropout before the output layer [preset].")] = None,
    tie: Annotated[
        Optional[bool], typer.Option("--tie/--no-tie", help="Tie input and output embeddings [preset].")
    ] = None,
    weight_drop: Annotated[
        Optional[float], typer.Option(help="DropConnect on hidden-to-hidden weights, AWD-LSTM style [preset].")
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="Parallel streams per step, per process under torchrun [preset].")
    ] = None,
    seq_len: Annotated[
        Optional[int], typer.Option(help="Tokens per stream per step, the BPTT length [preset].")
    ] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of AdamW [preset].")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay on matrices [preset].")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warmup steps [preset].")] = None,
    schedule: Annotated[str, typer.Option(help="cosine or constant.")] = "cosine",
    min_lr_frac: Annotated[float, typer.Option(help="Cosine floor as a fraction of --lr.")] = 0.05,
    grad_clip: Annotated[float, typer.Option(help="Global gradient-norm clip (0 = off).")] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.")] = None,
    max_epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the text.")] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop after this long, e.g. 90s, 5m, 2h.")] = None,
    eval_interval: Annotated[int, typer.Option(help="Steps between validation passes.")] = 200,
    eval_tokens: Annotated[
        int, typer.Option(help="Validation tokens scored during training (0 = the whole split).")
    ] = 1_000_000,
    eval_streams: Annotated[
        int, typer.Option(help="Validation pieces scored side by side (1 = exact); torchrun ranks share them.")
    ] = 1,
    patience: Annotated[
        Optional[int], typer.Option(help="Stop after this many evaluations without improvement.")
    ] = None,
    log_interval: Annotated[int, typer.Option(help="Steps between progress updates.")] = 20,
    save_interval: Annotated[
        Optional[int], typer.Option(help="Steps between saves of last.pt (default: each evaluation).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1337,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA), fp32 or bf16.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    nproc: Annotated[
        Optional[int],
        typer.Option(help="Train data-parallel on this many processes of this machine (starts torchrun)."),
    ] = None,
) -> None:
    """Train a model on CORPUS (or continue one with --resume)."""
    from charrnn import distributed
    from charrnn.config import TrainConfig, parse_duration
    from charrnn.data.corpus import find_corpus
    from charrnn.display import console, train_report, train_summary
    from charrnn.train import resume as resume_run
    from charrnn.train import train as train_run

    if nproc is not None:
        distributed.relaunch(nproc, _argv, announce=None if quiet else lambda line: print(f"running: {line}"))
    quiet = quiet or not distributed.is_main_process()  # under torchrun only rank 0 reports
    seconds = parse_duration(max_time) if max_time is not None else None
    report = train_report(quiet=quiet)
    if resume is not None:
        if corpus:
            raise CharrnnError("--resume continues the run's own corpus: give no CORPUS with it")
        budget = {"max_steps": max_steps, "max_epochs": max_epochs, "max_time": seconds}
        result = resume_run(resume, budget=budget, report=report, handle_signals=True)
    else:
        sources = corpus or [str(DEFAULT_CORPUS)]
        if not corpus and not DEFAULT_CORPUS.is_file():
            raise CharrnnError("no corpus given and the bundled default corpus is not installed: pass a text file")
        if dropout is not None:
            dropout_hidden = dropout_output = dropout
        from charrnn.config import ModelConfig, preset_settings
        from charrnn.devices import resolve_device

        chosen = preset_settings(preset, resolve_device(device).type)
        given_model = dict(
            cell=cell,
            num_layers=layers,
            hidden_size=hidden,
            embed_size=embed,
            dropout_embed=dropout_embed,
            dropout_hidden=dropout_hidden,
            dropout_output=dropout_output,
            tie_weights=tie,
            weight_drop=weight_drop,
        )
        given_train = dict(
            batch_size=batch_size, seq_len=seq_len, lr=lr, weight_decay=weight_decay, warmup_steps=warmup
        )
        model_settings = {**chosen["model"], **{k: v for k, v in given_model.items() if v is not None}}
        train_settings = {**chosen["train"], **{k: v for k, v in given_train.items() if v is not None}}
        cfg = TrainConfig(
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            val_frac=0.0 if val_file else val_frac,
            test_frac=test_frac,
            schedule=schedule,
            min_lr_frac=min_lr_frac,
            grad_clip=grad_clip,
            max_steps=max_steps,
            max_epochs=max_epochs,
            max_time=seconds,
            eval_interval=eval_interval,
            eval_tokens=eval_tokens or None,
            eval_streams=eval_streams,
            patience=patience,
            log_interval=log_interval,
            save_interval=save_interval,
            seed=seed,
            device=device,
            precision=precision,
            **train_settings,
        )
        ModelConfig(vocab_size=2, **model_settings)  # refuse bad sizes before reading any text
        found = find_corpus(sources, pattern=glob, encoding=encoding)
        val_corpus = find_corpus(val_file, encoding=encoding) if val_file else None
        if run is None:
            stem = Path(sources[0]).stem if sources[0] != "-" else "stdin"
            run = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        result = train_run(found, model_settings, cfg, run, val_corpus=val_corpus, report=report, handle_signals=True)
    if not quiet:
        console.print(train_summary(result))


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
) -> None:
    """Report loss, bits per character and perplexity of a model on held-out text.

    Under torchrun the --streams pieces are shared among the ranks; the result is the same.
    """
    from charrnn import distributed
    from charrnn.evaluate import evaluate_run

    if streams < 1:
        raise CharrnnError(f"--streams must be at least 1, got {streams}")
    rows = evaluate_run(run, text or [], encoding=encoding, streams=streams, baselines=baselines, device=device)
    if not distributed.is_main_process():
        return  # under torchrun every rank scores its share; rank 0 reports
    if as_json:
        print(json.dumps({name: row for name, row in rows}, indent=2))
    else:
        from charrnn.display import console, eval_table

        console.print(eval_table(rows))


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    prime: Annotated[str, typer.Option(help="Text to continue.")] = "",
    prime_file: Annotated[Optional[Path], typer.Option(help="Read the prime from this file.")] = None,
    length: Annotated[int, typer.Option(help="New characters per sample.")] = 500,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1] (1 = off).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text.")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples generated together as one batch.")] = 1,
    stop: Annotated[
        Optional[list[str]], typer.Option(help="Stop a sample where this text appears (repeatable).")
    ] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the samples to this file instead of stdout.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
) -> None:
    """Generate text from a trained model."""
    from charrnn.sample.dispatch import sample_run

    sample_run(
        run,
        prime=prime,
        prime_file=prime_file,
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        num_samples=num_samples,
        stop=tuple(stop or ()),
        output=output,
        device=device,
    )


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"charrnn: error: {first}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="charrnn", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except click_errors.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            print(exc.ctx.get_help())
            sys.exit(0)
        if _debug:
            raise
        where = f"{exc.ctx.command_path}: " if exc.ctx else ""
        _fail(f"{where}{exc.format_message()} (see --help)", 2)
    except click_errors.ClickException as exc:
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
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`): not an error worth a message
        sys.exit(0)
    except Exception as exc:  # a bug: one line by default, the traceback with --debug
        if _debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
