"""Corpus reading, splits, the token cache and the stream batcher."""

from __future__ import annotations

import pytest
import torch

from charrnn.config import TrainConfig
from charrnn.data.batcher import StreamBatcher, fit_batch_size
from charrnn.data.corpus import find_corpus
from charrnn.data.dataset import prepare_dataset, split_bounds, storage_dtype
from charrnn.errors import CharrnnError


def test_batcher_streams_are_contiguous_across_steps() -> None:
    tokens = torch.arange(1000)
    batcher = StreamBatcher(tokens, total_streams=4, seq_len=10)
    assert batcher.stream_len == 249 and batcher.steps_per_epoch == 24
    x0, y0 = batcher.batch(0)
    x1, _ = batcher.batch(1)
    assert x0.shape == (10, 4)
    # Targets are the inputs shifted by one; the next window starts where this one ended.
    assert torch.equal(y0[:-1], x0[1:])
    assert torch.equal(x1[0], y0[-1])
    assert torch.equal(x1[0] - x0[-1], torch.ones(4, dtype=torch.long))
    # Stream s starts at s * stream_len.
    assert x0[0].tolist() == [0, 249, 498, 747]


def test_batcher_serves_a_share_of_the_streams() -> None:
    tokens = torch.arange(1000)
    whole = StreamBatcher(tokens, total_streams=4, seq_len=10)
    half = StreamBatcher(tokens, total_streams=4, seq_len=10, first_stream=2, num_streams=2)
    assert torch.equal(half.batch(3)[0], whole.batch(3)[0][:, 2:])
    with pytest.raises(ValueError):
        StreamBatcher(tokens, total_streams=4, seq_len=10, first_stream=3, num_streams=2)


def test_batch_shrinks_with_a_warning_or_refuses() -> None:
    messages: list[str] = []
    assert fit_batch_size(101, 32, 10, messages.append) == 10
    assert "using 10 streams" in messages[0]
    with pytest.raises(CharrnnError, match="fewer than one sequence"):
        fit_batch_size(5, 32, 10)


def test_split_matches_nanogpt_for_val_fraction_tenth() -> None:
    cfg = TrainConfig(val_frac=0.1)
    assert split_bounds(1_115_394, cfg, separate_val=False) == (int(1_115_394 * 0.9), 1_115_394)
    with pytest.raises(CharrnnError, match="too small"):
        split_bounds(5, TrainConfig(val_frac=0.1), separate_val=False)  # one validation character scores nothing


def test_storage_dtype_by_vocabulary() -> None:
    assert storage_dtype(66) == torch.uint8
    assert storage_dtype(256) == torch.uint8
    assert storage_dtype(1000) == torch.int16
    assert storage_dtype(100_000) == torch.int32


def test_prepare_dataset_splits_and_caches(tmp_path, real_text) -> None:
    path = tmp_path / "c.txt"
    path.write_text(real_text)
    cfg = TrainConfig(val_frac=0.1, test_frac=0.05)
    messages: list[str] = []
    data = prepare_dataset(find_corpus([str(path)]), cfg, progress=messages.append)
    n = len(real_text)
    assert data.train.num_chars == int(n * 0.85)
    assert data.train.num_chars + data.val.num_chars + data.test.num_chars == n
    assert data.train.tokens.dtype == torch.uint8
    seen = set(real_text[: int(n * 0.85)])
    expected_val = "".join(c if c in seen else "\ufffd" for c in real_text[int(n * 0.85) : int(n * 0.95)])
    assert data.tokenizer.decode(data.val.tokens) == expected_val
    assert "tokenizing" in messages[0]
    again = prepare_dataset(find_corpus([str(path)]), cfg, progress=messages.append)
    assert "cache hit" in messages[-1]
    assert torch.equal(again.train.tokens, data.train.tokens)
    # A changed corpus is a different cache entry, never stale ids.
    path.write_text(real_text[::-1])
    changed = prepare_dataset(find_corpus([str(path)]), cfg, progress=messages.append)
    assert "tokenizing" in messages[-1]
    assert changed.corpus_hash != data.corpus_hash


def test_vocabulary_comes_from_training_split_only(tmp_path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("abab" * 100 + "XYZ" * 10)
    data = prepare_dataset(find_corpus([str(path)]), TrainConfig(val_frac=0.1))
    assert "X" not in data.tokenizer.decode(data.train.tokens)
    assert data.tokenizer.vocab_size == 3  # <unk>, a, b
    assert int((data.val.tokens == 0).sum()) == 30  # the unseen X, Y, Z are <unk>


def test_separate_validation_file(tmp_path, real_text) -> None:
    train, val = tmp_path / "t.txt", tmp_path / "v.txt"
    train.write_text(real_text)
    val.write_text(real_text[:5000])
    data = prepare_dataset(find_corpus([str(train)]), TrainConfig(val_frac=0.0), val_corpus=find_corpus([str(val)]))
    assert data.train.num_chars == len(real_text)
    assert data.val.num_chars == 5000


def test_directories_globs_and_several_files(tmp_path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha\n")
    (tmp_path / "d" / "sub" / "b.txt").write_text("beta\n")
    (tmp_path / "d" / "c.md").write_text("gamma\n")
    corpus = find_corpus([str(tmp_path / "d")], pattern="*.txt")
    assert corpus.read_text() == "alpha\nbeta\n"
    with pytest.raises(CharrnnError, match="no files matching"):
        find_corpus([str(tmp_path / "d")], pattern="*.rst")


def test_invalid_utf8_names_file_and_offset(tmp_path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff world")
    with pytest.raises(CharrnnError, match=r"bad\.txt is not valid utf-8: bad byte at offset 6"):
        find_corpus([str(path)]).read_text()
    assert find_corpus([str(path)], encoding="latin-1").read_text() == "hello \xff world"


def test_invalid_utf8_offset_across_chunk_boundary(tmp_path, monkeypatch) -> None:
    import charrnn.data.corpus as corpus_module

    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 4)
    path = tmp_path / "bad.txt"
    path.write_bytes("aé€b".encode() + b"\xc3(")  # a(1) é(2) €(3) b(1), then a broken sequence at 7
    with pytest.raises(CharrnnError, match="offset 7"):
        find_corpus([str(path)]).read_text()


def test_binary_and_missing_files_are_refused(tmp_path) -> None:
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x00\x01\x02abc")
    with pytest.raises(CharrnnError, match="binary"):
        find_corpus([str(binary)])
    with pytest.raises(CharrnnError, match="no such file"):
        find_corpus([str(tmp_path / "missing.txt")])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_wide_encodings_are_read_as_text_not_refused_as_binary(tmp_path, encoding) -> None:
    # Every ASCII character of UTF-16 or UTF-32 text has NUL bytes beside it; none is a NUL character.
    text = "Wide text: caf\u00e9, \u4e2d\u6587, \U0001f642.\n" * 50
    path = tmp_path / "wide.txt"
    path.write_bytes(text.encode(encoding))
    corpus = find_corpus([str(path)], encoding=encoding)
    assert corpus.read_text() == text
    data = prepare_dataset(corpus, TrainConfig(val_frac=0.1))
    assert data.train.num_chars + data.val.num_chars == len(text)


def test_binary_files_are_still_refused_in_every_encoding(tmp_path) -> None:
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00" * 8)
    for encoding in ("utf-8", "latin-1", "utf-16-le", "utf-32-le"):
        with pytest.raises(CharrnnError, match="looks like a binary file"):
            find_corpus([str(binary)], encoding=encoding)
    # A UTF-16 file read as UTF-8 is refused with a hint at --encoding.
    wide = tmp_path / "wide.txt"
    wide.write_text("plain words\n" * 10, encoding="utf-16")
    with pytest.raises(CharrnnError, match="pass --encoding for UTF-16"):
        find_corpus([str(wide)])


def test_cache_file_holds_compact_ids(tmp_path, real_text) -> None:
    import os
    from pathlib import Path

    path = tmp_path / "c.txt"
    path.write_text(real_text)
    data = prepare_dataset(find_corpus([str(path)]), TrainConfig())
    caches = list(Path(os.environ["CHARRNN_CACHE_DIR"]).glob("*.bin"))
    assert len(caches) == 1
    assert caches[0].stat().st_size == data.train.num_tokens + data.val.num_tokens  # one byte per id
