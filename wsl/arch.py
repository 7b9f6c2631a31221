"""Build an architecture (randomly initialised module) from a short string, for the CLI and ``arch=``.

* ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None)``
* ``timm:NAME`` — ``timm.create_model(NAME, pretrained=False)``
* ``hf:PATH`` — an HF ``config.json`` file or a directory holding one; the model class is taken from the
  config's ``architectures`` entry (``AutoModel`` when absent). Nothing is downloaded.
* ``module:pkg.mod:fn`` — calls ``fn()`` from an importable module (user code; the current directory is
  searched too); ``fn`` may also be a class.

Constructor arguments follow in parentheses, as Python keyword literals: ``torchvision:resnet18(num_classes=10)``,
``timm:resnet18(num_classes=10, in_chans=1)``, ``module:mynets:cnn(width=8)``; for ``hf:`` they override
config fields (``hf:config.json(num_labels=3)``).
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when an architecture is built, not for the CLI's help text
    from torch import nn

ARCH_HELP = ("architecture: torchvision:NAME | timm:NAME | hf:CONFIG_JSON_OR_DIR | module:pkg.mod:fn, optionally with "
             "constructor keywords: torchvision:resnet18(num_classes=10)")


def _split_kwargs(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name(a=1, b='x')"`` -> ``("name", {"a": 1, "b": "x"})``; literals only (nothing is evaluated)."""
    if not spec.endswith(")") or "(" not in spec:
        return spec, {}
    head, _, args = spec.partition("(")
    try:
        call = ast.parse(f"f({args}", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("positional arguments")
        return head, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"architecture {spec!r}: constructor arguments must be keyword literals, e.g. "
                         f"torchvision:resnet18(num_classes=10) ({e})") from None


def build_arch(spec: str) -> nn.Module:
    from torch import nn

    spec, kwargs = _split_kwargs(spec.strip())
    kind, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"architecture {spec!r}: expected 'torchvision:NAME', 'timm:NAME', 'hf:CONFIG' or 'module:pkg.mod:fn'")
    if kind == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except ValueError as e:
            raise ValueError(f"unknown torchvision model {name!r}: see torchvision.models.list_models()") from e
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}: see timm.list_models()")
        return timm.create_model(name, pretrained=False, **kwargs)
    if kind == "hf":
        import transformers

        path = name
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"hf:{name}: no config.json found (give a config file or a directory with one)")
        cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True, **kwargs)
        archs = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        if cls is None:
            return transformers.AutoModel.from_config(cfg)
        return cls(cfg)
    if kind == "module":
        mod, _, fn = name.rpartition(":")
        if not mod:
            raise ValueError(f"module:{name}: expected module:pkg.mod:fn")
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError:
            if os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())  # `wsl` as a console script does not search the current directory
            module = importlib.import_module(mod)
        obj = getattr(module, fn, None)
        if obj is None:
            raise ValueError(f"module:{name}: {mod} has no attribute {fn!r}")
        model = obj(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"module:{name} returned {type(model).__name__}, not an nn.Module")
        return model
    raise ValueError(f"architecture {spec!r}: unknown kind {kind!r} (torchvision, timm, hf, module)")
