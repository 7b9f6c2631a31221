"""digits-CNN zoo: deterministic, resumable, varied architectures, labels reproducible through wsl graphs."""

from __future__ import annotations

import json

import pytest
import torch

import wsl
from wsl.data.generate import ZooDir
from wsl.data.generate.cnn_arch import digits_cnn
from wsl.data.generate.digits_cnn import (
    DigitsCNNConfig,
    architectures,
    digits_split,
    evaluate,
    generate_digits_cnn,
    num_checkpoints,
)

pytest.importorskip("sklearn")

# tiny: 6 runs of 1-2 epochs, narrow nets, 2 runs per shard
TINY = DigitsCNNConfig(runs=6, runs_per_shard=2, checkpoints=(1, 2), epochs=(1, 2), depths=(1, 2), widths=(4, 6),
                       batch_sizes=(128,))


def _all(zoo: ZooDir):
    return list(zoo.state_dicts())


def _same(a, b) -> None:
    assert len(a) == len(b)
    for (sa, ma), (sb, mb) in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
        for k in ma:
            assert torch.equal(ma[k], mb[k]), k


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ZooDir:
    return generate_digits_cnn(TINY, tmp_path_factory.mktemp("tiny"), progress=False)


def test_same_seed_same_weights_resume_and_other_seed(tiny, tmp_path):
    assert tiny.complete and len(tiny) == sum(num_checkpoints(TINY, r) for r in range(TINY.runs))
    again = generate_digits_cnn(TINY, tmp_path / "a", progress=False)
    _same(_all(tiny), _all(again))  # same seed -> bit-identical weights and metadata
    part = generate_digits_cnn(TINY, tmp_path / "b", progress=False, max_shards=1)  # "killed" after one shard
    assert not part.complete and len(part) < len(tiny)
    (tmp_path / "b" / "shard_00001.safetensors.tmp").write_bytes(b"half-written")  # a torn write is ignored
    resumed = generate_digits_cnn(TINY, tmp_path / "b", progress=False)
    assert resumed.complete and resumed.manifest["num_models"] == len(tiny)
    _same(_all(tiny), _all(resumed))
    other = generate_digits_cnn(DigitsCNNConfig(**{**TINY.__dict__, "seed": 1}), tmp_path / "c", progress=False)
    assert not torch.equal(_all(other)[0][0]["head.weight"], _all(tiny)[0][0]["head.weight"])


def test_runs_vary_and_metadata(tiny):
    items = _all(tiny)
    runs = [int(m["run"]) for _, m in items]
    assert sorted(set(runs)) == list(range(TINY.runs)) and runs == sorted(runs)
    archs = {int(m["arch"]) for _, m in items}
    assert len(archs) >= 2  # several architectures in one zoo
    lrs = {float(m["lr"]) for _, m in items}
    assert len(lrs) == TINY.runs  # hyperparameters sampled per run
    for _, m in items:
        kw = architectures(TINY)[int(m["arch"])]
        assert (kw["depth"], kw["width"]) == (int(m["depth"]), int(m["width"]))
        assert int(m["epoch"]) in TINY.checkpoints and int(m["epoch"]) <= int(m["epochs"])
        assert 0 <= float(m["test_accuracy"]) <= 1 and 0 <= float(m["train_accuracy"]) <= 1


def test_checkpoints_reproduce_their_accuracy_through_graphs(tiny):
    _, _, x_te, y_te = digits_split(TINY.test_fraction, TINY.split_seed)
    assert len(x_te) == 449 and x_te.shape[1:] == (1, 8, 8)
    for sd, meta in _all(tiny):
        a = int(meta["arch"])
        model = tiny.architecture(a)
        graph = wsl.to_graph(sd, arch=model)
        rebuilt = wsl.from_graph(graph, tiny.architecture(a))
        acc, loss = evaluate(rebuilt, x_te, y_te)
        assert acc == float(meta["test_accuracy"]), (acc, float(meta["test_accuracy"]))
        assert loss == pytest.approx(float(meta["test_loss"]), rel=1e-6)


def test_manifest_architectures_and_errors(tiny, tmp_path):
    info = json.loads((tiny.path / "manifest.json").read_text())
    assert info["layout"] == "per-model" and tiny.num_architectures == len(architectures(TINY))
    assert all(a["constructor"].startswith("wsl.") for a in info["architectures"])
    assert not any(a["kwargs"]["residual"] and a["kwargs"]["depth"] == 1 for a in info["architectures"])
    with pytest.raises(ValueError, match="pass the index"):
        tiny.architecture()
    with pytest.raises(IndexError, match="out of range"):
        tiny.architecture(10_000)
    with pytest.raises(ValueError, match="another configuration"):
        generate_digits_cnn(DigitsCNNConfig(**{**TINY.__dict__, "runs": 7}), tiny.path, progress=False)
    with pytest.raises(ValueError, match="every run must reach a checkpoint"):
        DigitsCNNConfig(checkpoints=(4,), epochs=(2,))
    with pytest.raises(ValueError, match="activation"):
        digits_cnn(activation="swish")


def test_labels_spread(tmp_path):
    """Default sampling ranges: accuracies run from about chance to well trained within a handful of runs."""
    zoo = generate_digits_cnn(DigitsCNNConfig(runs=8, runs_per_shard=8), tmp_path, progress=False)
    acc = torch.stack([m["test_accuracy"] for _, m in zoo.state_dicts()])
    assert float(acc.min()) < 0.2 and float(acc.max()) > 0.9, acc
    assert float(acc.std()) > 0.15


def test_dataset_mixed_architectures_split_by_run_into_gmn(tiny):
    from torch_geometric.loader import DataLoader

    from wsl.data.dataset import ZooDataset
    from wsl.nn import GMN

    kw = {"label": "test_accuracy", "group": "run", "fractions": (0.5, 0.25, 0.25)}
    data = {s: ZooDataset(tiny, s, **kw) for s in ("train", "val", "test")}
    assert list(tiny.path.glob("graphs-*.safetensors"))  # converted once, cached next to the zoo
    runs = {s: {int(ds.meta["run"][j]) for j in ds.indices} for s, ds in data.items()}
    assert all(runs.values()) and not (runs["train"] & runs["test"] or runs["train"] & runs["val"])
    assert sum(len(ds) for ds in data.values()) == len(tiny)
    sds = _all(tiny)
    train = data["train"]
    for i in range(len(train)):
        j = int(train.indices[i])
        g = train[i]
        assert float(g.y) == float(sds[j][1]["test_accuracy"])
        for k, v in g.to_state_dict().items():
            if not k.endswith("num_batches_tracked"):  # integer counter: not part of the graph
                assert torch.equal(v, sds[j][0][k]), k
    cached = ZooDataset(tiny, "train", **kw)  # from the cache file
    assert cached.edge_ptr is not None and torch.equal(cached.edge_attr, train.edge_attr)
    stats = train.weight_stats()
    unseen = {int(a) for a in tiny_all_archs(data)} - {int(train.meta["arch"][j]) for j in train.indices}
    assert unseen  # val / test hold architectures training never saw: pooled statistics still cover them
    for ds in data.values():
        ds.transform = stats
        for i in range(len(ds)):
            g = ds[i]
            assert g.edge_norm.shape == (g.num_edges, 2) and torch.isfinite(g.node_norm).all()
    assert not torch.equal(train[0].edge_norm, torch.tensor([[0.0, 1.0]]).expand_as(train[0].edge_norm))
    batch = next(iter(DataLoader(train, batch_size=len(train))))
    assert len({g.spec.arch + str(g.num_edges) for g in batch.to_data_list()}) >= 2  # mixed architectures
    out = GMN(out_dim=1, hidden_dim=8, num_layers=1)(batch)
    assert out.shape == (len(train), 1) and torch.isfinite(out).all()


def test_tiny_zoo_splits_are_never_empty():
    from wsl.data.dataset import split_indices

    for n in range(3, 12):
        parts = split_indices(torch.arange(n), (0.8, 0.1, 0.1), seed=n)
        assert all(len(v) for v in parts.values()), (n, {k: len(v) for k, v in parts.items()})
        assert sorted(torch.cat(list(parts.values())).tolist()) == list(range(n))
    assert len(split_indices(torch.arange(10), (1.0, 0.0, 0.0))["test"]) == 0  # zero fraction stays empty
    assert [len(v) for v in split_indices(torch.arange(100), (0.8, 0.1, 0.1)).values()] == [80, 10, 10]


def tiny_all_archs(data) -> torch.Tensor:
    """Architecture indices of every item of a mixed dataset (all splits)."""
    return torch.unique(next(iter(data.values())).meta["arch"])
