"""Build an architecture (randomly initialised module) from a short string, for the CLI and ``arch=``.

* ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None)``
* ``timm:NAME`` — ``timm.create_model(NAME, pretrained=False)``
* ``hf:PATH`` — an HF ``config.json`` file or a directory holding one; the model class is taken from the
  config's ``architectures`` entry (``AutoModel`` when absent). Nothing is downloaded.
* ``module:pkg.mod:fn`` — calls ``fn()`` from an importable module (user code); ``fn`` may also be a class.
"""

from __future__ import annotations

import importlib
import os

from torch import nn


def build_arch(spec: str) -> nn.Module:
    kind, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"architecture {spec!r}: expected 'torchvision:NAME', 'timm:NAME', 'hf:CONFIG' or 'module:pkg.mod:fn'")
    if kind == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None)
        except ValueError as e:
            raise ValueError(f"unknown torchvision model {name!r}: see torchvision.models.list_models()") from e
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}: see timm.list_models()")
        return timm.create_model(name, pretrained=False)
    if kind == "hf":
        import transformers

        path = name
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"hf:{name}: no config.json found (give a config file or a directory with one)")
        cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        archs = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        if cls is None:
            return transformers.AutoModel.from_config(cfg)
        return cls(cfg)
    if kind == "module":
        mod, _, fn = name.rpartition(":")
        if not mod:
            raise ValueError(f"module:{name}: expected module:pkg.mod:fn")
        obj = getattr(importlib.import_module(mod), fn, None)
        if obj is None:
            raise ValueError(f"module:{name}: {mod} has no attribute {fn!r}")
        model = obj()
        if not isinstance(model, nn.Module):
            raise TypeError(f"module:{name} returned {type(model).__name__}, not an nn.Module")
        return model
    raise ValueError(f"architecture {spec!r}: unknown kind {kind!r} (torchvision, timm, hf, module)")
