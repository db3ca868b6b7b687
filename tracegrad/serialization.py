"""``tg.save`` / ``tg.load``: checkpoints in a format whose loading never runs code.

A saved file is a zip archive (stored, not compressed; every member carries a CRC) holding

- ``tracegrad/structure.json``: ``{"format": "tracegrad", "version": 1, "root": ...}``, the
  saved object, where JSON's own values stand for themselves (None, bools, ints, floats,
  strings) and every other value is an object of one key:
  ``{"list": [...]}``, ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}`` (keys of any
  saved kind: an optimizer's state is keyed by integers), ``{"ordered_dict": [...]}``,
  ``{"tensor": {"entry": i, "dtype": "float32", "shape": [...], "requires_grad": b,
  "parameter": b}}`` and ``{"ndarray": {"entry": i, ...}}``;
- ``tracegrad/tensors/<i>.npy``: each array, written by ``np.save(allow_pickle=False)`` and read
  by ``np.load(allow_pickle=False)``, so an object array (a pickle) is refused, not unpickled.

A tensor saved twice in one object (a tied weight) is stored once and loads as one tensor.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from tracegrad import devices, dtypes
from tracegrad.nn.parameter import Parameter
from tracegrad.tensor import Tensor, wrap

FORMAT, VERSION = "tracegrad", 1
STRUCTURE = "tracegrad/structure.json"
_ENTRY = "tracegrad/tensors/{}.npy"


class SerializationError(RuntimeError):
    """A file ``tg.load`` cannot read: corrupt, truncated, or of another format."""


def save(obj, f, pickle_module=None, pickle_protocol=None, **_pytorch_options) -> None:
    """Write ``obj`` (tensors, arrays, numbers, strings, None, in dicts, lists and tuples) to
    ``f``, a path or a binary file object. PyTorch's pickle options are accepted and unused.

    The file is a zip of ``.npy`` files and a JSON structure; ``tg.load`` reads it back
    without unpickling anything.

    Args:
        obj: what to save: a state dict, an optimizer's state, a checkpoint dict...
        f: a path (str or ``os.PathLike``) or a binary file object open for writing.

    Raises:
        TypeError: for a value of another type, naming where in ``obj`` it is.

    Examples:
        >>> import io
        >>> buffer = io.BytesIO()
        >>> tg.save({"w": tg.ones(2), "step": 3}, buffer)
        >>> _ = buffer.seek(0)
        >>> tg.load(buffer)
        {'w': tensor([1., 1.]), 'step': 3}
    """
    arrays: list[np.ndarray] = []
    root = _Encoder(arrays).encode(obj, "obj")
    structure = json.dumps({"format": FORMAT, "version": VERSION, "root": root})
    with _open(f, "wb") as stream, zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(STRUCTURE, structure)
        for i, array in enumerate(arrays):
            with archive.open(_ENTRY.format(i), "w", force_zip64=array.nbytes > 2**30) as out:
                np.save(out, array, allow_pickle=False)


def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **_options):
    """Read what ``save`` wrote. ``map_location`` may name the CPU (a string, a device, a
    dict mapping saved devices to it, or a function, as PyTorch takes them); the rest of
    PyTorch's options are accepted: nothing here unpickles, so every load is weights-only.

    Args:
        f: a path or a binary file object open for reading.
        map_location: None or the CPU, in any of PyTorch's forms.

    Returns:
        The saved structure, tensors as new tensors.

    Raises:
        SerializationError: for a file that is corrupt, truncated, pickled or PyTorch's,
            naming the file.
    """
    _check_map_location(map_location)
    name = _name(f)
    with _open(f, "rb") as stream:
        try:
            with zipfile.ZipFile(stream) as archive:
                return _Decoder(archive, name).decode_file()
        except SerializationError:
            raise
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            ValueError,
            TypeError,
            KeyError,
            OSError,
        ) as e:
            raise SerializationError(f"cannot load {name}: {_reason(stream, e)}") from e


# --- writing --------------------------------------------------------------------------------------


class _Encoder:
    def __init__(self, arrays: list):
        self.arrays = arrays
        self.entries: dict[int, int] = {}  # id of a saved tensor -> its entry

    def encode(self, value, where: str):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, Tensor):
            return {"tensor": self.tensor(value)}
        if isinstance(value, np.ndarray):
            return {"ndarray": self.array(value, value, where)}
        if isinstance(value, np.generic):
            return self.encode(value.item(), where)
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {kind: [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            kind = "ordered_dict" if isinstance(value, OrderedDict) else "dict"
            items = [
                [self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in value.items()
            ]
            return {kind: items}
        raise TypeError(
            f"tg.save cannot save {where}, a {type(value).__name__}: only tensors, arrays, "
            "numbers, strings and None, in dicts, lists and tuples, are saved (save a module's "
            "or an optimizer's state_dict())"
        )

    def tensor(self, t: Tensor) -> dict:
        described = self.array(t, t._concrete("tg.save"), "a tensor")
        described["requires_grad"] = t.requires_grad
        described["parameter"] = isinstance(t, Parameter)
        return described

    def array(self, key, array: np.ndarray, where: str) -> dict:
        if array.dtype.hasobject:
            raise TypeError(f"tg.save cannot save {where}: an array of Python objects")
        if id(key) not in self.entries:
            self.entries[id(key)] = len(self.arrays)
            self.arrays.append(array)
        entry = self.entries[id(key)]
        return {"entry": entry, "dtype": str(array.dtype), "shape": list(array.shape)}


# --- reading --------------------------------------------------------------------------------------


class _Decoder:
    def __init__(self, archive: zipfile.ZipFile, name: str):
        self.archive, self.name = archive, name
        self.loaded: dict[int, object] = {}  # entry -> the tensor or array made from it

    def decode_file(self):
        names = set(self.archive.namelist())
        if STRUCTURE not in names:
            raise SerializationError(f"cannot load {self.name}: {_foreign(names)}")
        header = json.loads(self.archive.read(STRUCTURE))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SerializationError(f"cannot load {self.name}: {STRUCTURE} is not tracegrad's")
        if header.get("version") != VERSION:
            raise SerializationError(
                f"cannot load {self.name}: format version {header.get('version')!r}, this "
                f"tracegrad reads version {VERSION}"
            )
        return self.decode(header["root"])

    def decode(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict) or len(node) != 1:
            raise ValueError(f"{STRUCTURE} holds {str(node)[:60]!r}, which is no saved value")
        ((kind, body),) = node.items()
        if kind in ("list", "tuple"):
            items = [self.decode(v) for v in body]
            return items if kind == "list" else tuple(items)
        if kind in ("dict", "ordered_dict"):
            pairs = ((self.decode(k), self.decode(v)) for k, v in body)
            return OrderedDict(pairs) if kind == "ordered_dict" else dict(pairs)
        if kind in ("tensor", "ndarray"):
            return self.shared(kind, body)
        raise ValueError(f"{STRUCTURE} holds a value of unknown kind {kind!r}")

    def shared(self, kind: str, body: dict):
        entry = body["entry"]
        if entry not in self.loaded:
            array = self.array(entry, body)
            self.loaded[entry] = array if kind == "ndarray" else _tensor(array, body)
        return self.loaded[entry]

    def array(self, entry: int, body: dict) -> np.ndarray:
        member = _ENTRY.format(int(entry))
        try:
            array = np.load(io.BytesIO(self.archive.read(member)), allow_pickle=False)
        except ValueError as e:  # np.load's refusal of a pickled object array among them
            raise SerializationError(f"cannot load {self.name}: {member}: {e}") from e
        expected = np.dtype(body["dtype"])
        if not np.can_cast(array.dtype, expected, "equiv") or list(array.shape) != body["shape"]:
            raise SerializationError(
                f"cannot load {self.name}: {member} holds {array.dtype}{list(array.shape)}, "
                f"the structure says {expected}{body['shape']}"
            )
        return array.astype(expected, copy=False)


def _tensor(array: np.ndarray, body: dict) -> Tensor:
    dtypes.from_numpy(array.dtype)  # a dtype tensors have, or a clear error
    if body.get("parameter"):
        return Parameter(array, requires_grad=body["requires_grad"])
    return wrap(array, requires_grad=body["requires_grad"])


# --- files and errors -----------------------------------------------------------------------------


def _open(f, mode: str):
    """A path is opened (and closed); a file object is used as it is and left open."""
    if isinstance(f, (str, os.PathLike)):
        return open(f, mode)
    return contextlib.nullcontext(f)


def _name(f) -> str:
    if isinstance(f, (str, os.PathLike)):
        return repr(os.fspath(f))
    return f"the file object {getattr(f, 'name', type(f).__name__)!r}"


def _foreign(names: set) -> str:
    if any(n.endswith("data.pkl") for n in names):
        return (
            "this is a PyTorch checkpoint, which stores pickles; tracegrad does not unpickle "
            "(unpickling can run any code): save it with tg.save, or convert its tensors to "
            "NumPy arrays in PyTorch and load those"
        )
    return f"a zip archive without {STRUCTURE}, so not a file tg.save wrote"


def _reason(stream, error: Exception) -> str:
    if isinstance(error, zipfile.BadZipFile) and _starts_with_pickle(stream):
        return "this is a pickle (an old PyTorch checkpoint?), which tracegrad does not load"
    if isinstance(error, zipfile.BadZipFile):
        return f"not a file tg.save wrote, or a truncated or corrupt one ({error})"
    return f"the file is truncated or corrupt ({type(error).__name__}: {error})"


def _starts_with_pickle(stream) -> bool:
    try:
        stream.seek(0)
        return stream.read(1) == b"\x80"  # the PROTO opcode that starts a pickle
    except (OSError, ValueError):
        return False


def _check_map_location(map_location) -> None:
    if map_location is None or callable(map_location):  # a function maps PyTorch storages
        return
    targets = map_location.values() if isinstance(map_location, dict) else [map_location]
    for target in targets:
        devices.check(target)
