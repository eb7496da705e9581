"""Specification of charrnn.data.tokenizers: exact round trips, checkpoint states, streaming."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charrnn.data.tokenizers
from charrnn.data.tokenizers import (
    TOKENIZER_KINDS,
    CharTokenizer,
    CharVocabCounter,
    Tokenizer,
    tokenizer_from_state,
    train_tokenizer,
)
from charrnn.errors import CharrnnError

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "In 1969, two astronauts walked on the Moon while a third orbited above.",
    "Rain fell all night; by morning the river had risen three feet.",
    "'Never mind,' said the old man, 'we shall try again tomorrow.'",
    "A journey of a thousand miles begins with a single step.",
    "Please remember to buy milk, eggs, bread, and 12 apples!",
    "The committee met on Tuesday and decided - after a long debate - to wait.",
    "Knowledge speaks, but wisdom listens.",
    "Is it true that the library closes at 9:30 PM on weekends?",
    'He whispered: "Don\'t open the door until I say so."',
]
# A few KB of English: every sentence once per round, in a different order each round.
ENGLISH = "\n".join(SENTENCES[(i * 5 + j) % len(SENTENCES)] for i in range(12) for j in range(len(SENTENCES)))
HELD_OUT = "The old fox whispered to the river, and the river listened all morning."

NASTY = [
    "",
    "a",
    "tab\tseparated\t\tvalues\t",
    "runs   of     spaces",
    "  leading and trailing  ",
    " ",
    "\n",
    "\n\n\nblank lines\n\n",
    "windows\r\nline\r\nendings\r\n",
    "lone\rcarriage\rreturns\r",
    "\r\n\r\r\n\n\r",
    "emoji 🙂 family 👨\u200d👩\u200d👧\u200d👦 flag 🇫🇷🇯🇵 skin 👍🏽",
    "combining e\u0301 a\u0308 n\u0303 and Z\u0351\u0360\u0361",
    "中文字符 日本語 한국어",
    "Arabic مرحبا بالعالم and Hebrew שלום עולם mixed",
    "NUL\x00inside\x00\x00 and \x01\x07\x1b[0m\x7f controls",
    "space marker \u2581 lookalike \u2581\u2581 and nbsp\u00a0and ideographic\u3000space",
    "BOM \ufeff zero width \u200b joiner \u200d rtl mark \u200f",
    "replacement \ufffd and private use \ue000 and astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]
NASTY_JOINED = "".join(NASTY)
SP_VOCAB = 400
TINY_SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "tinyshakespeare.txt"

# Any text without surrogates, with the characters that tokenizers treat specially made common.
no_surrogates = st.text(
    st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(" \t\n\r\x00\u2581\ufffd")), max_size=80
)
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    """One tokenizer per kind, trained on English plus every nasty string (so char knows them all)."""
    text = ENGLISH + "\n" + "\n".join(NASTY)
    return {
        kind: train_tokenizer(kind, text, SP_VOCAB if kind in ("bpe", "unigram") else None) for kind in TOKENIZER_KINDS
    }


@pytest.fixture(scope="module")
def english_only() -> dict[str, Tokenizer]:
    """Tokenizers that never see their characters in training: trained on plain English only."""
    return {
        kind: train_tokenizer(kind, ENGLISH, None if kind == "byte" else SP_VOCAB)
        for kind in ("byte", "bpe", "unigram")
    }


def unseen_count(tokenizer: Tokenizer, text: str) -> int:
    return sum(ch not in tokenizer.to_state()["chars"] for ch in text)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_round_trip_is_exact_on_nasty_strings(tokenizers: dict[str, Tokenizer], kind: str, text: str) -> None:
    ids = tokenizers[kind].encode(text)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert tokenizers[kind].decode(ids) == text


@pytest.mark.parametrize("kind", ["byte", "bpe", "unigram"])
@fast
@given(text=no_surrogates)
def test_round_trip_is_exact_for_any_text(tokenizers: dict[str, Tokenizer], kind: str, text: str) -> None:
    tokenizer = tokenizers[kind]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids.tolist()) == text
    assert ids.numel() == 0 or 0 <= int(ids.min()) <= int(ids.max()) < tokenizer.vocab_size


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@fast
@given(text=no_surrogates)
def test_byte_fallback_round_trips_characters_never_seen_in_training(
    english_only: dict[str, Tokenizer], kind: str, text: str
) -> None:
    assert english_only[kind].decode(english_only[kind].encode(text)) == text


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_unseen_nasty_strings_round_trip_through_english_only_models(
    english_only: dict[str, Tokenizer], kind: str
) -> None:
    assert english_only[kind].decode(english_only[kind].encode(NASTY_JOINED)) == NASTY_JOINED


@fast
@given(text=no_surrogates)
def test_char_replaces_unseen_characters_with_unk(tokenizers: dict[str, Tokenizer], text: str) -> None:
    tokenizer = tokenizers["char"]
    known = tokenizer.to_state()["chars"]
    ids = tokenizer.encode(text)
    assert ids.shape == (len(text),)
    assert int((ids == tokenizer.unk_id).sum()) == unseen_count(tokenizer, text)
    assert tokenizer.decode(ids) == "".join(ch if ch in known else "\ufffd" for ch in text)


def test_lone_surrogates_become_replacement_characters(tokenizers: dict[str, Tokenizer]) -> None:
    for kind in ("byte", "bpe", "unigram"):
        assert tokenizers[kind].decode(tokenizers[kind].encode("a\ud800b\udfff")) == "a\ufffdb\ufffd"
    char = tokenizers["char"]
    assert char.decode(char.encode("a\ud800")) == "a\ufffd"


@pytest.mark.parametrize(("kind", "chunk_setting"), [("char", "_CHAR_CHUNK"), ("bpe", "_SP_ENCODE_CHUNK")])
def test_encoding_in_small_chunks_gives_the_same_ids(
    tokenizers: dict[str, Tokenizer], kind: str, chunk_setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = ENGLISH + NASTY_JOINED
    whole = tokenizers[kind].encode(text)
    monkeypatch.setattr(charrnn.data.tokenizers, chunk_setting, 5)
    assert torch.equal(tokenizers[kind].encode(text), whole)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_empty_text_encodes_to_an_empty_int64_tensor(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    ids = tokenizers[kind].encode("")
    assert ids.shape == (0,) and ids.dtype == torch.int64
    assert tokenizers[kind].decode(ids) == ""


# --- per-kind layout -----------------------------------------------------------------


def test_char_vocabulary_is_unk_then_sorted_code_points() -> None:
    tokenizer = train_tokenizer("char", "banana\n🙂a")
    assert tokenizer.unk_id == 0
    assert tokenizer.vocab_size == 6
    assert tokenizer.token_texts() == [None, "\n", "a", "b", "n", "🙂"]
    assert tokenizer.encode("ban🙂x").tolist() == [3, 2, 4, 5, 0]


def test_char_vocab_counter_matches_training_on_the_whole_text() -> None:
    counter = CharVocabCounter()
    for start in range(0, len(NASTY_JOINED), 7):  # chunks may split ZWJ sequences and CRLF
        counter.update(NASTY_JOINED[start : start + 7])
    counter.update("")
    assert counter.build().to_state() == train_tokenizer("char", NASTY_JOINED).to_state()


def test_byte_ids_are_utf8_bytes(tokenizers: dict[str, Tokenizer]) -> None:
    byte = tokenizers["byte"]
    assert (byte.vocab_size, byte.unk_id) == (256, None)
    assert byte.encode("é🙂").tolist() == list("é🙂".encode())
    texts = byte.token_texts()
    assert texts[:128] == [chr(b) for b in range(128)] and texts[128:] == [None] * 128


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_layout_and_token_texts(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tokenizer = tokenizers[kind]
    assert (tokenizer.kind, tokenizer.vocab_size, tokenizer.unk_id) == (kind, SP_VOCAB, None)
    texts = tokenizer.token_texts()
    assert len(texts) == SP_VOCAB
    # Every id with text must decode to exactly that text; partial bytes and <unk> have none.
    for i, text in enumerate(texts):
        if text is not None:
            assert tokenizer.decode([i]) == text
    assert texts.count(None) >= 128 + 1  # byte pieces 0x80..0xFF and <unk>
    assert any(text is not None and text.startswith(" ") and len(text) > 1 for text in texts)
    assert "\u2581" not in "".join(text for text in texts if text is not None)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_newline_is_one_dedicated_id(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tokenizer = tokenizers[kind]
    newline = tokenizer.encode("\n").tolist()
    assert len(newline) == 1 and tokenizer.token_texts()[newline[0]] == "\n"
    ids = tokenizer.encode("the dog\nthe dog").tolist()
    assert ids.count(newline[0]) == 1


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_uses_fewer_tokens_than_characters_on_english(
    english_only: dict[str, Tokenizer], kind: str
) -> None:
    assert len(english_only[kind].encode(HELD_OUT)) < 0.7 * len(HELD_OUT)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_training_is_reproducible_and_leaves_no_files(
    english_only: dict[str, Tokenizer], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    again = train_tokenizer(kind, ENGLISH, SP_VOCAB)
    assert torch.equal(again.to_state()["model"], english_only[kind].to_state()["model"])
    assert list(tmp_path.iterdir()) == []


def test_sentencepiece_keeps_very_long_lines() -> None:
    # One 40,000-character line: longer than SentencePiece's default sentence limit.
    line = " ".join(["lorem", "ipsum", "dolor", "sit", "amet"] * 1200)
    tokenizer = train_tokenizer("bpe", line, 300)
    assert any(text is not None and "ipsum" in text for text in tokenizer.token_texts())
    assert tokenizer.decode(tokenizer.encode(line)) == line


def test_progress_reports_start_and_end() -> None:
    messages: list[str] = []
    train_tokenizer("bpe", ENGLISH, SP_VOCAB, progress=messages.append)
    assert len(messages) == 2 and "bpe" in messages[0]


@pytest.mark.skipif(not TINY_SHAKESPEARE.exists(), reason=f"corpus not present at {TINY_SHAKESPEARE}")
def test_tiny_shakespeare_char_vocabulary_and_round_trip() -> None:
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tokenizer = train_tokenizer("char", text)
    assert tokenizer.vocab_size == 66  # 65 distinct characters and <unk>
    ids = tokenizer.encode(text)
    assert int((ids == 0).sum()) == 0 and tokenizer.decode(ids) == text


# --- states --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_state_survives_torch_save_and_weights_only_load(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tokenizer = tokenizers[kind]
    buffer = io.BytesIO()
    torch.save({"tokenizer": tokenizer.to_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["tokenizer"]
    assert state["kind"] == kind
    rebuilt = tokenizer_from_state(state)
    text = ENGLISH + NASTY_JOINED
    assert (rebuilt.kind, rebuilt.vocab_size, rebuilt.unk_id) == (
        tokenizer.kind,
        tokenizer.vocab_size,
        tokenizer.unk_id,
    )
    assert torch.equal(rebuilt.encode(text), tokenizer.encode(text))
    assert rebuilt.decode(tokenizer.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    assert rebuilt.token_texts() == tokenizer.token_texts()


BAD_STATES = [
    None,
    [],
    {},
    {"kind": "word"},
    {"kind": "char"},
    {"kind": "char", "chars": ""},
    {"kind": "char", "chars": "ba"},
    {"kind": "char", "chars": "aab"},
    {"kind": "char", "chars": ["a", "b"]},
    {"kind": "bpe"},
    {"kind": "bpe", "model": b"not a tensor"},
    {"kind": "bpe", "model": torch.zeros(4, dtype=torch.int64)},
    {"kind": "unigram", "model": torch.tensor([], dtype=torch.uint8)},
    {"kind": "unigram", "model": torch.tensor(list(b"garbage bytes"), dtype=torch.uint8)},
]


@pytest.mark.parametrize("state", BAD_STATES, ids=range(len(BAD_STATES)))
def test_malformed_states_raise_charrnn_error(state: object) -> None:
    with pytest.raises(CharrnnError):
        tokenizer_from_state(state)  # type: ignore[arg-type]


def test_char_tokenizer_rejects_unsorted_characters() -> None:
    with pytest.raises(CharrnnError, match="sorted"):
        CharTokenizer("zyx")


# --- training errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "vocab_size", "message"),
    [
        ("words", ENGLISH, None, "unknown tokenizer kind"),
        ("bpe", ENGLISH, None, "needs a vocab_size"),
        ("unigram", ENGLISH, None, "needs a vocab_size"),
        ("char", ENGLISH, 100, "only to bpe and unigram"),
        ("byte", ENGLISH, 256, "only to bpe and unigram"),
        ("bpe", ENGLISH, 100, "integer of at least 258"),
        ("unigram", ENGLISH, 257, "integer of at least 258"),
        ("unigram", ENGLISH, 100_000, "too large .* at most \\d+"),
        ("bpe", ENGLISH, 100_000, "too large .* at most \\d+"),
        ("char", "", None, "empty"),
        ("bpe", "", SP_VOCAB, "empty"),
        ("unigram", "\n\n\u2581\n", SP_VOCAB, "no characters besides"),
    ],
)
def test_bad_training_requests_raise_charrnn_error(kind: str, text: str, vocab_size: int | None, message: str) -> None:
    with pytest.raises(CharrnnError, match=message):
        train_tokenizer(kind, text, vocab_size)


def test_char_vocab_counter_with_no_text_is_an_error() -> None:
    with pytest.raises(CharrnnError, match="empty"):
        CharVocabCounter().build()


# --- decoding and streaming ----------------------------------------------------------


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_decode_never_raises_on_bad_ids(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tokenizer = tokenizers[kind]
    assert tokenizer.decode([-1, tokenizer.vocab_size, 10**9]) == "\ufffd" * 3
    assert tokenizer.decode(torch.tensor([tokenizer.vocab_size], dtype=torch.int32)) == "\ufffd"


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
@fast
@given(data=st.data())
def test_arrays_of_ids_decode_as_lists_do(tokenizers: dict[str, Tokenizer], kind: str, data: st.DataObject) -> None:
    # Long arrays take the vectorized path (`_PieceTable`); lists and short arrays a Python loop.
    tokenizer = tokenizers[kind]
    ids = data.draw(st.lists(st.integers(-3, tokenizer.vocab_size + 3), min_size=60, max_size=300))
    expected = tokenizer.decode(ids)
    assert tokenizer.decode(np.array(ids)) == expected
    assert tokenizer.decode(torch.tensor(ids, dtype=torch.int32)) == expected
    if len(ids) % 2 == 0:
        assert tokenizer.decode(np.array(ids).reshape(2, -1)) == expected  # read in order, row by row
    if min(ids) >= 0 and max(ids) < 256:
        assert tokenizer.decode(np.array(ids, dtype=np.uint8)) == expected


def test_a_long_array_of_real_text_decodes_exactly(tokenizers: dict[str, Tokenizer]) -> None:
    text = (NASTY_JOINED + HELD_OUT) * 3
    for tokenizer in tokenizers.values():
        assert tokenizer.decode(tokenizer.encode(text).numpy()) == text
        assert tokenizer.decode(np.zeros(0, dtype=np.int64)) == ""


def test_invalid_utf8_decodes_to_replacement_characters(tokenizers: dict[str, Tokenizer]) -> None:
    assert tokenizers["byte"].decode([0xF0, 0x9F, ord("a"), 0xFF]) == "\ufffda\ufffd"


def stream(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Every push output (one id at a time) and then the flush."""
    decoder = tokenizer.stream_decoder()
    return [decoder.push([i]) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_streaming_one_id_at_a_time_equals_decode(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tokenizer = tokenizers[kind]
    ids = tokenizer.encode(NASTY_JOINED + HELD_OUT).tolist()
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    for piece in pieces:
        piece.encode("utf-8")  # no lone surrogates: always printable as UTF-8


@pytest.mark.parametrize("kind", ["byte", "bpe", "unigram"])
def test_stream_holds_back_a_split_emoji_until_complete(english_only: dict[str, Tokenizer], kind: str) -> None:
    tokenizer = english_only[kind]
    ids = tokenizer.encode("🙂").tolist()
    assert len(ids) == 4  # unseen in training: four byte pieces
    assert stream(tokenizer, ids) == ["", "", "", "🙂", ""]


@pytest.mark.parametrize("kind", ["byte", "bpe", "unigram"])
def test_stream_flushes_a_dangling_sequence_as_replacement(english_only: dict[str, Tokenizer], kind: str) -> None:
    tokenizer = english_only[kind]
    ids = tokenizer.encode("ok🙂").tolist()[:-1]
    pieces = stream(tokenizer, ids)
    assert "".join(pieces[:-1]) == "ok" and pieces[-1] == "\ufffd"
    assert "".join(pieces) == tokenizer.decode(ids)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
@fast
@given(data=st.data())
def test_streaming_arbitrary_ids_in_any_grouping_equals_decode(
    tokenizers: dict[str, Tokenizer], kind: str, data: st.DataObject
) -> None:
    tokenizer = tokenizers[kind]
    ids = data.draw(st.lists(st.integers(-2, tokenizer.vocab_size + 2), max_size=40))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=6)))
    decoder = tokenizer.stream_decoder()
    bounds = [0, *cuts, len(ids)]
    pieces = [decoder.push(ids[a:b]) for a, b in itertools.pairwise(bounds)] + [decoder.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    for piece in pieces:
        piece.encode("utf-8")
