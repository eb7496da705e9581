"""`charrnn serve`: the OpenAI-compatible API spoken by the real `openai` client, continuous
batching, /v1/score, the limits, hostile input, the API key, disconnects and graceful shutdown.

One server per module runs in this process on 127.0.0.1 (port 0), on the session's tiny run;
the shutdown test starts `python -m charrnn serve` once. Every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from browser import chromium, requests  # noqa: F401 (chromium is the browser fixture)
from conftest import run_in_process

from charrnn.serve import Limits
from charrnn.serve.server import Started, started

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

LIMITS = Limits(max_tokens=1_000_000, max_prompt=2_000, max_body=64 * 1024, max_streams=4, max_queue=4,
                time_limit=20.0, body_timeout=1.0, grace=1.0)  # fmt: skip
PROMPT = "And God said"


@pytest.fixture(scope="module")
def run(tiny_trained: Path) -> Path:
    return tiny_trained / "run"


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[Started]:
    with started(run, "127.0.0.1", 0, None, LIMITS) as up:
        yield up


@pytest.fixture(scope="module")
def client(server: Started) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20)


def _post(server: Started, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + path, timeout=10, **kwargs)


def _idle(server: Started, seconds: float = 5.0) -> bool:
    """Whether the engine's batch and queue empty within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not server.engine.active and not server.engine.waiting:
            return True
        time.sleep(0.01)
    return False


# --- the API, as the openai client speaks it ----------------------------------------------------


def test_models_lists_the_run(client: openai.OpenAI, server: Started) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [server.name] == ["run"]
    assert models[0].owned_by == "charrnn"


def test_a_seeded_request_alone_writes_what_charrnn_sample_writes(client: openai.OpenAI, run: Path) -> None:
    for settings in ({"temperature": 0.8}, {"temperature": 1.0, "top_p": 0.9}, {"temperature": 0.0}):
        made = client.completions.create(model="run", prompt=PROMPT, max_tokens=120, seed=7, **settings)
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
        cli = run_in_process("sample", str(run), "--prime", PROMPT, "--length", "120", "--seed", "7", *flags)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout == PROMPT + made.choices[0].text + "\n"
        assert made.choices[0].finish_reason == "length"
        assert made.usage.completion_tokens == 120 and made.usage.prompt_tokens == len(PROMPT)
    top_k = client.completions.create(model="run", prompt=PROMPT, max_tokens=60, seed=3, extra_body={"top_k": 3})
    cli = run_in_process("sample", str(run), "--prime", PROMPT, "--length", "60", "--seed", "3", "--top-k", "3",
                         "--temperature", "1.0")  # fmt: skip
    assert cli.stdout == PROMPT + top_k.choices[0].text + "\n"


def test_streaming_gives_the_plain_text_in_pieces_and_ends_with_done(client: openai.OpenAI, server: Started) -> None:
    plain = client.completions.create(model="run", prompt=PROMPT, max_tokens=200, seed=11)
    chunks = list(client.completions.create(model="run", prompt=PROMPT, max_tokens=200, seed=11, stream=True))
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    body = {"prompt": "In", "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=10) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = [line for line in raw.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["usage"]["completion_tokens"] == 5


def test_n_stop_and_logprobs(client: openai.OpenAI) -> None:
    made = client.completions.create(model="run", prompt=PROMPT, max_tokens=300, n=3, stop=["\n", "the"], seed=5,
                                     logprobs=2)  # fmt: skip
    assert [c.index for c in made.choices] == [0, 1, 2]
    assert len({c.text for c in made.choices}) > 1  # each choice draws for itself
    for choice in made.choices:
        assert "\n" not in choice.text and "the" not in choice.text
        assert choice.finish_reason == ("length" if len(choice.text) == 300 else "stop")
        lp = choice.logprobs
        assert "".join(lp.tokens).startswith(choice.text) and len(lp.tokens) <= len(choice.text) + 3
        assert all(len(top) == 2 and max(top.values()) >= p for top, p in zip(lp.top_logprobs, lp.token_logprobs))
        assert all(p <= 0 for p in lp.token_logprobs) and lp.text_offset[:2] == [0, len(lp.tokens[0])][: len(lp.tokens)]
    streamed = client.completions.create(model="run", prompt=PROMPT, max_tokens=40, n=2, seed=5, stream=True)
    texts = ["", ""]
    for chunk in streamed:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    again = client.completions.create(model="run", prompt=PROMPT, max_tokens=40, n=2, seed=5)
    assert texts == [c.text for c in again.choices]


def test_a_list_of_prompts_gives_n_choices_for_each(client: openai.OpenAI) -> None:
    made = client.completions.create(model="run", prompt=["In the", "And"], max_tokens=10, n=2, seed=1)
    assert [c.index for c in made.choices] == [0, 1, 2, 3]
    assert made.choices[0].text == client.completions.create(model="run", prompt="In the", max_tokens=10, n=2,
                                                             seed=1).choices[0].text  # fmt: skip


def test_score_is_model_score(server: Started, run: Path) -> None:
    import charrnn

    text = "And God said unto Moses, I AM THAT I AM.\n"
    answer = _post(server, "/v1/score", json={"model": "run", "text": text}).json()
    want = charrnn.load(run).score(text)
    assert answer["characters"] == len(text) and answer["bits"][0] is None
    np.testing.assert_allclose(np.array(answer["bits"][1:], float), want.bits[1:], atol=1e-6)
    assert answer["bits_per_char"] == pytest.approx(want.bits_per_char, abs=1e-6)
    assert answer["total_bits"] == pytest.approx(float(np.nansum(want.bits)), abs=1e-6)


def test_concurrent_requests_share_one_batched_step(client: openai.OpenAI, server: Started) -> None:
    texts: dict[int, str] = {}

    def ask(i: int) -> None:
        chunks = client.completions.create(model="run", prompt=PROMPT, max_tokens=2000, seed=i, stream=True)
        texts[i] = "".join(c.choices[0].text for c in chunks)

    server.engine.widest = 0
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(texts) == [0, 1, 2, 3] and all(len(t) == 2000 for t in texts.values())
    assert server.engine.widest > 1  # they were stepped together
    assert _idle(server)


# --- limits, hostile input, disconnects -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"prompt": "a", "temperature": NaN}', 400, "NaN is not a JSON value"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"prompt": 5}', 400, "prompt must be a string"),
        (b'{"prompt": "a", "temperature": "hot"}', 400, "temperature must be a number"),
        (b'{"prompt": "a", "temperature": -1}', 400, "temperature must be in"),
        (b'{"prompt": "a", "n": -2}', 400, "n must be in 1..4"),
        (b'{"prompt": "a", "n": true}', 400, "n must be an integer"),
        (b'{"prompt": "a", "max_tokens": 1000000000}', 400, "max_tokens must be in 0..1,000,000"),
        (b'{"prompt": "a", "top_p": 0}', 400, "top_p must be in (0, 1]"),
        (b'{"prompt": "a", "stop": [""]}', 400, "stop must not hold an empty string"),
        (b'{"prompt": "a", "logprobs": 99}', 400, "logprobs must be in 0..20"),
        (b'{"prompt": "a", "seed": -1}', 400, "seed must be in"),
        (b'{"prompt": "a", "echo": true}', 400, "not supported"),
        (b'{"prompt": "a", "bogus": 1}', 400, "unknown field 'bogus'"),
        (b'{"prompt": "\\u4e2d\\u6587\\u5b57"}', 400, "only characters the model never saw"),
        (b'{"prompt": "' + b"a" * 3000 + b'"}', 413, "more than the 2,000 allowed"),
        (b'{"model": "gpt-4", "prompt": "a"}', 404, "not served here"),
    ],
)
def test_bad_requests_are_refused_in_openais_error_shape(server: Started, body: bytes, status: int, words: str) -> None:
    answer = _post(server, "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in answer.text


def test_the_openai_client_sees_the_errors_as_its_own_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="run", prompt="a", temperature=-0.5)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="a")


def test_oversized_bodies_and_unknown_paths(server: Started) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as huge:  # says 1 GB is coming
        huge.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{")
        answer = b""
        for _ in range(50):  # head and body may come in separate reads
            answer += huge.recv(4096)
            if b"bytes" in answer:
                break
    assert answer.startswith(b"HTTP/1.1 413") and b"at most 65,536 bytes" in answer, answer[:300]

    def chunks() -> Iterator[bytes]:  # no length given: counted as it arrives
        for _ in range(100):
            yield b" " * 1024

    assert _post(server, "/v1/completions", content=chunks()).status_code == 413
    assert _post(server, "/v1/score", json={"text": "x" * 3000}).status_code == 413
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(server.url + "/v1/completions").status_code == 405
    assert _post(server, "/v1/score", json={"text": ""}).status_code == 400


def test_a_slow_client_gets_408_while_others_are_served(server: Started, client: openai.OpenAI) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")  # fmt: skip
        started_at = time.monotonic()
        assert client.completions.create(model="run", prompt="a", max_tokens=5).choices[0].text
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started_at < 8:
            slow.sendall(b" ")  # a byte now and then: the body never completes
            try:
                slow.settimeout(0.3)
                answer += slow.recv(4096)
            except TimeoutError:
                pass
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started_at < LIMITS.body_timeout + 3


def test_a_client_slow_to_send_its_head_is_cut_off_while_others_are_served(
    server: Started, client: openai.OpenAI
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        started_at = time.monotonic()
        closed = False
        for i in range(80):  # a header byte every 0.1 s: the head never completes
            assert i != 10 or client.completions.create(model="run", prompt="a", max_tokens=5).choices[0].text
            try:
                slow.sendall(b"GET /v1/models HTTP/1.1\r\nX-Slow: "[i : i + 1] or b"a")
                slow.settimeout(0.1)
                closed = slow.recv(4096) == b""
            except TimeoutError:
                continue
            except OSError:  # reset: closed too
                closed = True
            if closed:
                break
    assert closed and time.monotonic() - started_at < LIMITS.body_timeout + 3


def test_full_is_429_a_waiting_request_gets_in_and_a_client_that_leaves_frees_its_streams(
    server: Started, client: openai.OpenAI
) -> None:
    long = {"model": "run", "prompt": PROMPT, "max_tokens": 1_000_000, "n": 4, "stream": True}
    with httpx.Client(timeout=10) as web:
        with web.stream("POST", server.url + "/v1/completions", json=long) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines).startswith("data: ")  # the batch is full: 4 streams
            waiting: dict[str, Any] = {}
            short = {"model": "run", "prompt": PROMPT, "max_tokens": 20, "n": 4}
            thread = threading.Thread(target=lambda: waiting.update(r=client.completions.create(**short)))
            thread.start()  # its 4 streams wait in the queue
            deadline = time.monotonic() + 5
            while not server.engine.waiting and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.engine.queued == 4
            refused = _post(server, "/v1/completions", json={"prompt": "a", "max_tokens": 5})
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        thread.join(10)  # the first client left: its streams went, the waiting request got in
    assert [len(c.text) for c in waiting["r"].choices] == [20] * 4
    assert _idle(server, 3)


def test_a_plain_request_whose_client_leaves_frees_its_streams(server: Started) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"prompt": PROMPT, "max_tokens": 1_000_000, "n": 2}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as gone:
        gone.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        deadline = time.monotonic() + 5
        while not server.engine.active and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.engine.active
    assert _idle(server, 3)


# --- the page, the key, the command -------------------------------------------------------------


def test_the_page_has_no_external_resources(server: Started) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "connect-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.text and "http" not in page.text.replace("http-equiv", "")


def test_the_page_streams_text_coloured_by_surprisal_in_chromium(server: Started, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get("about:blank")
    requests(browser)  # what the browser fetched for itself before the page
    browser.get(server.url + "/")
    prime = browser.find_element(By.ID, "prime")
    prime.clear()
    prime.send_keys("And God")
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("80")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 20).until(lambda b: "finished" in b.find_element(By.ID, "status").text)
    assert browser.find_element(By.CSS_SELECTOR, "#text .p").text == "And God"
    cells = browser.find_elements(By.CSS_SELECTOR, "#text .c")
    colours = browser.execute_script(
        "return Array.from(document.querySelectorAll('#text .c'), c => c.style.backgroundColor)"
    )
    assert len(cells) == 80 and all(colours) and len(set(colours)) > 1  # each character by its surprisal
    assert "bits" in cells[0].get_attribute("title")
    assert requests(browser) == [server.url + "/", server.url + "/v1/completions"]
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_an_api_key_is_checked_on_every_request_and_a_time_limit_ends_a_request(run: Path) -> None:
    limits = Limits(max_tokens=1_000_000, max_streams=2, max_queue=2, time_limit=0.5, grace=0.5)
    with started(run, "127.0.0.1", 0, "s3cret", limits) as keyed:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            refused = httpx.get(keyed.url + "/v1/models", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(keyed.url + "/").status_code == 200  # the page holds nothing secret; its calls need the key
        good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
        started_at = time.monotonic()
        cut = good.completions.create(model="run", prompt=PROMPT, max_tokens=1_000_000, n=2)
        assert time.monotonic() - started_at < 3  # the time limit ended it: what it wrote is its text
        assert all(c.finish_reason == "length" and 0 < len(c.text) < 1_000_000 for c in cut.choices)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_the_command_refuses_an_open_address_without_a_key_and_a_missing_extra(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_in_process("serve", str(run), "--host", "0.0.0.0", env={"CHARRNN_API_KEY": ""})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "API key" in done.stderr, done.stderr
    monkeypatch.delenv("CHARRNN_API_KEY", raising=False)
    done = run_in_process("serve", str(run), "--host", "0.0.0.0")
    assert done.returncode == 1 and "reachable from other machines" in done.stderr, done.stderr
    done = run_in_process("serve", str(run), "--max-streams", "0")
    assert done.returncode == 1 and "--max-streams must be a positive number" in done.stderr
    code = "import sys; sys.modules['uvicorn'] = None; from charrnn.cli import main; main()"
    missing = subprocess.run([sys.executable, "-c", code, "serve", str(run)], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert missing.returncode == 1 and "pip install 'charrnn[serve]'" in missing.stderr
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_sigterm_ends_streams_in_flight_with_a_last_event_and_exits_0(run: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "serve",
        str(run),
        "--port",
        "0",
        "--grace",
        "1",
        "--max-tokens",
        "1000000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            line = proc.stdout.readline()
            assert "serving run at http://127.0.0.1:" in line, line + proc.stderr.read()
            url = line.split(" at ")[1].split()[0]
            body = {"prompt": PROMPT, "max_tokens": 1_000_000, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=10) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("data: ")
                proc.send_signal(signal.SIGTERM)
                stopped_at = time.monotonic()
                rest = [line for line, _ in zip(lines, range(100_000)) if line]
            assert rest[-1] == "data: [DONE]"
            assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
            assert proc.wait(10) == 0 and time.monotonic() - stopped_at < 6
        finally:
            proc.kill()


def test_the_benchmark_script_runs_small(run: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_serve.py"
    args = ["--run", str(run), "--clients", "1,3", "--chars", "20", "--soak-seconds", "1", "--soak-clients", "2"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and "soak: 1 s" in done.stdout and "MiB at the end" in done.stdout
