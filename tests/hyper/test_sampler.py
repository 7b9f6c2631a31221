"""The digits architecture sampler: determinism, disjoint splits, real modules."""

from __future__ import annotations

import pytest
import torch

from wsl.hyper.compgraph import comp_graph
from wsl.hyper.sampler import FAMILIES, sample_architectures


def test_deterministic() -> None:
    a = sample_architectures(10, "train", torch.Generator().manual_seed(5), build=False)
    b = sample_architectures(10, "train", torch.Generator().manual_seed(5), build=False)
    c = sample_architectures(10, "train", torch.Generator().manual_seed(6), build=False)
    assert a == b and a != c


def test_splits_disjoint_and_families() -> None:
    tr = {c.name for c in sample_architectures(200, "train", torch.Generator().manual_seed(0), build=False)}
    te = sample_architectures(60, "test", torch.Generator().manual_seed(0), build=False)
    ood = sample_architectures(20, "ood", torch.Generator().manual_seed(0), build=False)
    assert not tr & {c.name for c in te}
    assert {c.family for c in te} == set(FAMILIES["test"])
    assert {c.family for c in ood} <= set(FAMILIES["ood"]) and not {c.family for c in ood} & set(FAMILIES["train"])
    assert all(c.split() == "test" for c in te)


@pytest.mark.parametrize("split", ["train", "test", "ood"])
def test_modules_run_and_trace(split: str) -> None:
    torch.manual_seed(0)
    for m in sample_architectures(8, split, torch.Generator().manual_seed(1)):
        assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
        g = comp_graph(m, m.example_inputs)
        assert not g.unused and len(g.owned) == len(list(m.parameters()))


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        sample_architectures(1, "val")
    with pytest.raises(ValueError, match="not in split"):
        sample_architectures(1, "train", families=("densenet",))
