"""Read the published graph-hypernetwork checkpoints without running anything they name.

Two projects publish the GHN weights people use, in three file formats:

* **ppuda** (GHN-1 / GHN-2: ``ghn2_cifar10.pt``, ``ghn2_imagenet.pt``, ...; and what its ``train_ghn.py``
  writes): a ``torch.save`` dict ``{"state_dict", "config", "epoch", "optimzer" (sic)}``; ``config`` holds the
  constructor arguments (``max_shape``, ``num_classes``, ``hypernet``, ``decoder``, ``weight_norm``, ``ve``,
  ``layernorm``, ``hid``).
* **ghn3 releases** (``ghn3tm8.pt`` ... ``ghn3xlm16.pt`` on the Hugging Face hub): a *joblib* pickle of the
  bare state dict, no config (it is inferred from the keys, :mod:`.config`). The reference reads them with
  ``joblib.load``, which imports and calls whatever the pickle names.
* **ghn3 training checkpoints** (what its ``Trainer.save`` writes): a ``torch.save`` dict with
  ``state_dict``, ``optimizer``, ``epoch``, ``step``, ``config`` and ``args`` (an ``argparse.Namespace``, which
  ``torch.load(weights_only=True)`` refuses).

:func:`read_checkpoint` reads all three with allowlisting unpicklers: tensors, storages, numpy arrays and
dtypes, ``OrderedDict`` and builtin containers are rebuilt; ``argparse.Namespace`` (training arguments) becomes
an inert record turned into a plain dict; a file that names anything else (``os.system``, ``builtins.eval``,
a class of the training code, ...) is refused with an error naming it, and nothing it names is imported or
called. Storages inside joblib pickles (``torch.storage._load_from_bytes``) are read with
``torch.load(weights_only=True)``; numpy arrays written by joblib (``NumpyArrayWrapper`` followed by raw
bytes) are read from the stream here. Compressed joblib files (zlib, gzip, bz2, lzma / xz) are
decompressed first.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import io
import lzma
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.formats.inert_pickle import Record, _InertPickle, _Unpickler, plain
from ..hub import HypernetError

# globals a GHN checkpoint may name besides torch's own tensor machinery, and what they become
_BENIGN_RECORDS = {"argparse.Namespace"}
_JOBLIB_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"),
               (b"\x04\x22\x4d\x18", "lz4"))


@dataclass
class PublishedCheckpoint:
    """What a published GHN file holds: ``state_dict`` (name -> tensor), ``config`` (the reference
    constructor's arguments, as stored or inferred), where they came from (``format``: ``"ppuda"``,
    ``"ghn3-joblib"`` or ``"ghn3-torch"``; ``config_source``: ``"file"`` or ``"inferred"``), whether the
    weights are a GHN-2 (gated GNN) or a GHN-3 (Graphormer), and ``metadata`` (epoch, step, training args)."""

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    config_source: str
    is_ghn2: bool
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return "ghn2" if self.is_ghn2 else "ghn3"


# ------------------------------------------------------------------------------------------- torch.save files
class _Collecting(_Unpickler):
    """The inert unpickler, also noting every global the file names."""

    named: set[str]

    def find_class(self, module: str, name: str) -> Any:
        obj = super().find_class(module, name)
        if isinstance(obj, type) and issubclass(obj, Record):
            self.named.add(f"{module}.{name}")
        return obj


def _refuse(path: Path, names: set[str]) -> HypernetError:
    listed = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
    return HypernetError(
        f"{path}: refused: the pickle names {listed}, which no published GHN checkpoint contains; loading it the "
        "reference way (torch.load without weights_only, joblib.load) would import and call it. Nothing was "
        "run. If you trust the file, load it yourself and save the state dict with safetensors.")


def _torch_file(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        named: set[str] = set()

        class Collecting(_Collecting):
            pass

        Collecting.named = named

        class Module(_InertPickle):
            Unpickler = Collecting
            load = staticmethod(lambda f, **kw: Collecting(f, **kw).load())

        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=Module)
        except Exception as e:  # noqa: BLE001
            raise HypernetError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
        if named - _BENIGN_RECORDS:
            raise _refuse(path, named - _BENIGN_RECORDS) from None
    except Exception as e:  # noqa: BLE001
        raise HypernetError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise HypernetError(f"{path}: a torch checkpoint holding a {type(obj).__name__}, not a dict; a GHN "
                            "checkpoint is a state dict or a dict with 'state_dict' (and 'config')")
    return obj


# ------------------------------------------------------------------------------------------- joblib files
def _load_storage(data: bytes) -> Any:
    """``torch.storage._load_from_bytes``, with the inner ``torch.load`` restricted to weights."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_JOBLIB_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__new__,
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__new__,
}


class _ArrayWrapper(Record):
    qualname = "joblib.numpy_pickle.NumpyArrayWrapper"


class _JoblibUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD can be extended
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.raw, self.path, self.refused = file, path, set()
        self.dispatch = dict(pickle._Unpickler.dispatch)
        self.dispatch[pickle.BUILD[0]] = _JoblibUnpickler._build

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _JOBLIB_WRAPPER:
            return _ArrayWrapper
        if (module, name) in _JOBLIB_ALLOWED:
            return _JOBLIB_ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _scalar
        self.refused.add(f"{module}.{name}")
        raise _refuse(self.path, {f"{module}.{name}"})

    def _build(self) -> None:
        pickle._Unpickler.load_build(self)
        if isinstance(self.stack[-1], _ArrayWrapper):
            wrapper = self.stack.pop()
            self.stack.append(self._read_array(wrapper.state))

    def _read_array(self, st: dict[str, Any]) -> np.ndarray:
        """The raw bytes joblib writes after a ``NumpyArrayWrapper``: an optional alignment (one byte with the
        padding length, then the padding), then the array in ``order``."""
        dtype, shape, order = np.dtype(st["dtype"]), tuple(int(s) for s in st["shape"]), st.get("order", "C")
        if dtype.hasobject:
            raise HypernetError(f"{self.path}: refused: an array of Python objects (a nested pickle) is stored; "
                                "GHN weights are numeric arrays")
        if st.get("numpy_array_alignment_bytes") is not None:
            pad = self.raw.read(1)
            self.raw.read(int.from_bytes(pad, "little"))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = self.raw.read(nbytes)
        if len(data) != nbytes:
            raise HypernetError(f"{self.path}: truncated joblib file (an array of shape {shape} needs {nbytes} "
                                f"bytes, {len(data)} left)")
        arr = np.frombuffer(data, dtype=dtype)
        return arr.reshape(shape, order="F" if order == "F" else "C")


def _scalar(dtype: np.dtype, data: bytes) -> Any:
    return np.frombuffer(data, dtype=dtype)[0]


def _joblib_file(path: Path, head: bytes) -> dict[str, Any]:
    kind = "zlib" if head[:1] == b"\x78" else next((k for magic, k in _COMPRESSED if head.startswith(magic)), None)
    raw = path.read_bytes() if kind else None
    try:
        if kind == "zlib":
            stream: Any = io.BytesIO(zlib.decompress(raw))
        elif kind == "gzip":
            stream = io.BytesIO(gzip.decompress(raw))
        elif kind == "bz2":
            stream = io.BytesIO(bz2.decompress(raw))
        elif kind in ("xz", "lzma"):
            stream = io.BytesIO(lzma.decompress(raw))
        elif kind == "lz4":
            try:
                import lz4.frame  # type: ignore[import-not-found]
            except ImportError:
                raise HypernetError(f"{path}: lz4-compressed joblib file; `pip install lz4` to read it") from None
            stream = io.BytesIO(lz4.frame.decompress(raw))
        else:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
    except (zlib.error, OSError, lzma.LZMAError, EOFError) as e:
        raise HypernetError(f"{path}: {kind}-compressed data is corrupt ({e})") from None
    try:
        obj = _JoblibUnpickler(stream, path).load()
    except HypernetError:
        raise
    except Exception as e:  # noqa: BLE001
        raise HypernetError(f"{path}: not a readable joblib / pickle file ({type(e).__name__}: {e})") from None
    finally:
        stream.close()
    if not isinstance(obj, dict):
        raise HypernetError(f"{path}: the pickle holds a {type(obj).__name__}, not a state dict")
    return obj


# ------------------------------------------------------------------------------------------- entry point
def _tensors(path: Path, sd: Any) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict) or not sd:
        raise HypernetError(f"{path}: no state dict found (expected a dict of name -> tensor)")
    out = {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.array(v))  # a writable copy
        if not isinstance(v, torch.Tensor):
            raise HypernetError(f"{path}: state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v.detach()
    return out


def read_raw(path: str | Path) -> tuple[str, dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """``(format, state_dict, stored config or None, metadata)`` of a published GHN file (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise HypernetError(f"{path}: hypernetwork checkpoint not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if zipfile.is_zipfile(path) or head[:2] == b"\x80\x02" and _legacy_torch(path):
        obj = _torch_file(path)
        if "state_dict" in obj:
            cfg = obj.get("config")
            meta = {k: plain(v) for k, v in obj.items() if k in ("epoch", "step", "args")}
            fmt = "ghn3-torch" if "args" in obj or "step" in obj else "ppuda"
            return fmt, _tensors(path, obj["state_dict"]), (dict(plain(cfg)) if cfg is not None else None), meta
        return "ghn3-torch", _tensors(path, obj), None, {}
    return "ghn3-joblib", _tensors(path, _joblib_file(path, head)), None, {}


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name}")


def _legacy_torch(path: Path) -> bool:
    """A pre-1.6 ``torch.save`` file starts with a pickled magic number (0x1950a86a20f9469cfc6c); read with an
    unpickler that resolves no global at all."""
    with open(path, "rb") as f:
        try:
            return _NoGlobals(f).load() == 0x1950A86A20F9469CFC6C
        except Exception:  # noqa: BLE001
            return False
