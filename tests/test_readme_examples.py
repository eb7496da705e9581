"""Promise: the `--lines` example of README.md, and the end-to-end names example of docs/lines.md,
print what they show (issue 18, item 11).

The commands of each page's ```console block run exactly as written (`$ ` lines, through a
shell, `charrnn` on the PATH), in one fresh directory, after docs/lines.md's own script has
written names.txt there; each command's output (standard output, then standard error, as a
terminal shows them) is compared with the lines the page shows under it. A line `...` stands for
any lines the page leaves out (the training progress).

What a run learns depends on the floating-point arithmetic of the machine's kernels: the same
torch on the same CPU with the same thread count gives the same weights bit for bit, while
another thread count, CPU or torch trains weights that differ in their last bits (1 and 2
threads here: by up to 6e-7, with the same names printed), which may draw other names. So the
commands run with one thread, and the pages say where their output was printed
(`RECORDED_ON`): on such a machine the output must be the page's, line for line; on any other
the example must still hold as the page describes it (the split's line, as many examples as
asked, the --novel ones new, counts that add up), and the line-for-line comparison is skipped,
saying why.

`python tests/test_readme_examples.py` prints what the commands print here, to paste into the
pages when a change of the sampler or the training makes them out of date.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINES_MD = ROOT / "docs" / "lines.md"

# Where the pages' output was printed: torch's version and CPU kernels (ATen's capability), the CPU.
RECORDED_ON = {"torch": "2.13.0+cpu", "machine": "x86_64", "cpu": "AMD EPYC", "kernels": "AVX2"}

SUMMARY = re.compile(
    r"charrnn: (\d+) examples: (\d+) new, (\d+) copy a training line, (\d+) a validation line"
    r"(?:; (\d+) drawn, (\d+) dropped \((.*)\))?"
)


def this_machine() -> dict[str, str]:
    import torch

    cpu = ""
    if Path("/proc/cpuinfo").is_file():
        found = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else ""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return {"torch": torch.__version__, "machine": platform.machine(), "cpu": cpu, "kernels": capability}


@dataclass
class Step:
    """One `$ ` command of a page's console block and the lines the page shows under it."""

    command: str
    shown: list[str]


def console_steps(page: Path, marker: str) -> list[Step]:
    """The commands of the page's first ```console block that contains `marker`."""
    blocks = re.findall(r"^```console\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)
    block = next(b for b in blocks if marker in b)
    steps: list[Step] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append(Step(line[2:], []))
        else:
            steps[-1].shown.append(line.rstrip())
    return steps


def names_script() -> str:
    """docs/lines.md's script that writes names.txt, the corpus both pages train on."""
    blocks = re.findall(r"^```python\n(.*?)^```", LINES_MD.read_text(encoding="utf-8"), re.S | re.M)
    return next(b for b in blocks if 'open("names.txt", "w"' in b)


def shows(shown: list[str], printed: list[str]) -> bool:
    """Whether `printed` is what `shown` shows, a `...` line standing for any lines."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line) + r"\n" for line in shown)
    return re.fullmatch(pattern, "".join(line + "\n" for line in printed)) is not None


class Reader:
    """A fresh directory in which a reader types the pages' commands."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.work.mkdir()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "charrnn"  # this tree's charrnn, run by this interpreter
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m charrnn "$@"\n')
        shim.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "CHARRNN_SAMPLER")}
        self.env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",  # standard output and error in the order they were written, as on a terminal
            OMP_NUM_THREADS="1",  # the thread count changes nothing (see above); one is kind to a shared machine
            CHARRNN_CACHE_DIR=str(root / "cache"),
        )
        self.printed: dict[str, list[str]] = {}

    def write_names(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", names_script()], cwd=self.work, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

    def run(self, command: str) -> list[str]:
        """What `command` prints, standard error merged into standard output as a terminal shows it."""
        if command not in self.printed:
            done = subprocess.run(
                ["bash", "-c", f"exec 2>&1\n{command}"],  # a `> FILE` of the command takes stdout only
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"$ {command}\n{done.stdout[-3000:]}"
            self.printed[command] = [line.rstrip() for line in done.stdout.splitlines()]
        return self.printed[command]


README_STEPS = console_steps(README, "--lines --run")
LINES_STEPS = console_steps(LINES_MD, "--num-samples 100")


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Reader:
    """The README's commands, then docs/lines.md's (their training command is the README's, so it
    is run once: a second `train --run runs/names` would rightly refuse)."""
    reader = Reader(tmp_path_factory.mktemp("readme"))
    reader.write_names()
    for step in README_STEPS + LINES_STEPS:
        reader.run(step.command)
    return reader


def _exact_or_skip() -> None:
    here = this_machine()
    if here != RECORDED_ON:
        pytest.skip(f"the pages' output was printed on {RECORDED_ON}, this is {here}: only its shape is checked")


def _transcript(steps: list[Step], reader: Reader) -> str:
    return "\n".join(f"$ {s.command}\n" + "\n".join(reader.run(s.command)) for s in steps)


def test_both_pages_train_the_same_run() -> None:
    trains = [s.command for s in README_STEPS + LINES_STEPS if s.command.startswith("charrnn train")]
    assert len(trains) == 2 and trains[0] == trains[1], trains
    assert "--lines" in trains[0] and "--max-steps" in trains[0]


@pytest.mark.parametrize("page", ["README.md", "docs/lines.md"])
def test_the_page_shows_what_its_commands_print(page: str, reader: Reader) -> None:
    _exact_or_skip()
    steps = README_STEPS if page == "README.md" else LINES_STEPS
    wrong = [s.command for s in steps if not shows(s.shown, reader.run(s.command))]
    assert wrong == [], f"{page} shows other output for {wrong}; the commands print:\n{_transcript(steps, reader)}"


def test_the_example_holds_on_any_machine(reader: Reader) -> None:
    """What the pages say of the example, whatever names this machine's run draws."""
    corpus = set((reader.work / "names.txt").read_text(encoding="utf-8").splitlines())
    assert len(corpus) == 2000
    for step in README_STEPS + LINES_STEPS:
        printed = reader.run(step.command)
        words = shlex.split(step.command)
        if words[1] == "train":
            split = "--lines: 2,000 lines (2,000 distinct): 1,900 training, 100 validation"
            assert split in printed and split in step.shown, printed[:3]
            continue
        asked = int(words[words.index("--num-samples") + 1])
        summary = SUMMARY.fullmatch(printed[-1])
        assert summary, printed[-1]
        found, new, train, val = (int(g) for g in summary.groups()[:4])
        assert found == asked and new + train + val == asked, printed[-1]
        if ">" in words:
            examples = (reader.work / words[words.index(">") + 1]).read_text(encoding="utf-8").splitlines()
        else:
            examples = printed[:-1]
        assert len(examples) == asked and all(e and "\n" not in e for e in examples)
        copies = sum(e in corpus for e in examples)
        assert copies == train + val, (copies, printed[-1])  # no test split: every copy is train or val
        if "--novel" in words:
            assert new == asked and not any(e in corpus for e in examples)
        if "--prime" in words:
            assert all(e.startswith(words[words.index("--prime") + 1]) for e in examples)
        # the page shows as many examples as the command asks for, and the same kind of summary
        shown_examples = step.shown[:-1] if ">" not in words else []
        assert len(shown_examples) == (0 if ">" in words else asked), step.shown
        assert SUMMARY.fullmatch(step.shown[-1]), step.shown[-1]


if __name__ == "__main__":  # print the transcripts, to paste into the pages
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        here = Reader(Path(tmp))
        here.write_names()
        print(f"# printed on {this_machine()}\n")
        for title, steps in (("README.md", README_STEPS), ("docs/lines.md", LINES_STEPS)):
            print(f"## {title}\n{_transcript(steps, here)}\n")
