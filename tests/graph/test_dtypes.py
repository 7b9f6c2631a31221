"""A checkpoint's dtypes survive the round trip, whatever dtype the architecture module was built in (#16)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import wsl
from wsl.graph.serialize import load_graph, save_graph
from wsl.nn import GMN

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def cast(state: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def exact(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k, v in b.items():
        assert a[k].dtype == v.dtype, (k, a[k].dtype, v.dtype)
        assert torch.equal(a[k], v), k


@pytest.mark.parametrize("ckpt_dtype", FLOATS)
@pytest.mark.parametrize("arch_dtype", [torch.float32, torch.float64])
def test_checkpoint_dtype_round_trip(ckpt_dtype, arch_dtype):
    m = small_net()
    m.to(arch_dtype)
    sd = cast(m.state_dict(), ckpt_dtype)
    sd["1.running_var"].uniform_(0.5, 2.0)  # a buffer with values of its own
    g = wsl.to_graph(sd, arch=m, example_inputs=torch.zeros(1, 3, 6, 6, dtype=arch_dtype))
    exact(g.to_state_dict(), sd)
    assert g.edge_attr.dtype == (torch.float64 if ckpt_dtype == torch.float64 else torch.float32)


def test_mixed_dtypes_and_shared_variant(tmp_path):
    m = torchvision.models.resnet18()
    sd = cast(m.state_dict(), torch.bfloat16)
    sd["fc.weight"] = sd["fc.weight"].half()
    sd["fc.bias"] = sd["fc.bias"].double()
    g = wsl.to_graph(sd, arch=m)
    exact(g.to_state_dict(), sd)
    assert g.edge_attr.dtype == torch.float64  # holds every tensor exactly
    sd2 = {k: v.clone() for k, v in sd.items()}
    assert wsl.to_graph(sd2, arch=m).spec is g.spec  # same dtypes: one spec variant, one structure
    assert wsl.to_graph(m.state_dict(), arch=m).spec is not g.spec
    for suffix in (".safetensors", ".pt"):  # graph files keep them too
        save_graph(g, tmp_path / f"g{suffix}")
        exact(load_graph(tmp_path / f"g{suffix}").to_state_dict(), sd)


def test_from_graph_and_metanetwork_read_half_checkpoints():
    m = small_net()
    graphs = [wsl.to_graph(cast(m.state_dict(), d), arch=m, example_inputs=torch.zeros(1, 3, 6, 6))
              for d in (torch.float16, torch.bfloat16)]
    out = GMN(out_dim=2, hidden_dim=8, num_layers=1)(graphs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    back = wsl.from_graph(graphs[1], small_net())
    assert back[0].weight.dtype == torch.float32  # loaded into the float32 module, values from bf16
    assert torch.equal(back[0].weight, m[0].weight.to(torch.bfloat16).float())
