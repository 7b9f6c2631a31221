"""Hydra entry point of ``wsl train`` / ``scripts/train.py``: compose ``configs/``, instantiate, call :func:`fit`.

This is the only module that imports Hydra; everything it builds is a public ``wsl`` object named by a
``_target_`` in ``configs/``.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def build_model(factory: Any, data: dict, task: Any):
    """Call a ``_partial_`` model config with the output size (and an example graph where needed)."""
    from .tasks import Classification

    train = data["train"]
    out_dim = train.num_classes if isinstance(task, Classification) else 1
    params = list(inspect.signature(factory).parameters)
    if params and params[0] == "spec_or_graph":  # NFN: fixed-architecture baseline
        model = factory(train[0], out_dim=out_dim)
    else:
        model = factory(out_dim=out_dim)
    materialize(model, train)
    return model


def materialize(model: Any, dataset: Any) -> None:
    """Run one small batch through a model with lazy layers (e.g. StatNN) so its parameters exist before an
    optimizer or a parameter count sees them."""
    import torch
    from torch.nn.parameter import UninitializedParameter
    from torch_geometric.data import Batch

    if any(isinstance(p, UninitializedParameter) for p in model.parameters()):
        with torch.no_grad():
            model(Batch.from_data_list([dataset[i] for i in range(min(2, len(dataset)))]))


class _Chain:
    """``second(first(graph))``: augmentation on raw weights first, then normalization."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __call__(self, graph: Any) -> Any:
        graph = self.first(graph)
        return self.second(graph) if self.second is not None else graph


def add_augmentation(data: dict, augment: Any) -> Any:
    """Apply ``augment`` to the *training* split; returns the training collate function it needs (or None).

    A per-graph transform runs before the split's normalization; a pairwise one (weight-space mixup)
    becomes a :class:`wsl.augment.PairwiseCollate` that mixes partners inside each training batch.
    """
    if augment is None or (not callable(augment) and len(augment) == 0):  # `augment: none` composes to {}
        return None
    if not callable(augment):
        raise TypeError(f"augment config must build a callable transform (graph -> graph), got {type(augment)}")
    from ..augment import PairwiseCollate, is_pairwise

    if is_pairwise(augment):
        if getattr(augment, "num_classes", 0) is None and hasattr(data["train"], "num_classes"):
            augment.num_classes = data["train"].num_classes
        return PairwiseCollate(augment)
    data["train"].transform = _Chain(augment, data["train"].transform)
    return None


def run(cfg: Any) -> dict[str, Any]:
    """Instantiate the composed config and train; prints and returns the results."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from .distributed import barrier, setup
    from .loop import fit

    d = setup(cfg.trainer.get("device", "cpu")) if cfg.trainer.get("distributed", None) is not False else None
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if d is not None and d.active:  # every rank writes to rank 0's run directory
        import torch.distributed as dist

        shared = [str(out_dir)]
        dist.broadcast_object_list(shared, src=0)
        out_dir = Path(shared[0])
    main_rank = d is None or d.main
    say = print if main_rank else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    if d is not None and d.active and not d.main:  # rank 0 builds / converts the zoo, the others reuse its cache
        barrier(d)
    data = instantiate(cfg.data)
    if d is not None and d.active and d.main:
        barrier(d)
    collate = add_augmentation(data, instantiate(cfg.augment))
    task = instantiate(cfg.task)
    torch.manual_seed(cfg.seed)  # the model's init does not depend on what loading (or building) the zoo drew
    model = build_model(instantiate(cfg.model), data, task)
    logger = instantiate(cfg.logger) if main_rank else None
    say(f"[wsl train] {model.__class__.__name__}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"train/val/test = {len(data['train'])}/{len(data['val'])}/{len(data['test'])}; output -> {out_dir}")
    result = fit(model, task, data, out_dir=out_dir, seed=cfg.seed, logger=logger, train_collate=collate,
                 **cfg.trainer)
    result["config"] = OmegaConf.to_container(cfg, resolve=False)
    if main_rank:
        (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    shown = ", ".join(f"{k}={v:.4f}" for k, v in result["test"].items())
    say(f"[wsl train] test: {shown} (best epoch {result['best_epoch']}, {result['seconds']:.0f} s)")
    say(f"[wsl train] curves: {result['plot']}  metrics: {out_dir / 'metrics.csv'}  checkpoint: {result['checkpoint']}")
    return result


def hydra_main(command: str, config_name: str, task: Any, argv: list[str] | None = None) -> None:
    """Run ``task(cfg)`` under Hydra with ``configs/<config_name>.yaml``; ``argv`` are Hydra overrides
    (``sys.argv`` when None). ``command`` names the CLI in error messages."""
    try:
        import hydra
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(f'{command} needs the training extras: pip install -e ".[train]"') from e
    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise SystemExit(f"{command}: configs not found at {CONFIG_DIR} (install the repository in editable mode: "
                         f"pip install -e .)")
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name=config_name)(task)()


def main(argv: list[str] | None = None) -> None:
    """Run with Hydra; ``argv`` are Hydra overrides (``model=nggnn trainer.epochs=5``, ``-m`` for sweeps)."""
    hydra_main("wsl train", "train", run, argv)


if __name__ == "__main__":
    main()
