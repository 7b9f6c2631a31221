"""ppuda's GHN-2 (Knyazev et al., *Parameter Prediction for Unseen Deep Architectures*, NeurIPS 2021), written
for wsl, predicting what the reference predicts from the published weights.

::

    from wsl.hyper.published import PublishedGHN2
    ghn = PublishedGHN2.from_checkpoint("ghn2_imagenet.pt")   # ppuda file (read safely), or a converted dir
    params = ghn.predict(torchvision.models.resnet50())        # {"conv1.weight": tensor, ...}
    ghn.set_parameters(model)                                  # writes them in place, BN in training mode

The pipeline (each step documented where it is implemented):

1. :class:`~.graph.PublishedGraph`: ppuda's graph of the model (autograd trace, filtered ops, virtual edges);
2. node features: op embedding ``embed`` + :class:`~.layers.ShapeEncoder` of each matched tensor's shape;
3. :class:`~.layers.GatedGNN` (forward + backward sweep), then ``ln`` (LayerNorm) when ``layernorm``;
4. per group of tensors (:func:`~.params.match`): ``decoder`` (:class:`~.layers.ConvDecoder`) for 2-D / 4-D
   weights (``class_pred`` for the classification weight); ``decoder_1d`` (an MLP to ``2 x max_ch``) for
   1-D tensors, read as two rows: row 0 a norm layer's weight, row 1 its bias (and every conv / linear
   bias); the classification bias goes through ``bias_class`` (ReLU + Linear ``max_ch -> num_classes``);
5. :func:`~.params.tile_corner` to each tensor's shape, then :func:`~.params.normalize` (``weight_norm``).

Only the released configuration is implemented: ``hypernet="gatedgnn"``, ``decoder="conv"`` (GHN-1's MLP
decoder and the MLP "GNN" are refused).
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
from .layers import ConvDecoder, GatedGNN, ShapeEncoder, mlp
from .params import Target, is_norm, layered_parameters, match, normalize, tile_corner


class PublishedGHN2(nn.Module):
    """ppuda's ``GHN`` with its parameter names (``embed``, ``shape_enc``, ``gnn``, ``ln``, ``decoder``,
    ``decoder_1d``, ``bias_class``), so a released state dict loads unchanged.

    Args:
        max_shape: ``(out, in, h, w)`` of the largest predicted block ((64, 64, 11, 11) for ImageNet,
            (64, 64, 3, 3) for CIFAR-10).
        num_classes: classes of the dataset it was trained on.
        hid: node embedding width (32 in the releases).
        ve: virtual edges up to shortest-path distance 50 (else only real edges).
        layernorm: a LayerNorm after the GNN.
        weight_norm: the per-tensor scaling of :func:`~.params.normalize`.
    """

    def __init__(self, max_shape: Sequence[int], num_classes: int, *, hid: int = 32, ve: bool = True,
                 layernorm: bool = True, weight_norm: bool = True, hypernet: str = "gatedgnn",
                 decoder: str = "conv", **ignored: Any) -> None:
        super().__init__()
        if hypernet != "gatedgnn" or decoder != "conv":
            raise HypernetError(f"only the released GHN-2 (hypernet='gatedgnn', decoder='conv') is implemented, "
                                f"not hypernet={hypernet!r}, decoder={decoder!r}")
        if len(max_shape) != 4:
            raise HypernetError(f"max_shape must be (out, in, h, w), got {max_shape}")
        self.max_shape = tuple(int(s) for s in max_shape)
        self.num_classes, self.ve, self.weight_norm = int(num_classes), bool(ve), bool(weight_norm)
        self.config = {"max_shape": self.max_shape, "num_classes": self.num_classes, "hid": hid, "ve": ve,
                       "layernorm": layernorm, "weight_norm": weight_norm, "hypernet": hypernet, "decoder": decoder}
        if layernorm:
            self.ln = nn.LayerNorm(hid)
        self.embed = nn.Embedding(len(PRIMITIVES), hid)
        self.shape_enc = ShapeEncoder(hid, num_classes, max_shape)
        self.gnn = GatedGNN(hid, ve=ve)
        self.decoder = ConvDecoder(hid, (hid * 4, hid * 8), max_shape, num_classes)
        max_ch = max(self.max_shape[:2])
        self.decoder_1d = mlp((hid, hid * 2, 2 * max_ch), last_relu=False)
        self.bias_class = nn.Sequential(nn.ReLU(), nn.Linear(max_ch, num_classes))

    @classmethod
    def from_checkpoint(cls, ckpt: PublishedCheckpoint | str | os.PathLike) -> PublishedGHN2:
        """A GHN-2 with the weights of a ppuda checkpoint (a path read by
        :func:`~wsl.hyper.published.read_checkpoint`, or what it returned), in eval mode."""
        if not isinstance(ckpt, PublishedCheckpoint):
            from . import read_checkpoint

            ckpt = read_checkpoint(ckpt)
        if not ckpt.is_ghn2:
            raise HypernetError(f"{ckpt.path}: a GHN-3 (Graphormer) checkpoint, not a GHN-2")
        cfg = dict(ckpt.config)
        missing = [k for k in ("max_shape", "num_classes") if k not in cfg]
        if missing:
            raise HypernetError(f"{ckpt.path}: its configuration lacks {missing}")
        ghn = cls(**cfg)
        result = ghn.load_state_dict(ckpt.state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise HypernetError(f"{ckpt.path}: the weights do not fit ppuda's GHN-2 with config {cfg} "
                                f"(missing: {result.missing_keys[:5]}, unexpected: {result.unexpected_keys[:5]})")
        return ghn.eval()

    # ------------------------------------------------------------------------------------------- pipeline
    def graph(self, model: nn.Module, **kwargs: Any) -> PublishedGraph:
        """The reference's graph of ``model`` (virtual edges up to 50 hops when ``ve``)."""
        return PublishedGraph.from_module(model, ve_cutoff=50 if self.ve else 1, **kwargs)

    def embeddings(self, model: nn.Module, graph: PublishedGraph | None = None) -> torch.Tensor:
        """``(N, hid)`` node embeddings after the GNN and layer norm (the reference's
        ``return_embeddings=True`` output), in ``graph`` node order."""
        graph = graph or self.graph(model)
        _, _, shapes = self._match(model, graph)
        return self._embed(graph, shapes)

    def _match(self, model: nn.Module, graph: PublishedGraph) -> tuple:
        assignments, groups, shapes = match(graph.param_nodes, layered_parameters(model), self.max_shape)
        per_node: list[Sequence[int] | None] = [None] * graph.n_nodes
        for node, shape in zip(graph.param_nodes, shapes):
            per_node[node.index] = shape
        return assignments, groups, per_node

    @torch.no_grad()
    def _embed(self, graph: PublishedGraph, shapes: Sequence[Sequence[int] | None]) -> torch.Tensor:
        dev = self.embed.weight.device
        x = self.shape_enc(self.embed(graph.node_types.to(dev)), shapes)
        x = self.gnn(x, graph.edges.to(dev))
        return self.ln(x) if hasattr(self, "ln") else x

    @torch.no_grad()
    def _decode(self, key: tuple[int, ...], x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The predicted blocks of one group and whether they are classification-layer tensors."""
        if len(key) == 2 and key[1] > 0:
            return self.decoder(x, (key[0], key[1], 1, 1), class_pred=True), True
        if len(key) == 2:
            w = self.decoder_1d(x).view(len(x), 2, -1)
            return (self.bias_class(w), True) if key[1] < 0 else (w, False)
        return self.decoder(x, key, class_pred=False), False

    @torch.no_grad()
    def predict(self, model: nn.Module, *, graph: PublishedGraph | None = None,
                predict_class_layers: bool = True) -> dict[str, torch.Tensor]:
        """Predicted tensors of ``model``, ``{parameter name: tensor}`` (the model is not changed). Tensors
        the reference does not predict (no graph node: unsupported module types, unused parameters) are
        absent; ``predict_class_layers=False`` leaves out the classification weight and bias (the
        reference's fine-tuning mode)."""
        graph = graph or self.graph(model)
        assignments, groups, shapes = self._match(model, graph)
        x = self._embed(graph, shapes)
        by_key: dict[tuple[int, ...], list] = {}
        for a in assignments:
            by_key.setdefault(a.key, []).append(a)
        out: dict[str, torch.Tensor] = {}
        for key, inds in groups.items():
            w, is_cls = self._decode(key, x[torch.tensor(inds, device=x.device)])
            if is_cls and not predict_class_layers:
                continue
            for a in by_key[key]:
                out.update(self._assign(w[a.slot], a.target, key))
        return out

    def _assign(self, w: torch.Tensor, target: Target, key: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """One node's block to its tensor(s): a 1-D weight is a norm layer's and also gives its bias."""
        if len(target.shape) != 1:
            return {target.name: self._finish(w, target.shape, True)}
        if not target.is_w:
            return {target.name: self._finish(w[1], target.shape, False)}
        if not is_norm(target.module) or getattr(target.module, "bias", None) is None or key[1] != 0:
            raise HypernetError(f"{target.name}: a 1-D weight outside a norm layer with a bias; the reference "
                                "predicts 1-D weights only together with the bias of a norm layer that is not the last node")
        bias = f"{target.module_name}.bias"
        return {target.name: self._finish(w[0], target.shape, True),
                bias: self._finish(w[1], target.shape, False)}

    def _finish(self, w: torch.Tensor, shape: Sequence[int], is_w: bool) -> torch.Tensor:
        w = tile_corner(w, shape)
        return (normalize(w, is_w) if self.weight_norm else w).clone()

    def set_parameters(self, model: nn.Module, *, bn_train: bool = True, predict_class_layers: bool = True,
                       graph: PublishedGraph | None = None) -> dict[str, torch.Tensor]:
        """Predict and copy into ``model`` in place; returns the predictions. With ``bn_train`` (the
        reference's default) every ``BatchNorm2d`` is put in training mode without running statistics, so
        the predicted network normalizes with batch statistics. Parameters not predicted keep their values
        (see :meth:`unpredicted`)."""
        pred = self.predict(model, graph=graph, predict_class_layers=predict_class_layers)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in pred.items():
                params[name].copy_(t)
        if bn_train:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.track_running_stats = False
                    m.training = True
        return pred

    @staticmethod
    def unpredicted(model: nn.Module, predicted: dict[str, torch.Tensor]) -> list[str]:
        """Parameter names of ``model`` absent from ``predicted`` (the reference would set them to None)."""
        return [n for n, _ in model.named_parameters() if n not in predicted]
