"""predict_parameters: report completeness, packaged hypernetwork offline, save / load round trip, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.nn.archs import BUILDERS
from wsl.hyper import (
    GHN2,
    GHN3,
    HypernetError,
    from_pretrained,
    packaged,
    predict_parameters,
)
from wsl.hyper.api import calibrate_norm_stats
from wsl.hyper.sampler import sample_architectures


@pytest.fixture(scope="module")
def ghn() -> GHN2:
    torch.manual_seed(0)
    return GHN2(hidden=16, tile_out=16, tile_in=16, kernel=3, input_shape=[1, 1, 8, 8])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_report_complete_and_values_written(ghn: GHN2, name: str) -> None:
    build, shape = BUILDERS[name]
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, report = predict_parameters(model, ghn, example_inputs=torch.zeros(shape))
    assert report.complete and not report.not_predicted
    assert set(report.predicted) == {k for k, _ in model.named_parameters()}
    for k, v in model.state_dict().items():  # the input model is untouched (inplace=False)
        assert torch.equal(v, before[k])
    for k in report.predicted:
        assert not torch.equal(new.state_dict()[k], before[k])
    with torch.no_grad():
        assert bool(torch.isfinite(new.eval()(torch.randn(shape))).all())


def test_unused_unknown_and_buffers_reported(ghn: GHN2) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.mix = nn.Parameter(torch.full((4, 1, 1), 0.5))
            self.spare = nn.Linear(2, 2)
            self.register_buffer("table", torch.arange(3.0))

        def forward(self, x):
            h = self.bn(self.conv(x))
            return torch.lerp(h, h.relu(), self.mix).mean((2, 3))

    m = M()
    m.bn.running_mean.fill_(3.0)
    new, report = predict_parameters(m, ghn, example_inputs=torch.zeros(1, 1, 8, 8))
    assert report.complete
    assert "never used" in report.not_predicted["spare.weight"]
    assert "unknown to the hypernetwork" in report.not_predicted["mix"]
    assert torch.equal(new.mix, m.mix)
    assert "reset to 0" in report.buffers["bn.running_mean"] and float(new.bn.running_mean.abs().sum()) == 0
    assert report.buffers["table"].startswith("kept")
    _, report2 = predict_parameters(m, ghn, example_inputs=torch.zeros(1, 1, 8, 8), predict_unknown_ops=True)
    assert "mix" in report2.predicted
    assert "spare.weight" in str(report)


def test_tied_weights_gpt2(ghn: GHN2) -> None:
    tr = pytest.importorskip("transformers")
    cfg = tr.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
                        eos_token_id=0)
    new, report = predict_parameters(tr.GPT2LMHeadModel(cfg), ghn)
    assert report.complete
    assert "shares storage with transformer.wte.weight" in report.predicted["lm_head.weight"]
    assert new.lm_head.weight.data_ptr() == new.transformer.wte.weight.data_ptr()


def test_save_load_round_trip(tmp_path, ghn: GHN2) -> None:
    for hn in (ghn, GHN3(hidden=16, layers=1, decoder="lowrank", tile_out=16, tile_in=16, kernel=3)):
        d = tmp_path / hn.kind
        hn.save_pretrained(d)
        back = from_pretrained(d)
        assert type(back) is type(hn) and back.config == hn.config
        for (k, a), (k2, b) in zip(hn.state_dict().items(), back.state_dict().items()):
            assert k == k2 and torch.equal(a, b)
        m = BUILDERS["rescnn"][0]()
        x = torch.zeros(BUILDERS["rescnn"][1])
        with torch.no_grad():
            p1, p2 = hn.eval()(m, x)[0], back(m, x)[0]
        assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_errors(tmp_path, ghn: GHN2) -> None:
    with pytest.raises(HypernetError, match="unknown hypernetwork 'no-such-ghn'"):
        from_pretrained("no-such-ghn")
    ghn.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["config"]["hidden"] = 32
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HypernetError, match="does not match"):
        from_pretrained(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(HypernetError, match="config.json and model.safetensors"):
        from_pretrained(tmp_path / "b")
    with pytest.raises(TypeError, match="hypernet must be"):
        predict_parameters(nn.Linear(2, 2), hypernet=3)  # type: ignore[arg-type]


def test_packaged_hypernet_offline() -> None:
    assert "ghn2-digits" in packaged()
    torch.manual_seed(0)
    model = sample_architectures(1, "test", torch.Generator().manual_seed(0))[0]
    new, report = predict_parameters(model, "ghn2-digits")
    assert report.complete and len(report.predicted) == len(list(model.parameters()))
    from wsl.hyper.train import digits

    x = digits().x_train[:200]
    calibrate_norm_stats(new, [x])
    with torch.no_grad():
        out = new.eval()(x)
    assert out.shape == (200, 10) and bool(torch.isfinite(out).all())


FAST_TORCHVISION = ["resnet18", "squeezenet1_1", "vgg11_bn", "mobilenet_v3_small", "vit_b_16", "swin_t"]


def _torchvision_names() -> list[str]:
    try:
        import torchvision
    except ImportError:
        return []
    return torchvision.models.list_models(module=torchvision.models)


def _check_shapes(m: nn.Module, x: torch.Tensor) -> None:
    """Every parameter is predicted with its own shape, or reported unused by the traced forward."""
    from wsl.hyper.ghn import graph_of

    torch.manual_seed(0)
    hn = GHN2(hidden=16, tile_out=16, tile_in=16, kernel=3).to("meta")  # shapes only: no memory, no FLOPs
    pred = hn(m, x)[0]
    own = dict(m.named_parameters())
    unused = set(graph_of(m, x).unused)  # e.g. googlenet / inception auxiliary heads (training only)
    assert set(pred) | unused == set(own) and not (set(pred) & unused)
    for k, v in pred.items():
        assert v.shape == own[k].shape, k


def _check_torchvision(name: str) -> None:
    tv = pytest.importorskip("torchvision")
    try:
        with torch.device("meta"):
            m = tv.models.get_model(name)
    except (NotImplementedError, RuntimeError):  # builders that need real values (regnet)
        m = tv.models.get_model(name)
    size = 299 if name == "inception_v3" else 224
    _check_shapes(m, torch.zeros(1, 3, size, size))


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224", "mixer_s16_224", "convnext_atto"])
def test_timm_shapes(name: str) -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    _check_shapes(m, torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize("name", FAST_TORCHVISION)
def test_torchvision_shapes_fast(name: str) -> None:
    _check_torchvision(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in _torchvision_names() if n not in FAST_TORCHVISION])
def test_torchvision_shapes_all(name: str) -> None:
    _check_torchvision(name)


def test_report_groups_tensors_that_share_a_reason() -> None:
    from wsl.hyper.api import PredictionReport

    report = PredictionReport(model="Net", hypernet="ghn")
    report.not_predicted = {f"block{i}.scale": "op 'mul' unknown to the hypernetwork; value kept" for i in range(60)}
    report.not_predicted["head.bias"] = "never used in the forward pass; value kept"
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("Net: 0 tensors predicted by ghn, 61 not predicted")
    assert "  block0.scale, block1.scale, block2.scale and 57 more: op 'mul' unknown to the hypernetwork; value kept" in lines
    assert "  head.bias: never used in the forward pass; value kept" in lines
    assert text.count("unknown to the hypernetwork") == 1 and len(lines) == 4
    assert len(report.to_dict()["not_predicted"]) == 61  # the full list stays in the report file
