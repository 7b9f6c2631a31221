"""Local zoo generation: deterministic, resumable, loadable into the architecture it names."""

from __future__ import annotations

import json

import pytest
import torch

import wsl
from wsl.data.generate import DigitsINRConfig, ZooDir, generate_digits_inr, siren
from wsl.data.generate.digits_inr import batched_siren, coordinate_grid, digit_images

pytest.importorskip("sklearn")

SMALL = DigitsINRConfig(limit=12, views=2, shard_size=8, steps=30, lr=1e-3)


def _all(zoo: ZooDir):
    return list(zoo.state_dicts())


def test_same_seed_same_weights_and_resume(tmp_path):
    full = generate_digits_inr(SMALL, tmp_path / "a", progress=False)
    assert full.complete and len(full) == 24
    part = generate_digits_inr(SMALL, tmp_path / "b", progress=False, max_shards=1)  # "killed" after one shard
    assert not part.complete and len(part) == 8
    resumed = generate_digits_inr(SMALL, tmp_path / "b", progress=False)
    assert resumed.complete
    a, b = _all(full), _all(resumed)
    assert len(a) == len(b) == 24
    for (sa, ma), (sb, mb) in zip(a, b):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
        assert int(ma["label"]) == int(mb["label"]) and int(ma["view"]) == int(mb["view"])
    other = generate_digits_inr(DigitsINRConfig(**{**SMALL.__dict__, "seed": 1}), tmp_path / "c", progress=False)
    assert not torch.equal(_all(other)[0][0]["0.weight"], a[0][0]["0.weight"])


def test_opening_a_finished_zoo_writes_nothing(tmp_path):
    """torchrun ranks open one zoo side by side: reopening must not rewrite its manifest (a CI run lost a race
    on a shared ``manifest.json.tmp``), and an interrupted manifest update is still repaired."""
    generate_digits_inr(SMALL, tmp_path, progress=False)
    mf = tmp_path / "manifest.json"
    before = (mf.stat().st_ino, mf.stat().st_mtime_ns, mf.read_text())
    generate_digits_inr(SMALL, tmp_path, progress=False)
    assert (mf.stat().st_ino, mf.stat().st_mtime_ns, mf.read_text()) == before
    info = json.loads(before[2])
    mf.write_text(json.dumps({**info, "shards": info["shards"][:1], "complete": False}))  # killed before update
    assert generate_digits_inr(SMALL, tmp_path, progress=False).complete
    assert json.loads(mf.read_text())["shards"] == info["shards"]
    assert not list(tmp_path.glob("*.tmp"))


def test_views_differ_and_labels_match_digits(tmp_path):
    zoo = generate_digits_inr(SMALL, tmp_path, progress=False)
    items = _all(zoo)
    _, labels = digit_images(8)
    for sd, meta in items:
        assert int(meta["label"]) == int(labels[int(meta["image_index"])])
    v0, v1 = items[0], items[1]
    assert int(v0[1]["image_index"]) == int(v1[1]["image_index"]) and int(v1[1]["view"]) == 1
    assert not torch.equal(v0[0]["2.weight"], v1[0]["2.weight"])


def test_fitted_inrs_render_their_image(tmp_path):
    cfg = DigitsINRConfig(limit=4, shard_size=4, steps=150)
    zoo = generate_digits_inr(cfg, tmp_path, progress=False)
    images, _ = digit_images(cfg.size)
    coords = coordinate_grid(cfg.size)
    for sd, meta in zoo.state_dicts():
        model = siren(hidden=cfg.hidden, depth=cfg.depth, w0=cfg.w0)
        model.load_state_dict(sd)  # stored keys are exactly the constructor's
        with torch.no_grad():
            out = model(coords)[:, 0]
            ref = batched_siren({k: v[None] for k, v in sd.items()}, coords, cfg.w0)[0]
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        target = images[int(meta["image_index"])].reshape(-1)
        mse = float((out - target).square().mean())
        assert mse < 0.25 * float(target.var()), mse  # fitted, not just the mean
        assert abs(mse - float(meta["mse"])) < 1e-4
        g = wsl.to_graph(model)
        assert [s for _, s in g.spec.scale_sets()] == ["sign flip", "sign flip"]


def test_manifest_and_config_mismatch(tmp_path):
    generate_digits_inr(SMALL, tmp_path, progress=False, max_shards=1)
    info = json.loads((tmp_path / "manifest.json").read_text())
    assert info["format"] == "wsl-zoo/1" and info["num_models"] == 24 and not info["complete"]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="another configuration"):
        generate_digits_inr(DigitsINRConfig(limit=12, steps=31), tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        ZooDir(tmp_path / "nowhere")


def test_zoo_dataset_splits_cache_and_batching(tmp_path):
    from torch_geometric.loader import DataLoader

    from wsl.data.dataset import ZooDataset
    from wsl.nn import GMN

    zoo = generate_digits_inr(SMALL, tmp_path, progress=False)
    train = ZooDataset(zoo, "train", group="image_index", fractions=(0.5, 0.25, 0.25))
    test = ZooDataset(zoo, "test", group="image_index", fractions=(0.5, 0.25, 0.25))
    assert list(tmp_path.glob("graphs-*.safetensors"))  # converted once, cached next to the zoo
    imgs = lambda ds: {int(ds.meta["image_index"][j]) for j in ds.indices}
    assert imgs(train) and imgs(test) and not imgs(train) & imgs(test)  # views never straddle splits
    assert len(train) + len(test) + len(ZooDataset(zoo, "val", group="image_index", fractions=(0.5, 0.25, 0.25))) == 24
    sds = {int(m["image_index"]) * 2 + int(m["view"]): sd for sd, m in zoo.state_dicts()}
    g = train[0]
    j = int(train.indices[0])
    for k, v in g.to_state_dict().items():
        assert torch.equal(v, sds[j][k]), k  # cache round trip is exact
    assert int(g.y) == int(train.meta["label"][j])
    stats = train.weight_stats()
    train.transform = stats
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch.y.shape == (4,) and batch.edge_norm.shape == (batch.edge_attr.shape[0], 2)
    assert GMN(out_dim=10, hidden_dim=8, num_layers=1)(batch).shape == (4, 10)


def test_shared_init_starts_every_image_from_one_init(tmp_path):
    def first_layer(init: str, steps: int) -> torch.Tensor:
        cfg = DigitsINRConfig(limit=4, views=2, steps=steps, shard_size=8, init=init)
        zoo = generate_digits_inr(cfg, tmp_path / f"{init}-{steps}", progress=False)
        sds = [sd for sd, _ in zoo.state_dicts()]
        return torch.stack([sd["0.weight"] for sd in sds])  # models ordered image-major: (img0 v0, img0 v1, ...)

    shared, indep = first_layer("shared", 1), first_layer("independent", 1)
    # after one small Adam step, shared-init INRs of the same view are still nearly equal across images ...
    assert (shared[0] - shared[2]).abs().max() < 5e-3 and (shared[1] - shared[5]).abs().max() < 5e-3
    # ... while views differ, and independent inits differ everywhere
    assert (shared[0] - shared[1]).abs().max() > 0.05
    assert (indep[0] - indep[2]).abs().max() > 0.05
    with pytest.raises(ValueError, match="init"):
        DigitsINRConfig(init="meta")


VARIANTS = DigitsINRConfig(limit=6, variants=3, shard_size=8, steps=20)


def test_variants_are_distinct_distortions_of_their_digit(tmp_path):
    from wsl.data.generate.digits_inr import variant_images

    zoo = generate_digits_inr(VARIANTS, tmp_path, progress=False)
    items = _all(zoo)
    assert len(items) == 18 and zoo.manifest["num_models"] == 18
    _, labels = digit_images(8)
    meta = [(int(m["image_index"]), int(m["variant"]), int(m["label"])) for _, m in items]
    assert meta[:4] == [(0, 0, int(labels[0])), (0, 1, int(labels[0])), (0, 2, int(labels[0])), (1, 0, int(labels[1]))]
    images, _ = digit_images(VARIANTS.size)
    idx, var = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 1])
    out = variant_images(images, idx, var, VARIANTS)
    assert torch.equal(out[0], images[0])  # variant 0 is the digit itself
    for j in (1, 2, 3):  # distortions: different images, but still close to their digit
        d = (out[j] - images[idx[j]]).abs().mean()
        assert 0.01 < d < 0.5 * images[idx[j]].mean(), float(d)
    assert not torch.equal(out[1], out[2])
    torch.testing.assert_close(variant_images(images, idx, var, VARIANTS), out, rtol=0, atol=0)  # seeded


def test_variants_zoo_is_deterministic_resumable_and_splits_by_source_digit(tmp_path):
    from wsl.data.dataset import ZooDataset

    full = generate_digits_inr(VARIANTS, tmp_path / "a", progress=False)
    generate_digits_inr(VARIANTS, tmp_path / "b", progress=False, max_shards=1)
    resumed = generate_digits_inr(VARIANTS, tmp_path / "b", progress=False, workers=2)  # workers: same result
    for (sa, _), (sb, _) in zip(_all(full), _all(resumed)):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)
    splits = ZooDataset(full, "train", group="image_index", fractions=(0.5, 0.25, 0.25)).splits
    digit = ZooDataset(full, "all").meta["image_index"]
    seen = [set(digit[splits[s]].tolist()) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(splits[s]) for s in splits) == 18 and all(len(splits[s]) % 3 == 0 for s in splits)


def test_fast_fit_matches_autograd_adam():
    from wsl.data.generate.siren_fit import SirenPool, fit_sirens_on_grid

    gen = torch.Generator().manual_seed(0)
    for depth, out_dim, size, wd in [(1, 1, 8, 0.0), (2, 1, 12, 0.05), (3, 3, 10, 0.0)]:
        dims = [2] + [16] * depth + [out_dim]
        init = {}
        for i in range(len(dims) - 1):
            init[f"{2 * i}.weight"] = torch.randn(5, dims[i + 1], dims[i], generator=gen) * (0.5 if i == 0 else 0.05)
            init[f"{2 * i}.bias"] = torch.randn(5, dims[i + 1], generator=gen) * 0.1
        targets = torch.rand(5, size, size, out_dim, generator=gen).squeeze(-1)
        ours, mse = fit_sirens_on_grid(init, targets, steps=15, chunk=2, weight_decay=wd)
        # reference: autograd in float64, torch.optim.Adam, per-INR pixel-mean losses summed
        params = {k: v.double().requires_grad_() for k, v in init.items()}
        coords = coordinate_grid(size).double()
        flat = targets.reshape(5, size * size, -1).double()
        opt = torch.optim.Adam(params.values(), lr=1e-3, weight_decay=wd)
        for step in range(16):
            h = coords.expand(5, *coords.shape)
            for j in range(depth + 1):
                h = torch.baddbmm(params[f"{2 * j}.bias"][:, None], h, params[f"{2 * j}.weight"].transpose(1, 2))
                h = torch.sin(30.0 * h) if j < depth else h
            per_inr = ((h - flat) ** 2).mean(dim=(1, 2))
            if step == 15:
                break
            opt.zero_grad()
            per_inr.sum().backward()
            opt.step()
        for k in init:
            err = (ours[k].double() - params[k].detach()).abs().max() / params[k].detach().abs().max()
            assert err < 1e-4, (depth, k, float(err))
        torch.testing.assert_close(mse.double(), per_inr.detach(), rtol=1e-3, atol=1e-6)
        with SirenPool(workers=2, chunk=2) as pool:  # split over processes: the same result
            par, mse2 = pool.fit(init, targets, steps=15, weight_decay=wd)
        for k in init:
            torch.testing.assert_close(par[k], ours[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="2 input coordinates"):
        fit_sirens_on_grid({"0.weight": torch.zeros(1, 4, 3), "0.bias": torch.zeros(1, 4),
                            "2.weight": torch.zeros(1, 1, 4), "2.bias": torch.zeros(1, 1)}, torch.zeros(1, 8, 8))


def test_zero_bias_init_is_the_same_weights_with_zero_biases():
    from wsl.data.generate.digits_inr import siren_init

    a = siren_init(DigitsINRConfig(), torch.Generator().manual_seed(3))
    b = siren_init(DigitsINRConfig(bias_init="zero"), torch.Generator().manual_seed(3))
    for k in a:
        if k.endswith("bias"):
            assert a[k].abs().min() > 0 and torch.equal(b[k], torch.zeros_like(a[k]))
        else:
            assert torch.equal(a[k], b[k])
    with pytest.raises(ValueError, match="bias_init"):
        DigitsINRConfig(bias_init="normal")
