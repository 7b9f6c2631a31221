"""Handlers for parameter-free ops on activations: replay on neuron ids, record symmetry constraints.

Categories (see :mod:`wsl.graph.trace` for the dispatch):

* **structural** ops (views, reshapes, transposes, slicing, concatenation, padding, ...) are replayed on
  the activation's id tensor itself; an output that keeps only part of its input's neurons (a slice, a
  chunk) records that those neurons must be permuted among themselves;
* **elementwise** ops pass ids through; binary ones join their operands: equal ids pass, different ids
  create a ``merge`` set (identity edges from both operands, all three permuted together);
* **reductions / pooling** drop reduced dimensions; reducing over part of a neuron grid (the ``d`` of a
  ``(heads, d)`` split) yields one id per head and declares the head-block structure;
* **contractions** (``matmul``, ``einsum``, ``scaled_dot_product_attention``; in :mod:`wsl.graph.contract`)
  tie the contracted neurons (q with k)
  and the batched head dimensions (q heads with v heads).

Anything else falls back to :func:`unknown_op`, which fixes the neurons it touches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .labels import Act, Opaque, Param, compress, labelled_dims, unlabelled
from .trace import Call, Tracer, op_handler


class NeedRealValues(RuntimeError):
    """Raised in meta-tensor tracing when an op needs the values of a constant (an index tensor)."""


# ---------------------------------------------------------------------------------------------- helpers
def _full(info_ids: Tensor, t: Tensor) -> Tensor:
    return info_ids.expand(t.shape)


def _tensors(x) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for t in x if isinstance(t, Tensor)]
    return []


def _acts(tr: Tracer, call: Call) -> list[tuple[Tensor, Act]]:
    from torch.utils._pytree import tree_flatten

    out = []
    for t in tree_flatten((call.args, call.kwargs))[0]:
        if isinstance(t, Tensor):
            i = tr.info_of(t)
            if isinstance(i, Act):
                out.append((t, i))
    return out


def _break_chains(tr: Tracer, acts: list[tuple[Tensor, Act]]) -> None:
    for _, a in acts:
        if a.chain is not None and a.chain[0] in tr.builder.scale:
            tr.builder.scale[a.chain[0]].broken = True


def _substitute(tr: Tracer, call: Call, sub: dict[int, Tensor]) -> tuple[tuple, dict]:
    """Arguments with tracked tensors replaced by id tensors; constants must hold real values."""
    from torch.utils._pytree import tree_map

    data_only = call.name in _DATA_ONLY

    def f(x):
        if isinstance(x, Tensor):
            if id(x) in sub:
                return sub[id(x)]
            if data_only or x.is_floating_point():  # constant data, not an index: holds no neuron
                return torch.full(x.shape, -1, dtype=torch.long)
            if x.is_meta:
                raise NeedRealValues(call.where())
        return x

    return tree_map(f, call.args), tree_map(f, call.kwargs)


_DATA_ONLY = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
_VIEW_AS_RESHAPE = {"view": "reshape", "view_as": "reshape_as"}


def _replay(tr: Tracer, call: Call, sub: dict[int, Tensor]):
    args, kwargs = _substitute(tr, call, sub)
    func = call.func
    if call.name in _VIEW_AS_RESHAPE:
        func = getattr(torch.Tensor, _VIEW_AS_RESHAPE[call.name])
    if call.name in ("pad", "constant_pad_nd"):
        mode = call.arg(2, "mode", "constant") if call.name == "pad" else "constant"
        if mode not in (None, "constant"):
            raise _Unsupported  # reflect / replicate padding copies neurons: handled conservatively
        return torch.nn.functional.pad(args[0], args[1], value=-1)  # padded positions hold no neuron
    return func(*args, **kwargs)


class _Unsupported(Exception):
    pass


def unknown_op(tr: Tracer, call: Call) -> None:
    """Conservative default: neurons seen by an op wsl does not know are never permuted."""
    acts = _acts(tr, call)
    _break_chains(tr, acts)
    for _, a in acts:
        tr.builder.fix(a.ids)
    note = f"unknown op {call.name!r} (module {call.module or '<root>'!r}): its neurons are kept fixed"
    if acts and any(bool((a.ids >= 0).any()) for _, a in acts) and note not in tr.builder.notes:
        tr.builder.notes.append(note)
    outs = _tensors(call.out)
    if call.out is None and call.args and isinstance(call.args[0], Tensor):
        outs = [call.args[0]]  # in-place op returning None (__setitem__)
    for t in outs:
        tr.set_act(t, unlabelled(t.ndim))


# ------------------------------------------------------------------------------------- parameter-only
_STRUCTURAL = {
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "t",
    "movedim", "moveaxis", "swapaxes", "swapdims", "expand", "expand_as", "repeat", "view_as", "reshape_as",
    "__getitem__", "narrow", "select", "chunk", "split", "unbind", "tensor_split", "index_select", "flip",
    "roll", "cat", "concat", "concatenate", "stack", "pad", "__get__.T", "__get__.mT", "repeat_interleave",
    "tile", "broadcast_to", "unfold", "diagonal",
}
_PASS = {
    "contiguous", "clone", "detach", "to", "type", "float", "half", "bfloat16", "double", "cpu", "cuda",
    "__get__.data", "type_as", "requires_grad_", "detach_", "align_to",
}
_UNARY = {
    "relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "sin", "cos", "exp",
    "log", "abs", "neg", "__neg__", "__abs__", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "hardtanh", "hardtanh_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "mish", "softplus", "softsign", "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "sqrt", "rsqrt", "reciprocal", "square", "pow", "__pow__",
    "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "erf", "tan", "sign", "round", "floor", "ceil",
    "logsigmoid", "tanhshrink", "exp2", "log1p", "expm1", "softmax", "log_softmax", "softmin", "gelu_",
    "nan_to_num", "__invert__", "logical_not", "isnan", "isinf", "isfinite", "threshold",
    "threshold_", "rrelu", "glu_placeholder", "sinh", "cosh", "atan", "log2", "log10", "trunc", "frac",
    "erfc", "erfinv", "deg2rad", "rad2deg", "positive", "__pos__", "normalize_placeholder",
}
_CREATION = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "size", "dim", "numel", "__len__",
    "__get__.shape", "__get__.dtype", "__get__.device", "__get__.is_cuda", "__get__.ndim", "argmax",
    "argmin", "argsort", "nonzero", "__get__.requires_grad", "__get__.grad", "__get__.is_meta",
    "is_floating_point", "is_complex", "element_size", "__get__.layout", "stride", "data_ptr",
}


def derive_param(tr: Tracer, call: Call, params: list) -> None:
    """An op on a parameter alone (``cls_token.expand``, ``table[index]``, ``logit_scale.exp()``)."""
    outs = _tensors(call.out)
    if not outs:
        return
    learned = [p for p in params if not (isinstance(p, Param) and p.buffer)]
    names = tuple(sorted({n for p in params for n in (p.names if isinstance(p, Opaque) else (p.name,))}))
    if call.name in _CREATION:
        return
    if len(learned) == 1 and isinstance(learned[0], Param):
        # buffers next to a single parameter are constants here (e.g. a relative-position index)
        p = learned[0]
        src = next(t for t in _all_tensors(call) if tr.info_of(t) is p)
        if call.name in _PASS:
            for t in outs:
                tr.set_info(t, Param(p.name, p.elem, p.numel, p.buffer, p.direct, p.transformed))
            return
        if call.name in _STRUCTURAL:
            res = _replay(tr, call, {id(src): p.elem.expand(src.shape)})
            for t, e in zip(outs, _tensors(res)):
                tr.set_info(t, Param(p.name, e, p.numel, p.buffer, direct=False, transformed=p.transformed))
            return
        if call.name in _UNARY or _is_scalar_arith(tr, call):
            for t in outs:
                if t.shape == src.shape:
                    tr.set_info(t, Param(p.name, p.elem, p.numel, p.buffer, p.direct, transformed=True))
                else:
                    tr.set_info(t, Param(p.name, p.elem.expand(src.shape).expand(t.shape), p.numel, p.buffer,
                                         direct=False, transformed=True))
            return
    if all(isinstance(p, Param) and p.buffer for p in params):
        return  # buffer arithmetic (e.g. rotary inv_freq): a constant, not a parameter
    for t in outs:
        tr.set_info(t, Opaque(names, call.name))


def _all_tensors(call: Call) -> list[Tensor]:
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten((call.args, call.kwargs))[0] if isinstance(t, Tensor)]


_ARITH = {
    "add", "sub", "mul", "div", "true_divide", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
    "__rmul__", "__truediv__", "__rtruediv__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "add_",
    "sub_", "mul_", "div_", "rsub", "maximum", "minimum", "where", "masked_fill", "masked_fill_",
    "__and__", "__or__", "__xor__", "eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__",
    "__le__", "__gt__", "__ge__", "fmod", "remainder", "__mod__", "atan2", "copysign", "logical_and",
    "logical_or", "floor_divide", "__floordiv__", "lerp", "addcmul", "addcdiv", "pow", "__pow__",
}


def _is_scalar_arith(tr: Tracer, call: Call) -> bool:
    if call.name not in _ARITH:
        return False
    tracked = [t for t in _all_tensors(call) if tr.info_of(t) is not None]
    return len(tracked) == 1 and all(t.ndim == 0 or tr.info_of(t) is not None for t in _all_tensors(call))


# ------------------------------------------------------------------------------------------ structural
@op_handler(*_STRUCTURAL)
def structural(tr: Tracer, call: Call) -> None:
    acts = _acts(tr, call)
    if call.name in ("pad", "constant_pad_nd") and _pads_only_unlabelled(call, acts):
        x, a = acts[0]
        tr.set_act(call.out, a.ids, a.chain if a.chain is None or a.chain[1] == "post" else None)
        return
    sub = {id(t): _full(a.ids, t) for t, a in acts}
    try:
        res = _replay(tr, call, sub)
    except _Unsupported:
        unknown_op(tr, call)
        return
    outs, ids_out = _tensors(call.out), _tensors(res)
    if len(outs) != len(ids_out):
        unknown_op(tr, call)
        return
    in_atoms = torch.unique(torch.cat([a.ids.reshape(-1) for _, a in acts]))
    in_atoms = in_atoms[in_atoms >= 0]
    chains = {a.chain for _, a in acts}
    chain = chains.pop() if len(chains) == 1 else None
    if len(acts) > 1 and chain is not None:
        _break_chains(tr, acts)
        chain = None
    for t, ids in zip(outs, ids_out):
        ids = compress(ids)
        got = torch.unique(ids)
        got = got[got >= 0]
        if got.numel() < in_atoms.numel():
            tr.builder.keep_together(got)
        tr.set_act(t, ids, chain)


def _pads_only_unlabelled(call: Call, acts: list) -> bool:
    """Zero padding of spatial / sequence dims only: padded zeros are inert for every neuron."""
    if len(acts) != 1 or call.out is None:
        return False
    x, a = acts[0]
    pad = call.arg(1, "pad")
    mode = call.arg(2, "mode", "constant")
    value = call.arg(3, "value", None)
    if mode not in (None, "constant") or (value not in (None, 0, 0.0)):
        return False
    padded = [x.ndim - 1 - i // 2 for i in range(len(pad)) if pad[i] != 0]
    return all(a.ids.shape[d] == 1 for d in padded)


@op_handler(*_PASS)
def passthrough(tr: Tracer, call: Call) -> None:
    acts = _acts(tr, call)
    a = acts[0][1]
    for t in _tensors(call.out):
        if t.ndim == acts[0][0].ndim:
            tr.set_act(t, a.ids, a.chain)
        else:
            unknown_op(tr, call)


@op_handler(*_CREATION)
def creation(tr: Tracer, call: Call) -> None:
    """Tensors created from an activation's shape only (zeros_like, new_zeros): constants."""


_POSITIVE_ACTS = {"relu", "relu_", "leaky_relu", "leaky_relu_"}
_ODD_ACTS = {"tanh", "tanh_", "sin"}
_KEEP_CHAIN = {"dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
               "feature_alpha_dropout"}


@op_handler(*_UNARY)
def unary(tr: Tracer, call: Call) -> None:
    acts = _acts(tr, call)
    x, a = acts[0]
    chain = _next_chain(tr, a.chain, call.name)
    if call.name in ("softmax", "log_softmax", "softmin"):
        chain = None
    _break_if(tr, a.chain, chain)
    for t in _tensors(call.out):
        tr.set_act(t, a.ids.expand(t.shape) if t.shape != x.shape else a.ids, chain)


def _next_chain(tr: Tracer, chain, name: str):
    if chain is None:
        return None
    idx, stage = chain
    if name in _KEEP_CHAIN:
        return chain
    if stage == "pre" and name in _POSITIVE_ACTS:
        tr.builder.scale[idx].activations.add("positive")
        return (idx, "post")
    if stage == "pre" and name in _ODD_ACTS:
        tr.builder.scale[idx].activations.add("odd")
        return (idx, "post")
    return None


def _break_if(tr: Tracer, old, new) -> None:
    if old is not None and new is None and old[0] in tr.builder.scale:
        tr.builder.scale[old[0]].broken = True


# ------------------------------------------------------------------------------------------ elementwise
@op_handler(*_ARITH)
def binary(tr: Tracer, call: Call) -> None:
    out = call.out if isinstance(call.out, Tensor) else (call.args[0] if call.out is None else None)
    if not isinstance(out, Tensor):
        unknown_op(tr, call)
        return
    tensors = _all_tensors(call)
    acts = [(t, tr.info_of(t)) for t in tensors if isinstance(tr.info_of(t), Act)]
    consts = [t for t in tensors if tr.info_of(t) is None and t.ndim > 0 and t.numel() > 1]
    shape = out.shape
    nd = len(shape)

    def aligned(t: Tensor, ids: Tensor) -> Tensor:
        ids = ids.reshape((1,) * (nd - ids.ndim) + tuple(ids.shape))
        return ids

    ids_list = [aligned(t, a.ids) for t, a in acts]
    lab = set()
    for ids in ids_list:
        lab.update(labelled_dims(ids))
    # a constant / unlabelled activation that varies along a neuron dimension pins those neurons
    for t in consts + [t for t, a in acts if not bool((a.ids >= 0).any())]:
        tshape = (1,) * (nd - t.ndim) + tuple(t.shape)
        if any(tshape[d] > 1 for d in lab):
            for ids in ids_list:
                tr.builder.fix(ids)
    labelled = [ids for ids in ids_list if bool((ids >= 0).any())]
    chain = _arith_chain(tr, call, acts)
    if not labelled:
        tr.set_act(out, unlabelled(nd), chain)
        return
    if len(labelled) == 1:
        tr.set_act(out, labelled[0].expand(shape) if labelled[0].ndim == nd else labelled[0], chain)
        return
    full = [compress(torch.broadcast_to(ids, shape)) for ids in labelled]
    dims = sorted(set().union(*[labelled_dims(f) for f in full]))
    cshape = [shape[d] if d in dims else 1 for d in range(nd)]
    full = [f.expand(cshape) for f in full]
    if all(torch.equal(full[0], f) for f in full[1:]):
        tr.set_act(out, full[0], chain)
        return
    tr.set_act(out, merge(tr, full, call), None)


def merge(tr: Tracer, full: list[Tensor], call: Call) -> Tensor:
    """Join activations holding different neurons at the same positions into a new ``merge`` set."""
    b = tr.builder
    flat = torch.stack([f.reshape(-1) for f in full], 1) + 1  # [P, k], shifted so "no neuron" is 0
    key = torch.zeros(flat.shape[0], dtype=torch.long)
    for j in range(flat.shape[1]):
        key = key * (b.num_nodes + 1) + flat[:, j]
    ukey, inverse = torch.unique(key, return_inverse=True)
    uniq = torch.stack([(ukey // (b.num_nodes + 1) ** (flat.shape[1] - 1 - j)) % (b.num_nodes + 1)
                        for j in range(flat.shape[1])], 1) - 1
    m = b.new_set(uniq.shape[0], "merge", f"{call.module or 'root'}:{call.name}", call.name)
    for j in range(uniq.shape[1]):
        col = uniq[:, j]
        ok = col >= 0
        if ok.any():
            b.add_edges(None, (int(ok.sum()),), col[ok], m[ok], "identity")
        b.tie(col, m)
    return m[inverse].reshape(full[0].shape)


def _arith_chain(tr: Tracer, call: Call, acts):
    chains = [a.chain for _, a in acts if a.chain is not None]
    if not chains:
        return None
    tensors = _all_tensors(call)
    scalar_only = len(acts) == 1 and all(t.ndim == 0 and tr.info_of(t) is None for t in tensors
                                         if tr.info_of(t) is None)
    if scalar_only and call.name in {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__",
                                     "true_divide", "div_", "__itruediv__"}:
        if not any(isinstance(t, Tensor) and t is not acts[0][0] for t in tensors):
            return chains[0]
    for c in chains:
        _break_if(tr, c, None)
    return None


# -------------------------------------------------------------------------------- reductions, pooling
_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "nansum", "nanmean",
           "max", "min", "any", "all", "median", "std_mean", "var_mean"}
_POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
         "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
         "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices", "max_pool1d_with_indices",
         "max_pool3d_with_indices", "lp_pool1d", "lp_pool2d", "interpolate", "upsample", "upsample_nearest",
         "upsample_bilinear", "adaptive_max_pool2d_with_indices", "pixel_unshuffle_placeholder"}


@op_handler(*_POOL)
def pool(tr: Tracer, call: Call) -> None:
    x, a = _acts(tr, call)[0]
    outs = _tensors(call.out)
    spatial = {1: 1, 2: 2, 3: 3}.get(int(call.name[-1]) if call.name[-1].isdigit() else 0, None)
    if spatial is None:  # interpolate: all dims after the channel dim
        spatial = x.ndim - 2
    lab = labelled_dims(a.ids)
    if any(d >= x.ndim - spatial for d in lab):
        unknown_op(tr, call)
        return
    chain = a.chain
    if chain is not None and "max" in call.name:
        chain = chain if chain[1] == "post" else None
        _break_if(tr, a.chain, chain)
    if chain is not None and call.name in ("lp_pool1d", "lp_pool2d", "interpolate"):
        _break_if(tr, a.chain, None)
        chain = None
    out = outs[0]
    tr.set_act(out, a.ids, chain)
    for extra in outs[1:]:
        tr.set_act(extra, unlabelled(extra.ndim))


@op_handler(*_REDUCE)
def reduce(tr: Tracer, call: Call) -> None:
    x, a = _acts(tr, call)[0]
    outs = _tensors(call.out)
    if not outs:
        return
    dim = call.arg(1, "dim", None)
    if isinstance(dim, Tensor) or (call.name in ("max", "min") and dim is not None and not isinstance(dim, int)):
        unknown_op(tr, call)  # elementwise max(a, b) with tensors is handled as arith elsewhere
        return
    keep = bool(call.kwargs.get("keepdim", call.args[2] if len(call.args) > 2 and isinstance(call.args[2], bool)
                                else False))
    if call.name == "norm":
        dim = call.kwargs.get("dim", call.args[2] if len(call.args) > 2 else None)
        keep = bool(call.kwargs.get("keepdim", call.args[3] if len(call.args) > 3 else False))
    if dim is None:
        dims = list(range(x.ndim))
    else:
        dims = [int(d) % x.ndim for d in ((dim,) if isinstance(dim, int) else dim)]
    lab = labelled_dims(a.ids)
    chain = a.chain if call.name in ("mean", "sum") and not (set(dims) & set(lab)) else None
    _break_if(tr, a.chain, chain)
    if set(dims) & set(lab):
        from .contract import (
            blockify,  # reducing over part of a head grid declares the blocks
        )

        rows = [d for d in lab if d not in dims]
        ids = blockify(tr, a.ids, rows, [d for d in lab if d in dims]) if rows else unlabelled(x.ndim)
    else:
        ids = a.ids
    if not keep:
        ids = ids.reshape([s for d, s in enumerate(ids.shape) if d not in dims]) if ids.ndim else ids
        if ids.ndim != outs[0].ndim:
            ids = unlabelled(outs[0].ndim)
    tr.set_act(outs[0], ids, chain)
    for extra in outs[1:]:
        tr.set_act(extra, unlabelled(extra.ndim))


@op_handler("cumsum", "cumprod", "sort", "topk", "cummax", "cummin")
def order_dependent(tr: Tracer, call: Call) -> None:
    x, a = _acts(tr, call)[0]
    dim = call.arg(1, "dim", -1)
    if call.name == "topk":
        dim = call.arg(2, "dim", -1)
    if isinstance(dim, int) and a.ids.shape[dim % max(x.ndim, 1)] == 1:
        _break_chains(tr, [(x, a)])
        for t in _tensors(call.out):
            tr.set_act(t, a.ids if t.shape == x.shape else unlabelled(t.ndim))
        return
    unknown_op(tr, call)
