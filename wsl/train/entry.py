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
        return factory(train[0], out_dim=out_dim)
    return factory(out_dim=out_dim)


def run(cfg: Any) -> dict[str, Any]:
    """Instantiate the composed config and train; prints and returns the results."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from .loop import fit

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    task = instantiate(cfg.task)
    model = build_model(instantiate(cfg.model), data, task)
    logger = instantiate(cfg.logger)
    print(f"[wsl train] {model.__class__.__name__}: {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"train/val/test = {len(data['train'])}/{len(data['val'])}/{len(data['test'])}; output -> {out_dir}")
    result = fit(model, task, data, out_dir=out_dir, seed=cfg.seed, logger=logger, **cfg.trainer)
    result["config"] = OmegaConf.to_container(cfg, resolve=False)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    shown = ", ".join(f"{k}={v:.4f}" for k, v in result["test"].items())
    print(f"[wsl train] test: {shown} (best epoch {result['best_epoch']}, {result['seconds']:.0f} s)")
    print(f"[wsl train] curves: {result['plot']}  metrics: {out_dir / 'metrics.csv'}  checkpoint: {result['checkpoint']}")
    return result


def main(argv: list[str] | None = None) -> None:
    """Run with Hydra; ``argv`` are Hydra overrides (``model=nggnn trainer.epochs=5``, ``-m`` for sweeps)."""
    try:
        import hydra
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit('wsl train needs the training extras: pip install -e ".[train]"') from e
    if not (CONFIG_DIR / "train.yaml").is_file():
        raise SystemExit(f"wsl train: configs not found at {CONFIG_DIR} (install the repository in editable mode: "
                         f"pip install -e .)")
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="train")(run)()


if __name__ == "__main__":
    main()
