"""Parameter graphs: trace any ``nn.Module``, convert checkpoints to graphs and back, derive symmetries."""

from .builder import EDGE_TYPES, NODE_FEATURES, NODE_TYPES, ConversionError
from .convert import from_graph, graph_from_state, to_graph, trace
from .paramgraph import ParamGraph
from .serialize import GraphFileError, load_graph, save_graph
from .spec import NetworkSpec
from .symmetry import SymmetryElement
from .verify import SymmetryCheck, verify_symmetries

__all__ = [
    "EDGE_TYPES",
    "NODE_FEATURES",
    "NODE_TYPES",
    "ConversionError",
    "GraphFileError",
    "NetworkSpec",
    "ParamGraph",
    "SymmetryCheck",
    "SymmetryElement",
    "from_graph",
    "graph_from_state",
    "load_graph",
    "save_graph",
    "to_graph",
    "trace",
    "verify_symmetries",
]
