"""The configuration of a published GHN, from its file or inferred from its state-dict keys.

The ghn3 releases store no configuration; the reference infers it from parameter names and shapes assuming its
training defaults, and so does :func:`infer_config` (same rules, same defaults):

* GHN-2 vs GHN-3: a gated GNN (``gnn.gru.*`` parameters) is a GHN-2, otherwise a Graphormer GHN-3;
* ``num_classes``: rows of the first ``class_layer_predictor`` parameter (10 when there is none);
* ``hid``: width of the op embedding ``embed.weight``;
* ``max_shape``: ``(m, m, s, s)`` with ``m^2`` the output channels of ``decoder.conv.2`` and ``s`` the spatial
  size: 11 when ``shape_enc.embed_spatial`` has 9 rows, else 16 (without it: 16 for >= 1000 classes, else 11);
* ``layers``: the number of GNN layers with a ``ln1`` LayerNorm; ``heads``: 16 above width 64, else 8;
* ``layernorm``: a top-level ``ln`` LayerNorm exists; ``pretrained``: centrality embeddings outside the GNN;
* ``weight_norm`` and ``ve`` (virtual edges): always on for the released models.

ppuda files and ghn3 training checkpoints carry their ``config``; it is kept as stored (lists made tuples)
and ``is_ghn2`` added from the keys, as the reference does. A stored ``is_ghn2`` that contradicts the keys is
an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..hub import HypernetError


def is_ghn2(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """A GHN-2 has a gated GNN (GRU cell parameters under ``gnn.gru.``)."""
    return any("gnn.gru." in k for k in state_dict)


def infer_config(state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> dict[str, Any]:
    """The constructor arguments of the reference GHN that owns ``state_dict`` (module docstring)."""
    keys = list(state_dict)
    if "embed.weight" not in state_dict and not any(k.endswith("embed.weight") for k in keys):
        raise HypernetError(f"{source}: no op embedding ('embed.weight') among its {len(keys)} tensors "
                            f"(first keys: {keys[:4]}); this is not a GHN-2 / GHN-3 state dict")
    num_classes = next((len(v) for k, v in state_dict.items() if "class_layer_predictor" in k), 10)
    spatial = 16 if num_classes >= 1000 else 11
    hid = None
    max_side = 64
    layers = 0
    layernorm = pretrained = False
    for k, v in state_dict.items():
        if k.endswith("ln.weight"):
            layernorm = True
        elif k.endswith("embed.weight"):
            hid = int(v.shape[-1]) if k == "embed.weight" or hid is None else hid
        elif k.endswith("decoder.conv.2.weight"):
            max_side = math.isqrt(len(v))
        elif k.endswith("shape_enc.embed_spatial.weight"):
            spatial = 11 if len(v) == 9 else 16
        elif k.endswith("ln1.weight") and "gnn." in k:
            layers += 1
        elif "centrality_embed_in" in k and "gnn." not in k:
            pretrained = True
    return {"hid": hid, "max_shape": (max_side, max_side, spatial, spatial), "num_classes": num_classes,
            "heads": 16 if hid > 64 else 8, "layers": layers, "is_ghn2": is_ghn2(state_dict), "weight_norm": True,
            "ve": True, "layernorm": layernorm, "pretrained": pretrained}


def stored_config(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *,
                  source: str = "checkpoint") -> dict[str, Any]:
    """A configuration stored with the weights, normalized (lists -> tuples) and with ``is_ghn2`` checked."""
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    ghn2 = is_ghn2(state_dict)
    if "is_ghn2" in cfg and bool(cfg["is_ghn2"]) != ghn2:
        raise HypernetError(f"{source}: its config says is_ghn2={cfg['is_ghn2']} but its weights are those of a "
                            f"{'GHN-2 (gated GNN)' if ghn2 else 'GHN-3 (Graphormer)'}")
    cfg["is_ghn2"] = ghn2
    if "max_shape" in cfg and len(cfg["max_shape"]) != 4:
        raise HypernetError(f"{source}: config max_shape {cfg['max_shape']} is not (out, in, h, w)")
    return cfg
