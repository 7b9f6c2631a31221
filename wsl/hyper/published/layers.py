"""The building blocks of ppuda's GHN-2, with the reference's parameter names (its state dicts load as is).

* :class:`ShapeEncoder`: each node's parameter shape as four embedding rows (out / in channels, height,
  width) added to the op embedding;
* :class:`GatedGNN`: one forward and one backward sweep over the nodes in order, a shared GRU cell;
* :class:`ConvDecoder`: a node embedding to an ``(out, in, h, w)`` block of at most ``max_shape``;
* :func:`mlp`: ppuda's ``MLP`` (a ``fc`` ``Sequential`` of Linear / activation pairs).

The GHN-3 reuses the shape encoder, the 1-D decoder and (when it is a GHN-2) the gated GNN; its
:class:`ConvDecoder3` is the conv decoder with linear layers and centred spatial slots.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..hub import HypernetError


class _MLP(nn.Module):
    def __init__(self, sizes: Sequence[int], last_relu: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for j in range(len(sizes) - 1):
            last = j == len(sizes) - 2
            layers += [nn.Linear(sizes[j], sizes[j + 1]), nn.ReLU() if (last_relu or not last) else nn.Identity()]
        self.fc = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def mlp(sizes: Sequence[int], *, last_relu: bool = True) -> nn.Module:
    """ppuda's ``MLP(sizes[0], hid=sizes[1:])``: Linear + ReLU pairs; the last ReLU is an identity with
    ``last_relu=False`` (ppuda's ``last_activation=None``). Parameters ``fc.0.weight``, ``fc.2.weight``..."""
    return _MLP(sizes, last_relu)


# ------------------------------------------------------------------------------------------- shapes
_CHANNEL_OVERRIDES = {c: 8 for c in range(4, 8)}  # 4-7 channels are read as 8
_SPATIAL_OVERRIDES = {2: 3}  # a 2x2 kernel is read as 3x3


def shape_to_4d(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """The reference reads every parameter shape as ``(out, in, h, w)``: ``(n,)`` -> ``(n, 1, 1, 1)``,
    ``(n, m)`` -> ``(n, m, 1, 1)``, ``(1, t, c)`` with ``t, c > 1`` (a positional embedding) ->
    ``(1, c, s, s)`` with ``s = floor(sqrt(t))``, other 3-D ``(a, b, c)`` -> ``(a, b, c, 1)``."""
    s = tuple(int(v) for v in shape)
    if len(s) == 1:
        return (s[0], 1, 1, 1)
    if len(s) == 2:
        return (s[0], s[1], 1, 1)
    if len(s) == 3:
        if s[0] == 1 and min(s[1:]) > 1:
            side = int(s[1] ** 0.5)
            return (1, s[2], side, side)
        return (s[0], s[1], s[2], 1)
    if len(s) == 4:
        return s  # type: ignore[return-value]
    raise HypernetError(f"the GHN-2 encodes parameter shapes of 1 to 4 dimensions, not {s}")


class ShapeEncoder(nn.Module):
    """Adds ``[E_c(out) | E_c(in) | E_s(h) | E_s(w)]`` (each ``hid // 4`` wide) to each node's embedding.

    The reference's vocabularies: channels ``{1, 3, num_classes} ∪ 8..56 step 8 ∪ 64..4080 step 16 ∪
    4096..8192 step 32``; spatial sizes: the odd ones below ``max(12, max_shape[3])``, ``14`` and ``16``.
    A size outside them maps to the nearest entry (ties: the smaller), with overrides: 4-7 channels count as
    8 (even ``num_classes`` in 4-7), a 2x2 kernel as 3x3, and sizes beyond the largest entry (or 0) as the
    largest. Nodes without a parameter shape use the extra last row of each table.

    Parameters (reference names): ``embed_channel.weight (n_channels + 1, hid // 4)``,
    ``embed_spatial.weight (n_spatial + 1, hid // 4)``.
    """

    def __init__(self, hid: int, num_classes: int, max_shape: Sequence[int]) -> None:
        super().__init__()
        if max_shape[2] != max_shape[3]:
            raise HypernetError(f"the GHN-2 shape encoder needs square spatial slots, got max_shape {max_shape}")
        self.channels = sorted({1, 3, int(num_classes), *range(8, 64, 8), *range(64, 4096, 16),
                                *range(4096, 8192 + 1, 32)})
        self.spatial = sorted({*range(1, max(12, int(max_shape[3])), 2), 14, 16})
        self.embed_spatial = nn.Embedding(len(self.spatial) + 1, hid // 4)
        self.embed_channel = nn.Embedding(len(self.channels) + 1, hid // 4)

    @staticmethod
    def _index(values: list[int], overrides: dict[int, int], v: int) -> int:
        v = overrides.get(v, v)
        j = bisect.bisect_left(values, v)
        if j < len(values) and values[j] == v:
            return j
        if not 1 <= v < values[-1]:
            return len(values) - 1
        return j - 1 if j > 0 and v - values[j - 1] <= values[j] - v else j

    def indices(self, shapes: Sequence[Sequence[int] | None]) -> torch.Tensor:
        """``(N, 4)`` table rows of each node's shape (``None``: the "no shape" rows)."""
        n_ch, n_sp = len(self.channels), len(self.spatial)
        out = torch.tensor([n_ch, n_ch, n_sp, n_sp], dtype=torch.long).repeat(len(shapes), 1)
        for i, shape in enumerate(shapes):
            if shape is None:
                continue
            s = shape_to_4d(shape)
            out[i, 0], out[i, 1] = (self._index(self.channels, _CHANNEL_OVERRIDES, c) for c in s[:2])
            out[i, 2], out[i, 3] = (self._index(self.spatial, _SPATIAL_OVERRIDES, c) for c in s[2:])
        return out

    def forward(self, x: torch.Tensor, shapes: Sequence[Sequence[int] | None]) -> torch.Tensor:
        ind = self.indices(shapes).to(x.device)
        return x + torch.cat((self.embed_channel(ind[:, 0]), self.embed_channel(ind[:, 1]),
                              self.embed_spatial(ind[:, 2]), self.embed_spatial(ind[:, 3])), dim=1)


# ------------------------------------------------------------------------------------------- gated GNN
class GatedGNN(nn.Module):
    """Zhang et al.'s gated GNN as ppuda runs it (GHN-2 paper, Eq. 3-4), on one graph.

    Nodes are updated one at a time: first in increasing index order using the edges *into* each node
    (forward sweep), then in decreasing order using the edges *out of* it (backward sweep); ``T`` such
    rounds (1 in the released models). Node ``v`` receives
    ``m_v = sum_{u: d(u,v)=1} MLP(h_u) + sum_{u: edge of any distance d} MLP_ve(h_u) / d`` (so a real edge
    feeds both MLPs; without ``ve`` only the first sum) and is updated at once, ``h_v <- GRU(m_v, h_v)``, so
    later nodes of the sweep see it. Sums run over the edges in ``edges`` order.

    Parameters (reference names): ``mlp.fc.{0,2}`` (hid -> hid/2 -> hid with ``ve``, else hid -> hid -> hid,
    ReLU after both), ``mlp_ve.fc.{0,2}`` (hid -> hid/2 -> hid), ``gru`` (a ``GRUCell(hid, hid)``).

    Shapes:
        x: (N, hid); edges: (E, 3) long ``[source, target, distance]`` -> (N, hid)
    """

    def __init__(self, hid: int = 32, ve: bool = True, T: int = 1) -> None:
        super().__init__()
        self.ve, self.T = ve, T
        self.mlp = mlp((hid, hid // 2 if ve else hid, hid))
        if ve:
            self.mlp_ve = mlp((hid, hid // 2, hid))
        self.gru = nn.GRUCell(hid, hid)

    @staticmethod
    def _neighbours(edges: torch.Tensor, n: int, side: int) -> list[tuple[torch.Tensor, torch.Tensor,
                                                                         torch.Tensor]]:
        """Per node: (1-hop neighbours, all neighbours, their distances) along edges whose ``side`` is it."""
        other, dist = edges[:, 1 - side], edges[:, 2]
        out = []
        order = torch.argsort(edges[:, side], stable=True)
        counts = torch.bincount(edges[:, side], minlength=n).tolist()
        start = 0
        for c in counts:
            e = order[start:start + c]
            start += c
            d = dist[e]
            out.append((other[e][d == 1], other[e], d.view(-1, 1)))
        return out

    def forward(self, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        n, c = x.shape
        h = x.clone()
        sweeps = [(range(n), self._neighbours(edges, n, 1)), (range(n - 1, -1, -1), self._neighbours(edges, n, 0))]
        for _ in range(self.T):
            for nodes, neigh in sweeps:
                for v in nodes:
                    one_hop, all_hops, dist = neigh[v]
                    m = torch.zeros(1, c, dtype=x.dtype, device=x.device)
                    if len(one_hop):
                        msg = self.mlp(h[one_hop])
                        m = m.scatter_add_(0, torch.zeros_like(msg, dtype=torch.long), msg)
                    if self.ve and len(all_hops):
                        msg = self.mlp_ve(h[all_hops]) / dist.to(x)
                        m = m.scatter_add_(0, torch.zeros_like(msg, dtype=torch.long), msg)
                    h[v:v + 1] = self.gru(m, h[v:v + 1])
        return h


# ------------------------------------------------------------------------------------------- decoder
class ConvDecoder(nn.Module):
    """A node embedding to a parameter block of at most ``max_shape = (O, I, H, W)``.

    ``fc`` maps the embedding to ``hid[0]`` maps of ``H x W``; two 1x1 convolutions map those to ``O * I``
    channels, read as an ``(O, I, H, W)`` block. Asked for a block of shape ``(o, i, h, w)`` (the grouping
    key of :mod:`.params`), the reference computes only what it needs:

    * spatial: when ``h + w < H + W`` only the ``fc`` rows of the top-left ``h x w`` corner; otherwise all,
      cropped to the corner; the block's spatial size is ``(min(H, h), min(W, w))``;
    * channels, when ``i <= I / 2`` or (``o < O`` and not the classifier): only the rows of the last conv for
      ``n_out`` outputs (``O`` for the classifier, else ``min(O, o)``) and ``n_in`` inputs (``i / 3 * 4`` for
      ``i < I`` divisible by 3, else ``min(i, I)``): of each output's ``I`` rows the first ``n_in``, taken
      as every ``I // n_in``-th run of ``n_in`` consecutive rows (exact when ``n_in`` divides ``I``; the
      reference fails when the run count does not come out as ``n_out``, e.g. ``i = 10``); the block keeps
      its first ``min(I, i)`` inputs and is tiled 2x2 spatially when ``min(h, w) > min(H, W)``;
    * the classifier (``class_pred``) maps the block's first spatial column through ``ReLU`` and a 1x1
      conv from ``O`` to ``num_classes`` channels: ``(N, num_classes, in)``.

    Parameters (reference names): ``fc.0``, ``conv.0``, ``conv.2``, ``class_layer_predictor.1``.
    """

    def __init__(self, in_features: int, hid: Sequence[int], out_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(hid) != 2:
            raise HypernetError(f"the GHN-2 conv decoder has two hidden widths, got {tuple(hid)}")
        self.out_shape = tuple(int(s) for s in out_shape)
        o, i, h, w = self.out_shape
        self.fc = nn.Sequential(nn.Linear(in_features, hid[0] * h * w), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(hid[0], hid[1], 1), nn.ReLU(), nn.Conv2d(hid[1], o * i, 1), nn.Identity())
        self.class_layer_predictor = nn.Sequential(nn.ReLU(), nn.Conv2d(o, num_classes, 1))

    def forward(self, x: torch.Tensor, shape: Sequence[int], class_pred: bool = False) -> torch.Tensor:
        n = len(x)
        O, I, H, W = self.out_shape
        h, w = int(shape[2]), int(shape[3])
        if h + w < H + W:
            rows = torch.arange(self.fc[0].out_features, device=x.device).view(-1, H, W)[:, :h, :w].flatten()
            x = F.relu(F.linear(x, self.fc[0].weight[rows], self.fc[0].bias[rows])).view(n, -1, h, w)
        else:
            x = self.fc(x).view(n, -1, H, W)[:, :, :h, :w]
        oh, ow = min(H, h), min(W, w)
        if int(shape[1]) <= I // 2 or (int(shape[0]) < O and not class_pred):
            x = self.conv[1](self.conv[0](x))
            n_in = int(shape[1]) // 3 * 4 if int(shape[1]) < I and int(shape[1]) % 3 == 0 else min(int(shape[1]), I)
            n_out = O if class_pred else min(O, int(shape[0]))
            rows = torch.arange(n_out * I, device=x.device)
            if n_in < I:
                if (n_out * I) % n_in or len(range(0, n_out * I // n_in, I // n_in)) != n_out:
                    raise HypernetError(
                        f"the reference GHN-2 decoder cannot produce a parameter block with {shape[1]} input "
                        f"channels (grouping key {tuple(shape)}): its {n_out} x {I} output rows do not split into "
                        f"runs of {n_in}; ppuda's GHN-2 fails on this model too")
                rows = rows.reshape(-1, n_in)[:: I // n_in].flatten()
            x = F.conv2d(x, self.conv[2].weight[rows], self.conv[2].bias[rows])
            x = x.reshape(n, n_out, n_in, oh, ow)[:, :, :min(I, int(shape[1]))]
            if min(h, w) > min(oh, ow):
                x = x.repeat((1, 1, 1, 2, 2))
        else:
            x = self.conv(x).view(n, O, -1, oh, ow)
        if class_pred:
            x = self.class_layer_predictor(x[:, :, :, :, 0])[:, :, :, 0]
        return x


class ConvDecoder3(ConvDecoder):
    """ghn3's decoder: :class:`ConvDecoder` with its 1x1 convolutions stored as ``nn.Linear`` (same names,
    2-D weights) and, for a GHN-3, the spatial slots read from the centre.

    For a grouping key ``(o, i, h, w)``: ``fc`` gives ``hid[0]`` maps of ``H x W`` (all of them); a GHN-3 keeps
    the centred window ``[H/2 - h//2, H/2 + ceil(h/2))`` (clipped at 0; ``H/2`` is used for both axes), a GHN-2
    (``corner=True``) the top-left ``h x w`` corner; ``conv`` maps each pixel to ``O * I`` values read as an
    ``(O, I, h', w')`` block (``h' = min(H, h)``), of which the first ``i`` inputs are kept. A kernel larger
    than the slots (``min(h, w) > min(h', w')``) is resized bilinearly to ``h x w`` (the reference allows this
    only for a group of one tensor). The classifier (``class_pred``) reads the block's centre pixel through
    ``class_layer_predictor`` (ReLU, Linear ``O -> num_classes``): ``(N, num_classes, i)``; otherwise the
    first ``o`` outputs are kept: ``(N, o, i, h, w)``.

    Parameters (reference names): ``fc.0``, ``conv.0``, ``conv.2``, ``class_layer_predictor.1``.
    """

    def __init__(self, in_features: int, hid: Sequence[int], out_shape: Sequence[int], num_classes: int, *,
                 corner: bool = False) -> None:
        super().__init__(in_features, hid, out_shape, num_classes)
        o, i = self.out_shape[:2]
        self.corner = corner
        self.conv = nn.Sequential(nn.Linear(hid[0], hid[1]), nn.ReLU(), nn.Linear(hid[1], o * i), nn.Identity())
        self.class_layer_predictor = nn.Sequential(nn.ReLU(), nn.Linear(o, num_classes))

    def forward(self, x: torch.Tensor, shape: Sequence[int], class_pred: bool = False) -> torch.Tensor:
        n = len(x)
        O, I, H, W = self.out_shape
        o, i, h, w = (int(s) for s in shape)
        x = self.fc(x).view(n, -1, H, W)
        if self.corner:
            x = x[:, :, :h, :w]
        else:
            c = H // 2
            x = x[:, :, max(0, c - h // 2):c + math.ceil(h / 2), max(0, c - w // 2):c + math.ceil(w / 2)]
        oh, ow = min(H, h), min(W, w)
        x = self.conv(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x.reshape(n, O, I, oh, ow)[:, :, :i, :h, :w]
        if min(h, w) > min(oh, ow):
            if n != 1:
                raise HypernetError(f"the reference GHN-3 resizes kernels larger than its {H}x{W} slots one tensor "
                                    f"at a time and fails on a group of {n} tensors of grouping key {tuple(shape)}")
            x = F.interpolate(x[0], (h, w), mode="bilinear").unsqueeze(0)
        if class_pred:
            if x.shape[-2] != x.shape[-1]:
                raise HypernetError(f"the reference GHN-3 needs a square block for a classifier, got {tuple(x.shape)}")
            k = x.shape[-1] // 2
            return self.class_layer_predictor(x[:, :, :, k, k].permute(0, 2, 1)).permute(0, 2, 1)
        return x[:, :o]
