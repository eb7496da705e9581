"""Promise: data-parallel training under torchrun gives the same answer as one process.

Two CPU processes (gloo) with 4 streams each train the model that one process trains with the
same 8 streams, to float tolerance; evaluation shared by two ranks gives the number one process
gives; a checkpoint written by two ranks is an ordinary one (eval, sample, single-process resume);
killing a rank ends the whole job within seconds and leaves whole checkpoints; and with torchrun's
--max-restarts the job comes back from its last checkpoint and ends exactly where an uninterrupted
two-rank run ends.

Every job is a real `torchrun` (python -m torch.distributed.run --standalone) in a subprocess.
Dropout is off, so the two layouts draw no random numbers that could differ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import HOOKS, KJV, charrnn

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.distributed import streams_per_rank, torchrun_command
from charrnn.errors import CharrnnError
from charrnn.evaluate import evaluate_run
from charrnn.training import resume

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"),
]

STEPS = 30
SETTINGS = ["--hidden", "32", "--embed", "16", "--layers", "1", "--seq-len", "16", "--seed", "7"]
SETTINGS += ["--dropout", "0", "--dropout-embed", "0", "--eval-interval", "10", "--eval-streams", "2"]
SETTINGS += ["--log-interval", "5", "--save-interval", "5", "--max-steps", str(STEPS), "--device", "cpu"]


def torchrun(
    *args: str, nproc: int = 2, launcher: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node NPROC tests/hooks.py -- ARGS` (charrnn with the test
    hooks, see conftest.CLI), waited for; on a timeout the whole process group goes, so no rank
    outlives a failed test."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    command += [*launcher, str(HOOKS), "--", *args]
    proc = subprocess.Popen(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun {' '.join(args[:1])} timed out: {err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.safetensors")["model"]


def _trajectory(run: Path) -> list[tuple]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in records]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory, real_text: str) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(real_text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> dict[str, Path | str]:
    """The same 30 steps twice: 2 ranks × 4 streams (through `train --nproc 2`) and 1 process × 8."""
    base = tmp_path_factory.mktemp("runs")
    env = {"OMP_NUM_THREADS": "1", "CHARRNN_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    two = charrnn(
        "train", str(text_file), "--run", str(base / "two"), "--batch-size", "4", "--nproc", "2", *SETTINGS, env=env
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = charrnn(
        "train", str(text_file), "--run", str(base / "one"), "--batch-size", "8", *SETTINGS, "--quiet", env=env
    )
    assert one.returncode == 0, one.stderr[-3000:]
    return {"two": base / "two", "one": base / "one", "two_stdout": two.stdout}


def test_two_ranks_train_the_model_one_process_trains_with_all_streams(runs: dict) -> None:
    two, one = load_checkpoint(runs["two"] / "last.safetensors"), load_checkpoint(runs["one"] / "last.safetensors")
    assert two["metrics"]["step"] == one["metrics"]["step"] == STEPS
    for name, expected in one["model"].items():
        torch.testing.assert_close(two["model"][name], expected, rtol=1e-4, atol=1e-5, msg=name)
    # The checkpoint holds all 8 streams' carried state, in the order one process holds them.
    assert two["train_state"]["batch_size"] == one["train_state"]["batch_size"] == 8
    assert two["train_state"]["world_size"] == 2
    for got, expected in zip(two["train_state"]["hidden"], one["train_state"]["hidden"]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # Logged train loss (averaged over ranks) and validation loss (shared by ranks) agree too.
    left, right = _trajectory(runs["two"]), _trajectory(runs["one"])
    assert [r[0] for r in left] == [r[0] for r in right]
    for (_, train_a, val_a), (_, train_b, val_b) in zip(left, right):
        assert train_a == pytest.approx(train_b, rel=1e-5)
        assert (val_a is None) == (val_b is None) and (val_a is None or val_a == pytest.approx(val_b, rel=1e-5))


def test_only_rank_zero_reports(runs: dict) -> None:
    out = runs["two_stdout"]
    assert out.count("training summary") == 1
    assert out.count(" parameters on cpu × 2 ranks") == 1
    assert "--nproc-per-node 2" in out and " -- train " in out  # --nproc says what it runs


def test_evaluation_shared_by_two_ranks_equals_one_process(runs: dict, tmp_path: Path) -> None:
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(KJV.read_text(encoding="utf-8")[200_000:206_000], encoding="utf-8")
    # 3 pieces on 2 ranks: rank 0 scores pieces 0 and 2, rank 1 piece 1 and the remainder.
    shared = torchrun(
        "eval", str(runs["two"]), str(held_out), "--streams", "3", "--json", "--no-baselines", "--device", "cpu"
    )
    assert shared.returncode == 0, shared.stderr[-3000:]
    got = json.loads(shared.stdout)[str(held_out)]  # one JSON document: only rank 0 prints
    expected = dict(evaluate_run(runs["two"], [str(held_out)], streams=3, baselines=False, device="cpu"))[str(held_out)]
    assert (got["tokens"], got["chars"]) == (expected["tokens"], expected["chars"])
    assert got["nats_per_char"] == pytest.approx(expected["nats_per_char"], rel=1e-6)


def test_a_two_rank_checkpoint_is_an_ordinary_one(runs: dict, tmp_path: Path) -> None:
    scored = charrnn("eval", str(runs["two"]), "--json", "--no-baselines", "--device", "cpu")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["val"]["bits_per_char"] > 0
    sampled = charrnn("sample", str(runs["two"]), "--length", "40", "--seed", "1")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.strip()

    # One process resumes the two-rank run with all 8 streams and keeps pace with the 1 × 8 run.
    two, one = tmp_path / "two", tmp_path / "one"
    shutil.copytree(runs["two"], two)
    shutil.copytree(runs["one"], one)
    assert resume(two, budget={"max_steps": STEPS + 10}).steps == STEPS + 10
    assert resume(one, budget={"max_steps": STEPS + 10}).steps == STEPS + 10
    state = load_checkpoint(two / "last.safetensors")["train_state"]
    assert (state["batch_size"], state["world_size"]) == (8, 1)
    for name, expected in _weights(one).items():
        torch.testing.assert_close(_weights(two)[name], expected, rtol=1e-4, atol=1e-5, msg=name)


def test_a_one_process_run_resumes_on_two_ranks(runs: dict, tmp_path: Path) -> None:
    # 1 × 8 -> 2 × 4: the same 8 streams, re-sharded, with their carried state.
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    shutil.copytree(runs["one"], shared)
    shutil.copytree(runs["one"], alone)
    job = torchrun("train", "--resume", str(shared), "--max-steps", str(STEPS + 10), "--quiet")
    assert job.returncode == 0, job.stderr[-3000:]
    assert resume(alone, budget={"max_steps": STEPS + 10}).steps == STEPS + 10
    state = load_checkpoint(shared / "last.safetensors")["train_state"]
    assert (state["batch_size"], state["world_size"]) == (8, 2)
    for name, expected in _weights(alone).items():
        torch.testing.assert_close(_weights(shared)[name], expected, rtol=1e-4, atol=1e-5, msg=name)


def test_resuming_on_another_number_of_ranks_reshards_or_refuses() -> None:
    assert streams_per_rank(8, 2, 1) == 8  # 2 × 4 -> 1 × 8
    assert streams_per_rank(8, 2, 4) == 2  # 2 × 4 -> 4 × 2
    with pytest.raises(CharrnnError, match="cannot share.*divides 8"):
        streams_per_rank(8, 2, 3)


def test_nproc_hands_the_same_command_to_torchrun() -> None:
    command = torchrun_command(2, ["--debug", "train", "corpus.txt", "--nproc", "2", "--run", "r", "--nproc=2"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "charrnn"] + [
        "--debug",
        "--",
        "train",
        "corpus.txt",
        "--run",
        "r",
    ]


def test_weight_drop_trains_data_parallel(text_file: Path, tmp_path: Path) -> None:
    """Each rank draws its own weight-drop masks; the gradients still reach the real weights and
    are averaged, so the job trains and its checkpoint is an ordinary one."""
    run = tmp_path / "wd"
    args = [*SETTINGS[: SETTINGS.index("--max-steps")], "--max-steps", "10", "--weight-drop", "0.3", "--quiet"]
    done = torchrun("train", str(text_file), "--run", str(run), "--batch-size", "4", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = load_checkpoint(run / "last.safetensors")
    assert payload["model_config"]["weight_drop"] == 0.3 and payload["metrics"]["step"] == 10
    model_from_checkpoint(payload)


def test_auto_size_is_measured_and_chosen_on_rank_zero_and_trained_by_every_rank(
    text_file: Path, tmp_path: Path
) -> None:
    """`--preset auto` under torchrun: rank 0 times the sizes and chooses, counting both ranks'
    tokens; both ranks build that model (DDP would refuse different ones) and it is said once."""
    run = tmp_path / "auto"
    args = ["--seq-len", "16", "--batch-size", "4", "--max-time", "5", "--eval-interval", "1000000", "--device", "cpu"]
    done = torchrun("train", str(text_file), "--run", str(run), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["sizing"]["tokens_per_second"] and config["torchrun"]["world_size"] == 2
    assert (done.stdout + done.stderr).count("--preset auto:") == 1
    assert load_checkpoint(run / "last.safetensors")["model_config"] == config["model"]


def _workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the processes torchrun (pid `launcher`) started, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
        if ppid == launcher and rank is not None:
            found[int(rank)] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_killing_one_rank_ends_the_whole_job_within_seconds(text_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "charrnn", "--", "train", str(text_file), "--run", str(run), "--batch-size", "4", *SETTINGS]
    command += ["--max-steps", "1000000", "--quiet"]  # the later --max-steps wins: only the kill ends it
    log = (tmp_path / "torchrun.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "best.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = _workers(proc.pid)
        assert sorted(ranks) == [0, 1], f"ranks not found ({ranks}); log: {(tmp_path / 'torchrun.log').read_text()}"
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    print(f"the job ended {took:.1f}s after rank 1 was killed")
    assert proc.returncode != 0
    assert took < 20, f"the job took {took:.1f}s to end after a rank died"
    assert not Path(f"/proc/{ranks[0]}").exists(), "rank 0 outlived the job"
    for name in ("last.safetensors", "best.safetensors"):
        model_from_checkpoint(load_checkpoint(run / name))
    assert isinstance(load_checkpoint(run / "last.safetensors")["train_state"], dict)


def test_a_restarted_job_continues_from_its_last_checkpoint_exactly(
    runs: dict, text_file: Path, tmp_path: Path
) -> None:
    # Rank 1 kills itself after step 23 in the first attempt; torchrun restarts both ranks, which
    # find this job's step-20 checkpoint and finish the 30 steps.
    run = tmp_path / "run"
    hook = {"CHARRNN_TEST_SIGNAL_AT_STEP": "23", "CHARRNN_TEST_SIGNAL": "KILL", "CHARRNN_TEST_SIGNAL_RANK": "1"}
    job = torchrun(
        "train", str(text_file), "--run", str(run), "--batch-size", "4", *SETTINGS, "--quiet",
        launcher=("--max-restarts", "1"), env=hook,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr[-3000:]
    # torchrun reports the first failure it notices: rank 1's SIGKILL (-9), or rank 0 ending on the
    # lost connection (its error, or gloo aborting it) if that is seen first. Either way, a restart.
    assert re.search(r"exitcode: -?[1-9]", job.stderr), "the first attempt did not fail"
    straight = runs["two"]
    for name, expected in _weights(straight).items():
        assert torch.equal(_weights(run)[name], expected), name
    assert _trajectory(run) == _trajectory(straight)
