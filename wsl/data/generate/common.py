"""Shared machinery of the local zoo generators: cache location, sharded storage, atomic writes, resume.

A generated zoo is a directory::

    <cache>/zoos/<name>-<config hash>/
        manifest.json            format, kind, config, architecture constructor, shard list, totals
        shard_00000.safetensors  stacked state-dict tensors [n, *shape] + per-model metadata tensors
        shard_00001.safetensors  ...

A zoo of one architecture names it in ``"architecture"`` and stacks each tensor over the shard's models
(``layout: "stacked"``, the default). A zoo of *several* architectures lists them in ``"architectures"``,
stores each model's tensors under ``"<position in shard>/<state-dict key>"`` (``layout: "per-model"``) and
gives every model a meta field ``arch`` indexing that list; ``ZooDir.architecture(i)`` builds entry ``i``.

Shards are written to a temporary file and renamed (atomic on POSIX), and the manifest is rewritten after
each one, so a killed generation leaves only complete shards; running it again skips them and continues.
Every model's randomness comes from a generator seeded by ``(seed, model index)``, so the result does not
depend on where a run was interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT = "wsl-zoo/1"
META_PREFIX = "__meta__."


def cache_root() -> Path:
    """``$WSL_CACHE`` if set, else ``$XDG_CACHE_HOME/wsl`` or ``~/.cache/wsl`` (outside any git checkout)."""
    env = os.environ.get("WSL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsl"


def config_hash(config: Any) -> str:
    blob = json.dumps(asdict(config), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def model_seed(seed: int, index: int, stream: str = "") -> int:
    """Independent, reproducible seed per model (does not depend on batching or interruption); ``stream``
    names an independent sequence for another use (e.g. ``"distort"``) with the same ``(seed, index)``."""
    key = f"{seed}:{index}" if not stream else f"{stream}:{seed}:{index}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "little")


def open_zoo_dir(path: Path, config: dict[str, Any]) -> Path:
    """Create ``path`` if needed and return its ``manifest.json`` path; refuse a directory that holds a zoo
    generated with another configuration (resuming it would mix two zoos)."""
    path.mkdir(parents=True, exist_ok=True)
    mf = path / "manifest.json"
    if mf.is_file() and json.loads(mf.read_text()).get("config") != config:
        raise ValueError(f"{path} holds a zoo generated with another configuration; "
                         f"use another root or delete the directory")
    return mf


def private_tmp(path: Path) -> Path:
    """A temporary sibling of ``path`` private to this process: writers racing on one file (torchrun ranks
    opening the same zoo) each write their own and ``os.replace`` it, so no one moves another's half-written
    file into place."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = private_tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def save_shard(path: Path, params: dict[str, Tensor], meta: dict[str, Tensor]) -> None:
    tensors = {k: v.contiguous() for k, v in params.items()}
    tensors.update({META_PREFIX + k: v.contiguous() for k, v in meta.items()})
    tmp = private_tmp(path)
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, path)


def load_shard(path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    raw = load_file(str(path))
    params = {k: v for k, v in raw.items() if not k.startswith(META_PREFIX)}
    meta = {k[len(META_PREFIX):]: v for k, v in raw.items() if k.startswith(META_PREFIX)}
    return params, meta


class Progress:
    """tqdm when installed and wanted, otherwise a quiet counter (library code must not require tqdm)."""

    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, initial=initial, unit="model", file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ZooDir:
    """Read side of a generated zoo directory (see module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise FileNotFoundError(f"{self.path} is not a wsl zoo: no manifest.json (generate one first)")
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mf}: format {self.manifest.get('format')!r} is not {FORMAT!r}")

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return sum(s["count"] for s in self.manifest["shards"])

    @property
    def num_architectures(self) -> int:
        """How many architectures the zoo holds (``1`` for a single-architecture zoo)."""
        return len(self.manifest.get("architectures") or [None])

    @property
    def layout(self) -> str:
        """``"stacked"`` (one architecture, tensors ``[n, *shape]``) or ``"per-model"`` (see module docstring)."""
        return self.manifest.get("layout", "stacked")

    def architecture(self, index: int | None = None, *, allow_any: bool = False):
        """A fresh module of the zoo's architecture ``index``, built by the constructor the manifest names.

        ``index`` is required for a zoo of several architectures (a model's ``meta["arch"]``) and optional
        (``0``) otherwise. Only constructors inside the ``wsl`` package are called unless ``allow_any`` (a
        manifest from an untrusted source must not make us import and call arbitrary code).
        """
        import importlib

        archs = self.manifest.get("architectures")
        if archs is None:
            if index not in (None, 0):
                raise IndexError(f"{self.path} holds one architecture; got index {index}")
            arch = self.manifest["architecture"]
        else:
            if index is None:
                if len(archs) != 1:
                    raise ValueError(f"{self.path} holds {len(archs)} architectures; pass the index "
                                     f"(a model's meta['arch']) to architecture()")
                index = 0
            if not 0 <= index < len(archs):
                raise IndexError(f"architecture index {index} out of range: {self.path} lists {len(archs)}")
            arch = archs[index]
        target = arch["constructor"]
        mod_name, _, fn_name = target.partition(":")
        if not allow_any and not (mod_name == "wsl" or mod_name.startswith("wsl.")):
            raise ValueError(f"{self.path}/manifest.json names constructor {target!r} outside wsl; "
                             f"pass allow_any=True if you trust this zoo")
        fn = getattr(importlib.import_module(mod_name), fn_name)
        return fn(**arch.get("kwargs", {}))

    def shards(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        for s in self.manifest["shards"]:
            yield load_shard(self.path / s["file"])

    def state_dicts(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """``(state_dict, meta)`` per model, in model-index order."""
        per_model = self.layout == "per-model"
        for params, meta in self.shards():
            n = next(iter(meta.values())).shape[0]
            if per_model:
                split: list[dict[str, Tensor]] = [{} for _ in range(n)]
                for k, v in params.items():
                    pos, _, key = k.partition("/")
                    split[int(pos)][key] = v
            for i in range(n):
                sd = split[i] if per_model else {k: v[i].clone() for k, v in params.items()}
                yield sd, {k: v[i] for k, v in meta.items()}
