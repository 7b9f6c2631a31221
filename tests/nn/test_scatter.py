"""The scatter dispatch: every reduction against a plain Python loop, on both backends when available."""

from __future__ import annotations

import pytest
import torch

from wsl.nn import scatter as sc

BACKENDS = ["native"] + (["torch_scatter"] if "torch_scatter" in sc.available_backends() else [])


def _loop(src, index, n, reduce):
    out = torch.zeros(n, *src.shape[1:], dtype=src.dtype)
    for i in range(n):
        rows = src[index == i]
        if rows.shape[0] == 0:
            continue
        if reduce == "sum":
            out[i] = rows.sum(0)
        elif reduce == "mean":
            out[i] = rows.mean(0)
        elif reduce == "max":
            out[i] = rows.max(0).values
        elif reduce == "min":
            out[i] = rows.min(0).values
        else:
            out[i] = torch.sqrt(rows.var(0, unbiased=False) + 1e-5)
    return out


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(200, 5, generator=g, dtype=torch.float64)
    index = torch.randint(0, 30, (200,), generator=g)
    index[index == 7] = 8  # node 7 receives nothing: its row must be 0
    return src, index, 31


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", sc.REDUCTIONS)
def test_reductions_match_loop(backend, reduce, data):
    src, index, n = data
    with sc.use_backend(backend):
        got = sc.scatter(src, index, n, reduce)
    want = _loop(src, index, n, reduce)
    assert got.shape == (n, 5)
    torch.testing.assert_close(got, want)
    assert bool((got[7] == 0).all()) and bool((got[30] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_softmax_and_gradients(backend, data):
    src, index, n = data
    logits = (src[:, :2] * 10).requires_grad_()
    with sc.use_backend(backend):
        alpha = sc.segment_softmax(logits, index, n)
    for i in index.unique():
        torch.testing.assert_close(alpha[index == i], torch.softmax(logits[index == i], dim=0))
    (alpha * torch.arange(200.0, dtype=alpha.dtype)[:, None]).sum().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_backends_agree_including_gradients(data):
    if len(BACKENDS) < 2:
        pytest.skip("torch-scatter is not installed: only the native backend exists here")
    src, index, n = data
    grads = {}
    for b in BACKENDS:
        x = src.clone().requires_grad_()
        with sc.use_backend(b):
            out = sum(sc.scatter(x, index, n, r).sum() for r in sc.REDUCTIONS)
        out.backward()
        grads[b] = x.grad
    torch.testing.assert_close(grads["native"], grads["torch_scatter"])


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="unknown scatter backend"):
        sc.set_backend("cuda-magic")
    with pytest.raises(ValueError, match="unknown reduction"):
        sc.scatter(torch.ones(3, 1), torch.zeros(3, dtype=torch.long), 1, "median")
    with pytest.raises(TypeError, match="int64"):
        sc.scatter(torch.ones(3, 1), torch.zeros(3, dtype=torch.int32), 1)
    assert sc.get_backend() in ("native", "torch_scatter")


def test_cuda_path_matches_cpu(data):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    src, index, n = data
    for b in BACKENDS:
        with sc.use_backend(b):
            for r in sc.REDUCTIONS:
                torch.testing.assert_close(sc.scatter(src.cuda(), index.cuda(), n, r).cpu(), sc.scatter(src, index, n, r))
