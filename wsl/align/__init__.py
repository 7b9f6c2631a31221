"""Weight-space alignment: find the neuron permutation that brings one network close to another.

* :func:`weight_matching` — Git Re-Basin weight matching for any architecture ``wsl.to_graph`` supports;
* :func:`align_to_reference` — weight-match a whole zoo to one network, once (then plain mixup is aligned);
* :func:`activation_matching` — match neurons by the correlation of their activations on data;
* :func:`weight_distance` — Euclidean distance between two graphs' learnable values;
* :func:`ot_fusion` / :func:`ot_align` — optimal-transport fusion (soft plans; hidden widths may differ);
* :func:`pleas` — PLeaS: partial activation matching up to a width budget, then per-layer least squares;
* :mod:`~wsl.align.canonical` — canonical positive scales / signs, so matching covers the whole group.
"""

from .activation import activation_matching
from .ot_fusion import ot_align, ot_fusion
from .pleas import pleas
from .weight_matching import align_to_reference, weight_distance, weight_matching

__all__ = ["activation_matching", "align_to_reference", "ot_align", "ot_fusion", "pleas", "weight_distance",
           "weight_matching"]
