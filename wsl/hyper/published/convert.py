"""Convert a published GHN file once into ``config.json`` + ``model.safetensors``: never a pickle again.

The directory has the layout of :func:`wsl.hyper.hub.save_pretrained` (``{"format": "wsl-hypernet",
"version": 1, "kind": "published-ghn2" | "published-ghn3", "config": ..., "metadata": ...}``); the weights keep
the reference's parameter names, order and dtypes, the config is the stored or inferred one (tuples as lists), and the
metadata records the source file, its format, its SHA-256 and where the config came from.
:func:`read_converted` reads it back as the :class:`~.files.PublishedCheckpoint` the source gave.

    wsl convert-hypernet ghn3xlm16.pt -o ghn3xlm16/       # once; then read_checkpoint("ghn3xlm16/")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..hub import FORMAT, VERSION, HypernetError
from .files import PublishedCheckpoint

KINDS = {"published-ghn2": True, "published-ghn3": False}  # kind -> is_ghn2


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


def write_converted(ckpt: PublishedCheckpoint, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``ckpt`` to ``directory`` (created; written in a temporary sibling and renamed into place, so a
    failure leaves nothing half-written). An existing non-empty directory needs ``overwrite=True``."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise HypernetError(f"{out} exists and is not empty; choose another directory or pass overwrite=True "
                            "(--overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = "published-ghn2" if ckpt.is_ghn2 else "published-ghn3"
    meta = {"source": ckpt.path.name, "source_format": ckpt.format, "source_sha256": _sha256(ckpt.path),
            "config_source": ckpt.config_source, **_jsonable(ckpt.metadata)}
    cfg = {"format": FORMAT, "version": VERSION, "kind": kind, "config": _jsonable(ckpt.config), "metadata": meta,
           "tensor_order": list(ckpt.state_dict)}  # safetensors sorts names; the reference's order is kept here
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.contiguous() for k, v in ckpt.state_dict.items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT, "kind": kind})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_converted(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        return False
    try:
        return json.loads((p / "config.json").read_text()).get("kind") in KINDS
    except (json.JSONDecodeError, AttributeError):
        return False


def read_converted(directory: str | os.PathLike) -> PublishedCheckpoint:
    """A directory written by :func:`write_converted` as a :class:`PublishedCheckpoint` (no pickle involved)."""
    d = Path(directory)
    cfg_path, w_path = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise HypernetError(f"{d}: not a converted hypernetwork (needs config.json and model.safetensors; "
                            "write one with `wsl convert-hypernet FILE -o DIR`)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise HypernetError(f"{cfg_path}: not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT or cfg.get("kind") not in KINDS:
        raise HypernetError(f"{cfg_path}: not a converted published GHN (format={cfg.get('format')!r}, "
                            f"kind={cfg.get('kind')!r}; expected kind one of {sorted(KINDS)})")
    if int(cfg.get("version", 0)) > VERSION:
        raise HypernetError(f"{cfg_path}: written by a newer wsl (format version {cfg['version']}); upgrade wsl")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["config"].items()}
    meta = dict(cfg.get("metadata", {}))
    state = load_file(str(w_path))
    order = [k for k in cfg.get("tensor_order", []) if k in state]
    state = {k: state[k] for k in order + sorted(set(state) - set(order))}
    return PublishedCheckpoint(path=d, format=f"converted:{meta.get('source_format', '?')}",
                               state_dict=state, config=config,
                               config_source=meta.get("config_source", "file"), is_ghn2=KINDS[cfg["kind"]],
                               metadata=meta)
