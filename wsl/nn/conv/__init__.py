from .attention import RelationalAttentionConv
from .common import EdgeUpdate, NodeUpdate
from .edge_mpnn import EdgeNodeConv
from .pna import PNAConv
from .scale import ScaleEquivariantConv, ScaleInvariant

__all__ = ["EdgeNodeConv", "EdgeUpdate", "NodeUpdate", "PNAConv", "RelationalAttentionConv",
           "ScaleEquivariantConv", "ScaleInvariant"]
