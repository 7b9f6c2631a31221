"""Safe, explicit loading of model checkpoints.

This module turns the many on-disk shapes a set of model weights can take into
one thing: an ordered, flat ``dict[str, torch.Tensor]``.  Supported inputs:

* ``.safetensors`` files;
* ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, ``.ckpt`` or any other
  suffix), loaded with ``weights_only=True`` unless the caller explicitly opts
  in to unpickling arbitrary objects with ``allow_pickle=True``;
* Hugging Face style directories (``model.safetensors``, sharded
  ``model.safetensors.index.json``, ``pytorch_model.bin`` and sharded
  ``pytorch_model.bin.index.json``);
* training checkpoints that wrap the weights (``{"state_dict": ...}``,
  ``{"model": ..., "epoch": 3}``, ...), ``DataParallel`` ``module.`` prefixes
  and nested dictionaries of tensors.

Every failure raises :class:`~wsl.io.validate.CheckpointError` with a message
that names the file (and tensor, where relevant) and says what to do about it.
Checking the loaded weights against a model (keys, shapes) and for NaN/Inf
lives in :mod:`wsl.io.validate`.
"""

from __future__ import annotations

import difflib
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from wsl.io.validate import (
    CheckpointError,
    _check_finite,
    _plural,
    _strip_common_prefix,
    _truncate,
)

__all__ = ["load_checkpoint"]

PathLike = Union[str, os.PathLike[str]]
MapLocation = Union[
    str, torch.device, Callable[..., Any], Mapping[str, str], None
]

#: Keys under which training checkpoints commonly nest the model weights, in
#: the order they are tried.
WRAPPER_KEYS: tuple[str, ...] = (
    "state_dict",
    "model",
    "model_state_dict",
    "module",
    "net",
    "weights",
    "params",
)

#: File names looked for, in order, when ``load_checkpoint`` is given a
#: directory (Hugging Face ``save_pretrained`` layout).
HF_CANDIDATES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json")
_MAX_UNWRAP_DEPTH = 16

# Fragments of the errors torch's weights-only unpickler raises when a file is
# a well-formed pickle that needs to import/call arbitrary Python code.  Other
# weights-only failures ("Unsupported operand 205", ...) mean the bytes are not
# a valid pickle at all, i.e. the file is corrupt.
_NEEDS_CODE_MARKERS = (
    "was not an allowed global",
    "whose module",
    "Can only create new object",
    "Trying to call reduce for unrecognized function",
    "Can only build",
    "must be imported to load",
    "Cannot use ``weights_only=True``",
)



# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def load_checkpoint(
    path: PathLike,
    *,
    allow_pickle: bool = False,
    check_finite: bool = True,
    map_location: MapLocation = "cpu",
) -> dict[str, torch.Tensor]:
    """Load the weights stored at ``path`` as an ordered, flat state_dict.

    Args:
        path: A checkpoint file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``,
            ``.ckpt`` or any other ``torch.save`` file) or a Hugging Face style
            directory containing ``model.safetensors``,
            ``model.safetensors.index.json``, ``pytorch_model.bin`` or
            ``pytorch_model.bin.index.json`` (tried in that order).
        allow_pickle: ``torch.save`` files are loaded with
            ``torch.load(..., weights_only=True)``, which refuses pickles that
            would import or call arbitrary Python code.  Set this to ``True``
            to fall back to full unpickling -- only for files you trust, as
            loading a malicious file this way can execute arbitrary code.
        check_finite: Raise if any floating-point (or complex) tensor contains
            NaN or +/-Inf values.
        map_location: Device to place the tensors on (``str`` or
            :class:`torch.device`).  A callable or ``dict`` is forwarded to
            :func:`torch.load` unchanged (not supported for safetensors).

    Returns:
        A ``dict`` mapping dotted parameter/buffer names to tensors.  Wrapper
        dictionaries (see :data:`WRAPPER_KEYS`, first match wins) are unwrapped,
        a ``module.`` prefix shared by every key is removed, and nested
        dictionaries of tensors are flattened with dotted keys.  For
        ``torch.save`` files the saved key order is preserved; safetensors
        files do not record an order, so theirs is the file's own.

    Raises:
        CheckpointError: if the path does not exist, the file is truncated,
            corrupt, empty or needs code execution to load (without
            ``allow_pickle``), holds no tensors or non-tensor entries inside
            the state_dict, or (with ``check_finite``) contains NaN/Inf.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if isinstance(map_location, (str, torch.device)):
        target: torch.device | None = torch.device(map_location)
        load_location: MapLocation = "cpu"
    else:
        target = None
        load_location = map_location

    if path.is_dir():
        state_dict = _load_directory(path, allow_pickle, check_finite, load_location)
    elif path.exists():
        state_dict = _load_file(path, allow_pickle, load_location)
        if check_finite:
            _check_finite(state_dict, path)
    else:
        raise CheckpointError(_missing_path_message(path))

    state_dict = _strip_common_prefix(state_dict)
    if not state_dict:
        raise CheckpointError(
            f"Checkpoint '{path}' contains no tensors. Check that it was saved "
            "from a model with parameters (e.g. torch.save(model.state_dict(), "
            "path)) and that the right file was passed."
        )
    if target is not None and target.type != "cpu":
        state_dict = _move(state_dict, target)
    return state_dict



# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _load_file(
    path: Path,
    allow_pickle: bool,
    map_location: MapLocation,
) -> dict[str, torch.Tensor]:
    """Load one checkpoint file and normalise it to a flat state_dict.

    The common ``module.`` prefix is *not* stripped here, so that shards of a
    sharded checkpoint keep the names their index refers to.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(
            f"Could not read checkpoint '{path}': {exc}. Check that the file "
            "exists and is readable."
        ) from exc
    if size == 0:
        raise CheckpointError(
            f"Checkpoint '{path}' is empty (0 bytes); it was probably not saved "
            "completely. Re-save or re-download it."
        )
    if path.suffix == ".safetensors" or _looks_like_safetensors(path, size):
        raw: Any = _read_safetensors(path, map_location)
    else:
        raw = _read_torch(path, allow_pickle, map_location)
    return _to_state_dict(raw, path)


def _looks_like_safetensors(path: Path, size: int) -> bool:
    """Sniff the safetensors layout: u64 header length, then a JSON object."""
    if size < 10:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_len <= size - 8


def _read_safetensors(path: Path, map_location: MapLocation) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU (or a given device string)."""
    from safetensors.torch import load_file

    if map_location is None:
        device = "cpu"
    elif isinstance(map_location, (str, torch.device)):
        device = str(torch.device(map_location))
    else:
        raise CheckpointError(
            f"Cannot apply a {type(map_location).__name__} map_location to "
            f"safetensors file '{path}'; pass a device string or torch.device "
            "instead."
        )
    try:
        return load_file(str(path), device=device)
    except OSError as exc:
        raise CheckpointError(
            f"Could not read checkpoint '{path}': {exc}. Check that the file "
            "is readable."
        ) from exc
    except Exception as exc:  # SafetensorError, RuntimeError, ...
        raise CheckpointError(_corrupt_message(path, exc, "safetensors")) from exc


def _read_torch(path: Path, allow_pickle: bool, map_location: MapLocation) -> Any:
    """Read a ``torch.save`` file, refusing code execution unless allowed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(
            f"Could not read checkpoint '{path}': {exc}. Check that the file "
            "is readable."
        ) from exc
    except Exception as exc:
        if not (_needs_code_execution(exc) or _is_wellformed_pickle(path)):
            raise CheckpointError(_device_or_corrupt_message(path, exc)) from exc
        if not allow_pickle:
            found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
            detail = f" (it references '{found.group(1)}')" if found else ""
            what = ("is a plain pickle file (written by pickle.dump, not torch.save): reading it"
                    if not zipfile.is_zipfile(path) else f"contains pickled Python objects{detail}, so loading it")
            raise CheckpointError(
                f"Checkpoint '{path}' {what} needs arbitrary code execution, which is refused "
                "by default. If -- and only if -- you trust the source of this "
                "file, pass allow_pickle=True (wsl command line: --allow-pickle) to load it anyway; "
                "better, re-save just the weights (torch.save(model.state_dict(), ...) "
                "or safetensors)."
            ) from None
    try:
        if not zipfile.is_zipfile(path) and _is_wellformed_pickle(path):
            with open(path, "rb") as f:  # pickle.dump output: torch.load reads only torch.save's formats
                return pickle.load(f)  # noqa: S301  the caller allowed code execution
        return torch.load(path, map_location=map_location, weights_only=False)
    except OSError as exc:
        raise CheckpointError(
            f"Could not read checkpoint '{path}': {exc}. Check that the file "
            "is readable."
        ) from exc
    except Exception as exc:  # also ImportError/AttributeError for missing classes
        if isinstance(exc, (ImportError, AttributeError)):
            raise CheckpointError(
                f"Checkpoint '{path}' was loaded with allow_pickle=True (--allow-pickle) but "
                f"refers to Python code that is not available here ({exc}). "
                "Import the module that defines the pickled classes first, or "
                "re-save the checkpoint as a plain state_dict."
            ) from exc
        raise CheckpointError(_device_or_corrupt_message(path, exc)) from exc


def _is_wellformed_pickle(path: Path) -> bool:
    """Whether the pickle inside a ``torch.save`` zip parses (without running anything).

    The weights-only unpickler rejects some valid pickles outright ("Unsupported operand" for protocol-5
    opcodes, for example); those need the full unpickler, which is a code-execution decision, not a
    corrupt file.
    """
    import pickletools

    try:
        if not zipfile.is_zipfile(path):  # one complete pickle stream: pickle.dump output
            if _is_legacy_torch_save(path):  # several pickles and raw storage bytes: left to torch.load
                return False
            with open(path, "rb") as f:
                for _ in pickletools.genops(f):
                    pass
                return f.read(1) == b""
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                return False
            data = zf.read(names[0])
        for _ in pickletools.genops(data):
            pass
        return True
    except Exception:  # noqa: BLE001  anything unreadable is simply not a well-formed pickle
        return False


def _is_legacy_torch_save(path: Path) -> bool:
    """Whether a non-zip file starts like torch.save's legacy format: protocol 2, then the magic number."""
    with open(path, "rb") as f:
        return f.read(3) == b"\x80\x02\x8a"


def _needs_code_execution(exc: BaseException) -> bool:
    """Whether a weights-only load failed because the pickle needs code."""
    if not isinstance(exc, (pickle.UnpicklingError, RuntimeError)):
        return False
    message = str(exc)
    return any(marker in message for marker in _NEEDS_CODE_MARKERS)


def _device_or_corrupt_message(path: Path, exc: BaseException) -> str:
    message = str(exc)
    if isinstance(exc, RuntimeError) and "deserialize object on" in message:
        return (
            f"Checkpoint '{path}' holds tensors saved on a device that is not "
            f"available here ({_first_line(message)}). Pass map_location='cpu' "
            "(the default) or another available device."
        )
    return _corrupt_message(path, exc, "torch.save")


def _corrupt_message(path: Path, exc: BaseException, kind: str) -> str:
    message = str(exc)
    # torch wraps weights-only unpickler failures in advice to retry with
    # weights_only=False, which is wrong for a corrupt file: keep the cause.
    marker = "WeightsUnpickler error:"
    if marker in message:
        message = message.split(marker, 1)[1]
    detail = _first_line(message) or "no details"
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return (
        f"Could not load checkpoint '{path}' as a {kind} file: it seems "
        f"truncated or corrupt ({type(exc).__name__}: {detail}). Re-download "
        "or re-save the file; if it is in a different format, give it the "
        "matching suffix (.safetensors for safetensors files)."
    )


# --------------------------------------------------------------------------
# Hugging Face style directories
# --------------------------------------------------------------------------


def _load_directory(
    directory: Path,
    allow_pickle: bool,
    check_finite: bool,
    map_location: MapLocation,
) -> dict[str, torch.Tensor]:
    """Load a ``save_pretrained``-style directory (single file or sharded)."""
    for name in HF_CANDIDATES:
        candidate = directory / name
        if not candidate.is_file():
            continue
        if name.endswith(".index.json"):
            return _load_sharded(candidate, allow_pickle, check_finite, map_location)
        state_dict = _load_file(candidate, allow_pickle, map_location)
        if check_finite:
            _check_finite(state_dict, candidate)
        return state_dict

    others = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and p.name.endswith(_CHECKPOINT_SUFFIXES)
    )
    found = (
        f" It does contain: {', '.join(_truncate(others))} -- pass one of those "
        "files directly."
        if others
        else " The directory has no checkpoint-like files."
    )
    raise CheckpointError(
        f"Directory '{directory}' is not a recognised checkpoint directory: "
        f"looked for {', '.join(HF_CANDIDATES)} and found none.{found}"
    )


def _load_sharded(
    index_path: Path,
    allow_pickle: bool,
    check_finite: bool,
    map_location: MapLocation,
) -> dict[str, torch.Tensor]:
    """Load every shard named in an HF ``*.index.json`` and merge them."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"Could not parse shard index '{index_path}': {exc}. The file seems "
            "truncated or corrupt; re-download or re-save the checkpoint."
        ) from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(
            f"Shard index '{index_path}' has no valid 'weight_map' (a non-empty "
            "mapping of tensor names to shard file names). Re-save the "
            "checkpoint, e.g. with save_pretrained()."
        )

    directory = index_path.parent.resolve()
    shards: dict[str, list[str]] = {}
    for tensor_name, shard_name in weight_map.items():
        shards.setdefault(shard_name, []).append(tensor_name)

    merged: dict[str, torch.Tensor] = {}
    for shard_name, expected_names in shards.items():
        shard_path = (directory / shard_name).resolve()
        if directory not in shard_path.parents:
            raise CheckpointError(
                f"Shard index '{index_path}' refers to '{shard_name}', which is "
                "outside the checkpoint directory; refusing to read it. Fix the "
                "index's weight_map."
            )
        if not shard_path.is_file():
            raise CheckpointError(
                f"Shard '{shard_name}' listed in '{index_path}' (for tensor "
                f"'{expected_names[0]}') does not exist; the checkpoint is "
                "incomplete. Download or copy all shard files."
            )
        shard = _load_file(shard_path, allow_pickle, map_location)
        absent = [name for name in expected_names if name not in shard]
        if absent:
            raise CheckpointError(
                f"Shard '{shard_path}' lacks {_plural(len(absent), 'tensor')} "
                f"that '{index_path}' places there: "
                f"{', '.join(_truncate(absent))}. The shard seems truncated or "
                "does not belong to this index; re-download the checkpoint."
            )
        if check_finite:
            _check_finite(shard, shard_path)
        for name, tensor in shard.items():
            if name in merged:
                raise CheckpointError(
                    f"Tensor '{name}' appears in more than one shard of "
                    f"'{index_path}' (again in '{shard_path}'). The shards do "
                    "not belong together; re-download the checkpoint."
                )
            merged[name] = tensor
    return merged


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


def _to_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap training-checkpoint wrappers and flatten to ``name -> tensor``."""
    obj = raw
    trail: list[str] = []
    for _ in range(_MAX_UNWRAP_DEPTH):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            where = f" under {_trail_text(trail)}" if trail else ""
            raise CheckpointError(
                f"Checkpoint '{path}' holds a {type(obj).__name__}{where}, not a "
                "mapping of tensor names to tensors. Save model.state_dict() "
                "(or a dict containing it under 'state_dict') instead."
            )
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next(
            (
                k
                for k in WRAPPER_KEYS
                if k in obj and isinstance(obj[k], (Mapping, nn.Module))
            ),
            None,
        )
        if key is None:
            break
        obj = obj[key]
        trail.append(key)

    flat: dict[str, torch.Tensor] = {}
    _flatten(obj, "", flat, path, trail)
    return flat


def _flatten(
    obj: Mapping[Any, Any],
    prefix: str,
    out: dict[str, torch.Tensor],
    path: Path,
    trail: list[str],
) -> None:
    for raw_key, value in obj.items():
        name = f"{prefix}{raw_key}"
        if isinstance(value, torch.Tensor):
            if name in out:
                raise CheckpointError(
                    f"Checkpoint '{path}' defines tensor '{name}' twice after "
                    "flattening nested dictionaries. Rename the clashing "
                    "entries and re-save."
                )
            if value.requires_grad:
                value = value.detach()
            out[name] = value
        elif isinstance(value, Mapping):
            _flatten(value, f"{name}.", out, path, trail)
        else:
            where = f" (under {_trail_text(trail)})" if trail else ""
            raise CheckpointError(
                f"Checkpoint '{path}': state_dict entry '{name}'{where} is a "
                f"{type(value).__name__}, not a tensor. Remove non-tensor "
                "entries from the state_dict, or save the weights under a "
                "'state_dict' key next to other metadata."
            )


def _move(state_dict: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move tensors to ``device``, keeping tensors shared by identity shared."""
    moved: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        key = id(tensor)
        if key not in moved:
            moved[key] = tensor.to(device)
        out[name] = moved[key]
    return out


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


def _missing_path_message(path: Path) -> str:
    hint = ""
    parent = path.parent
    if parent.is_dir():
        try:
            siblings = [p.name for p in parent.iterdir()]
        except OSError:
            siblings = []
        close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.6)
        if close:
            hint = f" Did you mean: {', '.join(close)}?"
    else:
        hint = f" (its directory '{parent}' does not exist either)."
    return (
        f"No such file or directory: checkpoint '{path}' does not exist. "
        f"Check the path.{hint}"
    )


def _trail_text(trail: list[str]) -> str:
    return "".join(f"[{k!r}]" for k in trail)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""
