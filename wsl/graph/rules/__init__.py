"""Conversion rules and op handlers, one small module per family, all registered with
:func:`wsl.graph.registry.register_op` (the handler protocol is documented there).

Parametric rules (a parameter takes part): :mod:`.linear`, :mod:`.conv`, :mod:`.norm`, :mod:`.embedding`,
:mod:`.attention`. Parameter-free op handlers: :mod:`.shape`, :mod:`.elementwise`, :mod:`.reduction`,
:mod:`.contract`, the parameter-free norms in :mod:`.norm`, and the registry's defaults in :mod:`.defaults`.
Shared helpers live in :mod:`.common`. :func:`wsl.graph.registry.load_rules` imports this package, which
registers them all; add a new family by adding a module here and importing it below.
"""

from . import (
    attention,
    contract,
    conv,
    defaults,
    elementwise,
    embedding,
    linear,
    norm,
    reduction,
    shape,
)

__all__ = ["attention", "contract", "conv", "defaults", "elementwise", "embedding", "linear", "norm", "reduction",
           "shape"]
