"""Metanetworks: permutation- (and scale-) equivariant GNNs over batches of parameter graphs.

>>> from wsl.nn import GMN                               # doctest: +SKIP
>>> logits = GMN(out_dim=10)(batch)                      # batch: PyG Batch of wsl.to_graph(...) graphs
"""

from . import scatter
from .baselines import NFN, StatNN, batch_tensors
from .context import GraphContext
from .dwsnet import DWSNet
from .encoders import FourierFeatures, GraphEncoder, StructureEncoder
from .models import GMN, NGGNN, MetaNetwork, RelationalTransformer, ScaleGMN
from .readout import MetaOutput, apply_outputs, state_dicts

__all__ = [
           "GMN",
           "NFN",
           "NGGNN",
           "DWSNet",
           "FourierFeatures",
           "GraphContext",
           "GraphEncoder",
           "MetaNetwork",
           "MetaOutput",
           "RelationalTransformer",
           "ScaleGMN",
           "StatNN",
           "StructureEncoder",
           "apply_outputs",
           "batch_tensors",
           "scatter",
           "state_dicts",
]
