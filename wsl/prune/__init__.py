"""Structured pruning with dependency groups (torch-pruning's DepGraph) and learned meta pruning.

::

    from wsl.prune import prune, group_norms, MetaPruner, meta_train, compare

    small, report = prune(model, torch.zeros(1, 3, 32, 32), speedup=2.0)   # group-L2, MACs / 2, real module
    print(report.summary())
    groups = group_norms(model, x)                                         # coupled channels + group-L2 norms

    pruner = MetaPruner.build("GMN", hidden_dim=32, num_layers=3)          # learned: rewrite, then prune
    meta_train(pruner, graphs, NetworkIndex.from_zoo([train_ds], x), (inputs, targets), steps=500)
    small, report = prune(pruner.rewrite(model, x), x, speedup=2.0)

* :mod:`~wsl.prune.depgraph`: channel groups, group-L2 norms (torch-pruning's, and differentiable ones read
  from a state_dict), the group-lasso regularizer, output layers.
* :mod:`~wsl.prune.structured`: :func:`prune` to a MACs speed-up, :class:`PruneReport`.
* :mod:`~wsl.prune.meta`: :class:`MetaPruner`, a metanetwork's residual rewrite of a network's weights.
* :mod:`~wsl.prune.learn`: the meta-pruning loss (task loss through ``torch.func.functional_call`` + group
  sparsity) and :func:`meta_train`.
* :mod:`~wsl.prune.evaluate`: prune -> fine-tune -> accuracy, learned vs plain (:func:`compare`).
* :mod:`~wsl.prune.saving`: pruned networks as state_dict + JSON sidecar (:func:`save_pruned` /
  :func:`load_pruned`), no pickled modules.

torch-pruning is optional (``pip install torch-pruning``); it is imported when a function needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ChannelGroup", "channel_groups", "group_norms", "group_sparsity", "output_layers",
                     "require_torch_pruning"], ".depgraph"),
    **dict.fromkeys(["PruneReport", "count_macs", "layer_widths", "prune"], ".structured"),
    **dict.fromkeys(["MetaPruner", "tensor_statistics"], ".meta"),
    **dict.fromkeys(["NetworkIndex", "PrunableNet", "meta_train", "prunable", "pruning_loss"], ".learn"),
    **dict.fromkeys(["accuracy", "compare", "finetune", "prune_and_finetune", "summarize"], ".evaluate"),
    **dict.fromkeys(["load_pruned", "save_pruned"], ".saving"),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .depgraph import (
        ChannelGroup,
        channel_groups,
        group_norms,
        group_sparsity,
        output_layers,
        require_torch_pruning,
    )
    from .evaluate import accuracy, compare, finetune, prune_and_finetune, summarize
    from .learn import NetworkIndex, PrunableNet, meta_train, prunable, pruning_loss
    from .meta import MetaPruner, tensor_statistics
    from .saving import load_pruned, save_pruned
    from .structured import PruneReport, count_macs, layer_widths, prune

__all__ = sorted(_EXPORTS)
