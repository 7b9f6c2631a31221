"""Read torch checkpoints that pickle configuration *objects* without running any of their code.

Some zoos store a config object of their training code next to the weights (CNN Wild Park pickles an OmegaConf
``DictConfig`` of a dataclass). ``torch.load(weights_only=True)`` refuses those files, and a plain unpickling
would import and call whatever the file names. :func:`load_inert` instead unpickles with an allowlist: tensors,
storages, ``OrderedDict`` and builtin containers are rebuilt as usual; *every other class or function the file
names becomes an inert record* (:class:`Record`) that only stores the arguments and state it was given. No module
of the file's choosing is imported and nothing it names is called. :func:`plain` turns records (dataclasses,
OmegaConf containers and nodes) into plain dicts / lists / scalars.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import torch

from ...io import CheckpointError

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("_codecs", "encode"): __import__("_codecs").encode,  # how protocol-2 pickles store bytes
}
_ALLOWED.update({("torch", str(d).split(".")[1]): d for d in (torch.float16, torch.float32, torch.float64,
                                                               torch.bfloat16, torch.int64, torch.int32, torch.bool,
                                                               torch.uint8, torch.int8, torch.int16)})


class Record:
    """An inert stand-in for an object of class ``qualname`` the pickle named (nothing of it was imported)."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # dict / list subclasses are rebuilt with SETITEMS / APPENDS
    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"Record({self.qualname})"


_RECORD_TYPES: dict[str, type[Record]] = {}


def _record_type(module: str, name: str) -> type[Record]:
    q = f"{module}.{name}"
    if q not in _RECORD_TYPES:
        _RECORD_TYPES[q] = type(f"Record[{q}]", (Record,), {"qualname": q})
    return _RECORD_TYPES[q]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _ALLOWED.get((module, name)) or _record_type(module, name)


def _load(file: Any, **kwargs: Any) -> Any:
    return _Unpickler(file, **kwargs).load()


class _InertPickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler never imports what the file names (also for the
    header records of legacy, non-zip checkpoints, which ``torch.load`` reads with ``pickle_module.load``)."""

    Unpickler = _Unpickler
    load = staticmethod(_load)
    __name__ = "wsl_inert_pickle"


def load_inert(path: Path) -> Any:
    """Unpickle a torch checkpoint with the allowlist above (see the module docstring); errors name the file."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint file is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickle)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def plain(obj: Any) -> Any:
    """Records (dataclasses, OmegaConf ``DictConfig`` / ``ListConfig`` and value nodes) -> plain Python data."""
    if isinstance(obj, Record):
        st = obj.state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):  # (dict state, slots state)
            st = {**(st[0] or {}), **st[1]}
        if isinstance(st, dict):
            if "_content" in st:
                return plain(st["_content"])
            if "_val" in st:
                return plain(st["_val"])
            return {k: plain(v) for k, v in st.items() if not k.startswith("_")}
        if obj.items:
            if all(isinstance(x, tuple) and len(x) == 2 for x in obj.items):
                return {k: plain(v) for k, v in obj.items}
            return [plain(x) for x in obj.items]
        return [plain(a) for a in obj.args] if obj.args else None
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(x) for x in obj]
    return obj
