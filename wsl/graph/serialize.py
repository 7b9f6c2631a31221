"""Saving and loading parameter graphs without pickle.

A graph file is a flat mapping of named tensors plus one JSON string (the spec's non-tensor fields):

* ``*.safetensors``: a safetensors file, the JSON in its metadata under ``wsl``;
* anything else (``*.pt``): ``torch.save`` of a plain ``dict[str, Tensor | str]``, which loads with
  ``torch.load(weights_only=True)`` — no code runs when a graph file is opened.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

from .paramgraph import ParamGraph
from .spec import NetworkSpec, NeuronSetInfo, TensorLayout
from .symmetry import SymmetryGroups

FORMAT = "wsl.paramgraph"
VERSION = 1
_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
                               torch.int32, torch.int64, torch.uint8, torch.bool)}
for _n in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"):
    if hasattr(torch, _n):
        _DTYPES[str(getattr(torch, _n))] = getattr(torch, _n)


class GraphFileError(ValueError):
    """A graph file is missing, corrupt, or not a wsl parameter graph."""


def _spec_payload(spec: NetworkSpec) -> tuple[dict[str, Any], dict[str, Tensor]]:
    sym = spec.symmetry
    tensors = {
        "spec.edge_index": spec.edge_index,
        "spec.edge_type": spec.edge_type,
        "spec.edge_pos": spec.edge_pos,
        "spec.node_type": spec.node_type,
        "spec.node_layer": spec.node_layer,
        "spec.io": spec.io,
        "spec.io_index": spec.io_index,
        "sym.cell_start": sym.cell_start,
        "sym.cell_size": sym.cell_size,
        "sym.cell_class": sym.cell_class,
        "sym.scale_kind": sym.scale_kind,
    }
    layouts = []
    for i, t in enumerate(spec.tensors.values()):
        layouts.append([t.name, t.kind, list(t.shape), str(t.dtype), t.offset, t.column])
        if t.kind == "nodes":
            tensors[f"atoms.{i}"] = t.atoms
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": spec.arch,
        "sets": [[s.start, s.size, s.kind, s.name] for s in spec.sets],
        "tensors": layouts,
        "aliases": spec.aliases,
        "keys": list(spec.keys),
        "num_nodes": spec.num_nodes,
        "num_edges": spec.num_edges,
        "num_passthrough": spec.num_passthrough,
        "dtype": str(spec.dtype),
        "identity_edges": [list(x) for x in spec.identity_edges],
        "notes": list(spec.notes),
        "example_shapes": [list(s) for s in spec.example_shapes],
        "class_fixed": [[k, v] for k, v in sym.class_fixed.items()],
        "class_blocks": [[k, list(v)] for k, v in sym.class_blocks.items()],
        "cell_head": [[k, v] for k, v in sym.cell_head.items()],
    }
    return meta, tensors


def save_graph(graph: ParamGraph, path: str | os.PathLike[str]) -> None:
    """Write ``graph`` (weights and spec) to ``path``; the file is written atomically."""
    from safetensors.torch import save_file

    meta, tensors = _spec_payload(graph.spec)
    tensors = {k: v.contiguous().clone() if k.startswith("atoms.") else v.contiguous() for k, v in tensors.items()}
    tensors.update({"graph.x": graph.x.contiguous(), "graph.edge_attr": graph.edge_attr.contiguous(),
                    "graph.buffers": graph.buffers.contiguous()})
    path = os.fspath(path)
    tmp = path + ".tmp"
    text = json.dumps(meta)
    try:
        if path.endswith(".safetensors"):
            save_file(tensors, tmp, metadata={"wsl": text})
        else:
            payload: dict[str, Any] = dict(tensors)
            payload["__wsl__"] = text
            torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_graph_file(path: str | os.PathLike[str]) -> bool:
    try:
        _read(os.fspath(path))
        return True
    except GraphFileError:
        return False


def _read(path: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if not os.path.isfile(path):
        raise GraphFileError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = (f.metadata() or {}).get("wsl")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise GraphFileError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise GraphFileError(f"{path}: not a readable wsl graph file ({type(e).__name__}: {e})") from e
        if not isinstance(payload, dict):
            raise GraphFileError(f"{path}: not a wsl graph file")
        meta = payload.pop("__wsl__", None)
        tensors = {k: v for k, v in payload.items() if isinstance(v, Tensor)}
    if meta is None:
        raise GraphFileError(f"{path}: not a wsl graph file (no wsl metadata); is it a checkpoint?")
    info = json.loads(meta)
    if info.get("format") != FORMAT:
        raise GraphFileError(f"{path}: unknown format {info.get('format')!r}")
    if info.get("version", 0) > VERSION:
        raise GraphFileError(f"{path}: written by a newer wsl (format version {info['version']}); upgrade wsl")
    return info, tensors


def load_graph(path: str | os.PathLike[str]) -> ParamGraph:
    """Read a graph written by :func:`save_graph` (no pickle code execution)."""
    path = os.fspath(path)
    info, t = _read(path)
    try:
        layouts = {}
        for i, (name, kind, shape, dtype, offset, column) in enumerate(info["tensors"]):
            layouts[name] = TensorLayout(name, kind, tuple(shape), _DTYPES[dtype], offset,
                                         t.get(f"atoms.{i}"), column)
        sym = SymmetryGroups(
            num_nodes=info["num_nodes"],
            cell_start=t["sym.cell_start"],
            cell_size=t["sym.cell_size"],
            cell_class=t["sym.cell_class"],
            class_fixed={int(k): bool(v) for k, v in info["class_fixed"]},
            class_blocks={int(k): (int(v[0]), int(v[1])) for k, v in info["class_blocks"]},
            cell_head={int(k): int(v) for k, v in info["cell_head"]},
            scale_kind=t["sym.scale_kind"],
        )
        spec = NetworkSpec(
            arch=info["arch"],
            sets=tuple(NeuronSetInfo(*s) for s in info["sets"]),
            tensors=layouts,
            aliases=dict(info["aliases"]),
            keys=tuple(info["keys"]),
            num_nodes=info["num_nodes"],
            num_edges=info["num_edges"],
            num_passthrough=info["num_passthrough"],
            dtype=_DTYPES[info["dtype"]],
            edge_index=t["spec.edge_index"],
            edge_type=t["spec.edge_type"],
            edge_pos=t["spec.edge_pos"],
            node_type=t["spec.node_type"],
            node_layer=t["spec.node_layer"],
            io=t["spec.io"],
            io_index=t["spec.io_index"],
            symmetry=sym,
            identity_edges=tuple(tuple(x) for x in info["identity_edges"]),
            notes=tuple(info["notes"]),
            example_shapes=tuple(tuple(s) for s in info["example_shapes"]),
        )
        graph = ParamGraph(
            x=t["graph.x"], edge_index=spec.edge_index, edge_attr=t["graph.edge_attr"], edge_type=spec.edge_type,
            edge_pos=spec.edge_pos, node_type=spec.node_type, node_layer=spec.node_layer, io=spec.io,
            io_index=spec.io_index, buffers=t["graph.buffers"], spec=spec,
        )
    except (KeyError, ValueError, TypeError) as e:
        raise GraphFileError(f"{path}: wsl graph file is incomplete or corrupt ({type(e).__name__}: {e})") from e
    if graph.x.shape[0] != spec.num_nodes or graph.edge_attr.shape[0] != spec.num_edges:
        raise GraphFileError(f"{path}: graph tensors do not match the stored spec (corrupt file)")
    return graph
