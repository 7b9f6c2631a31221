"""Writing a generated INR zoo in the DWSNets layout: read back by wsl's DWS loader, same functions, same splits."""

from __future__ import annotations

import json

import pytest
import torch

from wsl.data.dataset import ZooDataset
from wsl.data.formats import dws_inr
from wsl.data.formats.dws_write import dws_state, write_dws
from wsl.data.generate import DigitsINRConfig, generate_digits_inr, siren
from wsl.data.generate.digits_inr import coordinate_grid

pytest.importorskip("sklearn")


def test_written_zoo_reads_back_with_the_same_functions_and_splits(tmp_path):
    cfg = DigitsINRConfig(limit=5, variants=2, shard_size=16, steps=5)
    zoo = generate_digits_inr(cfg, tmp_path / "zoo", progress=False)
    splits = ZooDataset(zoo, "all", group="image_index", fractions=(0.6, 0.2, 0.2)).splits
    out = write_dws(zoo, tmp_path / "dws", splits, progress=False)
    table = json.loads(out.read_text())
    assert {s: len(t["path"]) for s, t in table.items()} == {s: len(v) for s, v in splits.items()}
    assert not list((tmp_path / "dws").rglob("*.tmp"))
    recs = dws_inr.load(tmp_path / "dws")
    assert {s: len(v) for s, v in recs.splits.items()} == {s: len(v) for s, v in splits.items()}
    sds = [sd for sd, _ in zoo.state_dicts()]
    labels = [int(m["label"]) for _, m in zoo.state_dicts()]
    coords = coordinate_grid(cfg.size)
    order = [i for s in ("train", "val", "test") for i in splits[s].tolist()]  # the loader lists splits in order
    for r, i in enumerate(order):
        assert int(recs.labels[r]) == labels[i]
        ours = siren(hidden=cfg.hidden, depth=cfg.depth, w0=cfg.w0)
        ours.load_state_dict(sds[i])
        theirs = recs.model(r)  # DWSNets' INR: seq(x) + 0.5
        with torch.no_grad():
            torch.testing.assert_close(theirs(coords), ours(coords), rtol=1e-5, atol=1e-5)
        raw = torch.load(tmp_path / "dws" / table[recs.metadata["split"][r]]["path"][0], weights_only=True)
        assert list(raw) == ["seq.0.weight", "seq.0.bias", "seq.1.weight", "seq.1.bias", "seq.2.weight", "seq.2.bias"]


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="SIREN state dict"):
        dws_state({"conv.weight": torch.zeros(1)})
    cfg = DigitsINRConfig(limit=2, shard_size=4, steps=2)
    zoo = generate_digits_inr(cfg, tmp_path / "zoo", progress=False)
    with pytest.raises(ValueError, match="both"):
        write_dws(zoo, tmp_path / "a", {"train": torch.tensor([0, 1]), "test": torch.tensor([1])}, progress=False)
    with pytest.raises(ValueError, match="beyond"):
        write_dws(zoo, tmp_path / "b", {"train": torch.tensor([0, 5])}, progress=False)
    assert not (tmp_path / "b" / "mnist_splits.json").exists()  # nothing names INRs that were not written
