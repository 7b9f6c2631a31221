"""GHN-2 / GHN-3 forward on mixed architectures, decoders, sweeps against a node-by-node reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tests.nn.archs import BUILDERS
from wsl.hyper import GHN2, GHN3, sample_architectures
from wsl.hyper.batch import collate
from wsl.hyper.decoders import decoder_parameter_count, fit, normalize
from wsl.hyper.ghn import graph_of


def _mixed() -> list[nn.Module]:
    torch.manual_seed(0)
    models = sample_architectures(4, "train", torch.Generator().manual_seed(3))
    models += sample_architectures(1, "ood", torch.Generator().manual_seed(3))
    return models


@pytest.mark.parametrize("cls", [GHN2, GHN3])
@pytest.mark.parametrize("decoder", ["tiled", "lowrank"])
def test_forward_mixed_batch_shapes_and_gradients(cls, decoder: str) -> None:
    torch.manual_seed(0)
    ghn = cls(hidden=16, decoder=decoder, tile_out=16, tile_in=16, kernel=3)
    models = _mixed()
    preds = ghn(models)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss = 0.0
    for m, p in zip(models, preds):
        own = dict(m.named_parameters())
        assert set(p) == set(own)
        assert all(p[k].shape == own[k].shape and bool(torch.isfinite(p[k]).all()) for k in p)
        loss = loss + F.cross_entropy(functional_call(m, p, (x,)), y)
    loss.backward()
    grads = {n: q.grad for n, q in ghn.named_parameters()}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
    assert float(grads["op_emb.weight"].abs().sum()) > 0
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if n.startswith("decoder."))


@pytest.mark.parametrize("cls", [GHN2, GHN3])
def test_batch_independence(cls) -> None:
    """Predictions for a model do not depend on which other models share the batch (offsets, padding)."""
    torch.manual_seed(0)
    ghn = cls(hidden=16, tile_out=16, tile_in=16, kernel=3).eval()
    models = _mixed()
    with torch.no_grad():
        together = ghn(models)
        alone = ghn([models[2]])[0]
    for k, v in alone.items():
        torch.testing.assert_close(together[2][k], v, rtol=1e-4, atol=1e-5)


def test_ghn2_level_sweeps_match_node_by_node_reference() -> None:
    torch.manual_seed(0)
    ghn = GHN2(hidden=8, s_max=3, tile_out=8, tile_in=8, kernel=3).eval()
    model = BUILDERS["rescnn"][0]()
    g = graph_of(model, torch.zeros(BUILDERS["rescnn"][1]))
    batch = collate([g], s_max=3)
    with torch.no_grad():
        got = ghn.encode(batch)
        h = ghn.embed(batch)
        d = g.distances(3)
        n = g.num_nodes
        for order, dd in ((range(n), d), (range(n - 1, -1, -1), d.t())):
            for v in order:
                src = [u for u in range(n) if dd[u, v] > 0]
                if not src:
                    continue
                m = sum(ghn.msg(h[u]) if dd[u, v] == 1 else ghn.msg_sp(h[u]) / float(dd[u, v]) for u in src)
                h = h.clone()
                h[v] = ghn.gru(m[None], h[v][None])[0]
    torch.testing.assert_close(got, h, rtol=1e-5, atol=1e-6)


def test_ghn3_sensitive_to_structure() -> None:
    """Same ops, different wiring -> different predictions (the shortest-path bias is used)."""
    torch.manual_seed(0)
    ghn = GHN3(hidden=16, tile_out=16, tile_in=16, kernel=3).eval()

    class Chain(nn.Module):
        def __init__(self, skip: bool) -> None:
            super().__init__()
            self.a, self.b, self.skip = nn.Linear(4, 4), nn.Linear(4, 4), skip

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + (x if self.skip else h)

    with torch.no_grad():
        p1 = ghn(Chain(True), torch.zeros(1, 4))[0]
        p2 = ghn(Chain(False), torch.zeros(1, 4))[0]
    assert not torch.allclose(p1["b.weight"], p2["b.weight"])


@pytest.mark.parametrize("shape,conv", [((5, 3, 3, 3), True), ((40, 7, 7, 7), True), ((4, 2, 3), True),
                                        ((4, 2, 3, 3, 3), True), ((50, 20), False), ((1, 30, 12), False),
                                        ((3, 2), False)])
def test_fit_any_shape(shape: tuple, conv: bool) -> None:
    tile = torch.randn(16, 16, 5, 5)
    w = fit(tile, shape, conv)
    assert tuple(w.shape) == shape
    if conv and len(shape) == 4 and shape[2] <= 5:
        torch.testing.assert_close(w[:, :, shape[2] // 2, shape[3] // 2], tile[: shape[0], : shape[1], 2, 2])
    if shape == (40, 7, 7, 7):  # periodic repetition along out / in channels
        torch.testing.assert_close(w[16:32], w[:16])


def test_normalize_fan_in() -> None:
    raw = torch.randn(64, 32, 3, 3) * 7 + 2
    w = normalize(raw, "weight", (64, 32, 3, 3), "conv", torch.tensor(1.0))
    assert abs(float(w.std()) - (1 / (32 * 9)) ** 0.5) < 1e-3 and abs(float(w.mean())) < 1e-4
    nw = normalize(torch.randn(10) * 100, "norm_weight", (10,), "bn", torch.tensor(0.1))
    assert bool(((nw - 1).abs() <= 0.1 + 1e-6).all())


def test_lowrank_decoder_grows_slower() -> None:
    t256, t1024 = (decoder_parameter_count("tiled", w) for w in (256, 1024))
    l256, l1024 = (decoder_parameter_count("lowrank", w) for w in (256, 1024))
    assert l1024 < t1024 / 4
    assert t1024 / t256 > 12 and l1024 / l256 < 5  # ~w² vs ~w growth at fixed hidden size


def test_predict_into_writes_model() -> None:
    torch.manual_seed(0)
    ghn = GHN2(hidden=16, tile_out=16, tile_in=16, kernel=3)
    m = BUILDERS["transformer"][0]()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = ghn.predict_into(m, torch.zeros(BUILDERS["transformer"][1]))
    for k, v in p.items():
        assert torch.equal(m.get_parameter(k), v) and not torch.equal(before[k], v)


@pytest.mark.parametrize("cls", [GHN2, GHN3])
def test_mip_option_predicts_residuals_around_the_models_init(cls, tmp_path) -> None:
    torch.manual_seed(0)
    models = _mixed()
    plain, mip = cls(hidden=16), cls(hidden=16, mip=True, mip_scale=0.01, mip_base="init")
    for m, p_plain, p_mip in zip(models, plain(models), mip(models)):
        for name, p in m.named_parameters():
            if name not in p_mip:
                continue
            # theta = theta0 + 0.01 * delta: close to the model's own init, unlike the plain prediction
            d_mip = (p_mip[name] - p.detach()).norm()
            d_plain = (p_plain[name] - p.detach()).norm()
            assert d_mip <= 0.05 * max(float(d_plain), float(p.norm())) + 1e-6, name
    loss = sum(v.square().sum() for d in mip(models) for v in d.values())
    loss.backward()
    assert mip.mip_log_scale.grad is not None and mip.mip_log_scale.grad.abs().sum() > 0
    assert mip.op_emb.weight.grad is not None  # the hypernetwork itself still learns through the residual
    mip.save_pretrained(str(tmp_path / "mip"))
    back = cls.from_pretrained(str(tmp_path / "mip"))
    assert back.mip and back.mip_base == "init" and torch.equal(back.mip_log_scale, mip.mip_log_scale)


@pytest.mark.parametrize("cls", [GHN2, GHN3])
def test_mip_learned_base_is_a_named_parameter(cls, tmp_path) -> None:
    """mip_base="learned": theta0 is the GHN's own named base; with a tiny scale every node of a role (and op)
    decodes to the normalized base, and the residual still carries node-specific gradients."""
    torch.manual_seed(0)
    models = _mixed()
    hn = cls(hidden=16, mip=True, mip_scale=1e-6)
    names = dict(hn.named_parameters())
    assert {"mip_theta0_matrix", "mip_theta0_vector", "mip_log_scale"} <= set(names)
    preds = hn(models)
    with torch.no_grad():
        hn.mip_log_scale.fill_(math.log(1e-6))
        hn.mip_theta0_matrix.mul_(3.0)  # the base tile drives the prediction: changing it changes outputs
    moved = hn(models)
    changed = [k for d0, d1 in zip(preds, moved) for k in d0 if d0[k].dim() >= 2 and not torch.allclose(d0[k], d1[k], rtol=1e-3, atol=1e-5)]
    assert not changed  # normalization makes the base's overall scale irrelevant ...
    with torch.no_grad():
        hn.mip_theta0_matrix.add_(torch.randn_like(hn.mip_theta0_matrix))
    moved = hn(models)
    assert any(not torch.allclose(d0[k], d1[k]) for d0, d1 in zip(preds, moved) for k in d0 if d0[k].dim() >= 2)
    loss = sum((v * torch.randn_like(v)).sum() for d in hn(models) for v in d.values())
    loss.backward()
    assert hn.mip_theta0_matrix.grad.abs().sum() > 0 and hn.mip_theta0_vector.grad.abs().sum() > 0
    assert hn.op_emb.weight.grad is not None and hn.op_emb.weight.grad.abs().sum() > 0
    hn.save_pretrained(str(tmp_path / "mip"))
    back = cls.from_pretrained(str(tmp_path / "mip"))
    assert back.mip_base == "learned" and torch.equal(back.mip_theta0_matrix, hn.mip_theta0_matrix)
    with pytest.raises(ValueError, match="unknown mip_base"):
        cls(hidden=16, mip=True, mip_base="zero")


class _RightOperand(nn.Module):
    """Weights stored ``[in, out]`` and used as ``x @ W`` / ``addmm(b, x, W)`` (HF ``Conv1D`` layout), next to a
    ``[out, in]`` weight used through a transposed view (``x @ V.t()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 4))
        self.b = nn.Parameter(torch.zeros(4))
        self.u = nn.Parameter(torch.randn(4, 6))
        self.v = nn.Parameter(torch.randn(3, 6))  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.addmm(self.b, x, self.w)
        return (h @ self.u) @ self.v.t()


def test_fan_in_of_right_operand_weights() -> None:
    """Fan-in scaling reads axis -2 of ``[in, out]`` weights: std ~ gain / sqrt(in), not gain / sqrt(out)."""
    m = _RightOperand()
    g = graph_of(m, torch.zeros(2, 256))
    assert g.fan_in_axes == {"w": -2, "u": -2}  # v is used transposed: its [out, in] layout is the usual one
    torch.manual_seed(0)
    hn = GHN2(hidden=16)
    pred = hn([m], torch.zeros(2, 256))[0]
    gains = hn.log_gain.exp()
    from wsl.hyper.compgraph import OP_TYPES
    from wsl.hyper.decoders import ROLE_ID
    gain = float(gains[OP_TYPES.index("linear"), ROLE_ID["weight"]])
    assert abs(float(pred["w"].std()) - gain / 256 ** 0.5) < 0.2 * gain / 256 ** 0.5
    assert abs(float(pred["u"].std()) - gain / 4 ** 0.5) < 0.3 * gain / 4 ** 0.5
    assert abs(float(pred["v"].std()) - gain / 6 ** 0.5) < 0.3 * gain / 6 ** 0.5


def test_gpt2_conv1d_fan_in() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=50, n_positions=16)
    m = transformers.GPT2Model(cfg)
    g = graph_of(m, torch.zeros(1, 8, dtype=torch.long))
    conv1d = {k for k, p in m.named_parameters() if k.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))}
    assert conv1d and conv1d <= set(g.fan_in_axes)
    assert all(g.fan_in_axes[k] == -2 for k in conv1d)
