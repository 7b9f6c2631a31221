"""Published GHN checkpoints (ppuda torch.save dicts, ghn3 joblib releases, ghn3 training checkpoints) are read
without running anything they name, tensors come back exactly, and the configuration is the reference's.

The state-dict layouts and the reference's own key-based config inference come from
``tests/fixtures/published_ghn/keys.json`` (made by the reference classes; provenance in its README)."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from wsl.hyper import HypernetError
from wsl.hyper.published import infer_config, read_checkpoint

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "published_ghn" / "keys.json").read_text())


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, (shape, dtype) in FIXTURE[name]["state_dict"].items():
        dt = getattr(torch, dtype)
        out[k] = (torch.randn(shape, generator=gen).to(dt) if dt.is_floating_point
                  else torch.randint(0, 5, shape, generator=gen).to(dt))
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k, t in a.items():
        assert t.dtype == b[k].dtype and t.shape == b[k].shape, k
        assert torch.equal(t, b[k]), k


def as_tuple(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_joblib_release_infers_the_references_config(tmp_path, name):
    sd = random_state(name)
    path = tmp_path / "ghn.pt"
    joblib.dump(sd, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "ghn3-joblib" and ckpt.config_source == "inferred"
    same(ckpt.state_dict, sd)
    assert ckpt.config == as_tuple(FIXTURE[name]["inferred"])
    assert ckpt.is_ghn2 == FIXTURE[name]["config"].get("is_ghn2", FIXTURE[name]["repo"] == "ppuda")
    if FIXTURE[name]["inferred_config_loads"]:  # the inference recovers the configuration it was built with
        built = as_tuple(FIXTURE[name]["config"])
        unused = {"hypernet", "decoder"} | ({"layers", "heads"} if ckpt.is_ghn2 else set())  # a gated GNN's
        keys = [k for k in built if k in ckpt.config and k not in unused]
        assert keys and {k: ckpt.config[k] for k in keys} == {k: built[k] for k in keys}


@pytest.mark.parametrize("name", ["ghn2_cifar10", "ghn2_imagenet"])
def test_ppuda_file_keeps_its_stored_config(tmp_path, name):
    sd = random_state(name)
    cfg = FIXTURE[name]["config"]
    path = tmp_path / f"{name}.pt"
    torch.save({"state_dict": sd, "optimzer": {"state": {}, "param_groups": []}, "epoch": 299,
                "config": {**cfg, "max_shape": tuple(cfg["max_shape"])}}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "ppuda" and ckpt.config_source == "file" and ckpt.family == "ghn2"
    assert ckpt.config == {**as_tuple(cfg), "is_ghn2": True}  # 3x3 slots kept: the key rules would say 11x11
    assert ckpt.metadata["epoch"] == 299
    same(ckpt.state_dict, sd)


def test_ghn3_training_checkpoint_with_argparse_namespace(tmp_path):
    name = "ghn3_t_c10_pretrained"
    sd = random_state(name)
    cfg = FIXTURE[name]["config"]
    args = argparse.Namespace(hid=32, layers=2, lr=4e-4, name="ghn3tm8-c10")
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": sd, "optimizer": {}, "epoch": 3, "step": 10, "args": args, "config": cfg}, path)
    with pytest.raises(pickle.UnpicklingError):  # what the plain safe load says about this file
        torch.load(path, weights_only=True)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "ghn3-torch" and ckpt.config_source == "file" and ckpt.family == "ghn3"
    assert ckpt.config == as_tuple(cfg)
    assert ckpt.metadata["args"] == {"hid": 32, "layers": 2, "lr": 4e-4, "name": "ghn3tm8-c10"}
    assert ckpt.metadata["step"] == 10
    same(ckpt.state_dict, sd)


def test_bare_torch_state_dict(tmp_path):
    sd = random_state("ghn3_t_c10_pretrained")
    torch.save(sd, tmp_path / "sd.pt")
    ckpt = read_checkpoint(tmp_path / "sd.pt")
    assert ckpt.config_source == "inferred" and ckpt.config == as_tuple(FIXTURE["ghn3_t_c10_pretrained"]["inferred"])


@pytest.mark.parametrize("compress", [("zlib", 3), ("gzip", 3), ("bz2", 3), ("lzma", 3), ("xz", 3)])
def test_compressed_joblib(tmp_path, compress):
    sd = random_state("ghn3_t_c10_pretrained", seed=1)
    joblib.dump(sd, tmp_path / "ghn.pt", compress=compress)
    same(read_checkpoint(tmp_path / "ghn.pt").state_dict, sd)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64])
def test_joblib_numpy_arrays(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(shape).astype(dtype)
              for k, (shape, _) in FIXTURE["ghn3_t_c10_pretrained"]["state_dict"].items()}
    arrays["decoder.fortran"] = np.asfortranarray(rng.standard_normal((5, 7)).astype(dtype))
    joblib.dump(arrays, tmp_path / "ghn.pkl")
    got = read_checkpoint(tmp_path / "ghn.pkl").state_dict
    for k, a in arrays.items():
        assert got[k].dtype == torch.from_numpy(a).dtype
        assert np.array_equal(got[k].numpy(), a), k
    got["embed.weight"].add_(1)  # writable, and not a view of anything shared


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_joblib_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    sd = random_state("ghn3_t_c10_pretrained")
    sd["gnn.0.extra"] = Payload(marker)
    joblib.dump(sd, tmp_path / "evil.pt")
    with pytest.raises(HypernetError, match=r"evil\.pt: refused: the pickle names posix\.system"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_torch_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": random_state("ghn3_t_c10_pretrained"), "config": {"hid": 32},
                "args": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(HypernetError, match=r"refused: the pickle names posix\.system.*Nothing was run"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_class_of_training_code_is_refused(tmp_path):
    buf = io.BytesIO()
    pickle.dump({"embed.weight": torch.zeros(3, 4), "x": argparse.ArgumentParser}, buf)
    (tmp_path / "odd.pt").write_bytes(buf.getvalue())
    with pytest.raises(HypernetError, match="argparse.ArgumentParser"):
        read_checkpoint(tmp_path / "odd.pt")


def test_errors_name_the_file(tmp_path):
    with pytest.raises(HypernetError, match="missing.pt: hypernetwork checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    joblib.dump({"fc.weight": torch.zeros(2, 2)}, tmp_path / "notghn.pt")
    with pytest.raises(HypernetError, match=r"notghn\.pt: no op embedding \('embed\.weight'\)"):
        read_checkpoint(tmp_path / "notghn.pt")
    joblib.dump({"embed.weight": np.zeros((100, 32), np.float32)}, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 500])
    with pytest.raises(HypernetError, match="cut.pt"):
        read_checkpoint(tmp_path / "cut.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(HypernetError, match="list.pt: a torch checkpoint holding a list"):
        read_checkpoint(tmp_path / "list.pt")


def test_stored_config_must_agree_with_weights(tmp_path):
    torch.save({"state_dict": random_state("ghn2_imagenet"), "config": {"hid": 32, "is_ghn2": False}},
               tmp_path / "bad.pt")
    with pytest.raises(HypernetError, match="is_ghn2=False but its weights are those of a GHN-2"):
        read_checkpoint(tmp_path / "bad.pt")


def test_infer_config_is_a_pure_function_of_keys_and_shapes():
    sd = {k: torch.empty(s) for k, (s, _) in FIXTURE["ghn3_t"]["state_dict"].items()}
    assert infer_config(sd) == as_tuple(FIXTURE["ghn3_t"]["inferred"])
