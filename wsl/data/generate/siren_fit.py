"""Fast batched fitting of SIRENs to images: hand-written backward pass, preallocated buffers, no autograd.

The local INR zoos fit tens of thousands of SIRENs ``2 -> hidden (x depth) -> 1`` to ``size x size`` images
(``sin(w0 (W x + b))`` hidden layers, a plain linear output), each with its own parameters and Adam state.
What :func:`fit_sirens_on_grid` does differently from an autograd loop:

* **Hand-written gradients.** Forward and backward of every layer are a few batched matmuls and in-place
  elementwise ops on buffers allocated once per chunk: no autograd graph, no per-step allocations (an
  autograd loop spends much of its time in the allocator and page faults at this size).
* **First layer separable on the pixel grid.** Pixel ``(a, c)`` has coordinates ``(y_a, x_c)``, so the first
  layer's phase is ``w0 (W[:,0] y_a + b) + w0 W[:,1] x_c = A_a + B_c`` and
  ``sin(A_a + B_c) = sin A_a cos B_c + cos A_a sin B_c`` (likewise ``cos``). Its sines and cosines are computed
  for ``2 * size`` values per neuron instead of ``size**2``: the transcendental functions, the dominant cost
  of a SIREN step on a CPU, drop by about half.
* **Fast sines.** On the CPU, ``sin`` / ``cos`` go through NumPy's SIMD kernels (several times faster than
  torch's float32 ones on x86 CPUs with AVX-512; same accuracy, within a few ulp).
* **Chunks that stay in cache.** INRs are fitted ``chunk`` at a time (16 by default: a few MB of buffers).
* **Exactly Adam.** The update is ``torch.optim.Adam``'s (bias corrections, ``eps`` outside the square root);
  every INR's loss is its own pixel mean, so INRs never influence each other and the result does not depend on
  the chunking, up to float rounding.

Parameters use the ``nn.Sequential`` layout of :func:`wsl.data.generate.digits_inr.siren`: ``0.weight``,
``0.bias``, ``2.weight``, ... stacked over INRs (``[B, out, in]`` / ``[B, out]``). Coordinates are
:func:`coordinate_grid`'s: ``linspace(-1, 1, size)`` rows (y) then columns (x).
``scripts/bench_zoo.py`` measures INRs/s next to a plain autograd loop.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import Tensor


def _trig(fn: str, x: Tensor, out: Tensor) -> Tensor:
    """``out = sin(x)`` / ``cos(x)``; on the CPU through NumPy, whose SIMD kernels for float32 sin / cos run
    several times faster than torch's here (they are a SIREN step's dominant cost), elsewhere through torch."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous() and out.is_contiguous():
        getattr(np, fn)(x.numpy(), out=out.numpy())
        return out
    return getattr(torch, fn)(x, out=out)


def _layer_keys(params: dict[str, Tensor]) -> list[str]:
    idx = sorted({int(k.split(".")[0]) for k in params})
    missing = [f"{i}.{p}" for i in idx for p in ("weight", "bias") if f"{i}.{p}" not in params]
    if missing or len(idx) < 2:
        raise ValueError(f"SIREN parameters need '<i>.weight' and '<i>.bias' for >= 2 layers; missing {missing}, "
                         f"layers {idx}")
    return [f"{i}.{p}" for i in idx for p in ("weight", "bias")]


def coordinate_grid(size: int) -> Tensor:
    """Pixel centres in ``[-1, 1]^2``, ``[size*size, 2]`` in row-major (y, x) order."""
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)


class _Chunk:
    """Parameters, gradients and Adam moments of a chunk of INRs in flat buffers laid out tensor by tensor, so
    that every per-tensor view ``[b, *shape]`` is contiguous (BLAS writes contiguous outputs at full speed) and
    the Adam update is five whole-buffer operations, exactly ``torch.optim.Adam``'s (bias corrections, ``eps``
    outside the square root, ``weight_decay`` as an L2 term in the gradient)."""

    def __init__(self, params: dict[str, Tensor], keys: list[str]) -> None:
        self.b = params[keys[0]].shape[0]
        self.shapes = [tuple(params[k].shape[1:]) for k in keys]
        self.flat = torch.cat([params[k].detach().float().reshape(-1) for k in keys])
        self.grad = torch.zeros_like(self.flat)
        self.m = torch.zeros_like(self.flat)
        self.v = torch.zeros_like(self.flat)
        self.denom = torch.empty_like(self.flat)

    def views(self, t: Tensor) -> list[Tensor]:
        out, o = [], 0
        for s in self.shapes:
            n = self.b * math.prod(s)
            out.append(t[o:o + n].view(self.b, *s))
            o += n
        return out

    def adam(self, step: int, lr: float, betas: tuple[float, float], eps: float, weight_decay: float = 0.0) -> None:
        b1, b2 = betas
        if weight_decay:
            self.grad.add_(self.flat, alpha=weight_decay)
        self.m.mul_(b1).add_(self.grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(self.grad, self.grad, value=1 - b2)
        torch.sqrt(self.v, out=self.denom).div_(math.sqrt(1 - b2 ** step)).add_(eps)
        self.flat.addcdiv_(self.m, self.denom, value=-lr / (1 - b1 ** step))


class _GridSiren:
    """Forward / backward of a chunk of SIRENs on the ``size x size`` grid, into preallocated buffers."""

    def __init__(self, b: int, size: int, widths: list[int], w0: float) -> None:
        self.size, self.w0, self.p = size, w0, size * size
        h0 = widths[0]
        self.lin = torch.linspace(-1, 1, size)
        self.ab = [torch.empty(b, size, h0) for _ in range(6)]  # A, B, sin A, cos A, sin B, cos B
        # per hidden layer: activations sin(theta) and cos(theta) [b, P, h]
        self.act = [torch.empty(b, self.p, h) for h in widths[:-1]]
        self.cos = [torch.empty(b, self.p, h) for h in widths[:-1]]
        self.grad_h = [torch.empty(b, self.p, h) for h in widths[:-1]]
        self.out = torch.empty(b, self.p, widths[-1])
        self.scaled = [None] * len(widths)

    def forward(self, p: list[Tensor]) -> Tensor:
        """``p`` = [W0, b0, W1, b1, ...]; returns the output ``[b, P, out]`` (buffer)."""
        s, w0 = self.size, self.w0
        a_, b_, sa, ca, sb, cb = self.ab
        w, bias = p[0], p[1]
        torch.addcmul(bias[:, None, :], self.lin[None, :, None], w[:, None, :, 0], out=a_).mul_(w0)
        torch.mul(self.lin[None, :, None], w[:, None, :, 1], out=b_).mul_(w0)
        _trig("sin", a_, sa), _trig("cos", a_, ca), _trig("sin", b_, sb), _trig("cos", b_, cb)
        n, h = a_.shape[0], a_.shape[2]
        act0, cos0 = self.act[0].view(n, s, s, h), self.cos[0].view(n, s, s, h)
        torch.mul(sa[:, :, None, :], cb[:, None, :, :], out=act0).addcmul_(ca[:, :, None, :], sb[:, None, :, :])
        torch.mul(ca[:, :, None, :], cb[:, None, :, :], out=cos0).addcmul_(sa[:, :, None, :], sb[:, None, :, :],
                                                                          value=-1.0)
        for i in range(1, len(self.act)):
            z = self.act[i]
            torch.baddbmm(p[2 * i + 1][:, None, :], self.act[i - 1], p[2 * i].transpose(1, 2), out=z).mul_(w0)
            _trig("cos", z, self.cos[i])
            _trig("sin", z, z)
        last = len(self.act)
        return torch.baddbmm(p[2 * last + 1][:, None, :], self.act[-1], p[2 * last].transpose(1, 2), out=self.out)

    def backward(self, p: list[Tensor], g: list[Tensor], dy: Tensor) -> None:
        """Gradients of ``sum(dy * output)`` into the views ``g`` (same layout as ``p``); ``dy`` is consumed."""
        last = len(self.act)
        torch.bmm(dy.transpose(1, 2), self.act[-1], out=g[2 * last])
        torch.sum(dy, 1, out=g[2 * last + 1])
        dy.mul_(self.w0)  # carries the w0 of d sin(w0 z) / dz into the hidden layer below
        gh = self.grad_h[-1]
        if dy.shape[2] == 1:
            torch.mul(dy, p[2 * last], out=gh)
        else:
            torch.bmm(dy, p[2 * last], out=gh)
        gh.mul_(self.cos[-1])
        for i in range(last - 1, 0, -1):
            torch.bmm(gh.transpose(1, 2), self.act[i - 1], out=g[2 * i])
            torch.sum(gh, 1, out=g[2 * i + 1])
            below = self.grad_h[i - 1]
            torch.bmm(gh, p[2 * i] * self.w0, out=below)
            below.mul_(self.cos[i - 1])
            gh = below
        # first layer, separable again: sum over columns (rows) first, then weight by y_a (x_c)
        n, h = gh.shape[0], gh.shape[2]
        g4 = gh.view(n, self.size, self.size, h)
        rows, cols = g4.sum(2), g4.sum(1)  # [b, size, h]
        lin = self.lin[None, :, None]
        g[0].copy_(torch.stack([torch.sum(rows * lin, 1), torch.sum(cols * lin, 1)], -1))
        torch.sum(rows, 1, out=g[1])


def fit_sirens_on_grid(init: dict[str, Tensor], targets: Tensor, *, w0: float = 30.0, steps: int = 300,
                       lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                       weight_decay: float = 0.0, chunk: int = 16) -> tuple[dict[str, Tensor], Tensor]:
    """Fit one SIREN per target image with Adam on the per-image pixel MSE.

    Args:
        init: stacked initial parameters ``{"0.weight": [B, h, 2], "0.bias": [B, h], ..., "<L>.bias": [B, out]}``.
        targets: ``[B, size, size]`` (``out == 1``) or ``[B, size, size, out]`` images.
        w0, steps, lr, betas, eps: SIREN frequency and Adam settings.
        weight_decay: L2 penalty added to the gradient before Adam's moments (``torch.optim.Adam``'s
            ``weight_decay``, not AdamW's decoupled decay): the published INR zoos were fitted this way, and it
            pulls every INR towards a small-norm solution, away from its random initialization.
        chunk: INRs fitted together (buffers of about ``chunk * size**2 * hidden * 4`` bytes per layer).

    Returns:
        ``(params, mse)``: fitted parameters in ``init``'s layout (float32) and each INR's final MSE ``[B]``.

    Shapes:
        ``P = size * size`` pixels; hidden widths are read from ``init``.
    """
    keys = _layer_keys(init)
    b = init[keys[0]].shape[0]
    if init[keys[0]].shape[-1] != 2:
        raise ValueError(f"fit_sirens_on_grid fits image INRs with 2 input coordinates; '{keys[0]}' has shape "
                         f"{tuple(init[keys[0]].shape)}")
    size = targets.shape[1]
    if targets.shape[0] != b or targets.shape[2] != size:
        raise ValueError(f"targets must be [B={b}, size, size(, out)], got {tuple(targets.shape)}")
    widths = [int(init[k].shape[1]) for k in keys[0::2]]
    flat_t = targets.reshape(b, size * size, -1).float()
    if flat_t.shape[2] != widths[-1]:
        raise ValueError(f"targets have {flat_t.shape[2]} channels but the SIREN outputs {widths[-1]}")
    out = {k: torch.empty(init[k].shape, dtype=torch.float32) for k in keys}
    mse = torch.empty(b)
    with torch.no_grad():
        for lo in range(0, b, chunk):
            hi = min(b, lo + chunk)
            state = _Chunk({k: init[k][lo:hi] for k in keys}, keys)
            net = _GridSiren(hi - lo, size, widths, w0)
            p, g = state.views(state.flat), state.views(state.grad)
            t = flat_t[lo:hi]
            scale = 2.0 / (size * size * widths[-1])
            for step in range(1, steps + 1):
                y = net.forward(p)
                y.sub_(t).mul_(scale)  # d(sum of per-INR mean squared errors) / d output
                net.backward(p, g, y)
                state.adam(step, lr, betas, eps, weight_decay)
            y = net.forward(p)
            mse[lo:hi] = (y - t).square().mean(dim=(1, 2))
            for k, v in zip(keys, p):
                out[k][lo:hi] = v
    return out, mse


def _worker_init() -> None:
    torch.set_num_threads(1)


def _fit_part(init: dict[str, Tensor], targets: Tensor, kwargs: dict) -> tuple[dict[str, Tensor], Tensor]:
    return fit_sirens_on_grid(init, targets, **kwargs)


class SirenPool:
    """Fit INRs in ``workers`` processes side by side (one torch thread each), or here when ``workers == 1``.

    Small batched matmuls and elementwise kernels scale poorly over threads, and OpenMP threads spin-wait when
    the machine is shared; whole processes on disjoint chunks of INRs do not interfere. Use as a context manager
    (the processes start on first use and stop on exit). ``fit`` returns exactly what
    :func:`fit_sirens_on_grid` returns for the whole batch (each INR's fit is independent of the others).
    """

    def __init__(self, workers: int = 1, chunk: int = 16) -> None:
        if workers < 1:
            raise ValueError(f"SirenPool workers must be >= 1, got {workers}")
        self.workers, self.chunk = workers, chunk
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> SirenPool:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def fit(self, init: dict[str, Tensor], targets: Tensor, **kwargs) -> tuple[dict[str, Tensor], Tensor]:
        """:func:`fit_sirens_on_grid` of the whole batch, split over the workers."""
        kwargs.setdefault("chunk", self.chunk)
        b = targets.shape[0]
        if self.workers == 1 or b <= kwargs["chunk"]:
            return fit_sirens_on_grid(init, targets, **kwargs)
        if self._pool is None:
            # fork where there is one (as torch's DataLoader workers do): no re-import of the caller's script,
            # so no `if __name__ == "__main__"` guard is asked of it
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                             initializer=_worker_init)
        step = math.ceil(math.ceil(b / self.workers) / kwargs["chunk"]) * kwargs["chunk"]
        bounds = [(lo, min(b, lo + step)) for lo in range(0, b, step)]
        futures = [self._pool.submit(_fit_part, {k: v[lo:hi] for k, v in init.items()}, targets[lo:hi], kwargs)
                   for lo, hi in bounds]
        parts = [f.result() for f in futures]
        params = {k: torch.cat([p[k] for p, _ in parts]) for k in parts[0][0]}
        return params, torch.cat([m for _, m in parts])
