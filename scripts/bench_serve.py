"""Benchmark `charrnn serve`: concurrent streaming clients on 127.0.0.1, and a soak for memory.

Starts `python -m charrnn serve RUN --port 0` (a `cpu`-preset model trained for 3 steps unless
--run is given: speed does not depend on the weights), then for each client count asks every
client for --chars characters at temperature 0.8, all at once, streaming, and reports:
aggregate characters per second, time to the first character (p50, p99), each client's speed
against one client alone; then repeats rounds of --soak-clients clients for --soak-seconds and
quotes the server's resident memory at the start and the end. Every loop is bounded in count
and in time; nothing but 127.0.0.1 is spoken to.

    python scripts/bench_serve.py                      # 1, 8, 32, 128 clients x 500 characters, 600 s soak
    python scripts/bench_serve.py --soak-seconds 60    # a shorter soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT = 120.0  # seconds one request may take before the round counts it failed
MAX_SOAK_ROUNDS = 100_000


def train_cpu_model(where: Path) -> Path:
    run = where / "cpu-preset"
    command = [sys.executable, "-m", "charrnn", "train", str(ROOT / "corpora" / "kjv.txt"), "--preset", "cpu",
               "--max-steps", "3", "--run", str(run), "--quiet"]  # fmt: skip
    subprocess.run(command, check=True, timeout=600, env={**os.environ, "CHARRNN_CACHE_DIR": str(where / "cache")})
    return run


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "charrnn", "serve", str(run), "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "charrnn: serving NAME at URL (...)"
    if " at http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_client(host: str, port: int, chars: int, seed: int) -> tuple[float, float, int]:
    """(seconds to the first character, seconds in all, characters) of one streaming request, on
    a connection of its own. Plain asyncio streams: a lighter client than an HTTP library, so that
    on two cores the clients take less of the time the server is measured in."""
    body = json.dumps({"prompt": "The ", "max_tokens": chars, "temperature": 0.8, "seed": seed, "stream": True})
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    started = time.perf_counter()
    first, got = float("nan"), 0
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), REQUEST_TIMEOUT)
    try:
        writer.write(head.encode() + body.encode())
        status = await reader.readuntil(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the server answered {status[:200]!r}")
        pending = b""
        for _ in range(10 * chars + 100):  # chunks of the chunked body; each holds at least one character
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            pending += (await reader.readexactly(size + 2))[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: {"):
                    text = json.loads(event[6:])["choices"][0]["text"]
                    if text and got == 0:
                        first = time.perf_counter() - started
                    got += len(text)
    finally:
        writer.close()
    return first, time.perf_counter() - started, got


async def one_round(url: str, clients: int, chars: int, seed: int = 0) -> dict[str, float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    started = time.perf_counter()
    tasks = (one_client(host, int(port), chars, seed + i) for i in range(clients))
    results = await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT)
    wall = time.perf_counter() - started
    firsts = np.array([r[0] for r in results]) * 1000
    total = sum(r[2] for r in results)
    return {
        "clients": clients,
        "aggregate": total / wall,
        "ttfc_p50": float(np.percentile(firsts, 50)),
        "ttfc_p99": float(np.percentile(firsts, 99)),
        "per_client": float(np.mean([r[2] / r[1] for r in results])),
        "chars": total,
    }


def soak(url: str, pid: int, seconds: float, clients: int, chars: int) -> tuple[float, float, float, int]:
    """Rounds of `clients` requests for `seconds`: RSS (MiB) at the start, the end and the most seen."""
    start = rss_mib(pid)
    most, rounds = start, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and rounds < MAX_SOAK_ROUNDS:
        asyncio.run(one_round(url, clients, chars, seed=rounds * clients))
        rounds += 1
        most = max(most, rss_mib(pid))
    return start, rss_mib(pid), most, rounds


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, commit {commit.stdout.strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run to serve (default: a cpu-preset model trained for 3 steps)")
    parser.add_argument("--clients", default="1,8,32,128", help="client counts, comma-separated")
    parser.add_argument("--chars", type=int, default=500, help="characters each client asks for")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="length of the memory soak (0: none)")
    parser.add_argument("--soak-clients", type=int, default=32, help="clients per soak round")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    measured = machine()  # the commit now, before the run: others may commit while it runs
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_cpu_model(Path(tmp))
        proc, url = start_server(run)
        try:
            asyncio.run(one_round(url, 1, 50))  # warm-up
            rows = [asyncio.run(one_round(url, n, args.chars)) for n in counts]
            soaked = (
                soak(url, proc.pid, args.soak_seconds, args.soak_clients, args.chars) if args.soak_seconds else None
            )
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{measured}\n`python scripts/bench_serve.py {' '.join(sys.argv[1:])}`\n")
    print(
        "| clients | aggregate chars/s | × one client | TTFC p50 ms | TTFC p99 ms | per-client chars/s | ÷ one client |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    one = rows[0]
    for row in rows:
        print(f"| {row['clients']} | {row['aggregate']:,.0f} | {row['aggregate'] / one['aggregate']:.2f} | "
              f"{row['ttfc_p50']:.1f} | {row['ttfc_p99']:.1f} | {row['per_client']:,.0f} | "
              f"{row['per_client'] / one['per_client']:.2f} |")  # fmt: skip
    if soaked:
        start, end, most, rounds = soaked
        print(f"\nsoak: {args.soak_seconds:g} s, {rounds} rounds of {args.soak_clients} clients x {args.chars} chars; "
              f"server RSS {start:.1f} MiB at the start, {end:.1f} MiB at the end (most {most:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
