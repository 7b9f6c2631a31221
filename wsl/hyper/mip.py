"""Magnitude Invariant Parametrizations (MIP) for hypernetworks.

Paper: J. J. Gonzalez Ortiz, J. Guttag, A. V. Dalca, "Magnitude Invariant Parametrizations Improve Hypernetwork
Learning", ICLR 2024 (arXiv:2304.07645). Reference code: the ``hyperlight`` package.

A hypernetwork ``h(γ; ω)`` maps a conditioning input ``γ ∈ [0, 1]^k`` (a loss weighting, a regularisation
strength, a task parameter) to the weights ``θ`` of a primary network. With a plain MLP, ``θ`` is roughly
proportional to the input magnitude (``h(0) = bias terms only``), which makes the primary network's weight scale
— and so its gradients — depend on ``γ``, and slows or breaks optimisation. MIP removes that proportionality:

(a) **constant-norm input encoding** :class:`ConstantNormEncoding`:
    ``E_L2(γ) = [cos(πγ/2), sin(πγ/2)]`` so ``‖E(γ)‖₂ = √k`` for every ``γ`` (the paper's choice); or
    ``E_L1(γ) = [γ, 1 − γ]`` with ``‖E(γ)‖₁ = k`` on ``[0, 1]^k``.
(b) **residual outputs** :class:`ResidualHead`: ``θ = θ₀ + Δθ(γ)``, where ``θ₀`` are *independent* learnable
    weights (a visible, named parameter tree ``theta0.<param name>``, initialised from the primary network's own
    initialisation) and ``Δθ`` is the hypernetwork head's output, initialised small so that at step 0 the
    primary network is a normally initialised network for every ``γ``.

:class:`MIPHypernetwork` assembles both around an MLP; ``mip=False`` gives the standard hypernetwork used as the
paper's baseline (raw ``γ`` in, ``θ`` out directly, PyTorch default ``Linear`` init) for comparisons.

Using MIP in another hypernetwork (e.g. a GHN decoder): encode scalar conditioning inputs with
:class:`ConstantNormEncoding`, and produce parameters as :func:`residual` ``(theta0, delta)`` where ``delta`` comes
from a final layer initialised small (``ResidualHead`` or :func:`init_small_`) and ``theta0`` is either a learnable
tree (one fixed architecture) or the target model's own fresh initialisation (unseen architectures).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from wsl.hyper.external import ExternalParams, externalize

__all__ = [
    "ConstantNormEncoding",
    "ExternalParams",
    "MIPHypernetwork",
    "ResidualHead",
    "constant_norm_encode",
    "default_init",
    "externalize",
    "init_small_",
    "residual",
]

EncodingMode = Literal["l2", "l1"]


def constant_norm_encode(gamma: Tensor, mode: EncodingMode = "l2") -> Tensor:
    """Encode ``γ ∈ [0, 1]^k`` at constant norm (MIP input encoding).

    ``"l2"``: ``[cos(πγ/2), sin(πγ/2)]`` (``‖·‖₂ = √k``); ``"l1"``: ``[γ, 1 − γ]`` (``‖·‖₁ = k``).

    Shapes:
        gamma: ``[..., k]`` → ``[..., 2k]``.
    """
    if mode == "l2":
        a = 0.5 * math.pi * gamma
        return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)
    if mode == "l1":
        return torch.cat([gamma, 1.0 - gamma], dim=-1)
    raise ValueError(f"constant_norm_encode: mode must be 'l2' or 'l1', got {mode!r}")


class ConstantNormEncoding(nn.Module):
    """MIP input encoding as a module, with range rescaling and checking.

    Inputs in ``[low, high]`` (per dimension, scalars or ``[k]`` tensors) are mapped to ``[0, 1]`` and encoded
    with :func:`constant_norm_encode`. Inputs outside the range (beyond ``1e-6``) raise ``ValueError``, since the
    norm is constant only inside it (``check_range=False`` skips the check and its host sync).

    Args:
        in_dim: ``k``, the number of conditioning inputs.
        mode: ``"l2"`` (paper default, cos/sin) or ``"l1"`` (``[γ, 1−γ]``).
        low, high: the range of the raw inputs.
        check_range: raise on inputs outside ``[low, high]``.

    Shapes:
        input: ``[..., k]`` → output ``[..., 2k]`` (``out_dim = 2k``).
    """

    def __init__(self, in_dim: int, mode: EncodingMode = "l2", low: float | Tensor = 0.0,
                 high: float | Tensor = 1.0, check_range: bool = True) -> None:
        super().__init__()
        if mode not in ("l2", "l1"):
            raise ValueError(f"ConstantNormEncoding: mode must be 'l2' or 'l1', got {mode!r}")
        if in_dim < 1:
            raise ValueError(f"ConstantNormEncoding: in_dim must be >= 1, got {in_dim}")
        low_t, high_t = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if bool((high_t <= low_t).any()):
            raise ValueError(f"ConstantNormEncoding: need low < high, got low={low}, high={high}")
        self.in_dim, self.mode, self.out_dim, self.check_range = in_dim, mode, 2 * in_dim, check_range
        self.register_buffer("low", low_t.expand(in_dim).clone(), persistent=False)
        self.register_buffer("high", high_t.expand(in_dim).clone(), persistent=False)

    def forward(self, gamma: Tensor) -> Tensor:
        if gamma.shape[-1:] != (self.in_dim,):
            raise ValueError(
                f"ConstantNormEncoding: expected inputs of shape [..., {self.in_dim}], got {tuple(gamma.shape)}"
            )
        z = (gamma - self.low) / (self.high - self.low)
        if self.check_range and bool(((z < -1e-6) | (z > 1 + 1e-6)).any()):
            raise ValueError(
                f"ConstantNormEncoding: inputs must lie in [low, high] = [{self.low.tolist()}, {self.high.tolist()}]"
                f" (got min {gamma.min().item():.4g}, max {gamma.max().item():.4g}); set low/high to the input range"
            )
        return constant_norm_encode(z, self.mode)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, mode={self.mode!r}"


def residual(theta0: Mapping[str, Tensor], delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """MIP output parametrisation ``θ = θ₀ + Δθ`` per parameter name (``delta`` may carry leading batch dims)."""
    if set(theta0) != set(delta):
        raise KeyError(f"residual: names differ; only in theta0 {set(theta0) - set(delta)}, "
                       f"only in delta {set(delta) - set(theta0)}")
    return {k: theta0[k] + delta[k] for k in delta}


@torch.no_grad()
def init_small_(weight: Tensor, target_scale: float, in_dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Init a head block so that its outputs have RMS ``≈ target_scale`` for unit-RMS features of width ``in_dim``."""
    return weight.normal_(0.0, target_scale / math.sqrt(in_dim), generator=generator)


def default_init(shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
    """PyTorch-default-like init from a shape only: kaiming-uniform(a=√5) for ≥2-D, zeros for 0/1-D."""
    t = torch.zeros(tuple(shape))
    if t.dim() >= 2:
        nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)
    return t


class _ParamTree(nn.Module):
    """Holds ``nn.Parameter`` s under dotted names (``"0.weight"`` → submodule ``0``, parameter ``weight``)."""

    def __init__(self, values: Mapping[str, Tensor]) -> None:
        super().__init__()
        self._names = list(values)
        for name, v in values.items():
            *path, leaf = name.split(".")
            mod: nn.Module = self
            for part in path:
                if part not in mod._modules:
                    mod.add_module(part, nn.Module())
                mod = mod._modules[part]  # type: ignore[assignment]
            mod.register_parameter(leaf, nn.Parameter(v.detach().clone()))

    def as_dict(self) -> dict[str, Tensor]:
        """``{dotted name: parameter}`` in construction order."""
        return {n: self.get_parameter(n) for n in self._names}


class ResidualHead(nn.Module):
    """Hypernetwork output head: ``θ[name] = θ₀[name] + Δθ[name]`` (MIP) or ``θ = head(h)`` (``residual=False``).

    One ``Linear(in_dim, Σ numel)`` is split into named blocks and reshaped. With ``residual=True`` the block of
    parameter ``p`` is initialised with ``init_small_`` so ``RMS(Δθ_p) ≈ delta_scale · RMS(θ₀_p)`` (for
    zero-initialised ``θ₀_p``, e.g. biases, the mean RMS of the non-zero blocks is used) and the head bias is zero;
    ``θ₀`` lives in ``self.theta0`` and shows up in ``named_parameters()`` as ``theta0.<name>``.
    With ``residual=False`` the Linear keeps PyTorch's default init (the standard hypernetwork baseline).

    Args:
        in_dim: feature width of the hypernetwork trunk.
        init: ``{name: Tensor}`` initial ``θ₀`` (also fixes names/shapes), or ``{name: shape}``
            (``θ₀`` from :func:`default_init`).
        residual: MIP residual outputs (``True``) or direct outputs (``False``).
        delta_scale: relative size of ``Δθ`` at init (``residual=True`` only).
        generator: randomness for the head (and ``θ₀`` when only shapes are given).

    Shapes:
        input ``[B, in_dim]`` → ``{name: [B, *shape]}``.
    """

    def __init__(self, in_dim: int, init: Mapping[str, Tensor | Sequence[int]], residual: bool = True,
                 delta_scale: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not init:
            raise ValueError("ResidualHead: init must name at least one parameter")
        values = {k: (v.detach().float() if isinstance(v, Tensor) else default_init(v, generator))
                  for k, v in init.items()}
        self.shapes: dict[str, torch.Size] = {k: v.shape for k, v in values.items()}
        self.residual = residual
        sizes = [v.numel() for v in values.values()]
        self.linear = nn.Linear(in_dim, sum(sizes))
        self._sizes = sizes
        if residual:
            self.theta0 = _ParamTree(values)
            rms = {k: float(v.pow(2).mean().sqrt()) if v.numel() else 0.0 for k, v in values.items()}
            nonzero = [r for r in rms.values() if r > 0]
            fallback = sum(nonzero) / len(nonzero) if nonzero else 1.0
            with torch.no_grad():
                self.linear.bias.zero_()
                for block, r in zip(torch.split(self.linear.weight, sizes, dim=0), rms.values()):
                    init_small_(block, delta_scale * (r if r > 0 else fallback), in_dim, generator)
        else:
            self.theta0 = None
            if generator is not None:  # same distribution as nn.Linear's default, but reproducible
                nn.init.kaiming_uniform_(self.linear.weight, a=math.sqrt(5), generator=generator)
                nn.init.uniform_(self.linear.bias, -1 / math.sqrt(in_dim), 1 / math.sqrt(in_dim), generator=generator)

    def delta(self, h: Tensor) -> dict[str, Tensor]:
        """Raw head outputs per name (``Δθ`` for MIP, ``θ`` otherwise). Shapes: ``[B, in_dim]`` → ``[B, *shape]``."""
        flat = self.linear(h)
        return {k: blk.reshape(*h.shape[:-1], *shape)
                for (k, shape), blk in zip(self.shapes.items(), torch.split(flat, self._sizes, dim=-1))}

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        out = self.delta(h)
        return residual(self.theta0.as_dict(), out) if self.theta0 is not None else out


class MIPHypernetwork(nn.Module):
    """MLP hypernetwork ``γ ↦ θ`` with Magnitude Invariant Parametrizations (see the module docstring).

    Math (``mip=True``): ``θ(γ) = θ₀ + W_out · φ(… φ(W_1 · E(γ)) …)``, ``E`` the constant-norm encoding.
    ``mip=False``: ``θ(γ) = W_out · φ(… φ(W_1 · γ) …) + b_out`` (standard hypernetwork, default init).

    Args:
        input_dim: ``k``, number of conditioning inputs.
        target: what to predict: an :class:`~wsl.hyper.external.ExternalParams` (its ``initial`` values become
            ``θ₀``), an ``nn.Module`` (all of its parameters, current values), ``{name: Tensor}`` or
            ``{name: shape}``.
        hidden: widths of the hidden layers.
        mip: ``True`` for MIP, ``False`` for the standard baseline.
        encoding: ``"l2"`` or ``"l1"`` (``mip=True`` only).
        input_range: ``(low, high)`` of raw ``γ``; MIP rescales it to ``[0, 1]`` before encoding.
        activation: hidden nonlinearity class.
        delta_scale: relative size of ``Δθ`` at init.
        generator: all randomness of the initialisation.

    Shapes:
        ``gamma: [B, k]`` → ``{name: [B, *shape]}``; ``gamma: [k]`` → ``{name: shape}``.
    """

    def __init__(self, input_dim: int, target: ExternalParams | nn.Module | Mapping[str, Tensor | Sequence[int]],
                 hidden: Sequence[int] = (64, 64), mip: bool = True, encoding: EncodingMode = "l2",
                 input_range: tuple[float, float] = (0.0, 1.0), activation: type[nn.Module] = nn.LeakyReLU,
                 delta_scale: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(target, ExternalParams):
            init: Mapping[str, Tensor | Sequence[int]] = target.initial
        elif isinstance(target, nn.Module):
            init = {k: v.detach() for k, v in target.named_parameters()}
        elif isinstance(target, Mapping):
            init = target
        else:
            raise TypeError("MIPHypernetwork: target must be ExternalParams, an nn.Module or a dict name -> "
                            f"Tensor/shape, got {type(target).__name__}")
        if not init:
            raise ValueError("MIPHypernetwork: target has no parameters to predict")
        self.input_dim, self.mip = input_dim, mip
        if mip:
            self.encoding: nn.Module = ConstantNormEncoding(input_dim, encoding, *input_range)
            width = self.encoding.out_dim
        else:
            self.encoding = nn.Identity()
            width = input_dim
        layers: list[nn.Module] = []
        for h in hidden:
            lin = nn.Linear(width, h)
            if generator is not None:
                gain_a = 0.0 if mip else math.sqrt(5)  # MIP: kaiming (He) init; baseline: PyTorch default
                nn.init.kaiming_uniform_(lin.weight, a=gain_a, generator=generator)
                nn.init.uniform_(lin.bias, -1 / math.sqrt(width), 1 / math.sqrt(width), generator=generator)
            elif mip:
                nn.init.kaiming_uniform_(lin.weight, a=0.0)
            layers += [lin, activation()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = ResidualHead(width, init, residual=mip, delta_scale=delta_scale, generator=generator)

    @property
    def shapes(self) -> dict[str, torch.Size]:
        """``{name: shape}`` of the predicted parameters."""
        return self.head.shapes

    @property
    def theta0(self) -> dict[str, Tensor] | None:
        """The independent weights ``θ₀`` (``None`` when ``mip=False``)."""
        return self.head.theta0.as_dict() if self.head.theta0 is not None else None

    def forward(self, gamma: Tensor) -> dict[str, Tensor]:
        if gamma.dim() == 0 or gamma.shape[-1] != self.input_dim or gamma.dim() > 2:
            raise ValueError(f"MIPHypernetwork: gamma must have shape [B, {self.input_dim}] or "
                             f"[{self.input_dim}], got {tuple(gamma.shape)}")
        return self.head(self.trunk(self.encoding(gamma)))
