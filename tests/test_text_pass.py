"""The one pass over a text (charrnn/text_pass.py): from a given state, in windows, with the states."""

from __future__ import annotations

import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.model import RNNLanguageModel
from charrnn.text_pass import windows

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(cell: str, layers: int = 2) -> RNNLanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=17, embed_size=8, hidden_size=12, num_layers=layers, cell=cell)
    return RNNLanguageModel(cfg).eval()


def _flat(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _bits(parts) -> torch.Tensor:
    return torch.cat([torch.from_numpy(part.bits()) for part in parts])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_pass_in_two_parts_from_the_carried_state_is_the_pass_in_one(cell: str) -> None:
    model = _model(cell)
    tokens = torch.randint(0, 17, (301,), generator=torch.Generator().manual_seed(1))
    whole = list(windows(model, tokens, torch.tensor([0]), 300, window=64))
    first = list(windows(model, tokens, torch.tensor([0]), 100, window=64))
    second = list(windows(model, tokens, torch.tensor([100]), 200, state=first[-1].state, window=64))
    assert len(whole) == 5  # windows of 64 tokens: memory bounded by the window, not the text
    torch.testing.assert_close(_bits(first + second), _bits(whole), rtol=1e-6, atol=1e-6)
    for a, b in zip(_flat(second[-1].state), _flat(whole[-1].state)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_states_come_from_the_step_that_scores(cell: str) -> None:
    """With activations the pass steps one token at a time: its logits are the fused pass's (to
    float rounding), its last h (and c) the model's own final state, its top layer's h the outputs."""
    model = _model(cell)
    tokens = torch.randint(0, 17, (2, 41), generator=torch.Generator().manual_seed(2)).reshape(-1)
    starts = torch.tensor([0, 41])  # two streams side by side
    fused = list(windows(model, tokens, starts, 40, window=16))
    stepped = list(windows(model, tokens, starts, 40, window=16, activations=True))
    torch.testing.assert_close(_bits(stepped), _bits(fused), rtol=1e-4, atol=1e-4)
    hidden = torch.cat([part.hidden for part in stepped])  # (40, streams, layers, H)
    assert hidden.shape == (40, 2, 2, 12)
    final = fused[-1].state
    h_final = final[0] if cell == "lstm" else final
    torch.testing.assert_close(hidden[-1].transpose(0, 1), h_final, rtol=1e-4, atol=1e-5)
    if cell == "lstm":
        cells = torch.cat([part.cell for part in stepped])
        torch.testing.assert_close(cells[-1].transpose(0, 1), final[1], rtol=1e-4, atol=1e-5)
    else:
        assert stepped[0].cell is None
    with torch.no_grad():
        chunk = tokens.view(2, 41)[:, :40].t()
        out = model.embed(chunk)
        for rnn in model.rnns:
            out, _ = rnn(out)
    torch.testing.assert_close(hidden[:, :, -1], out, rtol=1e-4, atol=1e-5)


def test_activations_change_no_figure(tiny_trained) -> None:
    """`Model.score` with and without activations, and eval: one bits per character (1e-6)."""
    import charrnn

    model = charrnn.load(tiny_trained / "run", device="cpu")
    text = "".join(model.validation("score")[0])[:1500]
    plain, stepped = model.score(text), model.score(text, activations=True)
    assert abs(stepped.bits_per_char - plain.bits_per_char) < 1e-6
    assert abs(plain.bits_per_char - model.evaluate(text).bits_per_char) < 1e-6
    assert stepped.hidden.shape == (len(text), model.config.num_layers, model.config.hidden_size)
    assert (stepped.first_token == model.tokenizer.encode(text).numpy()).all()  # a char model: one token each
