"""The model: hidden-state carry for every cell, and the single-step path used for sampling."""

from __future__ import annotations

import pytest
import torch

from charrnn import model as model_module
from charrnn.config import ModelConfig
from charrnn.model import RNNLanguageModel, SingleStep, detach_state


def _model(cell: str, **kw) -> RNNLanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50,
        cell=cell,
        num_layers=2,
        hidden_size=24,
        embed_size=12,
        dropout_hidden=0.0,
        dropout_output=0.0,
        **kw,
    )
    return RNNLanguageModel(cfg).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_carried_state_equals_one_long_pass(cell: str) -> None:
    model = _model(cell)
    x = torch.randint(0, 50, (40, 3))
    with torch.no_grad():
        full, _, _ = model(x)
        first, _, state = model(x[:25])
        state = detach_state(state)
        second, _, _ = model(x[25:], state)
    torch.testing.assert_close(torch.cat([first, second]), full)


def test_state_shapes_and_detach() -> None:
    lstm, gru = _model("lstm"), _model("gru")
    h, c = lstm.init_state(5)
    assert h.shape == c.shape == (2, 5, 24)
    assert gru.init_state(5).shape == (2, 5, 24)
    x = torch.randint(0, 50, (4, 5))
    _, _, state = lstm.train()(x)
    assert all(s.requires_grad for s in state)
    assert not any(s.requires_grad for s in detach_state(state))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("tie", [False, True])
def test_single_step_matches_the_fused_module(cell: str, tie: bool) -> None:
    model = _model(cell, tie_weights=tie)
    _assert_steps_match(model, SingleStep(model))


def _assert_steps_match(model: RNNLanguageModel, step: SingleStep, steps: int = 30, tolerance: float = 1e-5) -> None:
    """Token by token, `step` gives the logits of one pass of the model's fused modules."""
    device = model.embed.weight.device
    x = torch.randint(0, 50, (steps, 4), device=device)
    with torch.no_grad():
        expected, _, _ = model(x)
    state = model.init_state(4)
    for t in range(steps):
        logits, state = step(x[t], state)
        torch.testing.assert_close(logits, expected[t], atol=tolerance, rtol=max(tolerance, 1e-4))


# Stand-ins for torch's fused CUDA cell kernels, from nn.LSTM's and nn.GRU's documented
# equations (gate order i, f, g, o and r, z, n), so the fused wiring is checked on the CPU.
def _lstm_cell(input_gates, hidden_gates, cx, input_bias=None, hidden_bias=None):
    gates = input_gates + hidden_gates
    gates = gates + (0 if input_bias is None else input_bias) + (0 if hidden_bias is None else hidden_bias)
    i, f, g, o = gates.chunk(4, dim=1)
    cy = f.sigmoid() * cx + i.sigmoid() * g.tanh()
    return o.sigmoid() * cy.tanh(), cy, gates


def _gru_cell(input_gates, hidden_gates, hx, input_bias=None, hidden_bias=None):
    input_gates = input_gates + (0 if input_bias is None else input_bias)
    hidden_gates = hidden_gates + (0 if hidden_bias is None else hidden_bias)
    ir, iz, i_n = input_gates.chunk(3, dim=1)
    hr, hz, h_n = hidden_gates.chunk(3, dim=1)
    r, z = (ir + hr).sigmoid(), (iz + hz).sigmoid()
    n = (i_n + r * h_n).tanh()
    return n + z * (hx - n), input_gates


def _swapped_lstm_cell(input_gates, hidden_gates, cx, input_bias=None, hidden_bias=None):
    return _lstm_cell(input_gates.roll(input_gates.shape[1] // 4, 1), hidden_gates, cx, input_bias, hidden_bias)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("tie", [False, True])
def test_the_fused_cell_path_matches_the_fused_module(cell: str, tie: bool, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "_FUSED_CELLS", {"lstm": _lstm_cell, "gru": _gru_cell})
    model = _model(cell, tie_weights=tie)
    step = SingleStep(model)
    assert not step.fused  # only ever switched on by itself on a GPU
    assert step.fused_cell_matches()
    step.fused = True
    _assert_steps_match(model, step)


def test_a_fused_cell_that_disagrees_or_is_missing_is_not_used(monkeypatch) -> None:
    step = SingleStep(_model("lstm"))
    assert not step.fused_cell_matches()  # on the CPU torch has no fused cell kernel: it raises
    monkeypatch.setattr(model_module, "_FUSED_CELLS", {"lstm": _swapped_lstm_cell, "gru": _gru_cell})
    assert not step.fused_cell_matches()
    assert not step.fused
    assert not SingleStep(_model("rnn")).fused_cell_matches()  # no fused kernel for a plain RNN


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_on_a_gpu_the_single_step_uses_the_fused_cell(cell: str) -> None:
    model = _model(cell).cuda()
    step = SingleStep(model)
    assert step.fused
    _assert_steps_match(model, step, steps=10, tolerance=1e-3)  # cuDNN and TF32 round differently


def test_tied_weights_share_one_tensor() -> None:
    model = _model("lstm", tie_weights=True)
    assert model.head.weight is model.embed.weight
    assert model.proj is not None  # hidden 24 != embed 12 needs a projection


def test_loss_of_untrained_model_is_near_uniform() -> None:
    model = _model("lstm")
    x = torch.randint(0, 50, (20, 8))
    _, loss, _ = model(x, targets=x)
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.3


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("tie, embed", [(False, 16), (True, 16), (True, 32)], ids=["untied", "tied+proj", "tied"])
def test_checkpoint_shape_check_predicts_the_state_dict(cell: str, tie: bool, embed: int) -> None:
    """Checkpoints are checked against shapes computed from the config, without building the model:
    those shapes must be exactly the model's."""
    from charrnn.checkpoint import weight_shapes

    cfg = ModelConfig(vocab_size=11, cell=cell, num_layers=3, hidden_size=32, embed_size=embed, tie_weights=tie)
    actual = {key: tuple(value.shape) for key, value in RNNLanguageModel(cfg).state_dict().items()}
    assert weight_shapes(cfg) == actual


def test_weight_drop_masks_the_hidden_to_hidden_weights_in_training_only() -> None:
    """DropConnect: in training, a fraction p of each layer's hidden-to-hidden entries is dropped (their
    gradient is exactly zero), one mask per step; in evaluation the model is the undropped one."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, num_layers=2, hidden_size=32, embed_size=8, dropout_hidden=0, dropout_output=0)
    plain = RNNLanguageModel(cfg)
    dropped = RNNLanguageModel(ModelConfig(**{**cfg.__dict__, "weight_drop": 0.4}))
    dropped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 20, (12, 3))
    dropped.eval()
    torch.testing.assert_close(dropped(idx)[0], plain.eval()(idx)[0], rtol=0, atol=0)
    dropped.train()
    _, loss, _ = dropped(idx, targets=idx)
    loss.backward()
    for rnn in dropped.rnns:
        zero = (rnn.weight_hh_l0.grad == 0).float().mean().item()
        assert 0.3 < zero < 0.5  # ~p of the entries carried no gradient: they were dropped
        assert (rnn.weight_ih_l0.grad != 0).float().mean().item() > 0.9  # the input weights are not dropped
    assert not torch.equal(dropped(idx)[0], dropped(idx)[0])  # a new mask each step
    assert list(dropped.state_dict()) == list(plain.state_dict())  # checkpoints look the same
