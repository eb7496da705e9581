"""Specification of small bpe/unigram vocabularies on big alphabets: the asked size, exactly.

A vocabulary too small for every character of the training text keeps the most frequent
characters that fit beside the 256 byte pieces and <unk>; the rest are spelled in UTF-8
bytes, and training says how many. Texts are built here: no data files.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from conftest import TINY
from conftest import charrnn as run_charrnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.checkpoint import load_checkpoint
from charrnn.data import tokenizers
from charrnn.data.tokenizers import SentencePieceTokenizer, tokenizer_from_state, train_tokenizer
from charrnn.errors import CharrnnError

KINDS = ["bpe", "unigram"]
BYTES_AND_UNK = 257

KANJI = [chr(0x4E00 + 5 * i) for i in range(3000)]  # a few thousand CJK code points
KANA = [chr(c) for c in (*range(0x3041, 0x3097), *range(0x30A1, 0x30FB))]  # hiragana, katakana
PUNCTUATION = list("。、「」！？・…")
CYRILLIC = [chr(c) for c in range(0x410, 0x450)] + ["ё", "Ё"]


def zipf_line(rng: random.Random, alphabets: list[tuple[list[str], float]], length: int) -> str:
    """One line drawing each character from an alphabet chosen by weight, Zipf-like within it."""
    chosen = rng.choices([alphabet for alphabet, _ in alphabets], [weight for _, weight in alphabets], k=length)
    return "".join(rng.choices(alphabet, cum_weights=CUM_ZIPF[len(alphabet)])[0] for alphabet in chosen)


def cumulative_zipf(n: int) -> list[float]:
    total, out = 0.0, []
    for rank in range(1, n + 1):
        total += 1 / rank
        out.append(total)
    return out


CUM_ZIPF = {len(a): cumulative_zipf(len(a)) for a in (KANJI, KANA, PUNCTUATION, CYRILLIC)}


def japanese_like(num_lines: int = 1200, seed: int = 0) -> str:
    rng = random.Random(seed)
    alphabets = [(KANJI, 0.4), (KANA, 0.5), (PUNCTUATION, 0.1)]
    return "\n".join(zipf_line(rng, alphabets, rng.randint(8, 40)) for _ in range(num_lines)) + "\n"


def cyrillic_like(num_lines: int = 400, seed: int = 1) -> str:
    rng = random.Random(seed)

    def word() -> str:
        return zipf_line(rng, [(CYRILLIC, 1.0)], rng.randint(1, 9))

    return "\n".join(" ".join(word() for _ in range(10)) + rng.choice(".,!?;:") for _ in range(num_lines))


def distinct(text: str) -> set[str]:
    """The characters a tokenizer report counts: all but the line break (always the byte <0x0A>)."""
    return set(text) - {"\n"}


def by_frequency(text: str) -> list[str]:
    counts: dict[str, int] = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    return sorted(distinct(text), key=lambda ch: (-counts[ch], ch))


def trained(kind: str, text: str, vocab_size: int) -> tuple[SentencePieceTokenizer, str]:
    """The tokenizer and its last progress line."""
    messages: list[str] = []
    tokenizer = train_tokenizer(kind, text, vocab_size, progress=messages.append)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    return tokenizer, messages[-1]


def reported_fallback(message: str) -> tuple[int, int]:
    """(characters left to bytes, distinct characters) from the training report."""
    found = re.search(r"([\d,]+) of ([\d,]+) distinct characters left to byte fallback", message)
    assert found, message
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


@pytest.fixture(scope="module")
def japanese() -> str:
    return japanese_like()


@pytest.fixture(scope="module")
def japanese_tokenizers(japanese: str) -> dict[tuple[str, int], tuple[SentencePieceTokenizer, str]]:
    return {(kind, size): trained(kind, japanese, size) for kind in KINDS for size in (300, 500)}


# --- the asked size, the most frequent characters, the report ---------------------------


@pytest.mark.parametrize("size", [300, 500])
@pytest.mark.parametrize("kind", KINDS)
def test_a_japanese_like_text_gets_exactly_the_asked_vocabulary(
    japanese_tokenizers: dict, japanese: str, kind: str, size: int
) -> None:
    tokenizer, _ = japanese_tokenizers[kind, size]
    assert len(distinct(japanese)) > 2000  # far more characters than fit
    assert tokenizer.vocab_size == size
    assert tokenizer.decode(tokenizer.encode(japanese)) == japanese


@pytest.mark.parametrize("size", [300, 500])
@pytest.mark.parametrize("kind", KINDS)
def test_the_most_frequent_characters_fill_the_room_beside_the_bytes(
    japanese_tokenizers: dict, japanese: str, kind: str, size: int
) -> None:
    tokenizer, _ = japanese_tokenizers[kind, size]
    assert tokenizer.characters() == set(by_frequency(japanese)[: size - BYTES_AND_UNK])


@pytest.mark.parametrize("size", [300, 500])
@pytest.mark.parametrize("kind", KINDS)
def test_training_reports_how_many_characters_went_to_byte_fallback(
    japanese_tokenizers: dict, japanese: str, kind: str, size: int
) -> None:
    tokenizer, message = japanese_tokenizers[kind, size]
    left = distinct(japanese) - tokenizer.characters()
    assert reported_fallback(message) == (len(left), len(distinct(japanese)))
    assert f"{size} ids" in message


@pytest.mark.parametrize("kind", KINDS)
def test_characters_left_to_bytes_encode_as_their_utf8_bytes(japanese_tokenizers: dict, kind: str) -> None:
    tokenizer, _ = japanese_tokenizers[kind, 300]
    rare = KANJI[-1]  # drawn rarely if at all: never a piece of a 300-piece vocabulary
    assert rare not in tokenizer.characters()
    assert [tokenizer.token_texts()[i] for i in tokenizer.encode_list(rare)] == [None, None, None]
    assert tokenizer.decode(tokenizer.encode_list(rare)) == rare


no_surrogates = st.text(
    st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from(" \t\n\r\x00\u2581\ufffd"),
        st.sampled_from(KANJI[:50] + KANA),
    ),
    max_size=60,
)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=no_surrogates)
def test_a_small_vocabulary_round_trips_any_text(japanese_tokenizers: dict, kind: str, text: str) -> None:
    tokenizer, _ = japanese_tokenizers[kind, 300]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode_list(text)) == text


# --- other alphabets and edges --------------------------------------------------------


@pytest.mark.parametrize("size", [258, 259, 260])
@pytest.mark.parametrize("kind", KINDS)
def test_sizes_just_above_the_minimum_train(japanese: str, kind: str, size: int) -> None:
    tokenizer, message = trained(kind, japanese, size)
    assert tokenizer.vocab_size == size
    assert len(tokenizer.characters()) == size - BYTES_AND_UNK
    assert reported_fallback(message)[0] == len(distinct(japanese)) - (size - BYTES_AND_UNK)
    assert tokenizer.decode(tokenizer.encode(japanese)) == japanese


@pytest.mark.parametrize("size", [270, 300])
@pytest.mark.parametrize("kind", KINDS)
def test_cyrillic_gets_exactly_the_asked_vocabulary(kind: str, size: int) -> None:
    text = cyrillic_like()
    tokenizer, message = trained(kind, text, size)
    assert tokenizer.vocab_size == size
    assert tokenizer.characters() == set(by_frequency(text)[: size - BYTES_AND_UNK])
    assert reported_fallback(message) == (len(distinct(text)) - (size - BYTES_AND_UNK), len(distinct(text)))
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("kind", KINDS)
def test_equally_rare_characters_are_kept_in_code_point_order(kind: str) -> None:
    characters = KANJI[:1500] * 4
    random.Random(2).shuffle(characters)
    text = "\n".join("".join(characters[i : i + 30]) for i in range(0, len(characters), 30))
    tokenizer, message = trained(kind, text, 300)
    assert tokenizer.vocab_size == 300
    assert tokenizer.characters() == set(KANJI[:43])  # 300 - 257 slots, lowest code points first
    assert reported_fallback(message) == (1500 - 43, 1500)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("kind", KINDS)
def test_a_space_without_a_piece_of_its_own_is_the_byte_0x20(japanese: str, kind: str) -> None:
    text = japanese.replace("\n", " ", 3)  # three spaces: far too rare to be kept
    tokenizer, _ = trained(kind, text, 300)
    assert " " not in tokenizer.characters()
    assert tokenizer.encode_list(" ") == [tokenizer.token_texts().index(" ")]  # the byte piece <0x20>
    for sample in (text, " ", "日 本  語 ", "\u2581 \u2581"):
        assert tokenizer.decode(tokenizer.encode(sample)) == sample


@pytest.mark.parametrize("size", [0, 100, 256, 257])
@pytest.mark.parametrize("kind", KINDS)
def test_sizes_that_cannot_hold_the_bytes_and_unk_are_refused(japanese: str, kind: str, size: int) -> None:
    with pytest.raises(CharrnnError, match=f"vocab_size must be an integer of at least 258 for the {kind} tokenizer"):
        train_tokenizer(kind, japanese, size)


# --- ASCII as before -------------------------------------------------------------------

ENGLISH = "\n".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog, and the dog sleeps on." for i in range(300)
)


@pytest.mark.parametrize("kind", KINDS)
def test_ascii_that_fits_trains_once_at_sentencepiece_defaults(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    run = tokenizers._run_sentencepiece

    def spy(*args: object, **options: object) -> bytes:
        calls.append(options)
        return run(*args, **options)

    monkeypatch.setattr(tokenizers, "_run_sentencepiece", spy)
    tokenizer, message = trained(kind, ENGLISH, 320)
    assert calls == [{}]  # no coverage of its own, no second training
    assert tokenizer.vocab_size == 320
    assert tokenizer.characters() == distinct(ENGLISH)
    assert reported_fallback(message) == (0, len(distinct(ENGLISH)))


@pytest.mark.parametrize("kind", KINDS)
def test_ascii_too_rich_for_the_size_keeps_its_most_frequent_characters(kind: str) -> None:
    tokenizer, message = trained(kind, ENGLISH, 270)  # 13 slots for 36 characters
    assert tokenizer.vocab_size == 270
    assert tokenizer.characters() == set(by_frequency(ENGLISH)[:13])
    assert reported_fallback(message) == (len(distinct(ENGLISH)) - 13, len(distinct(ENGLISH)))
    assert tokenizer.decode(tokenizer.encode(ENGLISH)) == ENGLISH


# --- through the command line ----------------------------------------------------------


def test_cli_trains_a_500_piece_bpe_on_japanese_and_samples_valid_text(tmp_path: Path) -> None:
    corpus, run = tmp_path / "ja.txt", tmp_path / "run"
    corpus.write_text(japanese_like(num_lines=1500, seed=3), encoding="utf-8")
    tiny = [arg for arg in TINY if arg != "--quiet"]  # the tokenizer's report is part of the output
    args = ["train", str(corpus), "--run", str(run), "--tokenizer", "bpe", "--vocab-size", "500", "--max-steps", "2"]
    done = run_charrnn(*args, *tiny, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "trained bpe tokenizer: 500 ids" in done.stdout
    assert "distinct characters left to byte fallback" in done.stdout

    sampled = run_charrnn("sample", str(run), "--length", "60", "--seed", "1", env={"OMP_NUM_THREADS": "1"})
    assert sampled.returncode == 0, sampled.stderr
    text = sampled.stdout.removesuffix("\n")
    tokenizer = tokenizer_from_state(load_checkpoint(run)["tokenizer"])
    assert tokenizer.vocab_size == 500
    assert len(text) == 60 and tokenizer.decode(tokenizer.encode(text)) == text
