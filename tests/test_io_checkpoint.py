"""Tests for :mod:`wsl.io.checkpoint` (loading) and :mod:`wsl.io.validate` (validating checkpoints)."""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from wsl.io import CheckpointError, check_state_dict, load_checkpoint

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _bn_model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.train()
    model(torch.randn(8, 3))  # populate running stats and num_batches_tracked
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_exact(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], *, ordered: bool = False
) -> None:
    assert set(got) == set(want)
    if ordered:
        assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert got[name].device.type == "cpu", name
        # bit-exact: compare raw bytes, not values (NaN-safe, -0.0-safe)
        assert torch.equal(
            got[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


def _write_truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


class _Payload:
    """A local class: pickling it requires code execution to load."""

    def __init__(self) -> None:
        self.note = "trust me"


# --------------------------------------------------------------------------
# round trips of each format
# --------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn", [_mlp, _bn_model])
def test_safetensors_round_trip(tmp_path: Path, model_fn) -> None:
    sd = _state(model_fn())
    path = tmp_path / "weights.safetensors"
    save_file(sd, str(path))
    _assert_bit_exact(load_checkpoint(path), sd)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".weights"])
@pytest.mark.parametrize("model_fn", [_mlp, _bn_model])
def test_torch_save_round_trip(tmp_path: Path, suffix: str, model_fn) -> None:
    sd = _state(model_fn())
    path = tmp_path / f"weights{suffix}"
    torch.save(sd, path)
    loaded = load_checkpoint(str(path))
    _assert_bit_exact(loaded, sd, ordered=True)
    assert all(type(t) is torch.Tensor for t in loaded.values())


def test_safetensors_content_with_other_suffix_is_sniffed(tmp_path: Path) -> None:
    sd = _state(_mlp())
    path = tmp_path / "weights.bin"
    save_file(sd, str(path))
    _assert_bit_exact(load_checkpoint(path), sd)


def test_legacy_torch_save_format(tmp_path: Path) -> None:
    sd = _state(_mlp())
    path = tmp_path / "legacy.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    _assert_bit_exact(load_checkpoint(path), sd, ordered=True)


def test_map_location_device_object(tmp_path: Path) -> None:
    sd = _state(_mlp())
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path, map_location=torch.device("meta"))
    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in sd.items()}
    assert all(v.device.type == "meta" for v in loaded.values())


def test_hf_dir_single_safetensors(tmp_path: Path) -> None:
    sd = _state(_bn_model())
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    _assert_bit_exact(load_checkpoint(tmp_path), sd)


def test_hf_dir_single_bin(tmp_path: Path) -> None:
    sd = _state(_mlp())
    torch.save(sd, tmp_path / "pytorch_model.bin")
    _assert_bit_exact(load_checkpoint(tmp_path), sd, ordered=True)


def test_hf_dir_prefers_safetensors_over_bin(tmp_path: Path) -> None:
    sd = _state(_mlp())
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage that must not be read")
    _assert_bit_exact(load_checkpoint(tmp_path), sd)


def _write_sharded(tmp_path: Path, sd: dict[str, torch.Tensor], kind: str) -> Path:
    names = list(sd)
    half = len(names) // 2
    groups = [names[:half], names[half:]]
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        if kind == "safetensors":
            shard = f"model-{i:05d}-of-00002.safetensors"
            save_file({k: sd[k] for k in group}, str(tmp_path / shard))
        else:
            shard = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save({k: sd[k] for k in group}, tmp_path / shard)
        weight_map.update({k: shard for k in group})
    index_name = (
        "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    )
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (tmp_path / index_name).write_text(json.dumps(index))
    return tmp_path / index_name


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_hf_dir_sharded(tmp_path: Path, kind: str) -> None:
    sd = _state(_bn_model())
    _write_sharded(tmp_path, sd, kind)
    loaded = load_checkpoint(tmp_path)
    _assert_bit_exact(loaded, sd, ordered=(kind == "bin"))


def test_hf_dir_sharded_missing_shard(tmp_path: Path) -> None:
    sd = _state(_mlp())
    index = _write_sharded(tmp_path, sd, "safetensors")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    msg = str(info.value)
    assert "model-00002-of-00002.safetensors" in msg
    assert str(index) in msg
    assert "does not exist" in msg


def test_hf_dir_sharded_shard_lacks_tensor(tmp_path: Path) -> None:
    sd = _state(_mlp())
    _write_sharded(tmp_path, sd, "bin")
    shard = tmp_path / "pytorch_model-00002-of-00002.bin"
    torch.save({}, shard)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    msg = str(info.value)
    assert str(shard) in msg
    assert "2.weight" in msg


def test_hf_dir_corrupt_index(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    assert "model.safetensors.index.json" in str(info.value)
    assert "corrupt" in str(info.value)


def test_hf_dir_index_escaping_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    index = {"weight_map": {"w": "../outside.safetensors"}}
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_checkpoint(tmp_path / "ckpt")


# --------------------------------------------------------------------------
# nested checkpoints
# --------------------------------------------------------------------------


def test_nested_state_dict_key(tmp_path: Path) -> None:
    sd = _state(_bn_model())
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "epoch": 7, "global_step": 100}, path)
    _assert_bit_exact(load_checkpoint(path), sd, ordered=True)


def test_nested_model_with_metadata(tmp_path: Path) -> None:
    model = _mlp()
    sd = _state(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    path = tmp_path / "train.pt"
    torch.save({"model": sd, "epoch": 3, "optimizer": opt.state_dict()}, path)
    _assert_bit_exact(load_checkpoint(path), sd, ordered=True)


def test_doubly_nested_wrappers(tmp_path: Path) -> None:
    sd = _state(_mlp())
    path = tmp_path / "deep.pt"
    torch.save({"checkpoint_version": 2, "model": {"net": sd, "name": "mlp"}}, path)
    _assert_bit_exact(load_checkpoint(path), sd, ordered=True)


def test_data_parallel_prefix_is_stripped(tmp_path: Path) -> None:
    sd = _state(_bn_model())
    path = tmp_path / "dp.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1}, path)
    _assert_bit_exact(load_checkpoint(path), sd, ordered=True)


def test_partial_module_prefix_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"module.a": torch.zeros(1), "b": torch.ones(1)}, path)
    assert list(load_checkpoint(path)) == ["module.a", "b"]


def test_nested_dicts_are_flattened(tmp_path: Path) -> None:
    w, b = torch.randn(4, 3), torch.randn(4)
    path = tmp_path / "tree.pt"
    torch.save({"encoder": {"layer": {"weight": w, "bias": b}}, "scale": torch.ones(1)}, path)
    loaded = load_checkpoint(path)
    assert list(loaded) == ["encoder.layer.weight", "encoder.layer.bias", "scale"]
    assert torch.equal(loaded["encoder.layer.weight"], w)


def test_non_tensor_inside_state_dict_is_an_error(tmp_path: Path) -> None:
    sd: dict[str, object] = dict(_state(_mlp()))
    sd["0.extra"] = 5
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd, "epoch": 2}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "'0.extra'" in msg
    assert "int" in msg
    assert str(path) in msg


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "list" in str(info.value) and str(path) in str(info.value)


def test_no_tensors_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty_sd.pt"
    torch.save({"state_dict": {}, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "contains no tensors" in str(info.value) and str(path) in str(info.value)


# --------------------------------------------------------------------------
# pickles needing code execution
# --------------------------------------------------------------------------


def test_pickle_with_code_is_refused_then_allowed(tmp_path: Path) -> None:
    sd = _state(_mlp())
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": sd, "payload": _Payload()}, path)

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "allow_pickle=True" in msg
    assert "arbitrary code execution" in msg
    assert "_Payload" in msg
    assert str(path) in msg

    _assert_bit_exact(load_checkpoint(path, allow_pickle=True), sd, ordered=True)


def test_whole_pickled_module_needs_allow_pickle(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_checkpoint(path)
    _assert_bit_exact(load_checkpoint(path, allow_pickle=True), _state(model), ordered=True)


# --------------------------------------------------------------------------
# truncated / corrupt / missing
# --------------------------------------------------------------------------


def test_truncated_safetensors(tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    save_file(_state(_mlp()), str(full))
    path = _write_truncated(full, tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "truncated or corrupt" in msg


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_pt(tmp_path: Path, legacy: bool) -> None:
    full = tmp_path / "full.pt"
    torch.save(_state(_mlp()), full, _use_new_zipfile_serialization=not legacy)
    path = _write_truncated(full, tmp_path / "half.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "truncated or corrupt" in msg
    assert "allow_pickle" not in msg


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_garbage_bytes(tmp_path: Path, suffix: str, seed: int) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x00" + random.Random(seed).randbytes(511))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "truncated or corrupt" in msg
    # a corrupt file must not be blamed on pickled code
    assert "allow_pickle" not in msg and "weights_only" not in msg


def test_garbage_bytes_with_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00" + random.Random(3).randbytes(255))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, allow_pickle=True)
    assert str(path) in str(info.value) and "corrupt" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "empty" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    path = tmp_path / "weigths.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "No such file or directory" in msg
    assert "weights.safetensors" in msg  # close-match suggestion


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    for name in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ):
        assert name in msg


def test_directory_with_other_checkpoint_suggests_it(tmp_path: Path) -> None:
    torch.save(_state(_mlp()), tmp_path / "epoch_10.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    assert "epoch_10.pt" in str(info.value)


def test_checkpoint_error_is_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


# --------------------------------------------------------------------------
# finiteness
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "label"),
    [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")],
)
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_non_finite_values(tmp_path: Path, bad: float, label: str, fmt: str) -> None:
    sd = _state(_mlp())
    sd["2.weight"][0, :3] = bad
    if fmt == "pt":
        path = tmp_path / "bad.pt"
        torch.save(sd, path)
    else:
        path = tmp_path / "bad.safetensors"
        save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "'2.weight'" in msg
    assert f"3 {label}" in msg
    assert "check_finite=False" in msg
    assert str(path) in msg
    assert "'0.weight'" not in msg

    _assert_bit_exact(load_checkpoint(path, check_finite=False), sd)


def test_non_finite_half_precision_and_integers_ignored(tmp_path: Path) -> None:
    sd = {
        "h": torch.tensor([1.0, float("nan")], dtype=torch.float16),
        "b": torch.tensor([float("inf")], dtype=torch.bfloat16),
        "steps": torch.tensor(3),
    }
    path = tmp_path / "mixed.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "'h' (1 NaN" in msg and "'b' (1 Inf" in msg and "steps" not in msg


def test_non_finite_in_shard_names_the_shard(tmp_path: Path) -> None:
    sd = _state(_mlp())
    sd["2.bias"][0] = float("nan")
    _write_sharded(tmp_path, sd, "safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    msg = str(info.value)
    assert "model-00002-of-00002.safetensors" in msg and "'2.bias'" in msg


# --------------------------------------------------------------------------
# check_state_dict
# --------------------------------------------------------------------------


def test_check_state_dict_accepts_matching() -> None:
    model = _bn_model()
    sd = _state(model)
    check_state_dict(sd, model)
    # dtype differences are fine
    check_state_dict({k: v.double() for k, v in sd.items()}, model)
    # common DataParallel prefix on the state_dict is fine
    check_state_dict({f"module.{k}": v for k, v in sd.items()}, model, source="dp.pt")
    # references given as shapes
    check_state_dict(sd, {k: tuple(v.shape) for k, v in sd.items()})
    check_state_dict(sd, {k: v.shape for k, v in sd.items()})


def test_check_state_dict_missing_key() -> None:
    model = _bn_model()
    sd = _state(model)
    del sd["1.running_var"]
    with pytest.raises(CheckpointError) as info:
        check_state_dict(sd, model, source="/ckpt/a.pt")
    msg = str(info.value)
    assert "/ckpt/a.pt" in msg
    assert "1 missing key" in msg
    assert "1.running_var" in msg
    assert "unexpected" not in msg


def test_check_state_dict_unexpected_key() -> None:
    model = _mlp()
    sd = _state(model)
    sd["3.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(sd, model, source="b.safetensors")
    msg = str(info.value)
    assert "b.safetensors" in msg
    assert "1 unexpected key" in msg
    assert "3.weight" in msg
    assert "missing" not in msg


def test_check_state_dict_shape_mismatch() -> None:
    model = _mlp()
    sd = _state(model)
    sd["0.weight"] = torch.zeros(3, 4)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(sd, model, source="c.pt")
    msg = str(info.value)
    assert "c.pt" in msg
    assert "0.weight: expected (4, 3), got (3, 4)" in msg
    assert "1 shape mismatch" in msg


def test_check_state_dict_reports_everything_at_once() -> None:
    model = _mlp()
    sd = _state(model)
    del sd["0.bias"]
    sd["extra"] = torch.zeros(1)
    sd["2.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(sd, model)
    msg = str(info.value)
    assert "0.bias" in msg and "extra" in msg
    assert "2.bias: expected (2,), got (5,)" in msg
    assert "Sequential" in msg


def test_check_state_dict_truncates_long_lists() -> None:
    reference = {f"layer{i}.weight": (2, 2) for i in range(25)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict({"w": torch.zeros(1)}, reference)
    msg = str(info.value)
    assert "25 missing keys" in msg
    assert "layer0.weight" in msg and "layer9.weight" in msg
    assert "layer10.weight" not in msg
    assert "... and 15 more" in msg


def test_check_state_dict_prefix_hint() -> None:
    model = _mlp()
    sd = {f"backbone.{k}": v for k, v in _state(model).items()}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(sd, model)
    assert "'backbone.' prefix" in str(info.value)


def test_load_then_check_end_to_end(tmp_path: Path) -> None:
    model = _bn_model()
    path = tmp_path / "ckpt.pt"
    torch.save(OrderedDict(model.state_dict()), path)
    sd = load_checkpoint(path)
    check_state_dict(sd, model, source=str(path))
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    fresh.load_state_dict(sd)
    _assert_bit_exact(_state(fresh), _state(model), ordered=True)

    wrong = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    with pytest.raises(CheckpointError) as info:
        check_state_dict(sd, wrong, source=str(path))
    msg = str(info.value)
    assert str(path) in msg and "0.weight: expected (5, 3), got (4, 3)" in msg


def test_plain_pickle_dump_is_named_as_such(tmp_path: Path) -> None:
    """A pickle.dump file (not torch.save) needs the full unpickler: reported as a plain pickle, with both the
    API and the CLI opt-in named, then loaded when allowed; a truncated one is still reported as corrupt."""
    import pickle

    path = tmp_path / "weights.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": torch.arange(4.0)}, f, protocol=4)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "plain pickle file (written by pickle.dump" in msg and "truncated" not in msg
    assert "allow_pickle=True" in msg and "--allow-pickle" in msg
    assert torch.equal(load_checkpoint(path, allow_pickle=True)["w"], torch.arange(4.0))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy)["w"], torch.ones(2))  # torch.save's legacy format stays safe
