"""Read a checkpoint without importing torch: the payload comes back with every tensor as a numpy array.

Why: `import torch` alone takes one to two seconds, and `charrnn sample` on the CPU must print
its first character within one. So the CPU sampling path reads the checkpoint with the standard
library and numpy only; nothing here imports torch, directly or indirectly.

The format (what `torch.save` has written since torch 1.6; checked against torch 2.13): a zip
whose entries sit under one top-level folder, named after the file (`archive/` when saving to a
handle), stored uncompressed.

- `<folder>/data.pkl` is a pickle (protocol 2) of the payload. Each tensor in it is the call
  `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
  backward_hooks[, metadata])`, where `backward_hooks` is an empty `collections.OrderedDict()`
  and `metadata`, when present, is `{"neg": True}` or `{"conj": True}` (a lazily negated or
  conjugated view).
- Each storage is a persistent id `('storage', storage_type, key, location, numel)`:
  `storage_type` is a global such as `torch.FloatStorage`, naming the element type, and `numel`
  counts elements. Its bytes are the entry `<folder>/data/<key>`; tensors viewing the same
  storage share its key. Offsets, sizes and strides count elements too.
- `<folder>/byteorder` says `little` or `big` (files without it are little-endian).

torch 2.13 writes the dtypes that have a `torch.*Storage` class this way. The newer ones (uint16,
uint32, uint64, the float8 types, ...) go through `torch._utils._rebuild_tensor_v3` with a
`torch.storage.UntypedStorage`; charrnn never saves them, and this reader refuses them, as it
does complex and quantized tensors, with UnreadableCheckpoint.

Safety, as with `torch.load(weights_only=True)`: reading runs no code from the file. Nothing the
file names is imported. The pickle can call only what the unpickler's `find_class` hands out for
an explicit allow-list (`_Reader.allowed`): for `torch._utils._rebuild_tensor_v2` (and the older
`_rebuild_tensor`) and `torch.Size`, this module's own functions; for the ten storage type names,
inert markers; and the built-in types `collections.OrderedDict` and `builtins.set` themselves.
Any other name raises RefusedGlobal before anything is called. Persistent ids other than storages
are refused, and so is a result holding anything but plain values and arrays (an allowed global
placed among the values, say). Every tensor is checked to lie inside its storage before it is
read, and the arrays built may not add up to more than a few times the data the file holds, so a
small file cannot claim gigabytes through overlapping views. Entries must be stored uncompressed,
as torch writes them, so none can unpack to more than its size in the file. Each storage entry
is read once, and every tensor comes back as a C-contiguous copy of its own.
"""

from __future__ import annotations

import _compat_pickle  # the stdlib's table of Python 2 module names, used by pickle itself
import io
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib.stride_tricks import as_strided


class UnreadableCheckpoint(Exception):
    """The file is not a torch zip checkpoint this reader can parse (truncated, corrupt, another format)."""


class RefusedGlobal(Exception):
    """The pickle asks for a global outside the allow-list; `.name` is the dotted name, e.g. 'posix.system'."""

    name: str

    def __init__(self, name: str) -> None:
        super().__init__(f"refused to load {name}: a checkpoint may hold only tensors and plain values")
        self.name = name


# Storage type -> (numpy dtype of its elements as stored, conversion after the copy).
_STORAGE_TYPES: dict[str, tuple[str, str]] = {
    "torch.DoubleStorage": ("f8", ""),
    "torch.FloatStorage": ("f4", ""),
    "torch.HalfStorage": ("f2", ""),
    "torch.BFloat16Storage": ("u2", "bfloat16"),  # no numpy dtype: widened exactly to float32
    "torch.LongStorage": ("i8", ""),
    "torch.IntStorage": ("i4", ""),
    "torch.ShortStorage": ("i2", ""),
    "torch.CharStorage": ("i1", ""),
    "torch.ByteStorage": ("u1", ""),
    "torch.BoolStorage": ("u1", "bool"),  # any nonzero byte is True
}

# Names of tensor kinds torch writes that this reader does not read: UnreadableCheckpoint, not
# RefusedGlobal, since the file is a genuine checkpoint. Nothing is looked up or called for them.
_UNSUPPORTED: dict[str, str] = {
    "torch.ComplexFloatStorage": "complex64 tensors",
    "torch.ComplexDoubleStorage": "complex128 tensors",
    "torch.QInt8Storage": "quantized tensors",
    "torch.QUInt8Storage": "quantized tensors",
    "torch.QInt32Storage": "quantized tensors",
    "torch.QUInt4x2Storage": "quantized tensors",
    "torch.QUInt2x4Storage": "quantized tensors",
    "torch.storage.UntypedStorage": "tensors of the newer dtypes (uint16, uint32, uint64, float8, ...)",
    "torch._utils._rebuild_tensor_v3": "tensors of the newer dtypes (uint16, uint32, uint64, float8, ...)",
    "torch._utils._rebuild_qtensor": "quantized tensors",
    "torch._utils._rebuild_sparse_tensor": "sparse tensors",
    "torch._utils._rebuild_nested_tensor": "nested tensors",
    "torch._utils._rebuild_parameter": "nn.Parameter objects (save plain tensors)",
    "torch._utils._rebuild_parameter_with_state": "nn.Parameter objects (save plain tensors)",
}

# The arrays built may add up to at most this many times the storage bytes read, plus the slack:
# views of a storage (a tensor and its transpose) can exceed it, but not by much in a real file.
_EXPANSION = 8
_EXPANSION_SLACK = 64 << 20
_MAX_DIMS = 64  # numpy's limit
_INT64_LIMIT = 1 << 63
_PLAIN_LEAVES = frozenset({str, int, float, bool, type(None), bytes, np.ndarray})


class _Storage(tuple):
    """(elements as stored: a 1-d read-only array, conversion): what a storage persistent id becomes.

    A tuple subclass without instance attributes, so the pickle (which cannot name this class)
    can neither forge one nor change one through a BUILD opcode."""

    __slots__ = ()


class _StorageType(str):
    """What a storage type's name becomes: its dotted name, as a type of its own the pickle cannot forge."""

    __slots__ = ()


def _dotted(module: str, name: str) -> str:
    """`module.name`, with Python 2 names mapped the way pickle maps them (`__builtin__` -> `builtins`)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _ints(value: Any, what: str) -> tuple[int, ...]:
    """A tensor's size or stride: at most numpy's 64 dimensions, each a non-negative int64 (as in torch)."""
    if type(value) not in (tuple, list) or len(value) > _MAX_DIMS or not all(type(v) is int for v in value):
        raise UnreadableCheckpoint(f"a {what} is not a short sequence of integers")
    if not all(0 <= v < _INT64_LIMIT for v in value):
        raise UnreadableCheckpoint(f"a {what} holds a negative or oversized number")
    return tuple(value)


def _check_plain(payload: Any) -> None:
    """Refuse a payload holding anything but plain values and arrays.

    A pickle can place an allowed global itself (say `collections.OrderedDict`, or one of this
    module's stand-ins) among the values, or use BUILD to give an OrderedDict instance attributes
    that shadow its methods; neither belongs in a checkpoint. (Other attributes are fine: torch
    writes `_metadata` on every state_dict.) Iterative, and cycles are fine.
    """
    seen: set[int] = set()
    pending = [payload]
    while pending:
        value = pending.pop()
        kind = type(value)
        if kind in _PLAIN_LEAVES or id(value) in seen:
            continue
        seen.add(id(value))
        if kind is dict or kind is OrderedDict:
            if kind is OrderedDict:  # state_dict() gives its OrderedDict a `_metadata` attribute, set by BUILD
                attributes = vars(value)
                if any(type(name) is not str or hasattr(OrderedDict, name) for name in attributes):
                    raise UnreadableCheckpoint("an OrderedDict in it has an attribute that shadows a method")
                pending.extend(attributes.values())
            pending.extend(value.keys())
            pending.extend(value.values())
        elif kind in (list, tuple, set, frozenset):
            pending.extend(value)
        else:
            raise UnreadableCheckpoint(f"it holds a {kind.__name__}, which is not a plain value")


class _Reader:
    """One read of one file: its zip, the storages read so far and the budget for arrays."""

    def __init__(self, archive: zipfile.ZipFile, folder: str, byteorder: str) -> None:
        self.archive = archive
        self.folder = folder
        self.byteorder = byteorder
        self.raw: dict[str, bytes] = {}  # storage key -> its bytes, each entry read once
        self.bytes_read = 0
        self.bytes_built = 0
        # Fresh functions per read, taking only *args: a BUILD opcode aimed at one of them can at
        # most set attributes on it, which changes nothing it does, and nothing beyond this read
        # (and `_check_plain` refuses a result that holds one of them).
        self.allowed: dict[str, Any] = {
            "torch._utils._rebuild_tensor_v2": lambda *args: self.rebuild_v2(args),
            "torch._utils._rebuild_tensor": lambda *args: self.rebuild_v1(args),
            "torch.Size": lambda *args: _size(args),
            "collections.OrderedDict": OrderedDict,  # immutable built-in types: BUILD cannot alter them
            "builtins.set": set,
            **{name: _StorageType(name) for name in _STORAGE_TYPES},
        }

    # --- storages ---------------------------------------------------------------------
    def storage(self, pid: Any) -> _Storage:
        if type(pid) is not tuple or len(pid) != 5 or type(pid[0]) is not str or pid[0] != "storage":
            raise UnreadableCheckpoint("the pickle refers to something other than a tensor storage")
        _, storage_type, key, location, numel = pid
        if type(storage_type) is not _StorageType:
            raise UnreadableCheckpoint("a storage names no storage type")
        if type(key) is not str or type(location) is not str or type(numel) is not int or not 0 <= numel < _INT64_LIMIT:
            raise UnreadableCheckpoint("a storage record is malformed")
        code, conversion = _STORAGE_TYPES[str(storage_type)]
        dtype = np.dtype(code)
        if dtype.itemsize > 1:
            dtype = dtype.newbyteorder("<" if self.byteorder == "little" else ">")
        raw = self.raw.get(key)
        if raw is None:
            raw = self.raw[key] = _read_entry(self.archive, f"{self.folder}/data/{key}")
            self.bytes_read += len(raw)
        if len(raw) < numel * dtype.itemsize:
            raise UnreadableCheckpoint(
                f"storage data/{key} holds {len(raw)} bytes but claims {numel} elements of {dtype.itemsize}"
            )
        return _Storage((np.frombuffer(raw, dtype=dtype, count=numel), conversion))

    # --- tensors ----------------------------------------------------------------------
    def rebuild_v1(self, args: tuple[Any, ...]) -> np.ndarray:
        if len(args) != 4:
            raise UnreadableCheckpoint("a tensor record has the wrong number of fields")
        return self.tensor(*args, {})

    def rebuild_v2(self, args: tuple[Any, ...]) -> np.ndarray:
        if len(args) not in (6, 7):
            raise UnreadableCheckpoint("a tensor record has the wrong number of fields")
        storage, offset, size, stride, requires_grad, backward_hooks = args[:6]
        metadata = args[6] if len(args) == 7 else None
        if type(requires_grad) is not bool:
            raise UnreadableCheckpoint("a tensor record is malformed (requires_grad)")
        if not isinstance(backward_hooks, dict) or backward_hooks:
            raise UnreadableCheckpoint("a tensor record carries backward hooks")
        if metadata is None:
            metadata = {}
        if type(metadata) is not dict or not all(k in ("neg", "conj") and type(v) is bool for k, v in metadata.items()):
            raise UnreadableCheckpoint("a tensor record has metadata this reader does not understand")
        return self.tensor(storage, offset, size, stride, metadata)

    def tensor(self, storage: Any, offset: Any, size: Any, stride: Any, metadata: dict[str, bool]) -> np.ndarray:
        """A C-contiguous native-order copy of the view (offset, size, stride) of a storage."""
        if type(storage) is not _Storage:
            raise UnreadableCheckpoint("a tensor's storage is not a storage record")
        data, conversion = storage
        shape, strides = _ints(size, "tensor size"), _ints(stride, "tensor stride")
        if type(offset) is not int or not 0 <= offset < _INT64_LIMIT or len(shape) != len(strides):
            raise UnreadableCheckpoint("a tensor has a malformed offset, size or stride")
        if metadata.get("conj") or (metadata.get("neg") and conversion == "bool"):
            raise UnreadableCheckpoint("a tensor is a conjugated or negated view of a type that has none")
        count = math.prod(shape)
        self.bytes_built += count * (4 if conversion == "bfloat16" else data.itemsize)
        if self.bytes_built > _EXPANSION * self.bytes_read + _EXPANSION_SLACK:
            raise UnreadableCheckpoint("its tensors claim far more data than the file holds")
        native = data.dtype.newbyteorder("=")
        if count == 0:
            out = np.empty(shape, dtype=native)
        else:
            strides = tuple(0 if n == 1 else s for n, s in zip(shape, strides))  # any stride fits a size-1 dim
            last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
            if last >= data.size:
                raise UnreadableCheckpoint("a tensor reaches past the end of its storage")
            view = as_strided(data[offset:], shape=shape, strides=[s * data.itemsize for s in strides], writeable=False)
            out = np.array(view, dtype=native, order="C")  # a copy; byte-swapped if the file is big-endian
        if conversion == "bool":
            out = out.astype(np.bool_)
        elif conversion == "bfloat16":
            widened = out.astype(np.uint32)
            np.left_shift(widened, np.uint32(16), out=widened)  # a uint32 shift: numpy 1.x would widen a Python int
            out = widened.view(np.float32)
        if metadata.get("neg"):
            np.negative(out, out=out)
        return out


def _size(args: tuple[Any, ...]) -> tuple[int, ...]:
    """`torch.Size(dims)` comes back as a plain tuple."""
    if len(args) != 1:
        raise UnreadableCheckpoint("a torch.Size record is malformed")
    return _ints(args[0], "torch.Size")


def _read_entry(archive: zipfile.ZipFile, name: str) -> bytes:
    """The whole entry, CRC-checked; only stored (uncompressed) entries, as torch writes them."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise UnreadableCheckpoint(f"the zip has no entry {name}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnreadableCheckpoint(f"entry {name} is compressed, which torch.save never does")
    with archive.open(info) as entry:
        data = entry.read()
    if len(data) != info.file_size:
        raise UnreadableCheckpoint(f"entry {name} is truncated")
    return data


class _Unpickler(pickle.Unpickler):
    """Unpickles data.pkl, resolving globals only through the allow-list and storages through the zip."""

    def __init__(self, file: IO[bytes], reader: _Reader) -> None:
        super().__init__(file)
        self._reader = reader

    def find_class(self, module: str, name: str) -> Any:
        # Called by every opcode that names a global (GLOBAL, STACK_GLOBAL, INST, EXT*): nothing
        # is imported, and nothing outside the allow-list is ever returned.
        dotted = _dotted(module, name)
        allowed = self._reader.allowed.get(dotted)
        if allowed is not None:
            return allowed
        if dotted in _UNSUPPORTED:
            raise UnreadableCheckpoint(f"it holds {_UNSUPPORTED[dotted]}, which this reader does not read")
        if dotted.startswith("torch._utils._rebuild_"):
            raise UnreadableCheckpoint(f"it holds a kind of tensor this reader does not read ({dotted})")
        raise RefusedGlobal(dotted)

    def persistent_load(self, pid: Any) -> _Storage:
        return self._reader.storage(pid)


def _data_folder(archive: zipfile.ZipFile) -> str:
    folders = [name[: -len("/data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl")]
    folders = [folder for folder in folders if folder and "/" not in folder]
    if len(folders) != 1:
        raise UnreadableCheckpoint("the zip holds no data.pkl" if not folders else "the zip holds several data.pkl")
    return folders[0]


def _byteorder(archive: zipfile.ZipFile, folder: str) -> str:
    try:
        info = archive.getinfo(f"{folder}/byteorder")
    except KeyError:
        return "little"
    if info.file_size > 16:
        raise UnreadableCheckpoint("its byteorder entry is malformed")
    order = _read_entry(archive, info.filename).decode("ascii", errors="replace").strip()
    if order not in ("little", "big"):
        raise UnreadableCheckpoint(f"unknown byte order {order[:16]!r}")
    return order


def _load(handle: IO[bytes]) -> Any:
    try:
        archive = zipfile.ZipFile(handle)
    except zipfile.BadZipFile:
        handle.seek(0)
        start = handle.read(4)
        if not start:
            raise UnreadableCheckpoint("the file is empty") from None
        if start == b"PK\x03\x04":
            raise UnreadableCheckpoint("the zip has no directory (truncated?)") from None
        raise UnreadableCheckpoint("not a zip checkpoint") from None
    with archive:
        folder = _data_folder(archive)
        reader = _Reader(archive, folder, _byteorder(archive, folder))
        pickled = _read_entry(archive, f"{folder}/data.pkl")  # small: the tensors' data lies in other entries
        payload = _Unpickler(io.BytesIO(pickled), reader).load()
    _check_plain(payload)
    return payload


def read_checkpoint_file(path: Path) -> Any:
    """The unpickled payload with tensors as numpy arrays (C-contiguous copies with the tensor's shape, strides honoured).

    Values come back as torch.load gives them (dicts, OrderedDicts, lists, tuples, sets, str, int,
    float, bool, None), except that every tensor is a numpy array of the matching dtype (bfloat16
    widened exactly to float32; a lazily negated view negated), and a torch.Size is a tuple.

    Raises RefusedGlobal for a pickle that names anything outside the allow-list (nothing it names
    has run), UnreadableCheckpoint for anything else this reader cannot parse, with a one-line
    reason. An OSError from opening the file (missing, a directory, no permission) propagates.
    """
    with open(path, "rb") as handle:
        try:
            return _load(handle)
        except (RefusedGlobal, UnreadableCheckpoint):
            raise
        except Exception as exc:  # a damaged or hostile file fails in many ways: struct.error, EOFError, ...
            detail = str(exc).strip().splitlines()
            raise UnreadableCheckpoint(
                f"{type(exc).__name__}: {detail[0][:160]}" if detail else type(exc).__name__
            ) from None


__all__ = ["RefusedGlobal", "UnreadableCheckpoint", "read_checkpoint_file"]
