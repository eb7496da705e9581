"""Tokenizers: text to 1-D int64 id tensors and back, exactly. char, byte, bpe and unigram share
one interface, `Tokenizer`; docs/tokenizers.md describes each.

Every id decodes to a fixed byte string, so decoding joins the bytes and decodes them as UTF-8
with replacement, and a `StreamDecoder` only holds back an incomplete UTF-8 sequence at the end.
Lone surrogates become U+FFFD before tokenizing, so encode never raises on a str. `to_state()`
holds plain values and uint8 tensors (a SentencePiece model), which a checkpoint stores as they
are. torch and sentencepiece are imported where they are used: the char and byte tokenizers run
without them, as `charrnn sample` on the CPU needs.
"""

from __future__ import annotations

import codecs
import io
import itertools
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    import torch

TOKENIZER_KINDS = ("char", "byte", "bpe", "unigram")

_REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = _REPLACEMENT.encode("utf-8")
_SURROGATES = re.compile("[\ud800-\udfff]")
_NUM_CODE_POINTS = 0x110000
# Characters per step when vectorizing char encode: big enough to amortize Python
# overhead, small enough that the UTF-32 buffer stays in cache-friendly sizes.
_CHAR_CHUNK = 1 << 20
# Arrays of ids at least this long decode through numpy (`_PieceTable`); shorter ones and lists
# through a Python loop, which costs less at that size than numpy's per-call overhead.
_ARRAY_DECODE_MIN = 64
# The largest SentencePiece model a tokenizer state may hold. A piece takes some 16 bytes of it
# (measured at 4,000 pieces of the KJV), at most about 70 (16 characters of 4 bytes), so a model of
# the largest vocabulary charrnn trains, 2^20 pieces, stays well under this; a bigger blob is not a
# model charrnn wrote, and would cost several times its size to copy and parse.
MAX_MODEL_BYTES = 128 << 20


def _without_surrogates(text: str) -> str:
    """The text with lone surrogates replaced by U+FFFD (the common case costs one encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub(_REPLACEMENT, text)
    return text


def _ids_to_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    """A list of ints from a list, a torch tensor or a numpy array (of any shape)."""
    return ids.flatten().tolist() if hasattr(ids, "flatten") else list(ids)


def _join_bytes(id_bytes: Sequence[bytes | None], ids: Sequence[int] | torch.Tensor) -> bytes:
    """Concatenate each id's bytes; ids out of range or without text become U+FFFD."""
    n = len(id_bytes)
    parts = []
    for i in _ids_to_list(ids):
        piece = id_bytes[i] if 0 <= i < n else None
        parts.append(_REPLACEMENT_BYTES if piece is None else piece)
    return b"".join(parts)


class _PieceTable:
    """Every id's bytes in one buffer, so a whole array of ids decodes in a few numpy calls
    (a Python loop costs ~0.1 µs a token: half a second for 1,024 samples of 4,000)."""

    def __init__(self, id_bytes: Sequence[bytes | None]) -> None:
        import numpy as np

        pieces = [_REPLACEMENT_BYTES if piece is None else piece for piece in id_bytes]
        pieces.append(_REPLACEMENT_BYTES)  # the last slot stands for every out-of-range id
        self.lengths = np.array([len(piece) for piece in pieces], dtype=np.int64)
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.buffer = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        # When every piece is one whole character (the char tokenizer), ids map to code points.
        texts = [piece.decode("utf-8", errors="replace") for piece in pieces]
        whole = all(len(text) == 1 and text.encode("utf-8") == piece for text, piece in zip(texts, pieces))
        self.code_points = np.array([ord(text) for text in texts], dtype="<u4") if whole else None

    def decode(self, ids: Any) -> str:
        """`Tokenizer.decode` of a numpy array or torch tensor of ids, any shape."""
        import numpy as np

        if hasattr(ids, "cpu"):  # a torch tensor, maybe on a GPU
            ids = ids.cpu().numpy()
        ids = np.asarray(ids).ravel().astype(np.int64)
        outside = len(self.lengths) - 1
        ids = np.where((ids >= 0) & (ids < outside), ids, outside)
        if self.code_points is not None:
            return self.code_points[ids].tobytes().decode("utf-32-le")
        lengths = self.lengths[ids]
        ends = np.cumsum(lengths)
        if not len(ends) or not ends[-1]:
            return ""
        # Output byte k belongs to the piece whose output span holds k; its offset inside that
        # piece is k minus where the span starts, read from the buffer at the piece's start.
        shift = np.repeat(self.starts[ids] - (ends - lengths), lengths)
        return self.buffer[np.arange(ends[-1]) + shift].tobytes().decode("utf-8", errors="replace")


class StreamDecoder:
    """Decodes ids pushed a few at a time, printing only text that is final.

    An id sequence may stop in the middle of a UTF-8 sequence (byte ids, byte-fallback
    pieces); those bytes are held back until the sequence completes or turns out invalid.
    The concatenation of every `push` and the final `flush` equals `Tokenizer.decode`
    of all the ids.
    """

    def __init__(self, id_bytes: Sequence[bytes | None]) -> None:
        self._id_bytes = id_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Sequence[int] | torch.Tensor) -> str:
        return self._utf8.decode(_join_bytes(self._id_bytes, ids))

    def getstate(self) -> tuple[bytes, int]:
        """The bytes held back (as codecs' incremental decoders give it): `setstate` steps back to here."""
        return self._utf8.getstate()

    def setstate(self, state: tuple[bytes, int]) -> None:
        self._utf8.setstate(state)

    def flush(self) -> str:
        # final=True turns a dangling incomplete sequence into U+FFFD and resets the state.
        return self._utf8.decode(b"", final=True)


class Tokenizer(ABC):
    """Text <-> ids. Subclasses fill `_id_bytes` (the UTF-8 bytes each id stands for,
    None for ids that are not text, such as ``<unk>``) and implement encode/to_state."""

    kind: str
    vocab_size: int
    unk_id: int | None
    _id_bytes: list[bytes | None]
    _pieces: _PieceTable | None = None  # built on the first decode of a long array

    @abstractmethod
    def encode(self, text: str) -> torch.Tensor:
        """1-D torch.int64 tensor of ids."""

    def encode_list(self, text: str) -> list[int]:
        """The ids of `encode` as a list (char and byte tokenizers compute it without torch)."""
        return self.encode(text).tolist()

    @abstractmethod
    def to_state(self) -> dict:
        """Everything needed to rebuild this tokenizer with `tokenizer_from_state`."""

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of the ids (a list, or a torch or numpy array of any shape, read in order).
        Never raises: invalid UTF-8, ``<unk>`` and out-of-range ids become U+FFFD."""
        if hasattr(ids, "shape") and math.prod(ids.shape) >= _ARRAY_DECODE_MIN:  # a torch or numpy array
            if self._pieces is None:
                self._pieces = _PieceTable(self._id_bytes)
            return self._pieces.decode(ids)
        return _join_bytes(self._id_bytes, ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self._id_bytes)

    def token_bytes(self) -> list[bytes | None]:
        """The UTF-8 bytes each id stands for; None where the id is not text (``<unk>``)."""
        return list(self._id_bytes)

    def token_texts(self) -> list[str | None]:
        """Text of each id on its own; None where the id is not whole text by itself."""
        texts: list[str | None] = []
        for piece in self._id_bytes:
            try:
                texts.append(None if piece is None else piece.decode("utf-8"))
            except UnicodeDecodeError:  # a partial UTF-8 sequence
                texts.append(None)
        return texts

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _code_points(text: str) -> torch.Tensor:
    """int32 code points of a surrogate-free str (empty tensor for an empty str)."""
    import torch

    if not text:
        return torch.empty(0, dtype=torch.int32)
    # bytearray: torch.frombuffer wants a writable buffer.
    return torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)


class CharTokenizer(Tokenizer):
    """One id per code point seen in training; id 0 is ``<unk>``."""

    kind = "char"
    unk_id = 0

    def __init__(self, chars: str) -> None:
        if not isinstance(chars, str) or not chars:
            raise CharrnnError("char tokenizer needs a non-empty string of characters")
        if any(a >= b for a, b in itertools.pairwise(chars)):
            raise CharrnnError("char tokenizer characters must be distinct and sorted by code point")
        if _SURROGATES.search(chars):
            raise CharrnnError("char tokenizer characters must not include lone surrogates")
        self.chars = chars
        self.vocab_size = len(chars) + 1
        self._id_bytes = [None, *(c.encode("utf-8") for c in chars)]
        self._table: torch.Tensor | None = None
        self._index: dict[str, int] | None = None

    def _id_of_code_point(self) -> torch.Tensor:
        # Built on first use: a 0x110000-entry table (~9 MB), 0 (<unk>) for unseen code points.
        import torch

        if self._table is None:
            table = torch.zeros(_NUM_CODE_POINTS, dtype=torch.int64)
            table[_code_points(self.chars).long()] = torch.arange(1, self.vocab_size)
            self._table = table
        return self._table

    def encode(self, text: str) -> torch.Tensor:
        import torch

        text = _without_surrogates(text)
        table = self._id_of_code_point()
        ids = torch.empty(len(text), dtype=torch.int64)  # len(str) counts code points
        for start in range(0, len(text), _CHAR_CHUNK):
            chunk = text[start : start + _CHAR_CHUNK]
            torch.index_select(table, 0, _code_points(chunk), out=ids[start : start + len(chunk)])
        return ids

    def encode_list(self, text: str) -> list[int]:
        if self._index is None:
            self._index = {c: i for i, c in enumerate(self.chars, start=1)}
        index = self._index
        return [index.get(c, 0) for c in _without_surrogates(text)]

    def to_state(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class CharVocabCounter:
    """Collects the distinct characters of a text fed in chunks, without keeping the text."""

    def __init__(self) -> None:
        import torch

        self._seen = torch.zeros(_NUM_CODE_POINTS, dtype=torch.bool)

    def update(self, text_chunk: str) -> None:
        self._seen[_code_points(_without_surrogates(text_chunk))] = True

    def build(self) -> CharTokenizer:
        code_points = self._seen.nonzero().flatten().tolist()  # ascending
        if not code_points:
            raise CharrnnError("cannot build a char vocabulary: the training text is empty")
        return CharTokenizer("".join(map(chr, code_points)))


class ByteTokenizer(Tokenizer):
    """ids 0..255 are the bytes of the UTF-8 encoding."""

    kind = "byte"
    vocab_size = 256
    unk_id = None

    def __init__(self) -> None:
        self._id_bytes = [bytes([b]) for b in range(256)]

    def encode(self, text: str) -> torch.Tensor:
        import torch

        data = _without_surrogates(text).encode("utf-8")
        if not data:
            return torch.empty(0, dtype=torch.int64)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)

    def encode_list(self, text: str) -> list[int]:
        return list(_without_surrogates(text).encode("utf-8"))

    def to_state(self) -> dict:
        return {"kind": self.kind}


# --- SentencePiece (bpe / unigram) -------------------------------------------------
#
# Exact round trip. With identity normalization, no dummy prefix and no whitespace
# folding, SentencePiece gives back every character but one: U+2581 "▁", its own marker
# for a space, which would come back as " " (checked by encoding every code point).
# Training sentences are lines, so "\n" never sits inside a learned piece. So the text
# is cut at "\n" and "▁"; the segments between are encoded by SentencePiece as a batch,
# and each cut character becomes its UTF-8 byte-fallback pieces (<0x0A> for "\n";
# <0xE2><0x96><0x81> for "▁"). Decoding joins the bytes of every id, with the space
# marker inside ordinary pieces turned back into " ".
# A model may have no piece for the space (a small vocabulary on text where spaces are
# rare): SentencePiece would then spell a space as the bytes of "▁". For such a model
# the text is cut at " " too, and each space becomes <0x20>.

_SP_SPECIAL = re.compile("([\n\u2581])")  # the capture group keeps the cut characters
_SP_SPECIAL_AND_SPACE = re.compile("([\n\u2581 ])")
_SP_SPACE = "\u2581"
_SP_MIN_VOCAB = 257  # 256 byte pieces and <unk>
# Characters SentencePiece never makes a piece of (tab, NUL) or that never reach it (cut above).
_SP_NEVER_PIECES = "\t\x00\n\u2581"
# Training reads at most this many sentences (sampled at random when there are more) ...
_SP_MAX_TRAIN_SENTENCES = 1_000_000
# ... each at most this many characters: longer lines are cut, never dropped.
_SP_MAX_TRAIN_CHARS = 4096
# Encode works through the text in pieces of about this many characters, cut after a "\n".
_SP_ENCODE_CHUNK = 1 << 20
_SP_SEED = 1234  # fixes SentencePiece's sentence sampling, so training is reproducible


def _chunks_at_newlines(text: str, size: int) -> Iterator[str]:
    """Consecutive pieces of `text` of at least `size` characters, each ending after a
    newline (except the last); they concatenate back to `text`."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _training_sentences(text: str) -> Iterator[str]:
    for chunk in _chunks_at_newlines(text, _SP_ENCODE_CHUNK):
        for segment in _SP_SPECIAL.split(chunk)[0::2]:
            for start in range(0, len(segment), _SP_MAX_TRAIN_CHARS):
                yield segment[start : start + _SP_MAX_TRAIN_CHARS]


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece bpe or unigram model with byte fallback; never unknown."""

    unk_id = None

    def __init__(self, kind: str, model: bytes) -> None:
        if kind not in ("bpe", "unigram"):
            raise CharrnnError(f"not a SentencePiece tokenizer kind: {kind!r}")
        self.kind = kind
        self.model = model
        if not model:
            raise CharrnnError(f"the {kind} tokenizer model is empty")
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        except RuntimeError as error:
            raise CharrnnError(f"the {kind} tokenizer model is not a valid SentencePiece model") from error
        self.vocab_size = self._sp.vocab_size()
        if self.vocab_size < _SP_MIN_VOCAB:
            raise CharrnnError(f"the {kind} tokenizer model has no byte fallback pieces")
        byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        if not all(self._sp.is_byte(i) for i in byte_ids):
            raise CharrnnError(f"the {kind} tokenizer model has no byte fallback pieces")
        self._special_ids = {char: [byte_ids[b] for b in char.encode("utf-8")] for char in ("\n", _SP_SPACE, " ")}
        space = self._sp.piece_to_id(_SP_SPACE)  # <unk>'s id when there is no such piece
        self._cut = _SP_SPECIAL if self._sp.id_to_piece(space) == _SP_SPACE else _SP_SPECIAL_AND_SPACE
        self._id_bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]

    def _piece_bytes(self, i: int) -> bytes | None:
        piece = self._sp.id_to_piece(i)
        if self._sp.is_byte(i):  # "<0xAB>"
            return bytes([int(piece[3:5], 16)])
        if self._sp.is_unknown(i) or self._sp.is_control(i) or self._sp.is_unused(i):
            return None
        return piece.replace(_SP_SPACE, " ").encode("utf-8")

    def _encode_chunks(self, text: str) -> Iterator[list[int]]:
        """The ids of `text`, a list per piece of about `_SP_ENCODE_CHUNK` characters."""
        for chunk in _chunks_at_newlines(_without_surrogates(text), _SP_ENCODE_CHUNK):
            pieces = self._cut.split(chunk)  # [segment, cut char, segment, ...]
            encoded = self._sp.encode(pieces[0::2], out_type=int)  # batched, multithreaded
            ids: list[int] = list(encoded[0])
            for cut, segment_ids in zip(pieces[1::2], encoded[1:]):
                ids += self._special_ids[cut]
                ids += segment_ids
            yield ids

    def encode(self, text: str) -> torch.Tensor:
        import torch

        parts = [torch.empty(0, dtype=torch.int64)]
        parts += [torch.tensor(ids, dtype=torch.int64) for ids in self._encode_chunks(text)]
        return torch.cat(parts)

    def encode_list(self, text: str) -> list[int]:
        return [i for ids in self._encode_chunks(text) for i in ids]

    def characters(self) -> set[str]:
        """The characters that are pieces of their own; every other one is spelled in bytes."""
        pieces = (self._sp.id_to_piece(i) for i in range(self.vocab_size) if not self._sp.is_byte(i))
        return {piece.replace(_SP_SPACE, " ") for piece in pieces if len(piece) == 1}

    def to_state(self) -> dict:
        import torch

        return {"kind": self.kind, "model": torch.frombuffer(bytearray(self.model), dtype=torch.uint8)}


def _characters_by_frequency(text: str) -> list[str]:
    """The distinct characters of `text` but "\n", most frequent first, ties in code-point order."""
    import numpy as np

    counts = np.zeros(_NUM_CODE_POINTS, dtype=np.int64)
    for start in range(0, len(text), _CHAR_CHUNK):
        code_points = _without_surrogates(text[start : start + _CHAR_CHUNK]).encode("utf-32-le")
        counts += np.bincount(np.frombuffer(code_points, dtype="<u4"), minlength=_NUM_CODE_POINTS)
    counts[ord("\n")] = 0
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    return [chr(c) for c in order.tolist()]


def _sentences_of_kept(text: str, kept: str) -> Iterator[str]:
    """The training sentences cut at every character not in `kept`, so SentencePiece sees no other."""
    others = re.compile(f"[^{re.escape(kept)}]+")
    for sentence in _training_sentences(text):
        yield from filter(None, others.split(sentence))


def _run_sentencepiece(kind: str, sentences: Iterator[str], vocab_size: int, **options: Any) -> bytes:
    """The serialized model SentencePiece trains on `sentences`; its errors come back as RuntimeError."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.set_random_generator_seed(_SP_SEED)
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=model,
        model_type=kind,
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        input_sentence_size=_SP_MAX_TRAIN_SENTENCES,
        shuffle_input_sentence=True,
        max_sentence_length=4 * _SP_MAX_TRAIN_CHARS,  # bytes; a cut line always fits
        minloglevel=2,  # quiet: errors still come back as RuntimeError
        **options,
    )
    return model.getvalue()


def _train_sentencepiece(kind: str, text: str, vocab_size: int, characters: list[str]) -> SentencePieceTokenizer:
    """Train in memory, exactly `vocab_size` ids; `characters` are the text's, most frequent first.
    A vocab_size the text cannot fill is a CharrnnError naming the usable limit (the size is
    never changed behind the user's back: it is part of the model config)."""
    try:
        try:
            model = _run_sentencepiece(kind, _training_sentences(text), vocab_size)
        except RuntimeError as error:
            if "smaller than required_chars" not in str(error):
                raise
            # SentencePiece keeps the characters that cover 99.95% of the text, and refuses a
            # character_coverage under 0.98: too many characters for a small vocabulary on a big
            # alphabet. So it is shown only the most frequent characters that fit beside the 256
            # bytes and <unk>, and keeps them all; the rest fall back to bytes. SentencePiece too
            # puts characters before merges, which fill what the characters leave: here, nothing.
            kept = [c for c in characters if c not in _SP_NEVER_PIECES][: vocab_size - _SP_MIN_VOCAB]
            sentences = _sentences_of_kept(text, "".join(kept))
            model = _run_sentencepiece(kind, sentences, vocab_size, character_coverage=1.0)
    except RuntimeError as error:
        raise _training_error(kind, vocab_size, error) from error
    return SentencePieceTokenizer(kind, model)


def _training_error(kind: str, vocab_size: int, error: RuntimeError) -> CharrnnError:
    """One clear line for a SentencePiece training failure."""
    message = str(error)
    too_high = re.search(r"value <= (\d+)", message)
    if too_high:
        return CharrnnError(
            f"vocab_size {vocab_size} is too large for this training text; "
            f"the {kind} tokenizer can use at most {too_high.group(1)}"
        )
    if "sentences_.empty()" in message:
        return CharrnnError(
            f"cannot train a {kind} tokenizer: the training text has no characters besides line breaks and U+2581"
        )
    return CharrnnError(f"training the {kind} tokenizer failed: {message}")


def train_tokenizer(
    kind: str,
    train_text: str,
    vocab_size: int | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> Tokenizer:
    """Build a tokenizer of `kind` from `train_text`.

    `vocab_size` is required for bpe/unigram and must be left out for char (the text
    decides it) and byte (always 256).
    """
    if kind not in TOKENIZER_KINDS:
        raise CharrnnError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    if kind in ("char", "byte"):
        if vocab_size is not None:
            raise CharrnnError(f"vocab_size applies only to bpe and unigram tokenizers, not {kind}")
    elif vocab_size is None:
        raise CharrnnError(f"the {kind} tokenizer needs a vocab_size")
    elif isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= _SP_MIN_VOCAB:
        raise CharrnnError(
            f"vocab_size must be an integer of at least {_SP_MIN_VOCAB + 1} for the {kind} tokenizer "
            f"(256 byte pieces, <unk> and one more piece), got {vocab_size!r}"
        )
    if kind == "byte":
        return ByteTokenizer()
    if not train_text:
        raise CharrnnError(f"cannot train a {kind} tokenizer: the training text is empty")

    report = progress or (lambda message: None)
    report(f"training {kind} tokenizer on {len(train_text):,} characters")
    started = time.perf_counter()
    tokenizer: Tokenizer
    fallback = ""
    if kind == "char":
        counter = CharVocabCounter()
        for start in range(0, len(train_text), 1 << 24):
            counter.update(train_text[start : start + (1 << 24)])
        tokenizer = counter.build()
    else:
        assert vocab_size is not None
        characters = _characters_by_frequency(train_text)
        tokenizer = _train_sentencepiece(kind, train_text, vocab_size, characters)
        pieces = tokenizer.characters()
        bytes_only = sum(c not in pieces for c in characters)
        fallback = f"; {bytes_only:,} of {len(characters):,} distinct characters left to byte fallback"
    seconds = time.perf_counter() - started
    report(f"trained {kind} tokenizer: {tokenizer.vocab_size:,} ids in {seconds:.1f}s{fallback}")
    return tokenizer


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_state()`; CharrnnError if the state is bad."""
    if not isinstance(state, dict):
        raise CharrnnError(f"tokenizer state must be a dict, got {type(state).__name__}")
    kind = state.get("kind")
    if kind not in TOKENIZER_KINDS:
        raise CharrnnError(f"tokenizer state has unknown kind {kind!r}")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        chars = state.get("chars")
        if not isinstance(chars, str):
            raise CharrnnError("char tokenizer state needs 'chars', a string")
        return CharTokenizer(chars)
    model = state.get("model")  # a torch tensor, or a numpy array when read without torch
    if str(getattr(model, "dtype", None)) not in ("torch.uint8", "uint8") or getattr(model, "ndim", None) != 1:
        raise CharrnnError(f"{kind} tokenizer state needs 'model', a 1-D uint8 tensor")
    if model.shape[0] > MAX_MODEL_BYTES:
        raise CharrnnError(
            f"the {kind} tokenizer model is {model.shape[0]:,} bytes, more than a SentencePiece model of any "
            f"vocabulary charrnn trains ({MAX_MODEL_BYTES:,} at most)"
        )
    # One copy of the bytes (a list of their ints would take 8 times as much, and then another copy).
    data = model.numpy().tobytes() if hasattr(model, "numpy") else model.tobytes()
    return SentencePieceTokenizer(kind, data)
