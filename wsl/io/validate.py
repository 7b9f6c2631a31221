"""Validation of model checkpoints: key/shape checks and finiteness.

:func:`check_state_dict` compares a flat ``dict[str, torch.Tensor]`` (for
example the result of :func:`wsl.io.checkpoint.load_checkpoint`) with a model
or a reference mapping of names to tensors/shapes, and reports every missing
key, unexpected key and shape mismatch in one :class:`CheckpointError`.  A
``module.`` prefix shared by every key (``nn.DataParallel``) is ignored.
``_check_finite`` rejects state_dicts whose floating-point or complex tensors
hold NaN or +/-Inf values.

This module also defines :class:`CheckpointError` and the small helpers shared
with :mod:`wsl.io.checkpoint`, which imports them from here (never the other
way round, so there is no import cycle).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

__all__ = ["CheckpointError", "check_state_dict"]

ShapeLike = Union[torch.Tensor, torch.Size, Sequence[int]]

_DP_PREFIX = "module."
_MAX_LISTED = 10
_FINITE_CHUNK = 1 << 24


class CheckpointError(ValueError):
    """A checkpoint could not be loaded or does not match what was expected.

    The message always names the offending file (or the ``source`` passed to
    :func:`check_state_dict`) and suggests how to fix the problem.
    """


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def check_state_dict(
    state_dict: Mapping[str, ShapeLike],
    model_or_reference: nn.Module | Mapping[str, ShapeLike],
    *,
    source: str = "state_dict",
) -> None:
    """Check that ``state_dict`` has exactly the keys and shapes expected.

    Every problem is collected -- missing keys, unexpected keys and shape
    mismatches -- and reported in a single :class:`CheckpointError`.  Dtype
    differences are accepted.  A ``module.`` prefix shared by every key (as
    written by ``nn.DataParallel``) is ignored on either side.

    Args:
        state_dict: Mapping of names to tensors (or shapes) to validate, e.g.
            the result of :func:`~wsl.io.checkpoint.load_checkpoint`.
        model_or_reference: The model the weights are meant for (its
            ``state_dict()`` is the reference) or a mapping of names to
            tensors, :class:`torch.Size` or tuples of ints.
        source: Where ``state_dict`` came from (typically the file path); used
            in the error message.

    Raises:
        CheckpointError: if any key is missing or unexpected, or any shape
            differs.
    """
    if isinstance(model_or_reference, nn.Module):
        reference: Mapping[str, ShapeLike] = model_or_reference.state_dict()
        target_name = type(model_or_reference).__name__
    elif isinstance(model_or_reference, Mapping):
        reference = model_or_reference
        target_name = "the reference"
    else:
        raise TypeError(
            "model_or_reference must be an nn.Module or a mapping of names to "
            f"tensors/shapes, got {type(model_or_reference).__name__}"
        )

    got = _strip_common_prefix(dict(state_dict))
    expected = _strip_common_prefix(dict(reference))

    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, ref_value in expected.items():
        if key in got:
            want = _shape_of(ref_value, key, target_name)
            have = _shape_of(got[key], key, source)
            if want != have:
                mismatched.append((key, want, have))

    if not (missing or unexpected or mismatched):
        return

    counts = []
    if missing:
        counts.append(_plural(len(missing), "missing key"))
    if unexpected:
        counts.append(_plural(len(unexpected), "unexpected key"))
    if mismatched:
        counts.append(_plural(len(mismatched), "shape mismatch", "shape mismatches"))
    lines = [
        f"State dict from '{source}' does not match {target_name}: "
        + ", ".join(counts)
        + "."
    ]
    if missing:
        lines.append("  missing keys (expected but not in the checkpoint):")
        lines.extend(_bullet(missing))
    if unexpected:
        lines.append("  unexpected keys (in the checkpoint but not expected):")
        lines.extend(_bullet(unexpected))
    if mismatched:
        lines.append("  shape mismatches:")
        lines.extend(
            _bullet(
                f"{k}: expected {_fmt_shape(w)}, got {_fmt_shape(h)}"
                for k, w, h in mismatched
            )
        )
    hint = _prefix_hint(missing, unexpected)
    if hint:
        lines.append(hint)
    lines.append(
        "Make sure the checkpoint was saved from the same architecture and "
        "configuration (layer sizes, number of layers) as the model it is "
        "loaded into, or rename/drop keys before loading."
    )
    raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


def _strip_common_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove a ``module.`` prefix (``nn.DataParallel``) shared by all keys."""
    while state_dict and all(
        isinstance(k, str) and k.startswith(_DP_PREFIX) and len(k) > len(_DP_PREFIX)
        for k in state_dict
    ):
        state_dict = {k[len(_DP_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


# --------------------------------------------------------------------------
# Finiteness
# --------------------------------------------------------------------------


def _check_finite(state_dict: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Raise if any floating/complex tensor contains NaN or Inf."""
    bad: list[str] = []
    for name, tensor in state_dict.items():
        nan, inf = _count_non_finite(tensor)
        if nan or inf:
            parts = []
            if nan:
                parts.append(f"{nan} NaN")
            if inf:
                parts.append(f"{inf} Inf")
            bad.append(
                f"'{name}' ({' and '.join(parts)} of {tensor.numel()} values)"
            )
    if bad:
        raise CheckpointError(
            f"Checkpoint '{path}' has non-finite values in "
            f"{_plural(len(bad), 'tensor')}: {', '.join(_truncate(bad))}. "
            "The weights may come from a diverged run or a corrupt file; pass "
            "check_finite=False (load_checkpoint / to_graph; CLI: --allow-non-finite) to use them anyway."
        )


def _count_non_finite(tensor: torch.Tensor) -> tuple[int, int]:
    """Return ``(num_nan, num_inf)`` for a floating/complex tensor, else zeros."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0, 0
    if tensor.device.type == "meta":
        return 0, 0
    if tensor.is_sparse:
        values = tensor.coalesce().values()
    elif tensor.layout != torch.strided:
        values = tensor.values()
    else:
        values = tensor
    flat = values.reshape(-1)
    nan = inf = 0
    for chunk in flat.split(_FINITE_CHUNK):
        try:
            nan += int(torch.isnan(chunk).sum())
            inf += int(torch.isinf(chunk).sum())
        except (RuntimeError, NotImplementedError):  # e.g. float8 dtypes
            wide = chunk.to(torch.complex64 if chunk.is_complex() else torch.float32)
            nan += int(torch.isnan(wide).sum())
            inf += int(torch.isinf(wide).sum())
    return nan, inf


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """Spot a systematic prefix difference between the two key sets."""
    if not missing or not unexpected:
        return ""
    missing_set = set(missing)
    for extra, short in ((unexpected, missing_set), (missing, set(unexpected))):
        heads = {k.split(".", 1)[0] for k in extra if "." in k}
        if len(heads) == 1:
            head = heads.pop()
            cut = len(head) + 1
            if all(k.startswith(head + ".") for k in extra) and any(
                k[cut:] in short for k in extra
            ):
                side = "checkpoint" if extra is unexpected else "model"
                return (
                    f"  hint: the {side} keys carry an extra '{head}.' prefix; "
                    "strip it before comparing."
                )
    return ""


def _shape_of(value: ShapeLike, key: str, owner: str) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (torch.Size, tuple, list)) and all(
        isinstance(d, int) for d in value
    ):
        return tuple(value)
    raise CheckpointError(
        f"Entry '{key}' of {owner} is a {type(value).__name__}, not a tensor or "
        "shape; pass a mapping of names to tensors (or shapes)."
    )


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _truncate(items: Iterable[str], limit: int = _MAX_LISTED) -> list[str]:
    items = list(items)
    if len(items) <= limit:
        return items
    return items[:limit] + [f"... and {len(items) - limit} more"]


def _bullet(items: Iterable[str]) -> list[str]:
    return [f"    {item}" for item in _truncate(items)]
