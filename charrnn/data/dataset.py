"""From a corpus to token ids: contiguous splits, the tokenizer, and the token cache.

`prepare_dataset` cuts the corpus by character position (train, then validation, then test),
builds the tokenizer on the training part only, and encodes the whole corpus once into a cached
flat file of compact ids (uint8/int16/int32) that later runs memory-map. A `Split` is a 1-D id
tensor, a view of that map, with the number of characters it encodes. `dataset_of_run` rebuilds
a run's dataset from its checkpoint, for `--resume` and `charrnn eval RUN`. With `--lines` the
splits are sets of whole lines instead, each side shuffled by the seed (see `charrnn.data.lines`).
A run started `--init-from` another model builds on that model's tokenizer, its `base`: a char
vocabulary grows by the new training text's characters, the other kinds are kept as they are.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import inspect
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch

from charrnn.config import TrainConfig
from charrnn.data import lines
from charrnn.data.corpus import Corpus, find_corpus
from charrnn.data.tokenizers import (
    MAX_MODEL_BYTES,
    CharTokenizer,
    CharVocabCounter,
    Tokenizer,
    tokenizer_from_state,
    train_tokenizer,
)
from charrnn.errors import CharrnnError
from charrnn.files import discard, os_error_reason, pid_alive, replace_atomically

CACHE_VERSION = 1
SPLITS = ("train", "val", "test")

Progress = Callable[[str], None]


def storage_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type that holds every id (int16/int32 rather than uint16/uint32,
    whose indexing support arrived late in torch)."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 32767:
        return torch.int16
    return torch.int32


@dataclass(frozen=True)
class Split:
    """One piece of the corpus as token ids, with the count of characters they encode."""

    tokens: torch.Tensor
    num_chars: int

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())


@dataclass(frozen=True)
class Dataset:
    tokenizer: Tokenizer
    train: Split
    val: Split | None
    test: Split | None
    corpus_hash: str
    lines: lines.LineSets | None = None  # the lines of each side, for a --lines run


def default_cache_dir() -> Path:
    if env := os.environ.get("CHARRNN_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charrnn"


def _writable_cache_dir(cache_dir: Path | None) -> Path:
    path = cache_dir or default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "charrnn-cache"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def split_bounds(num_chars: int, cfg: TrainConfig, *, separate_val: bool) -> tuple[int, int]:
    """Character positions where train ends and where validation ends.

    With fractions only, `train = text[:int(n * (1 - val - test))]`, which for
    val 0.1 is exactly nanoGPT's shakespeare_char split.
    """
    val_frac = 0.0 if separate_val else cfg.val_frac
    train_end = int(num_chars * (1.0 - val_frac - cfg.test_frac))
    val_end = num_chars if cfg.test_frac == 0 else int(num_chars * (1.0 - cfg.test_frac))
    if separate_val:
        val_end = train_end
    val_end = max(val_end, train_end)
    if train_end < 2:
        raise CharrnnError(f"the training split is {train_end} characters: the corpus is too small to train on")
    if val_frac > 0 and val_end - train_end < 2:
        raise CharrnnError(f"the corpus ({num_chars} characters) is too small for --val-frac {cfg.val_frac}")
    if cfg.test_frac > 0 and num_chars - val_end < 2:
        raise CharrnnError(f"the corpus ({num_chars} characters) is too small for --test-frac {cfg.test_frac}")
    return train_end, val_end


def _regions(corpus: Corpus, bounds: list[int]) -> Iterator[tuple[int, str]]:
    """(region index, text) pieces of the corpus, cut at the given character bounds."""
    position = 0
    region = 0
    for chunk in corpus.chunks():
        start = 0
        while start < len(chunk):
            while region < len(bounds) and position + start >= bounds[region]:
                region += 1
            end = len(chunk) if region == len(bounds) else min(len(chunk), bounds[region] - position)
            yield region, chunk[start:end]
            start = end
        position += len(chunk)


def _build_tokenizer(
    corpus: Corpus, train_end: int, cfg: TrainConfig, progress: Progress, base: Tokenizer | None
) -> Tokenizer:
    train_text = (text for region, text in _regions(corpus, [train_end]) if region == 0)
    return _tokenizer_of(train_text, cfg, progress, base)


def _tokenizer_of(
    train_text: Iterable[str], cfg: TrainConfig, progress: Progress, base: Tokenizer | None = None
) -> Tokenizer:
    """The tokenizer `cfg` asks for, built on the training text (pieces of it, read once); with a
    `base`, that tokenizer: a char vocabulary with the training text's characters added."""
    if base is not None and not isinstance(base, CharTokenizer):
        return base  # byte and SentencePiece tokenizers know every text already
    if cfg.tokenizer == "char":
        counter = CharVocabCounter()
        if base is not None:
            counter.update(base.chars)
        for text in train_text:
            counter.update(text)
        return counter.build()
    if cfg.tokenizer == "byte":
        return train_tokenizer("byte", "")
    return train_tokenizer(cfg.tokenizer, "".join(train_text), cfg.vocab_size, progress=progress)


class _Encoder:
    """Encodes text pieces of one region, cut at line ends so subword merges are not split."""

    def __init__(self, tokenizer: Tokenizer, out, dtype: torch.dtype) -> None:
        self.tokenizer, self.out, self.dtype = tokenizer, out, dtype
        self.pending = ""
        self.tokens = 0

    def feed(self, text: str) -> None:
        self.pending += text
        if len(self.pending) < (1 << 20):
            return
        cut = self.pending.rfind("\n") + 1 or len(self.pending)
        self._write(self.pending[:cut])
        self.pending = self.pending[cut:]

    def finish(self) -> int:
        self._write(self.pending)
        self.pending = ""
        return self.tokens

    def _write(self, text: str) -> None:
        if text:
            ids = self.tokenizer.encode(text).to(self.dtype).contiguous()
            self.out.write(ctypes.string_at(ids.data_ptr(), ids.numel() * ids.element_size()))
            self.tokens += ids.numel()


def _cache_key(corpus_hash: str, val_hash: str | None, cfg: TrainConfig, base: Tokenizer | None = None) -> str:
    spec = {
        "version": CACHE_VERSION,
        "corpus": corpus_hash,
        "val_corpus": val_hash,
        "tokenizer": cfg.tokenizer,
        "vocab_size": cfg.vocab_size if cfg.tokenizer in ("bpe", "unigram") else None,
        "val_frac": None if val_hash else cfg.val_frac,
        "test_frac": cfg.test_frac,
    }
    if cfg.lines:  # the split and the order of the lines come from the seed
        spec["lines"] = {"seed": cfg.seed}
    if base is not None:  # the vocabulary grows from (or is) the tokenizer of --init-from
        spec["base"] = _tokenizer_digest(base)
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=16).hexdigest()


def _tokenizer_digest(tokenizer: Tokenizer) -> str:
    state = tokenizer.to_state()
    model = state.get("model")  # a SentencePiece model's bytes, as a uint8 tensor
    parts = [state["kind"], state.get("chars", ""), numpy.asarray(model).tobytes() if model is not None else b""]
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def prepare_dataset(
    corpus: Corpus,
    cfg: TrainConfig,
    *,
    val_corpus: Corpus | None = None,
    cache_dir: Path | None = None,
    progress: Progress = lambda message: None,
    base: Tokenizer | None = None,
) -> Dataset:
    """Split, tokenize and cache `corpus` (see the module docstring); returns memory-mapped splits.
    `base` is the tokenizer of the model a fine-tune starts from (see the module docstring)."""
    if cfg.lines and val_corpus is not None:
        raise CharrnnError("--lines holds out whole lines of the corpus itself: use --val-frac, not --val-file")
    corpus_hash = corpus.content_hash()
    val_hash = val_corpus.content_hash() if val_corpus else None
    key = _cache_key(corpus_hash, val_hash, cfg, base)
    directory = _writable_cache_dir(cache_dir)
    meta_path, tokens_path, tok_path = (directory / f"{key}.{ext}" for ext in ("json", "bin", "tok.pt"))
    lines_path = directory / f"{key}.{lines.LINES_FILE}"
    meta = _read_meta(meta_path, tokens_path)
    entry = None
    if meta is not None and not (cfg.lines and not lines_path.is_file()):
        try:
            entry = _open_entry(meta, tokens_path, tok_path)
            progress(f"token cache hit: {tokens_path}")
        except _Damaged as exc:  # it is a cache: build the entry again
            progress(f"the token cache entry {tokens_path.with_suffix('')} does not check out ({exc}): rebuilding it")
            if tok_path.is_dir():  # not a file charrnn wrote, and not one to delete
                raise CharrnnError(f"cannot rebuild the token cache: {tok_path} is a directory (remove it)") from None
    if entry is None:
        progress(f"tokenizing {corpus.describe()} into the cache at {directory}")
        if cfg.lines:
            meta = _build_lines_cache(corpus, cfg, tokens_path, tok_path, meta_path, lines_path, progress, base)
        else:
            meta = _build_cache(corpus, val_corpus, cfg, tokens_path, tok_path, meta_path, progress, base)
        try:
            entry = _open_entry(meta, tokens_path, tok_path)
        except _Damaged as exc:  # changed under us as it was written (another process, a failing disk)
            raise CharrnnError(
                f"the token cache entry just written to {directory} does not check out ({exc})"
            ) from None
    tokenizer, flat = entry
    line_sets = lines.LineSets.load(lines_path) if cfg.lines else None
    if line_sets is not None:
        progress(line_sets.describe())
    splits: list[Split | None] = []
    start = 0
    for count, chars in zip(meta["tokens"], meta["chars"]):
        splits.append(Split(flat[start : start + count], chars) if chars else None)
        start += count
    train, val, test = splits
    if train is None:
        raise CharrnnError("the training split is empty")
    if _one_symbol(train.tokens):
        symbol = tokenizer.decode([int(train.tokens[0])])
        raise CharrnnError(
            f"the training text of {corpus.describe()} is one symbol ({symbol!r}) repeated: there is nothing to learn"
        )
    return Dataset(tokenizer, train, val, test, corpus_hash, line_sets)


def _one_symbol(tokens: torch.Tensor) -> bool:
    """Every id the same; read in pieces, so a big corpus stops at its first piece."""
    step = 1 << 20
    n = tokens.numel()
    return n > 0 and all(bool((tokens[i : i + step] == tokens[0]).all()) for i in range(0, n, step))


class _Damaged(Exception):
    """A token cache entry that does not check out: its tokenizer, its metadata or its ids."""


def _open_entry(meta: dict, tokens_path: Path, tok_path: Path) -> tuple[Tokenizer, torch.Tensor]:
    """The tokenizer and the memory-mapped ids of a cache entry whose metadata `_read_meta` found,
    checked to belong together: the tokenizer file reads (as plain values only) into a tokenizer,
    the one the metadata records, and every id is one of its ids. _Damaged (why) otherwise."""
    counts, chars = meta.get("tokens"), meta.get("chars")
    for values in (counts, chars):
        if not isinstance(values, list) or len(values) != len(SPLITS):
            raise _Damaged("its metadata is malformed")
        if any(type(v) is not int or v < 0 for v in values):
            raise _Damaged("its metadata is malformed")
    try:
        if tok_path.stat().st_size > MAX_MODEL_BYTES + (1 << 20):
            raise _Damaged("its tokenizer file is far too big")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(tok_path, weights_only=True)
    except _Damaged:
        raise
    except Exception as exc:  # noqa: BLE001 (missing, truncated, garbage, or a pickle asking for code: all refused)
        raise _Damaged(f"its tokenizer file does not read: {type(exc).__name__}") from None
    try:
        tokenizer = tokenizer_from_state(state)
    except CharrnnError as exc:
        raise _Damaged(f"its tokenizer file holds no tokenizer: {exc}") from None
    dtype = storage_dtype(tokenizer.vocab_size)
    if meta.get("itemsize") != dtype.itemsize:
        raise _Damaged("its ids are stored for another vocabulary size")
    digest = _tokenizer_digest(tokenizer)
    if meta.get("tokenizer", digest) != digest:  # entries of older charrnn versions do not record it
        raise _Damaged("its tokenizer is not the one its ids were encoded with")
    total = sum(counts)
    flat = (
        torch.from_file(str(tokens_path), shared=False, size=total, dtype=dtype)
        if total
        else torch.empty(0, dtype=dtype)
    )
    if not _ids_in_range(flat, tokenizer.vocab_size):
        raise _Damaged(f"it holds ids outside its tokenizer's 0..{tokenizer.vocab_size - 1}")
    return tokenizer, flat


def _ids_in_range(ids: torch.Tensor, vocab_size: int) -> bool:
    """Every id in 0..vocab_size-1; read in pieces (the ids of a big corpus are memory-mapped)."""
    if ids.dtype == torch.uint8 and vocab_size >= 256:
        return True
    step = 1 << 24
    for i in range(0, ids.numel(), step):
        low, high = torch.aminmax(ids[i : i + step])
        if int(low) < 0 or int(high) >= vocab_size:
            return False
    return True


def _read_meta(meta_path: Path, tokens_path: Path) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
        expected = sum(meta["tokens"]) * meta["itemsize"]
        if meta["version"] == CACHE_VERSION and tokens_path.stat().st_size == expected:
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _cache_write(build: Callable[..., dict]) -> Callable[..., dict]:
    """`build` (a function with a `tokens_path` argument) made safe for a full disk: temporary files
    of this entry that a killed process left are removed first, and an OSError while the entry is
    written (disk full, read-only, quota) is one CharrnnError, after `build`'s own clean-up has
    removed everything it wrote but did not finish. A cache that cannot be written stops the run:
    the splits are memory-mapped from it."""
    signature = inspect.signature(build)

    @functools.wraps(build)
    def safely(*args: Any, **kwargs: Any) -> dict:
        tokens_path = signature.bind(*args, **kwargs).arguments["tokens_path"]
        _remove_stale(tokens_path.parent, tokens_path.name.split(".")[0])
        try:
            return build(*args, **kwargs)
        except OSError as exc:
            raise CharrnnError(
                f"could not write the token cache in {tokens_path.parent}: {os_error_reason(exc)}; "
                "nothing of it was kept (free some space, or set CHARRNN_CACHE_DIR to a directory with room)"
            ) from None

    return safely


def _remove_stale(directory: Path, key: str) -> None:
    """Remove the temporary files of cache entry `key` whose writer is gone (killed mid-write)."""
    pattern = re.compile(rf"\.?{re.escape(key)}\.[a-z.]+?\.([0-9]{{1,10}})(?:\.lines)?\.tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        found = pattern.fullmatch(name)
        if found is not None and int(found[1]) != os.getpid() and not pid_alive(int(found[1])):
            discard(directory / name)


@_cache_write
def _build_cache(
    corpus: Corpus,
    val_corpus: Corpus | None,
    cfg: TrainConfig,
    tokens_path: Path,
    tok_path: Path,
    meta_path: Path,
    progress: Progress,
    base: Tokenizer | None,
) -> dict:
    num_chars = sum(len(chunk) for chunk in corpus.chunks())
    if num_chars == 0:
        raise CharrnnError(f"{corpus.describe()} is empty")
    train_end, val_end = split_bounds(num_chars, cfg, separate_val=val_corpus is not None)
    tokenizer = _build_tokenizer(corpus, train_end, cfg, progress, base)
    dtype = storage_dtype(tokenizer.vocab_size)
    chars = [train_end, val_end - train_end, num_chars - val_end]
    tokens = [0, 0, 0]
    tmp = tokens_path.with_name(f"{tokens_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            encoders = [_Encoder(tokenizer, out, dtype) for _ in SPLITS]
            if val_corpus is None:
                current = 0
                for region, text in _regions(corpus, [train_end, val_end]):
                    if region != current:
                        tokens[current] = encoders[current].finish()
                        current = region
                    encoders[region].feed(text)
                tokens[current] = encoders[current].finish()
            else:
                # train, then the separate validation text, then test: the file order is the split order
                for region, text in _regions(corpus, [train_end]):
                    if region == 0:
                        encoders[0].feed(text)
                tokens[0] = encoders[0].finish()
                val_chars = 0
                for text in val_corpus.chunks():
                    val_chars += len(text)
                    encoders[1].feed(text)
                tokens[1] = encoders[1].finish()
                chars[1] = val_chars
                for region, text in _regions(corpus, [train_end]):
                    if region == 1:
                        encoders[2].feed(text)
                tokens[2] = encoders[2].finish()
        os.replace(tmp, tokens_path)
    finally:
        discard(tmp)  # never raises over the error that brought us here (a read-only file system)
    return _commit_cache(tokenizer, tokens, chars, tok_path, meta_path)


def _commit_cache(tokenizer: Tokenizer, tokens: list[int], chars: list[int], tok_path: Path, meta_path: Path) -> dict:
    """Save the tokenizer, then the metadata that makes the cache entry valid; returns the metadata."""
    replace_atomically(tok_path, lambda handle: torch.save(tokenizer.to_state(), handle))
    itemsize = storage_dtype(tokenizer.vocab_size).itemsize
    meta = {"version": CACHE_VERSION, "tokens": tokens, "chars": chars, "itemsize": itemsize}
    meta["tokenizer"] = _tokenizer_digest(tokenizer)  # what `_open_entry` checks the tokenizer file against
    replace_atomically(meta_path, lambda handle: handle.write(json.dumps(meta).encode()))
    return meta


@_cache_write
def _build_lines_cache(
    corpus: Corpus,
    cfg: TrainConfig,
    tokens_path: Path,
    tok_path: Path,
    meta_path: Path,
    lines_path: Path,
    progress: Progress,
    base: Tokenizer | None,
) -> dict:
    """The token cache of a --lines corpus: train, validation and test are sets of whole lines, each
    read in its own seeded order, every line ending with its line break (see `charrnn.data.lines`)."""
    spool = tokens_path.with_name(f"{tokens_path.name}.{os.getpid()}.lines.tmp")
    tmp = tokens_path.with_name(f"{tokens_path.name}.{os.getpid()}.tmp")
    try:
        index = lines.index_lines(corpus, spool)
        sides = lines.split_sides(index.digests, cfg.val_frac, cfg.test_frac, cfg.seed)
        orders = [lines.side_order(sides, side, cfg.seed) for side in range(len(SPLITS))]
        tokenizer = _tokenizer_of(lines.blocks(index, orders[0]), cfg, progress, base)
        dtype = storage_dtype(tokenizer.vocab_size)
        tokens, chars = [0, 0, 0], [0, 0, 0]
        with open(tmp, "wb") as out:
            for side, order in enumerate(orders):
                encoder = _Encoder(tokenizer, out, dtype)
                for block in lines.blocks(index, order):
                    chars[side] += len(block)
                    encoder.feed(block)
                tokens[side] = encoder.finish()
        replace_atomically(lines_path, lines.LineSets.of(index, sides).write)
        os.replace(tmp, tokens_path)
    finally:
        discard(spool)
        discard(tmp)
    return _commit_cache(tokenizer, tokens, chars, tok_path, meta_path)


def dataset_of_run(
    payload: dict[str, Any],
    cfg: TrainConfig,
    *,
    cache_dir: Path | None = None,
    progress: Progress = lambda message: None,
) -> Dataset:
    """The dataset a run trained on, rebuilt from what its checkpoint `payload` records of its corpus.

    The corpus and the validation files are read with the encodings training read them with, so
    the splits are the same text and the token cache (keyed by the text and its encoding) is hit.
    Refused with a one-line CharrnnError when the files are gone, hold other text (their content
    hash differs), or give another tokenizer than the checkpoint's.
    """
    info = payload.get("corpus") or {}
    try:
        encoding = info.get("encoding", "utf-8")
        corpus = find_corpus(info["files"], encoding=encoding)
        val_files = info.get("val_files")
        # Runs written before the validation encoding was recorded read both with --encoding.
        val_corpus = find_corpus(val_files, encoding=info.get("val_encoding", encoding)) if val_files else None
    except (KeyError, TypeError, AttributeError):
        raise CharrnnError("the checkpoint does not record its corpus") from None
    except CharrnnError as exc:
        raise CharrnnError(f"the run's corpus is gone ({exc})") from None
    base = base_of_run(payload)
    dataset = prepare_dataset(corpus, cfg, val_corpus=val_corpus, cache_dir=cache_dir, progress=progress, base=base)
    if dataset.corpus_hash != info.get("hash"):
        raise CharrnnError("the corpus changed since the run started (its content hash differs)")
    saved_kind = (payload.get("tokenizer") or {}).get("kind")
    saved_vocab = (payload.get("model_config") or {}).get("vocab_size")
    if dataset.tokenizer.to_state().get("kind") != saved_kind or dataset.tokenizer.vocab_size != saved_vocab:
        raise CharrnnError("the tokenizer differs from the one the run was trained with")
    return dataset


def validation_text(payload: dict[str, Any], dataset: Dataset, *, split: str = "val") -> Iterator[str]:
    """The text of a run's validation split (split="test": its test split), as the run's training
    cut it, in chunks: the end of the running text, the --val-file, or for a --lines run its
    held-out lines in their seeded order, each with its line break. `dataset` is the run's, from
    `dataset_of_run(payload, ...)`, which checked that the files hold the same text. The text is
    read from the files, not decoded from token ids, so a character the model never saw is there
    as it is. `charrnn eval`, `viz` and `score` all read a run's held-out text through this."""
    from charrnn.checkpoint import train_config_of

    if split not in SPLITS[1:]:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if getattr(dataset, split) is None:
        return
    info = payload["corpus"]
    encoding = info.get("encoding", "utf-8")
    corpus = find_corpus(info["files"], encoding=encoding)
    cfg = train_config_of(payload)
    if cfg.lines:
        with tempfile.TemporaryDirectory(prefix="charrnn-lines-", dir=_writable_cache_dir(None)) as tmp:
            index = lines.index_lines(corpus, Path(tmp) / "spool")
            sides = lines.split_sides(index.digests, cfg.val_frac, cfg.test_frac, cfg.seed)
            yield from lines.blocks(index, lines.side_order(sides, SPLITS.index(split), cfg.seed))
        return
    train_end = dataset.train.num_chars
    if info.get("val_files"):
        if split == "val":
            yield from find_corpus(info["val_files"], encoding=info.get("val_encoding", encoding)).chunks()
            return
        bounds = [train_end]  # the test split is the rest of the corpus after training's part
    else:
        bounds = [train_end, train_end + (dataset.val.num_chars if dataset.val is not None else 0)]
    wanted = len(bounds) if split == "test" else 1
    yield from (text for region, text in _regions(corpus, bounds) if region == wanted)


def validation_of_checkpoint(payload: dict[str, Any], *, purpose: str) -> tuple[Iterator[str], Split]:
    """The validation text of the run that wrote the checkpoint `payload` (`validation_text`), and
    the split of token ids `charrnn eval` scores; `purpose` ("score", "explain") ends the refusal
    of a run whose text cannot be rebuilt."""
    from charrnn.checkpoint import train_config_of

    try:
        dataset = dataset_of_run(payload, train_config_of(payload))
    except CharrnnError as exc:
        raise CharrnnError(f"{exc}: pass TEXT_FILE to {purpose}") from None
    if dataset.val is None:
        raise CharrnnError(f"the run has no validation split: pass TEXT_FILE to {purpose}")
    return validation_text(payload, dataset), dataset.val


def base_of_run(payload: dict[str, Any]) -> Tokenizer | None:
    """The tokenizer a run started `--init-from` built on (None for a run that started afresh): its
    own, less the characters it added (`init_from.added_chars`), so its vocabulary is rebuilt
    the same way and its token cache entry is found again."""
    origin = payload.get("init_from")
    if not isinstance(origin, dict):
        return None
    tokenizer = tokenizer_from_state(payload.get("tokenizer"))
    if not isinstance(tokenizer, CharTokenizer):
        return tokenizer
    added = origin.get("added_chars") or ""
    if not isinstance(added, str):
        raise CharrnnError("the checkpoint's init_from record is malformed (added_chars is not a string)")
    added_set = set(added)
    return CharTokenizer("".join(c for c in tokenizer.chars if c not in added_set))


def encode_text(tokenizer: Tokenizer, text: str) -> Split:
    """Encode held-out text for evaluation (kept in memory, at the compact dtype)."""
    ids = tokenizer.encode(text).to(storage_dtype(tokenizer.vocab_size))
    return Split(ids, len(text))
