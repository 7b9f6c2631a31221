"""ghn3's GHN-3 (Knyazev et al., *Can We Scale Transformers to Predict Parameters of Diverse ImageNet Models?*,
ICML 2023), written for wsl, predicting what the reference predicts from the released weights.

::

    from wsl.hyper.published import PublishedGHN3
    ghn = PublishedGHN3.from_checkpoint("ghn3xlm16.pt")      # joblib release (read safely), training
                                                              # checkpoint, or a converted directory
    params = ghn.predict(torchvision.models.resnet50())       # {"conv1.weight": tensor, ...}
    ghn.set_parameters(model)                                 # writes them in place

The pipeline (each step documented where it is implemented):

1. :func:`~.graph3.ghn3_graph`: ghn3's graph of the model (autograd trace, filtering, rewiring, virtual edges);
2. node features: op embedding ``embed`` + :class:`~.layers.ShapeEncoder` of each matched tensor's shape
   (:func:`~.params.match3`);
3. :class:`~.graphormer.Graphormer` on the dense distance matrix (a GHN-2 checkpoint in ghn3's class:
   :class:`~.layers.GatedGNN` on the edge list), then ``ln`` when ``layernorm``;
4. per group of tensors: ``decoder`` (:class:`~.layers.ConvDecoder3`) for 2-D / 4-D weights and positional
   embeddings (``class_pred`` for the classification weight); ``decoder_1d`` for 1-D tensors, read as rows
   (row 0 a norm layer's weight, row 1 its bias and every other bias); ``bias_class`` for the
   classification bias;
5. :func:`~.params.tile_centred` to each tensor's shape, then :func:`~.params.normalize` (``weight_norm``;
   positional embeddings are not scaled).

Differences from calling the reference, none of which changes a predicted value: the model is not modified by
:meth:`predict` (the reference writes into it and its graph pass updates BatchNorm statistics); the class
token of a ViT's positional embedding is drawn from ``generator`` instead of torch's global generator; graphs
are not batched (one model at a time); the reference's training options (``keep_grads``, ``reduce_graph``,
which prunes unmatched modules) are not offered.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..hub import HypernetError
from .files import PublishedCheckpoint
from .graph import PRIMITIVES, PublishedGraph
from .graph3 import dense_adjacency, ghn3_graph
from .graphormer import Graphormer
from .layers import ConvDecoder3, GatedGNN, ShapeEncoder, mlp
from .params import Target3, layered_parameters3, match3, normalize, tile_centred

_TOP_LEVEL_EMBEDDINGS = ("centrality_embed_in", "centrality_embed_out", "input_dist_embed")


class PublishedGHN3(nn.Module):
    """ghn3's ``GHN3`` with its parameter names (``embed``, ``shape_enc``, ``gnn``, ``ln``, ``decoder``,
    ``decoder_1d``, ``bias_class``), so a released state dict loads unchanged.

    Args:
        max_shape: ``(out, in, h, w)`` of the largest predicted block ((64, 64, 16, 16) for the ImageNet
            releases; the spatial slots must be square).
        num_classes: classes of the dataset it was trained on.
        hid: node embedding width (64 for ``ghn3tm8`` ...).
        heads: attention heads; layers: Graphormer layers.
        is_ghn2: a gated GNN instead of the Graphormer (ghn3's class holding GHN-2 weights: its graph,
            decoder and tiling, spatial slots read from the corner).
        ve: virtual edges up to shortest-path distance 50 (else only real edges).
        layernorm: a LayerNorm after the GNN.
        weight_norm: the per-tensor scaling of :func:`~.params.normalize`.
        pretrained: accepted for compatibility (the layout of the centrality embeddings in a state dict: at the
            top level or in ``gnn.0``; both load).
    """

    def __init__(self, max_shape: Sequence[int], num_classes: int, hid: int, *, heads: int = 8, layers: int = 3,
                 is_ghn2: bool = False, ve: bool = True, layernorm: bool = True, weight_norm: bool = True,
                 pretrained: bool = False, hypernet: str = "gatedgnn", **ignored: Any) -> None:
        super().__init__()
        if len(max_shape) != 4:
            raise HypernetError(f"max_shape must be (out, in, h, w), got {max_shape}")
        if is_ghn2 and hypernet != "gatedgnn":
            raise HypernetError(f"only the gated-GNN GHN-2 is implemented, not hypernet={hypernet!r}")
        self.max_shape = tuple(int(s) for s in max_shape)
        self.num_classes, self.ve, self.weight_norm = int(num_classes), bool(ve), bool(weight_norm)
        self.is_ghn2 = bool(is_ghn2)
        self.config = {"max_shape": self.max_shape, "num_classes": self.num_classes, "hid": hid, "heads": heads,
                       "layers": layers, "is_ghn2": self.is_ghn2, "ve": ve, "layernorm": layernorm,
                       "weight_norm": weight_norm}
        if layernorm:
            self.ln = nn.LayerNorm(hid)
        self.embed = nn.Embedding(len(PRIMITIVES), hid)
        self.shape_enc = ShapeEncoder(hid, num_classes, max_shape)
        self.gnn: nn.Module = GatedGNN(hid, ve=ve) if is_ghn2 else Graphormer(hid, layers, heads)
        self.decoder = ConvDecoder3(hid, (hid * 4, hid * 8), max_shape, num_classes, corner=self.is_ghn2)
        max_ch = max(self.max_shape[:2])
        self.decoder_1d = mlp((hid, hid * 2, 2 * max_ch), last_relu=False)
        self.bias_class = nn.Sequential(nn.ReLU(), nn.Linear(max_ch, num_classes))

    @classmethod
    def from_checkpoint(cls, ckpt: PublishedCheckpoint | str | os.PathLike) -> PublishedGHN3:
        """A GHN-3 with the weights of a ghn3 file (a path read by :func:`~wsl.hyper.published.read_checkpoint`,
        or what it returned), in eval mode. Like ghn3's ``from_pretrained``, GHN-2 weights are accepted (4-D
        decoder weights squeezed) and run as ghn3's class runs them."""
        if not isinstance(ckpt, PublishedCheckpoint):
            from . import read_checkpoint

            ckpt = read_checkpoint(ckpt)
        cfg = dict(ckpt.config)
        missing = [k for k in ("max_shape", "num_classes", "hid") if k not in cfg]
        if missing:
            raise HypernetError(f"{ckpt.path}: its configuration lacks {missing}")
        cfg["is_ghn2"] = ckpt.is_ghn2
        ghn = cls(**cfg)
        state = {}
        for k, v in ckpt.state_dict.items():
            if k.split(".")[0] in _TOP_LEVEL_EMBEDDINGS:  # a `pretrained=True` layout: moved as fix_embed_layers does
                k = "gnn.0." + k
            elif ckpt.is_ghn2 and k.startswith("decoder.") and v.dim() == 4:
                v = v.squeeze()
            state[k] = v
        result = ghn.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise HypernetError(f"{ckpt.path}: the weights do not fit ghn3's GHN3 with config {cfg} "
                                f"(missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]})")
        return ghn.eval()

    # ------------------------------------------------------------------------------------------- pipeline
    def graph(self, model: nn.Module, **kwargs: Any) -> PublishedGraph:
        """ghn3's graph of ``model`` (virtual edges up to 50 hops when ``ve``)."""
        return ghn3_graph(model, ve_cutoff=50 if self.ve else 1, **kwargs)

    def embeddings(self, model: nn.Module, graph: PublishedGraph | None = None) -> torch.Tensor:
        """``(N, hid)`` node embeddings after the GNN and layer norm (the reference's
        ``return_embeddings=True`` output), in ``graph`` node order."""
        graph = graph or self.graph(model)
        _, _, shapes = self._match(model, graph)
        return self._embed(graph, shapes)

    def _match(self, model: nn.Module, graph: PublishedGraph) -> tuple:
        assignments, groups, shapes = match3(graph.param_nodes, layered_parameters3(model), self.max_shape)
        per_node: list[Sequence[int] | None] = [None] * graph.n_nodes
        for node, shape in zip(graph.param_nodes, shapes):
            per_node[node.index] = shape
        return assignments, groups, per_node

    @torch.no_grad()
    def _embed(self, graph: PublishedGraph, shapes: Sequence[Sequence[int] | None]) -> torch.Tensor:
        dev = self.embed.weight.device
        x = self.shape_enc(self.embed(graph.node_types.to(dev)), shapes)
        if self.is_ghn2:
            x = self.gnn(x, graph.edges.to(dev))
        else:
            x = self.gnn(x, dense_adjacency(graph).to(dev))
        return self.ln(x) if hasattr(self, "ln") else x

    @torch.no_grad()
    def _decode(self, key: tuple[int, ...], x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The predicted blocks of one group and whether they are classification-layer tensors."""
        if len(key) == 2 and key[1] > 0:
            return self.decoder(x, (key[0], key[1], 1, 1), class_pred=True), True
        if len(key) == 2:
            w = self.decoder_1d(x).view(len(x), 2, -1)
            return (self.bias_class(w), True) if key[1] < 0 else (w, False)
        if len(key) == 3:
            return self.decoder_1d(x).view(len(x), -1, 1, 1), False
        return self.decoder(x, key, class_pred=False), False

    @torch.no_grad()
    def predict(self, model: nn.Module, *, graph: PublishedGraph | None = None, predict_class_layers: bool = True,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Predicted tensors of ``model``, ``{parameter name: tensor}`` (the model is not changed). Tensors
        the reference does not predict (no graph node: unsupported module types, unused parameters) are
        absent; ``predict_class_layers=False`` leaves out the classification weight and bias (the
        reference's fine-tuning mode). ``generator`` draws the class token of a ViT's positional embedding
        (the only random part; the reference uses torch's global generator)."""
        graph = graph or self.graph(model)
        assignments, groups, shapes = self._match(model, graph)
        x = self._embed(graph, shapes)
        by_key: dict[tuple[int, ...], list] = {}
        for a in assignments:
            by_key.setdefault(a[2], []).append(a)
        out: dict[str, torch.Tensor] = {}
        for key, inds in groups.items():
            w, is_cls = self._decode(key, x[torch.tensor(inds, device=x.device)])
            if is_cls and not predict_class_layers:
                continue
            for _, target, _, slot in by_key[key]:
                out.update(self._assign(w[slot], target, generator))  # matched twice: the last write wins
        return out

    def _assign(self, w: torch.Tensor, target: Target3, generator: torch.Generator | None
                ) -> dict[str, torch.Tensor]:
        """One node's block to its tensor(s): a 1-D weight also gives its module's bias (row 1)."""
        if len(target.shape) != 1:
            return {target.param(): self._finish(w, target.shape, True, generator)}
        if not target.is_w:
            return {target.param(): self._finish(w[1], target.shape, False, generator)}
        out = {target.param(): self._finish(w[0], target.shape, True, generator)}
        if not isinstance(getattr(target.module, "bias", None), torch.Tensor):
            raise HypernetError(f"{target.param()}: a 1-D weight of a module without a bias; the reference predicts "
                                "1-D weights together with their module's bias and fails here")
        out[target.param("bias")] = self._finish(w[1], target.shape, False, generator)
        return out

    def _finish(self, w: torch.Tensor, shape: Sequence[int], is_w: bool, generator: torch.Generator | None
                ) -> torch.Tensor:
        w = tile_centred(w, shape, corner=self.is_ghn2, generator=generator)
        return (normalize(w, is_w, positional=True) if self.weight_norm else w).clone()

    def set_parameters(self, model: nn.Module, *, bn_track_running_stats: bool = True,
                       predict_class_layers: bool = True, graph: PublishedGraph | None = None,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Predict and copy into ``model`` in place; returns the predictions. ``bn_track_running_stats=False``
        (the reference's evaluation setting; its default is True) puts every ``BatchNorm2d`` in training mode
        without running statistics, so the predicted network normalizes with batch statistics. Parameters
        not predicted keep their values (see :meth:`unpredicted`)."""
        pred = self.predict(model, graph=graph, predict_class_layers=predict_class_layers, generator=generator)
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, t in pred.items():
                params[name].copy_(t)
        if not bn_track_running_stats:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.track_running_stats = False
                    m.training = True
        return pred

    @staticmethod
    def unpredicted(model: nn.Module, predicted: dict[str, torch.Tensor]) -> list[str]:
        """Parameter names of ``model`` absent from ``predicted`` (the reference leaves them as they are)."""
        return [n for n, _ in model.named_parameters() if n not in predicted]
