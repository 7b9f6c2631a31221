"""Per-layer-family conversion rules, one small module per family.

Each module registers handlers with :func:`wsl.graph.trace.param_rule` (ops that involve parameters) or
:func:`wsl.graph.trace.op_handler` (parameter-free ops). Importing this package registers them all.
"""

from . import attention, conv, embedding, linear, norm

__all__ = ["attention", "conv", "embedding", "linear", "norm"]
