"""``nn.MultiheadAttention`` (``F.multi_head_attention_forward``) with heads encoded.

HF-style attention (separate q/k/v ``Linear`` layers, a ``view(..., heads, d)`` and ``matmul`` / ``softmax``
or ``scaled_dot_product_attention``) needs no rule of its own: the dense rule creates the q, k, v
neurons and the op handlers derive the head structure from the reshape and the contractions. The fused
PyTorch op hides those steps, so this rule states them: q, k and v get ``attention`` sets of ``E``
neurons; each splits into ``H`` heads of ``E/H``; q and k are permuted together, v's heads follow q's head
permutation with their own within-head permutation, and the output projection reads v's neurons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..builder import ConversionError
from ..registry import Call, register_op
from .common import (
    consume,
    group_heads,
    input_atoms,
    output,
    place_edges,
    place_nodes,
    weight_info,
)

if TYPE_CHECKING:
    from ..trace import Tracer

_NAMES = ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
          "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
          "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
          "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal"]


@register_op("multi_head_attention_forward", params=True, op_type="attention")
def multi_head_attention(tr: Tracer, call: Call) -> None:
    a = {n: call.arg(i, n) for i, n in enumerate(_NAMES)}
    if a["bias_k"] is not None or a["bias_v"] is not None or a["add_zero_attn"]:
        raise ConversionError(f"{call.where()}: add_bias_kv / add_zero_attn are not supported by wsl yet")
    if a["static_k"] is not None or a["static_v"] is not None:
        raise ConversionError(f"{call.where()}: static_k / static_v are not supported")
    q, k, v = a["query"], a["key"], a["value"]
    e, h = int(a["embed_dim_to_check"]), int(a["num_heads"])
    seqs = [input_atoms(tr, call, t, -1) for t in (q, k, v)]
    for t in (q, k, v):
        consume(tr, t, affine=False)
    b = tr.builder
    name = call.module or call.name
    qa = b.new_set(e, "attention", f"{name}.q", call.name)
    ka = b.new_set(e, "attention", f"{name}.k", call.name)
    va = b.new_set(e, "attention", f"{name}.v", call.name)
    hq, hv = group_heads(tr, qa, h), group_heads(tr, va, h)
    hk = group_heads(tr, ka, h)
    b.tie(qa, ka)
    b.tie(hq, hk)
    b.tie(hq, hv)
    if a["use_separate_proj_weight"]:
        for w, seq, dst in ((a["q_proj_weight"], seqs[0], qa), (a["k_proj_weight"], seqs[1], ka),
                            (a["v_proj_weight"], seqs[2], va)):
            pw = weight_info(tr, call, w, "projection weight")
            place_edges(tr, call, pw, w.shape, seq[None, :], dst[:, None], "attention_in")
    else:
        w = a["in_proj_weight"]
        pw = weight_info(tr, call, w, "in_proj_weight")
        src = torch.cat([s[None, :].expand(e, -1) for s in seqs], 0)
        dst = torch.cat([qa, ka, va])[:, None]
        place_edges(tr, call, pw, w.shape, src, dst, "attention_in")
    if a["in_proj_bias"] is not None:
        pb = weight_info(tr, call, a["in_proj_bias"], "in_proj_bias")
        place_nodes(tr, call, pb, a["in_proj_bias"].shape, torch.cat([qa, ka, va]), "bias")
    out = b.new_set(e, "hidden", f"{name}.out_proj", call.name)
    wo = a["out_proj_weight"]
    place_edges(tr, call, weight_info(tr, call, wo, "out_proj_weight"), wo.shape, va[None, :], out[:, None],
                "linear")
    if a["out_proj_bias"] is not None:
        place_nodes(tr, call, weight_info(tr, call, a["out_proj_bias"], "out_proj_bias"),
                    a["out_proj_bias"].shape, out, "bias")
    res = call.out
    attn_out = res[0] if isinstance(res, tuple) else res
    output(tr, call, attn_out, out, -1)
    if isinstance(res, tuple) and len(res) > 1 and isinstance(res[1], torch.Tensor):
        tr.set_act(res[1], torch.full((1,) * res[1].ndim, -1, dtype=torch.long))
