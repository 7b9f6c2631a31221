"""Saving and loading graph hypernetworks: ``config.json`` + ``model.safetensors``, packaged names.

A saved hypernetwork is a directory with

* ``config.json``: ``{"format": "wsl-hypernet", "version": 1, "kind": "ghn2" | "ghn3", "config": {...},
  "metadata": {...}}`` (``config`` holds the constructor arguments, ``metadata`` free-form training notes);
* ``model.safetensors``: the weights (no pickles: loading never runs code).

Packaged hypernetworks live in ``wsl/hyper/pretrained/<name>.json`` + ``<name>.safetensors`` (same two
files, flat) and load offline by name: ``from_pretrained("ghn2-digits")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

FORMAT, VERSION = "wsl-hypernet", 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


class HypernetError(ValueError):
    """A hypernetwork name / directory / checkpoint cannot be loaded."""


def packaged() -> list[str]:
    """Names of the hypernetworks shipped inside the package."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.json") if (PRETRAINED_DIR / f"{p.stem}.safetensors").exists())


def save_pretrained(model: Any, directory: str | os.PathLike, *, metadata: dict[str, Any] | None = None,
                    name: str | None = None) -> Path:
    """Save ``model`` (a :class:`~wsl.hyper.ghn.GraphHyperNetwork`) to ``directory``.

    With ``name``, writes the flat packaged layout ``directory/<name>.json`` + ``<name>.safetensors``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"format": FORMAT, "version": VERSION, "kind": model.kind, "config": model.config,
           "metadata": metadata or getattr(model, "metadata", {}) or {}}
    stem_json, stem_w = (f"{name}.json", f"{name}.safetensors") if name else ("config.json", "model.safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / stem_w), metadata={"format": FORMAT, "kind": model.kind})
    (d / stem_json).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return d


def _files(name_or_path: str | os.PathLike) -> tuple[Path, Path]:
    s = os.fspath(name_or_path)
    if s in packaged():
        return PRETRAINED_DIR / f"{s}.json", PRETRAINED_DIR / f"{s}.safetensors"
    p = Path(s)
    if p.is_dir():
        cfg, w = p / "config.json", p / "model.safetensors"
        if not cfg.exists() or not w.exists():
            raise HypernetError(f"{p} is not a saved hypernetwork: it needs config.json and model.safetensors "
                                "(written by hypernet.save_pretrained(dir))")
        return cfg, w
    if p.suffix == ".json" and p.exists() and p.with_suffix(".safetensors").exists():
        return p, p.with_suffix(".safetensors")
    raise HypernetError(f"unknown hypernetwork {s!r}: not a packaged name (available: {', '.join(packaged()) or 'none'})"
                        ", not a directory written by save_pretrained() or `wsl convert-hypernet`, and not a "
                        "published GHN file (ppuda .pt / ghn3 release)")


def from_pretrained(name_or_path: str | os.PathLike) -> Any:
    """Load a hypernetwork: a packaged one by name, one saved with ``save_pretrained`` from its directory, or
    a published GHN — a ppuda / ghn3 release file (read without running its pickles) or a directory written
    by ``wsl convert-hypernet`` — as :class:`~wsl.hyper.published.PublishedGHN2` / ``PublishedGHN3``."""
    from .ghn import HYPERNETS
    from .published.convert import is_converted
    from .published.predict import is_published, load_published

    if is_converted(name_or_path):
        return load_published(name_or_path)
    try:
        cfg_path, w_path = _files(name_or_path)
    except HypernetError:
        if is_published(name_or_path):
            return load_published(name_or_path)
        raise
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise HypernetError(f"{cfg_path}: not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT:
        raise HypernetError(f"{cfg_path}: not a wsl hypernetwork config (format={cfg.get('format')!r})")
    if int(cfg.get("version", 0)) > VERSION:
        raise HypernetError(f"{cfg_path}: written by a newer wsl (format version {cfg['version']}); upgrade wsl")
    kind = cfg.get("kind")
    if kind not in HYPERNETS:
        raise HypernetError(f"{cfg_path}: unknown hypernetwork kind {kind!r}; known: {sorted(HYPERNETS)}")
    try:
        model = HYPERNETS[kind](**cfg["config"])
    except TypeError as e:
        raise HypernetError(f"{cfg_path}: config does not fit {HYPERNETS[kind].__name__} ({e})") from None
    state = load_file(str(w_path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or bad:
        raise HypernetError(
            f"{w_path} does not match the {kind} config in {cfg_path}: missing {missing[:3]}, unexpected "
            f"{extra[:3]}, shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:3]]}. "
            "Save config and weights together with save_pretrained()."
        )
    model.load_state_dict(state)
    model.metadata = cfg.get("metadata", {})
    return model.eval()
