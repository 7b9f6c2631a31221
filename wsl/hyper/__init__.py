"""Graph hypernetworks (GHN-2, GHN-3, LoGAH decoders) and MIP hypernetworks.

::

    from wsl.hyper import predict_parameters, GHN2, comp_graph, sample_architectures
    model, report = predict_parameters(model, hypernet="ghn2-digits")   # packaged, offline
    g = comp_graph(model)                                               # op-level computational graph
    ghn = GHN2(hidden=64, decoder="lowrank"); params = ghn([m1, m2])    # differentiable predictions
    ghn.save_pretrained("my_ghn"); GHN2.from_pretrained("my_ghn")
    hyper = MIPHypernetwork(1, target=externalize(net))                 # MIP: constant-norm in, theta0 + delta out
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["PredictionReport", "calibrate_norm_stats", "load_hypernet", "predict_parameters"], ".api"),
    **dict.fromkeys(["OP_TYPES", "CompGraph", "comp_graph"], ".compgraph"),
    **dict.fromkeys(["LowRankDecoder", "TiledDecoder"], ".decoders"),
    **dict.fromkeys(["ExternalParams", "externalize"], ".external"),
    **dict.fromkeys(["GHN2", "GHN3", "GraphHyperNetwork"], ".ghn"),
    **dict.fromkeys(["HypernetError", "from_pretrained", "packaged"], ".hub"),
    **dict.fromkeys(["ConstantNormEncoding", "MIPHypernetwork", "ResidualHead", "constant_norm_encode", "residual"],
                    ".mip"),
    **dict.fromkeys(["ArchConfig", "sample_architectures"], ".sampler"),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:  # what the lazy exports resolve to, for type checkers and IDEs
    from .api import (
        PredictionReport,
        calibrate_norm_stats,
        load_hypernet,
        predict_parameters,
    )
    from .compgraph import OP_TYPES, CompGraph, comp_graph
    from .decoders import LowRankDecoder, TiledDecoder
    from .external import ExternalParams, externalize
    from .ghn import GHN2, GHN3, GraphHyperNetwork
    from .hub import HypernetError, from_pretrained, packaged
    from .mip import (
        ConstantNormEncoding,
        MIPHypernetwork,
        ResidualHead,
        constant_norm_encode,
        residual,
    )
    from .sampler import ArchConfig, sample_architectures

__all__ = [
    "GHN2",
    "GHN3",
    "OP_TYPES",
    "ArchConfig",
    "CompGraph",
    "ConstantNormEncoding",
    "ExternalParams",
    "GraphHyperNetwork",
    "HypernetError",
    "LowRankDecoder",
    "MIPHypernetwork",
    "PredictionReport",
    "ResidualHead",
    "TiledDecoder",
    "calibrate_norm_stats",
    "comp_graph",
    "constant_norm_encode",
    "externalize",
    "from_pretrained",
    "load_hypernet",
    "packaged",
    "predict_parameters",
    "residual",
    "sample_architectures",
]
