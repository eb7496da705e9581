"""What an export says about its model, as one JSON-able dict: the shape, the tokenizer and the
special ids, enough to encode and decode a char or byte model's text with no charrnn installed."""

from __future__ import annotations

from typing import Any

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import Tokenizer

FORMAT = "charrnn-export"
FORMAT_VERSION = 1


def start_id(tokenizer: Tokenizer) -> int:
    """The id an empty prime starts from, as `charrnn sample` starts: a newline, or else the first id that is text."""
    ids = tokenizer.encode_list("\n")
    if len(ids) == 1 and ids[0] != tokenizer.unk_id:
        return ids[0]
    return 0 if tokenizer.unk_id != 0 else 1


def describe(
    cfg: ModelConfig, tokenizer: Tokenizer, *, lines: bool, sentencepiece: str | None = None
) -> dict[str, Any]:
    """The description: `tokens` for a char model (each id's text, null for <unk>), nothing more for
    a byte model (id = byte), `token_bytes` (hex, null for no text) and the SentencePiece model's
    file name for a subword one."""
    import charrnn

    kind = tokenizer.kind
    vocab: dict[str, Any] = {"kind": kind}
    if kind == "char":
        vocab["tokens"] = tokenizer.token_texts()
    elif kind != "byte":
        vocab["token_bytes"] = [None if piece is None else piece.hex() for piece in tokenizer.token_bytes()]
        vocab["sentencepiece_model"] = sentencepiece
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "charrnn_version": charrnn.__version__,
        "cell": cfg.cell,
        "layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "states": ["h", "c"] if cfg.cell == "lstm" else ["h"],
        "tokenizer": vocab,
        "unk_id": tokenizer.unk_id,
        "start_id": start_id(tokenizer),
        "lines": lines,
    }
