"""charrnn export: a trained model that leaves Python (docs/export.md).

- `onnx_graph`: the network as an ONNX graph built from the checkpoint's weights with ONNX's own
  LSTM/GRU/RNN operators (no torch exporter involved), with the vocabulary in its metadata.
- `html_page`: one self-contained page that runs the model in plain JavaScript.
- `precision`: the page's weights in float32, float16 or int8, and what each costs in bits per character.
- `description`: what both carry about the tokenizer, so that text can be encoded and decoded without charrnn.
- `write`: the command's checks and atomic, never-overwriting writes.
"""
