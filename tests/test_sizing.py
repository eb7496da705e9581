"""Promise: `--preset auto` on a CPU chooses the model's size by the rule in charrnn/sizing.py (the
largest size that sees enough tokens per parameter within the budget and that the text can hold),
measures this machine's speed only when a time budget needs it, counts that against the budget,
lets explicit options win, says what it chose in one line that config.json keeps, and a resume
keeps the size. The rule's threshold is the one the frontier's committed data gives."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import charrnn as run_cli

import charrnn
from charrnn import sizing
from charrnn.config import PRESETS, ModelConfig, TrainConfig
from charrnn.model import RNNLanguageModel

ROOT = Path(__file__).resolve().parent.parent
CPU = PRESETS["cpu"]
K = sizing.TOKENS_PER_PARAMETER


def _budget(train_tokens: int = 10_000_000, seconds: float | None = None, **train) -> sizing.Budget:
    cfg = TrainConfig(**{**CPU["train"], **train})
    return sizing.Budget(65, train_tokens, 0, 1.0, cfg, seconds)


def _params(name: str, given: dict | None = None) -> int:
    size = next(s for s in sizing.LADDER if s.name == name)
    return sizing.parameters(sizing.settings_of(size, CPU, given or {})["model"], 65)


def _no_speed(model, train):
    raise AssertionError("a step or epoch budget needs no measurement")


@pytest.mark.parametrize("name", [s.name for s in sizing.LADDER])
def test_a_step_budget_takes_the_largest_size_with_enough_tokens_per_parameter(name: str) -> None:
    steps = int(K * _params(name) / (32 * 128)) + 1  # just enough for this size
    choice = sizing.choose(_budget(max_steps=steps), CPU, {}, torch.device("cpu"), speed=_no_speed)
    assert choice.size == name  # it fits, and no larger size does
    assert choice.expected_tokens == steps * 32 * 128 and choice.tokens_per_second == {}


def test_a_time_budget_measures_each_size_it_visits_once_and_counts_the_time() -> None:
    measured: list[tuple[int, int]] = []

    def speed(model, train):  # a machine whose speed falls with the size
        measured.append((model["num_layers"], model["hidden_size"]))
        return sizing.Speed(train=3e11 / sizing.parameters(model, 65), evaluate=1e9)

    choice = sizing.choose(_budget(seconds=60), CPU, {}, torch.device("cpu"), speed=speed)
    assert len(measured) == len(set(measured)) == len(choice.tokens_per_second)
    rate = choice.tokens_per_second[choice.size]
    kept = choice.calibration_seconds + sizing.END_OF_RUN  # no validation text here: no final pass
    assert choice.expected_tokens == pytest.approx((60 - kept) * rate, rel=1e-3)
    assert choice.expected_tokens >= K * choice.parameters
    names = [s.name for s in sizing.LADDER]
    larger = names[names.index(choice.size) + 1]
    assert choice.tokens_per_second[larger] * 60 < K * _params(larger)  # the next size up was tried and missed


def test_a_short_text_caps_the_size_and_the_line_says_so() -> None:
    tokens = int(_params("2x128") / sizing.PARAMETERS_PER_TOKEN) + 1
    choice = sizing.choose(_budget(tokens, max_steps=10**6), CPU, {}, torch.device("cpu"), speed=_no_speed)
    assert choice.size == "2x128" and "allows no larger" in choice.line()
    tiny = sizing.choose(_budget(10, max_steps=10**6), CPU, {}, torch.device("cpu"), speed=_no_speed)
    assert tiny.size == sizing.LADDER[0].name  # the smallest, however short the text


def test_a_budget_too_small_for_any_size_takes_the_smallest_and_says_so() -> None:
    choice = sizing.choose(_budget(max_steps=1), CPU, {}, torch.device("cpu"), speed=_no_speed)
    assert choice.size == sizing.LADDER[0].name and "fewer than" in choice.reason


def test_no_budget_takes_the_largest_the_text_allows() -> None:
    choice = sizing.choose(_budget(1_000_000), CPU, {}, torch.device("cpu"), speed=_no_speed)
    assert choice.parameters <= sizing.PARAMETERS_PER_TOKEN * 1_000_000 and choice.expected_tokens is None
    assert "no --max-time" in choice.reason


def test_given_options_win_over_the_size() -> None:
    given = {"model": {"dropout_hidden": 0.3}, "train": {"lr": 1e-4}}
    choice = sizing.choose(_budget(max_steps=10**6), CPU, given, torch.device("cpu"), speed=_no_speed)
    assert choice.model["dropout_hidden"] == 0.3 and "lr" not in choice.train
    shaped = sizing.choose(_budget(seconds=60), CPU, {"model": {"hidden_size": 96}}, torch.device("cpu"), _no_speed)
    assert shaped.size == "given" and shaped.model["hidden_size"] == 96 and "--hidden" in shaped.reason


def test_the_line_counts_the_parameters_of_the_model_built() -> None:
    choice = sizing.choose(_budget(max_steps=500), CPU, {}, torch.device("cpu"), speed=_no_speed)
    built = RNNLanguageModel(ModelConfig(vocab_size=65, **choice.model))
    assert choice.parameters == sum(p.numel() for p in built.parameters())
    assert choice.line().startswith(f"--preset auto: {choice.model['num_layers']} × {choice.model['hidden_size']} LSTM")
    json.dumps(choice.record(), allow_nan=False)


def test_calibration_measures_a_speed_and_leaves_the_generators_alone() -> None:
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    speed = sizing.calibrate(
        {**CPU["model"], "hidden_size": 32}, {**CPU["train"], "batch_size": 4, "seq_len": 16}, 65, torch.device("cpu")
    )
    assert speed.train > 0 and speed.evaluate > 0 and torch.equal(torch.random.get_rng_state(), before)


def test_the_threshold_is_the_one_the_committed_frontier_gives() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_frontier

    rows = [json.loads(line) for line in bench_frontier.OUT.read_text().splitlines() if line.strip()]
    fitted = bench_frontier.fit(rows)
    assert fitted["k"] == K
    assert fitted["low"] < K and (fitted["high"] is None or K <= fitted["high"])


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory: pytest.TempPathFactory) -> charrnn.Run:
    text = tmp_path_factory.mktemp("text") / "notes.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    started = time.monotonic()
    run = charrnn.train(text, run=tmp_path_factory.mktemp("runs") / "auto", max_time=3, eval_interval=10**6)
    run.wall = time.monotonic() - started
    return run


def test_a_timed_run_records_its_choice_and_trains_that_model(auto_run: charrnn.Run) -> None:
    config = auto_run.config
    record = config["sizing"]
    assert record["preset"] == "auto" and record["tokens_per_second"]  # a time budget: measured
    assert config["model"]["hidden_size"] == next(s for s in sizing.LADDER if s.name == record["size"]).model.get(
        "hidden_size", CPU["model"]["hidden_size"]
    )
    built = RNNLanguageModel(ModelConfig(**config["model"]))
    assert record["parameters"] == sum(p.numel() for p in built.parameters())
    assert auto_run.wall <= 3.5  # the calibration came out of the budget


def test_a_resume_keeps_the_size_and_chooses_nothing(auto_run: charrnn.Run) -> None:
    before = auto_run.config
    resumed = charrnn.train(run=auto_run.path, resume=True, max_time=5)
    assert resumed.config["model"] == before["model"] and resumed.config["sizing"] == before["sizing"]


def test_the_fixed_presets_choose_nothing(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 300)
    run = charrnn.train(text, run=tmp_path / "r", preset="cpu", max_steps=1, eval_interval=10**6)
    assert "sizing" not in run.config and run.config["model"]["hidden_size"] == CPU["model"]["hidden_size"]


def test_the_command_says_what_it_chose_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a line of text to learn from\n" * 400)
    done = run_cli("train", str(text), "--run", str(tmp_path / "r"), "--max-steps", "2", "--eval-interval", "1000000")
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    said = " ".join((done.stdout + done.stderr).split())  # a terminal may wrap the line
    model = config["model"]
    assert said.count("--preset auto:") == 1
    assert f"--preset auto: {model['num_layers']} × {model['hidden_size']} LSTM" in said
