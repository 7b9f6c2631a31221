"""Registry: every registered transform builds and runs purely; every configs/augment/*.yaml instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import wsl.augment as A

from .nets import assert_unchanged, digits_siren, snapshot

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "augment").glob("*.yaml"))
NEEDS = {  # constructor arguments for the combinators
    "compose": {"transforms": [A.RandomPermutation(), A.GaussianNoise()]},
    "random_apply": {"transform": A.GaussianNoise(), "p": 1.0},
    "one_of": {"transforms": [A.WeightDropout(), A.GaussianNoise()]},
    "mixup": {"num_classes": 10},
    "permuted_mixup": {"num_classes": 10},
    "aligned_mixup": {"num_classes": 10},
}


def _pair():
    _, a = digits_siren(0)
    _, b = digits_siren(1)
    a.y, b.y = torch.tensor([3]), torch.tensor([5])
    return a, b


@pytest.mark.parametrize("name", A.available())
def test_every_registered_transform(name: str) -> None:
    t = A.create(name, **NEEDS.get(name, {}))
    assert type(t).registry_name == name
    a, b = _pair()
    snap = snapshot(a)
    g = torch.Generator().manual_seed(0)
    out = t(a, b, g) if A.is_pairwise(t) else t(a, g)
    assert out is not a and out.edge_attr.shape == a.edge_attr.shape
    assert out.spec is a.spec
    assert_unchanged(a, snap)
    again = t(a, b, torch.Generator().manual_seed(0)) if A.is_pairwise(t) else t(a, torch.Generator().manual_seed(0))
    assert torch.equal(out.edge_attr, again.edge_attr) and torch.equal(out.x, again.x)  # seeded


def test_registry_errors_and_custom_entries() -> None:
    with pytest.raises(KeyError, match="available"):
        A.create("no_such_augmentation")

    @A.register("test_identity")
    class Identity(A.GraphTransform):
        function_preserving = True

        def forward(self, graph, generator):
            return graph.clone_structure()

    assert "test_identity" in A.available()
    with pytest.raises(ValueError, match="already registered"):
        A.register("test_identity")(A.GaussianNoise)
    A.base._REGISTRY.pop("test_identity")


def test_combinators() -> None:
    a, _ = _pair()
    noise, perm = A.GaussianNoise(0.1), A.RandomPermutation()
    composed = A.Compose([perm, noise])(a, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    manual = noise(perm(a, g), g)
    assert torch.equal(composed.edge_attr, manual.edge_attr)
    assert torch.equal(A.RandomApply(noise, p=0.0)(a).edge_attr, a.edge_attr)
    assert not torch.equal(A.RandomApply(noise, p=1.0)(a).edge_attr, a.edge_attr)
    picks = {int(torch.equal(A.OneOf([perm, noise], weights=[1, 0])(a, torch.Generator().manual_seed(s)).x[:2], a.x[:2]))
             for s in range(5)}
    assert picks == {1}  # weights [1, 0]: always the permutation, which keeps the (fixed) input nodes
    assert A.Compose([perm, A.RandomSignFlip()]).function_preserving
    assert not A.Compose([perm, noise]).function_preserving
    with pytest.raises(ValueError, match="weights"):
        A.OneOf([perm, noise], weights=[1.0])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_hydra_configs(path: Path) -> None:
    pytest.importorskip("hydra")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    if not cfg:
        return  # none.yaml: no augmentation
    t = instantiate(cfg)
    a, b = _pair()
    out = t(a, b, torch.Generator().manual_seed(0)) if A.is_pairwise(t) else t(a, torch.Generator().manual_seed(0))
    assert out.edge_attr.shape == a.edge_attr.shape
