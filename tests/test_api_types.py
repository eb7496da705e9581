"""What a Python caller passes the API is checked at its boundary: a value of the wrong type is a
CharrnnError that names the option, as the command names its flag, never a TypeError from deep
inside. A bool is not an integer, nor is a float; where a number is meant, an int will do.

The model is the bundled charrnn 0.1 checkpoint (tests/fixtures/format1): nothing is trained here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import in_process

import charrnn

FORMAT1 = Path(__file__).parent / "fixtures" / "format1"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> charrnn.Model:
    return charrnn.load(FORMAT1, device="cpu")


@pytest.fixture
def lines_model(model: charrnn.Model, monkeypatch: pytest.MonkeyPatch) -> charrnn.Model:
    """The same model taken for a --lines one: `examples` checks its arguments before drawing."""
    monkeypatch.setattr(model, "lines", True)
    return model


SAMPLING = [
    (dict(length=2.5), "--length must be an integer, got 2.5"),
    (dict(length="10"), "--length must be an integer, got '10'"),
    (dict(length=True), "--length must be an integer, got True"),
    (dict(seed="7"), "--seed must be an integer, got '7'"),
    (dict(seed=7.0), "--seed must be an integer, got 7.0"),
    (dict(seed=False), "--seed must be an integer, got False"),
    (dict(temperature="0.5"), "--temperature must be a number, got '0.5'"),
    (dict(temperature=True), "--temperature must be a number, got True"),
    (dict(top_k=True), "--top-k must be an integer, got True"),
    (dict(top_k=2.0), "--top-k must be an integer, got 2.0"),
    (dict(top_p="0.9"), "--top-p must be a number, got '0.9'"),
    (dict(num_samples=2.0), "--num-samples must be an integer, got 2.0"),
    (dict(stop=5), "--stop must be a str or a list of str, got 5"),
    (dict(stop=["\n", 1]), r"--stop must be a str or a list of str, got \['\\n', 1\]"),
]


@pytest.mark.parametrize(("kwargs", "message"), SAMPLING)
@pytest.mark.parametrize("method", ["generate", "stream"])
def test_a_sampling_argument_of_the_wrong_type_is_a_charrnn_error(
    model: charrnn.Model, method: str, kwargs: dict[str, Any], message: str
) -> None:
    """Raised by the call itself, for `stream` too (not at the first `next`)."""
    with pytest.raises(charrnn.CharrnnError, match=f"^{message}$"):
        getattr(model, method)("the", **kwargs)


def test_numbers_of_the_right_kind_are_taken(model: charrnn.Model) -> None:
    """An int temperature or top-p, numpy's integers and floats: all fine, and the same text."""
    text = model.generate("the", length=20, temperature=0.8, top_p=1.0, seed=3)
    assert model.generate("the", length=np.int64(20), temperature=np.float32(0.8), top_p=1, seed=np.uint8(3)) == text
    assert len(model.generate("the", length=20, temperature=1, seed=3)) == 20


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.evaluate("some text", streams=True), "--streams must be an integer, got True"),
        (lambda m: m.evaluate("some text", streams=2.0), "--streams must be an integer, got 2.0"),
        (lambda m: m.score("some text", top_k=True), "top_k must be an integer, got True"),
        (lambda m: m.score("some text", top_k=1.5), "top_k must be an integer, got 1.5"),
        (lambda m: m.score("some text", activations="yes"), "activations must be true or false, got 'yes'"),
        (lambda m: m.score("some text", activations=1), "activations must be true or false, got 1"),
    ],
)
def test_an_evaluate_or_score_argument_of_the_wrong_type_is_a_charrnn_error(
    model: charrnn.Model, call: Callable[[charrnn.Model], Any], message: str
) -> None:
    with pytest.raises(charrnn.CharrnnError, match=f"^{message}$"):
        call(model)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n=True), "the number of examples must be an integer, got True"),
        (dict(n=2.0), "the number of examples must be an integer, got 2.0"),
        (dict(length=2.5), "--length must be an integer, got 2.5"),
        (dict(unique="yes"), "--unique must be true or false, got 'yes'"),
        (dict(novel=1), "--novel must be true or false, got 1"),
        (dict(stop=3), "--stop must be a str or a list of str, got 3"),
    ],
)
def test_an_examples_argument_of_the_wrong_type_is_a_charrnn_error(
    lines_model: charrnn.Model, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(charrnn.CharrnnError, match=f"^{message}$"):
        lines_model.examples(**{"n": 2, **kwargs})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: charrnn.load(3), "the path must be a str or a path, got int"),
        (lambda: charrnn.Run(3), "the run's path must be a path, got 3"),
        (lambda: charrnn.Run(None), "a Run needs the path of its directory, got None"),
    ],
)
def test_a_path_of_the_wrong_type_is_a_charrnn_error(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(charrnn.CharrnnError, match=f"^{message}$"):
        call()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(run=3), "run must be a path, got 3"),
        (dict(resume=1), "resume must be a path, got 1"),
        (dict(handle_signals="no"), "handle_signals must be true or false, got 'no'"),
        (dict(progress="yes"), "progress must be true or false, got 'yes'"),
    ],
)
def test_a_train_keyword_of_the_wrong_type_is_a_charrnn_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    """The keywords beside the options (which charrnn.options checks); refused before anything is written."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("And God said, Let there be light.\n" * 20, encoding="utf-8")
    with pytest.raises(charrnn.CharrnnError, match=f"^{message}$"):
        charrnn.train(corpus, **{"run": tmp_path / "run", "max_steps": 1, **kwargs})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_the_api_and_the_command_give_the_same_message(
    model: charrnn.Model, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    held = tmp_path / "held.txt"
    held.write_text("some text to score\n", encoding="utf-8")
    for api, command in [
        (lambda: model.evaluate("some text", streams=0), ["eval", str(FORMAT1), str(held), "--streams", "0"]),
        (lambda: model.generate(top_p=2), ["sample", str(FORMAT1), "--top-p", "2"]),
        (lambda: model.generate(length=-1), ["sample", str(FORMAT1), "--length", "-1"]),
    ]:
        with pytest.raises(charrnn.CharrnnError) as raised:
            api()
        code, _, err = in_process(capsys, *command)
        assert (code, err) == (1, f"charrnn: error: {raised.value}\n")
