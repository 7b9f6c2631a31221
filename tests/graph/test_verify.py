"""``wsl.verify_symmetries``: numerical check of derived symmetries, and the invented symmetries it caught.

T5 adds a learned per-head relative-position bias (computed in the first layer, shared by all layers) to the
attention scores through ``scaled_dot_product_attention``'s ``attn_mask``; wsl ignored the mask, so the heads
were permuted without the bias's head columns (outputs changed by ~15 %). Phi rotates only part of each head,
which fixes q / k; the scores then carry no neurons yet differ per head, and wsl let v's neurons move across
heads (~0.2 %). Both are fixed in :mod:`wsl.graph.rules.contract`; the monkeypatched tests show the check would
have named the culprit.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import wsl
from wsl.cli import main
from wsl.graph.rules import contract
from wsl.graph.symmetry import SIGN

transformers = pytest.importorskip("transformers")

IDS = {"input_ids": torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))}


def t5(attn: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                attn_implementation=attn)
    return transformers.T5EncoderModel(cfg)


def phi(attn: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.PhiConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, partial_rotary_factor=0.5, attn_implementation=attn)
    return transformers.PhiModel(cfg)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_t5_relative_position_bias_moves_with_every_layers_heads(attn: str) -> None:
    check = wsl.verify_symmetries(t5(attn), IDS, randomize=True, trials=3)
    assert check.ok, str(check)
    assert check.free_classes > 0 and min(t["moved"] for t in check.trials) > 0
    graph = wsl.to_graph(t5(attn), example_inputs=IDS)
    heads = [g for g in graph.spec.groups() if any("relative_attention_bias" in s for s in g["sets"])]
    assert len(heads) == 1  # one head class: the bias table's columns and the heads of both layers
    assert heads[0]["size"] == 4
    assert sum(s.startswith("heads@") for s in heads[0]["sets"]) == 6  # q, k, v heads of both layers


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_phi_partial_rotary_keeps_v_inside_its_head(attn: str) -> None:
    check = wsl.verify_symmetries(phi(attn), IDS, randomize=True, trials=3)
    assert check.ok, str(check)
    graph = wsl.to_graph(phi(attn), example_inputs=IDS)
    v = [g for g in graph.spec.groups() if any(s.endswith("v_proj") for s in g["sets"])]
    assert v and all(g["blocks"] == (4, 4) for g in v)  # 4 heads of 4: within-head moves only


def test_verify_names_the_class_behind_a_wrong_symmetry(monkeypatch) -> None:
    monkeypatch.setattr(contract, "_tie_mask", lambda *a: None)  # the former T5 bug
    check = wsl.verify_symmetries(t5(), IDS, randomize=True, trials=2)
    assert not check.ok and check.worst > 1e-2
    culprits = [" ".join(c["sets"]) for c in check.culprits]
    assert any("relative_attention_bias" in c for c in culprits), str(check)
    assert "FAILED" in str(check) and "relative_attention_bias" in str(check)


def test_verify_catches_v_moving_across_heads(monkeypatch) -> None:
    monkeypatch.setattr(contract, "_pin_heads", lambda *a: None)  # the former Phi bug
    check = wsl.verify_symmetries(phi(), IDS, randomize=True, trials=2)
    assert not check.ok
    assert {s for c in check.culprits for s in c["sets"]} >= {"layers.0.self_attn.v_proj", "layers.1.self_attn.v_proj"}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 6, bias=False), nn.Tanh(),
                         nn.Linear(6, 3))


def test_verify_localizes_a_wrong_scale_symmetry_on_guessed_zero_inputs() -> None:
    model = mlp().double()
    graph = wsl.to_graph(model)  # guessed input: zeros, on which a bias-free ReLU layer outputs nothing
    assert wsl.verify_symmetries(model, graph=graph).ok
    relu_set = next(s for s in graph.spec.sets if s.name == "0")
    graph.spec.symmetry.scale_kind[relu_set.start:relu_set.start + relu_set.size] = SIGN  # ReLU is not odd
    check = wsl.verify_symmetries(model, graph=graph, trials=4)
    assert not check.ok
    assert {"kind": "scale / sign factors", "sets": ["0"]} in [{k: c[k] for k in ("kind", "sets")}
                                                              for c in check.culprits]


def test_verify_does_not_touch_the_model_and_rejects_randomize_with_graph() -> None:
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert wsl.verify_symmetries(model, torch.randn(3, 5), randomize=True).ok
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="randomize"):
        wsl.verify_symmetries(model, graph=wsl.to_graph(model), randomize=True)


def test_cli_inspect_verify(tmp_path, capsys) -> None:
    ckpt = tmp_path / "mlp.safetensors"
    save_file(mlp().state_dict(), str(ckpt))
    assert main(["inspect", str(ckpt), "--arch", "module:tests.graph.test_verify:mlp", "--verify", "2"]) == 0
    out = capsys.readouterr().out
    assert "symmetry check passed: 2 random elements" in out
    with pytest.raises(SystemExit, match="--verify runs the network.*pass --arch"):
        main(["inspect", str(ckpt), "--verify"])
