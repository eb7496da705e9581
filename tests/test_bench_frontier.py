"""Promise: scripts/bench_frontier.py, which measures the grid that model sizing is fitted to,
runs: at the toy size it appends one well-formed point to its JSON-lines file, and `--resume`
skips a point the file already holds. No figure is judged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_frontier.py"


def _run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_each_point_is_appended_with_its_figures_and_auto_with_its_choice(tmp_path: Path) -> None:
    out = tmp_path / "frontier.jsonl"
    first = _run(out, "--only", "2x256,auto")
    assert first.returncode == 0, first.stderr[-3000:]
    row, auto = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["point"] == "2x256" and row["budget"] == 1.0 and row["corpus"] == "tiny.txt"
    assert row["parameters"] > 0 and row["steps"] >= 1 and row["val_nats_per_char"] > 0
    assert row["train_chars"] == row["steps"] * 4 * 32  # the tiny batch: 4 streams of 32
    assert auto["point"] == "auto" and auto["sizing"]["preset"] == "auto"
    assert auto["parameters"] == auto["sizing"]["parameters"] > 0


def test_resume_skips_the_points_already_measured(tmp_path: Path) -> None:
    out = tmp_path / "frontier.jsonl"
    held = {"point": "2x256", "budget": 1.0, "corpus": "tiny.txt", "val_nats_per_char": 9.0}
    out.write_text(json.dumps(held) + "\n")
    again = _run(out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_text().splitlines() == [json.dumps(held)]  # nothing trained, nothing added


def test_an_unknown_point_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "9x9999"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "unknown point" in done.stderr and "Traceback" not in done.stderr


def test_the_table_lists_each_budget_s_points_best_first(tmp_path: Path) -> None:
    out = tmp_path / "frontier.jsonl"
    common = {"corpus": "c.txt", "budget": 90, "seconds": 89.0, "steps": 10, "train_chars_per_sec": 1000.0}
    points = [("big", 2.0, 900), ("small", 1.5, 500)]
    rows = [
        {**common, "point": p, "val_nats_per_char": v, "parameters": n, "train_chars": 40_960, "commit": "abc"}
        for p, v, n in points
    ]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    body = [line for line in done.stdout.splitlines() if line.startswith("| c.txt")]
    assert [line.split("|")[3].strip() for line in body] == ["small", "big"]
    assert "| 1.500 |" in body[0] and "| 40,960 |" in body[0]


def test_the_fit_picks_each_budget_s_best_point() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_frontier

    def row(point: str, budget: int, loss: float, params: int, chars: int) -> dict:
        return {
            "corpus": "tinyshakespeare.txt",
            "budget": budget,
            "point": point,
            "val_nats_per_char": loss,
            "parameters": params,
            "train_chars": chars,
        }

    rows = [
        row("small", 60, 1.6, 100, 2_000),
        row("big", 60, 1.8, 400, 800),  # 20 and 2 per parameter
        row("small", 600, 1.5, 100, 20_000),
        row("big", 600, 1.4, 400, 8_000),  # 200 and 20
        row("auto", 600, 1.0, 100, 1),
        {**row("big", 600, 0.1, 400, 1), "corpus": "other.txt"},  # left out
    ]
    fitted = bench_frontier.fit(rows)
    assert fitted["regret"] == 0 and fitted["picks"] == fitted["best"] == {
        "tinyshakespeare.txt 60 s": "small",
        "tinyshakespeare.txt 600 s": "big",
    }
    assert fitted["low"] == 2 and fitted["high"] == 20 and fitted["k"] == 6.3  # the geometric middle of (2, 20]
