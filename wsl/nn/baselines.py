"""Non-graph baselines for comparison runs on single-architecture zoos.

* :func:`batch_tensors`: a batch of same-architecture ParamGraphs as stacked state-dict tensors ``[B, *shape]``.
* :class:`StatNN`: per-tensor statistics -> MLP (Unterthiner et al. 2020, "Predicting neural network
  accuracy from weights").
* :class:`NFN`: an invariant neural functional network (Zhou et al. 2023, "Permutation equivariant neural
  functionals") built on the ``nfn`` package, for MLP and plain CNN zoos.

>>> model = NFN(graphs[0], out_dim=1, mode="NP")        # doctest: +SKIP
>>> pred = model(batch)                                 # [B, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..graph.builder import NODE_COL
from ..graph.paramgraph import ParamGraph
from .context import as_batch, specs_of
from .encoders import standardized_values
from .stats import fingerprint

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
NFN_SUPPORT = ("NFN baselines support MLP and plain CNN (conv -> global pool -> linear) zoos; use the graph "
               "metanetworks (wsl.nn.GMN, NGGNN, ScaleGMN, RelationalTransformer) for other architectures")


# --------------------------------------------------------------------------- stacked state dicts
def _describe(spec) -> str:
    return f"{spec.arch!r} ({len(spec.tensors)} tensors, {spec.num_parameters} parameters)"


def _first_difference(a, b) -> str:
    for key in dict.fromkeys(list(a.tensors) + list(b.tensors)):
        ta, tb = a.tensors.get(key), b.tensors.get(key)
        if ta is None or tb is None or ta.shape != tb.shape or ta.kind != tb.kind:
            show = [None if t is None else f"{t.kind} {tuple(t.shape)}" for t in (ta, tb)]
            return f"first difference at {key!r}: {show[0]} vs {show[1]}"
    return "same tensors, different architecture name"


def single_spec(batch) -> tuple[object, int]:
    """The one spec shared (by fingerprint) by every graph of ``batch``, and the number of graphs."""
    specs = specs_of(batch)
    if not specs:
        raise ValueError("this batch carries no NetworkSpec (graph.spec); build graphs with wsl.to_graph")
    seen: dict[int, str] = {}
    ref = specs[0]
    ref_fp = fingerprint(ref)
    for i, spec in enumerate(specs):
        fp = seen.get(id(spec))
        if fp is None:
            fp = seen[id(spec)] = fingerprint(spec)
        if fp != ref_fp:
            raise ValueError(f"batch mixes architectures: graph 0 is {_describe(ref)} and graph {i} is "
                             f"{_describe(spec)} ({_first_difference(ref, spec)}); the StatNN / NFN baselines "
                             f"need a single-architecture zoo (use wsl.nn.GMN for mixed zoos)")
    return ref, len(specs)


def batch_tensors(batch: ParamGraph | Sequence[ParamGraph], *, standardize: bool = False) -> dict[str, Tensor]:
    """Every state-dict tensor stacked over the graphs, ``{key: [B, *shape]}`` (all graphs one architecture).

    Built by slicing ``edge_attr`` viewed as ``[B, E]`` and ``x`` as ``[B, N, 3]``, so it is differentiable
    with respect to both; values equal ``graph.to_state_dict()`` stacked (same dtypes, aliases included).
    With ``standardize``, weights and node values are first standardized by the ``edge_norm`` / ``node_norm``
    a normalizing dataset attaches (:class:`~wsl.nn.stats.WeightStats`; float32; no-op without them), as
    the graph metanetworks see them.
    """
    batch = as_batch(batch)
    spec, b = single_spec(batch)
    if batch.edge_attr.shape[0] != b * spec.num_edges or batch.x.shape[0] != b * spec.num_nodes:
        raise ValueError(f"batch has {batch.x.shape[0]} nodes / {batch.edge_attr.shape[0]} edges, expected "
                         f"{b} graphs x {spec.num_nodes} nodes / {spec.num_edges} edges")
    x_all, e_all = standardized_values(batch) if standardize else (batch.x, batch.edge_attr)
    edges = e_all.reshape(b, spec.num_edges)
    x = x_all.reshape(b, spec.num_nodes, x_all.shape[-1])
    buffers = getattr(batch, "buffers", None)
    out: dict[str, Tensor] = {}
    for key in spec.keys:
        if key in spec.aliases:
            out[key] = out[spec.aliases[key]]
            continue
        t = spec.tensors[key]
        if t.kind == "edges":
            v = edges[:, t.offset : t.offset + t.numel]
        elif t.kind == "nodes":
            v = x[:, t.atoms.to(x.device), t.column]
        else:
            v = buffers.reshape(b, spec.num_passthrough)[:, t.offset : t.offset + t.numel]
        out[key] = v.reshape(b, *t.shape).to(t.dtype)
    return out


# --------------------------------------------------------------------------- StatNN
def quantiles(v: Tensor, qs: Sequence[float] = QUANTILES) -> Tensor:
    """Linear-interpolated quantiles of each row of ``v`` ``[B, n]`` -> ``[B, len(qs)]`` (no size limit,
    unlike ``torch.quantile``)."""
    s = torch.sort(v, dim=1).values
    pos = torch.tensor(qs, dtype=v.dtype, device=v.device) * (v.shape[1] - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = pos - lo.to(v.dtype)
    return s[:, lo] + (s[:, hi] - s[:, lo]) * frac


def tensor_statistics(tensors: dict[str, Tensor], keys: Sequence[str]) -> Tensor:
    """Mean, variance and the 0 / .25 / .5 / .75 / 1 quantiles of each tensor in ``keys`` -> ``[B, 7 * len]``."""
    feats = []
    for key in keys:
        v = tensors[key].flatten(1)
        feats += [v.mean(1, keepdim=True), v.var(1, correction=0, keepdim=True), quantiles(v)]
    return torch.cat(feats, dim=1)


def statistic_keys(spec) -> list[str]:
    """Floating parameter / statistic tensors of a spec (no pass-through buffers, no aliases)."""
    return [k for k in spec.keys if k not in spec.aliases and spec.tensors[k].kind != "passthrough"
            and spec.tensors[k].dtype.is_floating_point]


def mlp(out_dim: int, hidden_dim: int, num_layers: int, dropout: float, in_dim: int | None = None) -> nn.Sequential:
    """``num_layers`` linear layers with ReLU / dropout between them (``in_dim=None``: lazy first layer)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        last = i == num_layers - 1
        width = out_dim if last else hidden_dim
        first = nn.LazyLinear(width) if i == 0 and in_dim is None else None
        layers.append(first or nn.Linear(in_dim if i == 0 else hidden_dim, width))
        if not last:
            layers += [nn.ReLU(), nn.Dropout(dropout)] if dropout > 0 else [nn.ReLU()]
    return nn.Sequential(*layers)


class StatNN(nn.Module):
    """Per-tensor weight statistics -> MLP (Unterthiner et al. 2020); ``model(batch)`` -> ``[B, out_dim]``.

    Each floating tensor (weights, biases, norm statistics) contributes its mean, variance and quantiles
    0 / .25 / .5 / .75 / 1, so the features are invariant to any permutation of a tensor's entries. The
    first call fixes the architecture (the input width is inferred there); later batches must match it.
    """

    def __init__(self, out_dim: int = 1, *, hidden_dim: int = 256, num_layers: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim, self.hidden_dim, self.num_layers = out_dim, hidden_dim, num_layers
        self.mlp = mlp(out_dim, hidden_dim, num_layers, dropout)
        self.fingerprint: str | None = None

    def features(self, batch) -> Tensor:
        batch = as_batch(batch)
        spec, _ = single_spec(batch)
        fp = fingerprint(spec)
        if self.fingerprint is None:
            self.fingerprint = fp
        elif fp != self.fingerprint:
            raise ValueError(f"StatNN was first called on another architecture; got {_describe(spec)}. "
                             f"Its input features are architecture-specific: use one model per zoo")
        keys = statistic_keys(spec)
        tensors = batch_tensors(batch, standardize=True)
        dtype = batch.edge_attr.dtype
        return tensor_statistics({k: tensors[k].to(dtype) for k in keys}, keys)

    def forward(self, batch) -> Tensor:
        return self.mlp(self.features(batch))

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, num_layers={self.num_layers}"


# --------------------------------------------------------------------------- NFN
def _unsupported(key: str, reason: str) -> ValueError:
    return ValueError(f"state-dict key {key!r}: {reason}. {NFN_SUPPORT}")


def chain_layers(spec) -> list[tuple[str, str]]:
    """``(weight_key, bias_key)`` per layer of a plain Linear / Conv2d chain, or ValueError naming the key
    that breaks it (norm layers, extra tensors, missing biases, skip connections, shape mismatches)."""
    if spec.aliases:
        key = next(iter(spec.aliases))
        raise _unsupported(key, f"shares storage with {spec.aliases[key]!r} (tied parameters)")
    keys, layers, i = list(spec.keys), [], 0
    while i < len(keys):
        wkey = keys[i]
        w = spec.tensors[wkey]
        if w.kind != "edges" or len(w.shape) not in (2, 4):
            raise _unsupported(wkey, f"tensor of shape {tuple(w.shape)} is not a Linear [out, in] or Conv2d "
                                     f"[out, in, kh, kw] weight (norm layers, embeddings, buffers: unsupported)")
        bkey = keys[i + 1] if i + 1 < len(keys) else None
        b = spec.tensors.get(bkey)
        if b is None or b.kind != "nodes" or b.column != NODE_COL["bias"] or tuple(b.shape) != (w.shape[0],):
            raise _unsupported(wkey, "weight has no bias right after it (NFN layers need one per weight)")
        if layers:
            prev = spec.tensors[layers[-1][0]]
            if prev.shape[0] != w.shape[1]:
                raise _unsupported(wkey, f"takes {w.shape[1]} inputs but the previous layer has {prev.shape[0]} "
                                         f"outputs (not a plain chain)")
            if len(prev.shape) == 2 and len(w.shape) == 4:
                raise _unsupported(wkey, "convolution after a linear layer")
        _check_wiring(spec, wkey, bkey, layers[-1][1] if layers else None)
        layers.append((wkey, bkey))
        i += 2
    if not layers:
        raise ValueError(f"architecture {spec.arch!r} has no parameters. {NFN_SUPPORT}")
    return layers


def _check_wiring(spec, wkey: str, bkey: str, prev_bias: str | None) -> None:
    """The graph edges of ``wkey`` go from the previous layer's neurons to this layer's bias neurons in
    row-major order (rules out skip connections hidden behind matching shapes)."""
    w = spec.tensors[wkey]
    bias = spec.tensors[bkey]
    src, dst = spec.edge_index[:, w.offset : w.offset + w.numel].long()
    out, cin = w.shape[0], w.shape[1]
    ok = torch.equal(dst.view(out, -1), bias.atoms.long().view(out, 1).expand(out, w.numel // out))
    if ok and prev_bias is not None:
        prev = spec.tensors[prev_bias].atoms.long()
        ok = torch.equal(src.view(out, cin, -1), prev.view(1, cin, 1).expand(out, cin, src.numel() // (out * cin)))
    if not ok:
        raise _unsupported(wkey, "layer is not wired as a plain chain (skip / residual connection or reshape?)")


def _import_nfn():
    try:
        import nfn.layers as nfn_layers
        from nfn.common import ArraySpec, WeightSpaceFeatures
        from nfn.common import NetworkSpec as NFNSpec
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"the NFN baseline needs the `nfn` package ({err}): pip install nfn einops "
                          f"(or install wsl with its `baselines` extra)") from err
    return nfn_layers, ArraySpec, WeightSpaceFeatures, NFNSpec


class NFN(nn.Module):
    """Invariant neural functional network (Zhou et al. 2023) over one MLP / plain CNN architecture.

    ``mode="NP"``: NPLinear layers with learned input / output embeddings (only hidden neurons are
    exchangeable, as in the parameter graph); ``"HNP"``: HNPLinear. ``hidden_dim`` channels per layer,
    ``num_layers`` equivariant layers (each followed by ReLU), optional Gaussian Fourier features of the raw
    weights (``fourier_features`` = mapping size), then the invariant pool (NPPool / HNPPool), flatten and an
    MLP head. Built from a spec or graph of the zoo's architecture; ``model(batch)`` -> ``[B, out_dim]``.
    """

    def __init__(self, spec_or_graph, out_dim: int = 1, *, hidden_dim: int = 32, num_layers: int = 3,
                 mode: str = "NP", fourier_features: int = 0, fourier_scale: float = 10.0, head_dim: int = 256,
                 head_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        nfn_layers, array_spec, self._wsfeat, nfn_spec_cls = _import_nfn()
        spec = spec_or_graph
        if isinstance(spec, (list, tuple)) or hasattr(spec, "edge_attr"):
            spec = single_spec(as_batch(spec))[0]
        if mode not in ("NP", "HNP"):
            raise ValueError(f"mode must be 'NP' or 'HNP', got {mode!r}")
        if num_layers < 0 or hidden_dim < 1 or fourier_features < 0:
            raise ValueError("num_layers and fourier_features must be >= 0 and hidden_dim >= 1")
        self.layers = chain_layers(spec)
        if len(self.layers) < 2:  # nfn's NPLinear(io_embed=True) and HNPLinear both break on one layer
            raise ValueError(f"NFN needs at least two layers, {spec.arch!r} has one")
        self.spec, self.fingerprint, self.arch = spec, fingerprint(spec), _describe(spec)
        self.mode, self.out_dim, self.hidden_dim, self.num_layers = mode, out_dim, hidden_dim, num_layers
        ws = self.nfn_spec = nfn_spec_cls([array_spec(tuple(spec.tensors[w].shape)) for w, _ in self.layers],
                                          [array_spec(tuple(spec.tensors[b].shape)) for _, b in self.layers])
        blocks: list[nn.Module] = []
        channels = 1
        if fourier_features:
            blocks.append(nfn_layers.GaussianFourierFeatureTransform(ws, 1, fourier_features, fourier_scale))
            channels = 2 * fourier_features
        for _ in range(num_layers):
            if mode == "NP":
                blocks.append(nfn_layers.NPLinear(ws, channels, hidden_dim, io_embed=True))
            else:
                blocks.append(nfn_layers.HNPLinear(ws, channels, hidden_dim))
            blocks.append(nfn_layers.TupleOp(nn.ReLU()))
            channels = hidden_dim
        pool = nfn_layers.NPPool if mode == "NP" else nfn_layers.HNPPool
        self.equivariant = nn.Sequential(*blocks)
        self.pool = pool(ws)
        self.head = nn.Sequential(nn.Flatten(), mlp(out_dim, head_dim, head_layers, dropout,
                                                    in_dim=channels * pool.get_num_outs(ws)))

    def wsfeat(self, batch):
        """``nfn`` WeightSpaceFeatures of a batch: weights ``[B, 1, out, in(, kh, kw)]``, biases ``[B, 1, out]``."""
        batch = as_batch(batch)
        spec, _ = single_spec(batch)
        if fingerprint(spec) != self.fingerprint:
            raise ValueError(f"this NFN was built for {self.arch} but got a batch of {_describe(spec)} "
                             f"({_first_difference(self.spec, spec)}); NFN baselines take one architecture")
        t = batch_tensors(batch, standardize=True)
        dtype = batch.edge_attr.dtype
        return self._wsfeat([t[w].unsqueeze(1).to(dtype) for w, _ in self.layers],
                            [t[b].unsqueeze(1).to(dtype) for _, b in self.layers])

    def forward(self, batch) -> Tensor:
        return self.head(self.pool(self.equivariant(self.wsfeat(batch))))

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, mode={self.mode!r}, out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, "
                f"num_layers={self.num_layers}")
