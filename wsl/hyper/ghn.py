"""Graph hypernetworks: GHN-2 (gated GNN with sweeps) and GHN-3 (graphormer), one base class.

A graph hypernetwork ``H_θ`` maps an architecture's computational graph (:mod:`wsl.hyper.compgraph`) to all
of its parameters, ``w = H_θ(a)``, and is trained so that ``w`` works without training:
``min_θ E_a L(f(x; a, H_θ(a)), y)`` over sampled architectures ``a``.

Node embeddings (both models): ``h⁰_v = E_op[op_v] + Σ_j E_shape_j[bucket(shape_vj)]``.

* :class:`GHN2` (Knyazev et al., NeurIPS 2021): ``T`` rounds of a forward sweep (nodes in topological
  order) and a backward sweep (reverse order); visiting node ``v``
  ``m_v = Σ_{u ∈ N(v)} MLP(h_u) + Σ_{u: 1 < s(u,v) <= s_max} MLP_sp(h_u) / s(u, v)``, ``h_v ← GRU(m_v, h_v)``,
  where ``N(v)`` are its predecessors (successors in the backward sweep) and ``s`` shortest-path lengths
  (virtual edges). Nodes of one level (:mod:`wsl.hyper.batch`) are updated together.
* :class:`GHN3` (Knyazev et al., 2023, "Can We Scale Transformers to Predict Parameters of Diverse
  ImageNet Models?"): pre-LN transformer layers over each graph's nodes; the input adds in- and out-degree
  embeddings and every attention head adds a learned bias for the shortest-path length in each direction
  (Graphormer, Ying et al. 2021).

Each owned parameter is decoded from ``h_v + E_role[role]`` (:mod:`wsl.hyper.decoders`) and normalized per
operation. With ``mip=True`` (magnitude-invariant parametrization, :mod:`wsl.hyper.mip`) the decoder output is
a residual ``θ₀ + s_role · Δθ`` with learned per-role scales ``s`` starting at ``mip_scale``, and ``θ₀`` chosen
by ``mip_base``:

* ``"learned"`` (default): ``θ₀`` is a visible, named parameter of the GHN, one base tile per matrix role
  (``mip_theta0_matrix``) and one base vector per (op, role) (``mip_theta0_vector``), cropped / tiled and
  normalized like any prediction, so every architecture starts from the same learned base and the GHN learns
  node-specific residuals;
* ``"init"``: ``θ₀`` is the target model's own (fresh) initialization, ``θ = θ₀ + s_role · Δθ`` after
  normalization: a GHN then returns a normally initialized network at the start of training. Each sampled
  model brings a different random ``θ₀``, which the GHN never sees; in ``scripts/bench_ghn_mip.py`` this
  variant does not learn within 400 steps (kept for comparison).

A GHN has no continuous inputs (its node features are categorical and end in a LayerNorm, i.e. at constant
norm already), so MIP's constant-norm input encoding has nothing further to do here.

``forward(models)`` returns one ``{param_name: tensor}`` dict per model (differentiable in θ; use
:func:`torch.func.functional_call` to run the model with them); :meth:`GraphHyperNetwork.predict_into` writes
them into a model.

Shapes:
    ``encode(batch)``: :class:`~wsl.hyper.batch.GraphBatch` with ``N`` nodes -> ``[N, hidden]``.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.scatter import scatter
from .batch import GraphBatch, collate
from .compgraph import OP_TYPES, CompGraph, comp_graph
from .decoders import (
    ROLE_ID,
    ROLES,
    LowRankDecoder,
    ParamDecoder,
    TiledDecoder,
    fit,
    normalize,
    param_role,
)

NUM_BUCKETS = 32
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, dict[Any, CompGraph]] = weakref.WeakKeyDictionary()
_INIT_GAIN = {"weight": 1.0, "embedding": 0.1, "norm_weight": 0.1, "norm_bias": 0.1, "bias": 0.1,
              "vector": 0.1}


def shape_bucket(x: Tensor) -> Tensor:
    """Integer sizes -> ``NUM_BUCKETS`` buckets: exact up to 16, then half-octaves of ``log2``."""
    xf = x.float().clamp(min=1)
    big = 16 + torch.round(2 * torch.log2(xf / 16)).long()
    return torch.where(x <= 16, x, big).clamp(0, NUM_BUCKETS - 1)


def _example_inputs(model: nn.Module, example_inputs: Any) -> Any:
    if example_inputs is not None:
        return example_inputs
    return getattr(model, "example_inputs", None)


def graph_of(model: nn.Module, example_inputs: Any = None, fallback_shape: list[int] | None = None) -> CompGraph:
    """The (cached) :class:`CompGraph` of ``model``; tries ``fallback_shape`` inputs if a guess fails."""
    inputs = _example_inputs(model, example_inputs)
    key = repr([tuple(t.shape) for t in torch.utils._pytree.tree_flatten(inputs)[0] if isinstance(t, Tensor)])
    cache = _GRAPHS.setdefault(model, {})
    if key not in cache:
        try:
            cache[key] = comp_graph(model, inputs)
        except Exception as first:
            if inputs is not None or not fallback_shape:
                raise
            try:
                cache[key] = comp_graph(model, torch.zeros(fallback_shape))
            except Exception:  # noqa: BLE001
                raise first from None
    return cache[key]


class GraphHyperNetwork(nn.Module):
    """Base class: embeddings, decoding, normalization, save / load. Subclasses implement :meth:`encode`."""

    kind = "base"

    def __init__(self, hidden: int = 64, decoder: str = "tiled", tile_out: int = 64, tile_in: int = 64,
                 kernel: int = 5, channels: int = 16, rank: int = 8, s_max: int = 50,
                 input_shape: list[int] | None = None, mip: bool = False, mip_scale: float = 0.1,
                 mip_base: str = "learned") -> None:
        super().__init__()
        self.config: dict[str, Any] = {"hidden": hidden, "decoder": decoder, "tile_out": tile_out,
                                       "tile_in": tile_in, "kernel": kernel, "channels": channels, "rank": rank,
                                       "s_max": s_max, "input_shape": input_shape}
        if mip:
            if mip_base not in ("learned", "init"):
                raise ValueError(f"unknown mip_base {mip_base!r}; choose 'learned' or 'init'")
            self.config.update(mip=True, mip_scale=mip_scale, mip_base=mip_base)
        self.hidden, self.s_max, self.input_shape = hidden, s_max, input_shape
        self.op_emb = nn.Embedding(len(OP_TYPES), hidden)
        self.shape_emb = nn.Embedding(4 * NUM_BUCKETS, hidden)
        self.role_emb = nn.Embedding(len(ROLES), hidden)
        self.out_norm = nn.LayerNorm(hidden)
        if decoder == "tiled":
            self.decoder: ParamDecoder = TiledDecoder(hidden, tile_out, tile_in, kernel, channels)
        elif decoder == "lowrank":
            self.decoder = LowRankDecoder(hidden, tile_out, tile_in, kernel, rank)
        else:
            raise ValueError(f"unknown decoder {decoder!r}; choose 'tiled' or 'lowrank'")
        gains = torch.tensor([[math.log(_INIT_GAIN[r]) for r in ROLES]] * len(OP_TYPES))
        self.log_gain = nn.Parameter(gains)  # [op, role]
        self.mip, self.mip_base = mip, mip_base if mip else None
        if mip:  # MIP residual: theta = theta0 + scale[role] * prediction, scale learned, starting small
            self.mip_log_scale = nn.Parameter(torch.full((len(ROLES),), math.log(mip_scale)))
        if mip and mip_base == "learned":
            self.mip_theta0_matrix = nn.Parameter(torch.randn(len(ROLES), tile_out, tile_in, kernel, kernel))
            self.mip_theta0_vector = nn.Parameter(torch.randn(len(OP_TYPES), len(ROLES), tile_out))

    # ------------------------------------------------------------------ model
    def embed(self, batch: GraphBatch) -> Tensor:
        offs = torch.arange(4, device=batch.shape.device) * NUM_BUCKETS
        return self.op_emb(batch.op_type) + self.shape_emb(shape_bucket(batch.shape) + offs).sum(1)

    def encode(self, batch: GraphBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def graphs(self, models: list[nn.Module], example_inputs: Any = None) -> list[CompGraph]:
        return [graph_of(m, example_inputs, self.input_shape) for m in models]

    def forward(self, models: nn.Module | list[nn.Module], example_inputs: Any = None) -> list[dict[str, Tensor]]:
        """Predicted parameters ``{name: tensor}`` for each model (one dict per model)."""
        single = isinstance(models, nn.Module)
        models = [models] if single else list(models)
        graphs = self.graphs(models, example_inputs)
        device = self.op_emb.weight.device
        batch = collate(graphs, self.s_max).to(device)
        h = self.out_norm(self.encode(batch))
        return self.decode(h, batch, models)

    def decode(self, h: Tensor, batch: GraphBatch, models: list[nn.Module]) -> list[dict[str, Tensor]]:
        items = []  # (graph index, name, node, shape, op, role, fan-in axis)
        for gi, (g, off) in enumerate(zip(batch.graphs, batch.offsets)):
            params = dict(models[gi].named_parameters())
            for name, node in g.owned.items():
                p = params.get(name)
                if p is None or not p.is_floating_point():
                    continue
                shape, op = tuple(p.shape), g.op_names[node]
                items.append((gi, name, off + node, shape, op, param_role(name, shape, op),
                              g.fan_in_axes.get(name)))
        out: list[dict[str, Tensor]] = [{} for _ in models]
        if not items:
            return out
        dev = h.device
        nodes = torch.tensor([it[2] for it in items], device=dev)
        roles = torch.tensor([ROLE_ID[it[5]] for it in items], device=dev)
        z = h[nodes] + self.role_emb(roles)
        mat_rows = [i for i, it in enumerate(items) if len(it[3]) >= 2]
        vec_rows = [i for i, it in enumerate(items) if len(it[3]) < 2]
        mats = self.decoder.matrix(z[torch.tensor(mat_rows, device=dev)]) if mat_rows else None
        vecs = self.decoder.vector(z[torch.tensor(vec_rows, device=dev)]) if vec_rows else None
        if self.mip_base == "learned":  # theta0 (learned base) + s_role * delta, before crop and normalization
            scale = self.mip_log_scale.exp()
            if mats is not None:
                r = roles[torch.tensor(mat_rows, device=dev)]
                mats = self.mip_theta0_matrix[r] + scale[r].view(-1, 1, 1, 1, 1) * mats
            if vecs is not None:
                r = roles[torch.tensor(vec_rows, device=dev)]
                ops = torch.tensor([OP_TYPES.index(items[i][4]) for i in vec_rows], device=dev)
                vecs = self.mip_theta0_vector[ops, r] + scale[r].view(-1, 1) * vecs
        gains = self.log_gain.exp()
        im = iv = 0
        for it in items:
            gi, name, _, shape, op, role, axis = it
            gain = gains[OP_TYPES.index(op), ROLE_ID[role]]

            def norm(raw: Tensor, role: str = role, shape: tuple = shape, op: str = op, gain: Tensor = gain,
                     axis: int | None = axis) -> Tensor:
                return normalize(raw, role, shape, op, gain, axis)

            if len(shape) >= 2:
                w = fit(mats[im], shape, op in ("conv", "conv_transpose"), norm)
                im += 1
            else:
                v = norm(vecs[iv])
                iv += 1
                n = int(torch.Size(shape).numel())
                w = v.repeat(-(-n // v.numel()))[:n].reshape(shape)
            p = models[gi].get_parameter(name)
            if self.mip_base == "init":  # residual around the target model's own (fresh) initialization theta0
                delta = w - 1.0 if role == "norm_weight" else w  # norm scales are predicted around 1
                w = p.detach().to(w) + self.mip_log_scale[ROLE_ID[role]].exp() * delta
            out[gi][name] = w.to(dtype=p.dtype)
        return out

    @torch.no_grad()
    def predict_into(self, model: nn.Module, example_inputs: Any = None) -> dict[str, Tensor]:
        """Write predicted parameters into ``model`` in place; returns them."""
        params = self.forward([model], example_inputs)[0]
        for name, w in params.items():
            model.get_parameter(name).copy_(w)
        return params

    # ----------------------------------------------------------- save / load
    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (see :mod:`wsl.hyper.hub`)."""
        from .hub import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> GraphHyperNetwork:
        from .hub import from_pretrained

        return from_pretrained(name_or_path)


class GHN2(GraphHyperNetwork):
    """GHN-2: gated graph network with forward / backward sweeps and virtual edges (see module docstring)."""

    kind = "ghn2"

    def __init__(self, hidden: int = 64, rounds: int = 1, **kwargs: Any) -> None:
        super().__init__(hidden, **kwargs)
        self.config["rounds"] = rounds
        self.rounds = rounds
        self.msg = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.msg_sp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.gru = nn.GRUCell(hidden, hidden)

    def encode(self, batch: GraphBatch) -> Tensor:
        h = self.embed(batch)
        for _ in range(self.rounds):
            for sweep in (batch.forward_sweep, batch.backward_sweep):
                for step in sweep:
                    if step.src.numel() == 0:
                        continue
                    hs = h[step.src]
                    real = (step.dist == 1).unsqueeze(1)
                    m = torch.where(real, self.msg(hs), self.msg_sp(hs) / step.dist.unsqueeze(1).to(h.dtype))
                    agg = scatter(m, step.dst, step.nodes.numel())
                    h = h.index_copy(0, step.nodes, self.gru(agg, h[step.nodes]))
        return h


class GHN3(GraphHyperNetwork):
    """GHN-3: graphormer layers with degree and shortest-path encodings (see module docstring)."""

    kind = "ghn3"

    def __init__(self, hidden: int = 64, layers: int = 3, heads: int = 4, max_degree: int = 16,
                 **kwargs: Any) -> None:
        super().__init__(hidden, **kwargs)
        if hidden % heads:
            raise ValueError(f"GHN3: hidden={hidden} must be divisible by heads={heads}")
        self.config.update(layers=layers, heads=heads, max_degree=max_degree)
        self.heads, self.max_degree = heads, max_degree
        self.in_deg = nn.Embedding(max_degree + 1, hidden)
        self.out_deg = nn.Embedding(max_degree + 1, hidden)
        n_spd = self.s_max + 2  # 0..s_max and "unreachable"
        self.spd_fwd = nn.Embedding(n_spd, heads * layers)
        self.spd_bwd = nn.Embedding(n_spd, heads * layers)
        self.ln1 = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
        self.qkv = nn.ModuleList([nn.Linear(hidden, 3 * hidden) for _ in range(layers)])
        self.proj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
        self.ff = nn.ModuleList([nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                               nn.Linear(2 * hidden, hidden)) for _ in range(layers)])

    def encode(self, batch: GraphBatch) -> Tensor:
        h = self.embed(batch)
        h = h + self.in_deg(batch.in_degree.clamp(max=self.max_degree))
        h = h + self.out_deg(batch.out_degree.clamp(max=self.max_degree))
        b, n = batch.mask.shape
        x = h.new_zeros(b, n, self.hidden)
        x[batch.mask] = h
        unreach = self.s_max + 1
        spd = torch.where(batch.spd < 0, torch.full_like(batch.spd, unreach), batch.spd)
        spd_t = spd.transpose(1, 2)
        bias = (self.spd_fwd(spd) + self.spd_bwd(spd_t)).permute(0, 3, 1, 2)  # [B, heads*layers, N, N]
        pad = (~batch.mask)[:, None, None, :]
        hd = self.hidden // self.heads
        for i in range(len(self.qkv)):
            bi = bias[:, i * self.heads:(i + 1) * self.heads].masked_fill(pad, float("-inf"))
            q, k, v = self.qkv[i](self.ln1[i](x)).view(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bi)
            x = x + self.proj[i](a.transpose(1, 2).reshape(b, n, self.hidden))
            x = x + self.ff[i](self.ln2[i](x))
        return x[batch.mask]


HYPERNETS: dict[str, type[GraphHyperNetwork]] = {"ghn2": GHN2, "ghn3": GHN3}
