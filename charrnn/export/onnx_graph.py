"""The network as an ONNX graph, built from the checkpoint's arrays with `onnx.helper`.

Inputs: `tokens` int64 [batch, time], `h` (and for an LSTM `c`) float32 [layers, batch, hidden].
Outputs: `logits` float32 [batch, time, vocab], `h_out` (and `c_out`) [layers, batch, hidden].
Each layer is ONNX's own LSTM, GRU or RNN operator, so the graph needs no torch exporter: the
weights are only reordered, since ONNX orders the gates otherwise (LSTM i,o,f,c against torch's
i,f,g,o; GRU z,r,h against r,z,n, with `linear_before_reset=1` as torch computes it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from charrnn.config import ModelConfig

if TYPE_CHECKING:
    import onnx

OPSET = 17  # onnxruntime 1.17 and later run it; every operator used here has been stable since
IR_VERSION = 8  # the IR version of opset 17, which older runtimes still load
METADATA_KEY = "charrnn"
# For each cell, torch's gate blocks in the order ONNX wants them.
GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
OPERATOR = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}

MAX_BYTES = (2 << 30) - (64 << 20)  # protobuf's limit on one message, less room for the graph itself
MISSING = "onnx is not installed: pip install 'charrnn[export]' (onnx and onnxruntime)"


def _gates(array: np.ndarray, cell: str) -> np.ndarray:
    """A torch weight or bias, (G*H, ...), with its gate blocks in ONNX's order."""
    blocks = np.split(np.asarray(array, dtype=np.float32), len(GATE_ORDER[cell]))
    return np.concatenate([blocks[i] for i in GATE_ORDER[cell]])


class _Graph:
    """Nodes and initializers collected while the graph is built."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", **attrs))
        return outputs


def _layer(g: _Graph, cfg: ModelConfig, weights: dict[str, np.ndarray], i: int, x: str) -> tuple[str, list[str]]:
    """Layer i over x [time, batch, in]: its output [time, batch, hidden] and its final states, each [1, batch, hidden]."""
    cell, prefix = cfg.cell, f"rnns.{i}."
    w = g.const(f"W{i}", _gates(weights[prefix + "weight_ih_l0"], cell)[None])
    r = g.const(f"R{i}", _gates(weights[prefix + "weight_hh_l0"], cell)[None])
    bias = np.concatenate([_gates(weights[prefix + "bias_ih_l0"], cell), _gates(weights[prefix + "bias_hh_l0"], cell)])
    b = g.const(f"B{i}", bias[None])
    where = [g.const(f"start{i}", np.array([i])), g.const(f"end{i}", np.array([i + 1])), "axis0"]
    names = ["h", "c"] if cell == "lstm" else ["h"]
    initial = [g.node("Slice", [name, *where], [f"{name}{i}_in"])[0] for name in names]
    attrs: dict[str, Any] = {"hidden_size": cfg.hidden_size}
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    finals = [f"{name}{i}_out" for name in names]
    g.node(OPERATOR[cell], [x, w, r, b, "", *initial], [f"y{i}", *finals], **attrs)
    return g.node("Squeeze", [f"y{i}", "axis1"], [f"x{i + 1}"])[0], finals


def build_graph(cfg: ModelConfig, weights: dict[str, np.ndarray], description: dict[str, Any]) -> onnx.ModelProto:
    """The checked ONNX model of these weights, `description` in its metadata as one JSON entry."""
    import onnx
    from onnx import TensorProto, helper

    g = _Graph()
    g.const("axis0", np.array([0]))
    g.const("axis1", np.array([1]))
    embed = g.const("embed", np.asarray(weights["embed.weight"], np.float32))
    g.node("Gather", [embed, "tokens"], ["embedded"])  # [batch, time, embed]
    x = g.node("Transpose", ["embedded"], ["x0"], perm=[1, 0, 2])[0]  # [time, batch, embed]
    finals: list[list[str]] = []
    for i in range(cfg.num_layers):
        x, layer_finals = _layer(g, cfg, weights, i, x)
        finals.append(layer_finals)
    out = g.node("Transpose", [x], ["top"], perm=[1, 0, 2])[0]  # [batch, time, hidden]
    if "proj.weight" in weights:
        out = g.node("MatMul", [out, g.const("proj", np.asarray(weights["proj.weight"], np.float32).T)], ["projected"])[
            0
        ]
    head = g.const("head_w", np.asarray(weights["head.weight"], np.float32).T)
    g.node("MatMul", [out, head], ["scores"])
    g.node("Add", ["scores", g.const("head_b", np.asarray(weights["head.bias"], np.float32))], ["logits"])
    names = ["h", "c"] if cfg.cell == "lstm" else ["h"]
    for k, name in enumerate(names):
        g.node("Concat", [layer[k] for layer in finals], [f"{name}_out"], axis=0)

    state_shape = [cfg.num_layers, "batch", cfg.hidden_size]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape) for name in names]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", cfg.vocab_size])]
    outputs += [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, state_shape) for name in names]
    graph = helper.make_graph(g.nodes, "charrnn", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="charrnn")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {METADATA_KEY: json.dumps(description, ensure_ascii=False)})
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_bytes(cfg: ModelConfig, weights: dict[str, np.ndarray], description: dict[str, Any]) -> bytes:
    """The serialized model (a CharrnnError naming what to install when onnx is missing)."""
    from charrnn.errors import CharrnnError

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CharrnnError(MISSING) from None
    size = sum(np.asarray(array).size * 4 for array in weights.values())
    if size > MAX_BYTES:
        raise CharrnnError(f"the weights take {size:,} bytes in float32: more than one ONNX file holds (2 GiB)")
    return build_graph(cfg, weights, description).SerializeToString()
