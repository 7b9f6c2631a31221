"""wsl: weight-space learning — trained networks as data.

Public API::

    graph = wsl.to_graph(model)                  # any nn.Module / state_dict + arch / checkpoint path
    model2 = wsl.from_graph(graph, model)        # exact inverse (a copy of `model` with the graph's weights)
    g = graph.spec.sample_symmetry(torch.Generator().manual_seed(0))
    graph2 = graph.apply_symmetry(g)             # same function, permuted / rescaled weights
    print(wsl.verify_symmetries(model, x))       # check the derived symmetries numerically
    sd = wsl.load_checkpoint("model.safetensors")  # safe: safetensors / weights_only pickles / HF dirs
    wsl.save_graph(graph, "graph.safetensors"); wsl.load_graph("graph.safetensors")
    element, aligned = wsl.align.weight_matching(graph_a, graph_b)   # Git Re-Basin over the spec's groups
    merged = wsl.merge([model_a, model_b], method="aligned")         # permutation-aligned averaging
    model, report = wsl.predict_parameters(model, hypernet="ghn2-digits")   # GHN-predicted weights
    aug = wsl.augment.Compose([wsl.augment.RandomPermutation(), wsl.augment.GaussianNoise(0.01)])
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

_EXPORTS = {
    "align": ".align", "augment": ".augment",
    **dict.fromkeys(["ConversionError", "NetworkSpec", "ParamGraph", "SymmetryElement", "from_graph", "load_graph",
                     "save_graph", "to_graph", "trace", "verify_symmetries"], ".graph"),
    "predict_parameters": ".hyper", "prune": ".prune",
    **dict.fromkeys(["CheckpointError", "check_state_dict", "load_checkpoint"], ".io"),
    **dict.fromkeys(["interpolate", "loss_barrier", "merge"], ".merging"),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:  # what the lazy exports resolve to, for type checkers and IDEs
    from . import align, augment, prune
    from .graph import (
        ConversionError,
        NetworkSpec,
        ParamGraph,
        SymmetryElement,
        from_graph,
        load_graph,
        save_graph,
        to_graph,
        trace,
        verify_symmetries,
    )
    from .hyper import predict_parameters
    from .io import CheckpointError, check_state_dict, load_checkpoint
    from .merging import interpolate, loss_barrier, merge

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConversionError",
    "NetworkSpec",
    "ParamGraph",
    "SymmetryElement",
    "align",
    "augment",
    "check_state_dict",
    "from_graph",
    "interpolate",
    "load_checkpoint",
    "load_graph",
    "loss_barrier",
    "merge",
    "predict_parameters",
    "prune",
    "save_graph",
    "to_graph",
    "trace",
    "verify_symmetries",
]
