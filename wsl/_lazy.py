"""Lazy package exports (PEP 562): ``import wsl`` and the ``wsl`` command's ``--help`` do not import torch,
torch-geometric and friends; a name is imported from its submodule the first time it is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any],
                 exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose globals are ``namespace``.

    ``exports`` maps each public name to the submodule that defines it, relative to ``package``
    (``".graph"``); a name mapped to itself (``"align": ".align"``) is the submodule. A resolved name is
    cached in ``namespace``, so the lookup runs once.
    """

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(where, package)
        value = module if where.lstrip(".") == name else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
