"""``wsl train-ghn``: train a graph hypernetwork on digits from the Hydra configs (``configs/ghn.yaml``).

The only module besides :mod:`wsl.train.entry` that imports Hydra. A run writes to its output directory:

* ``metrics.csv`` (or a wandb run): ``loss`` / ``acc`` of the meta-batches every ``log_every`` steps;
* ``hypernet/`` (``config.json`` + ``model.safetensors``, :func:`wsl.hyper.save_pretrained` format), loadable
  with ``wsl.hyper.from_pretrained(path)`` or ``wsl.predict_parameters(model, hypernet=path)``;
* ``result.json``: steps, minutes, final loss, held-out test-architecture accuracy with predicted parameters.

``package=NAME`` also writes the packaged hypernetwork ``wsl/hyper/pretrained/NAME.{json,safetensors}``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from .entry import hydra_main


def run(cfg: Any) -> dict[str, Any]:
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..hyper.hub import PRETRAINED_DIR, save_pretrained
    from ..hyper.sampler import sample_architectures
    from ..hyper.train import digits, evaluate_predicted, train_ghn

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    hn = instantiate(cfg.hypernet, _convert_="all")  # plain lists in the saved config.json
    logger = instantiate(cfg.logger)
    data = digits()
    print(f"[wsl train-ghn] {type(hn).__name__}: {sum(p.numel() for p in hn.parameters()):,} parameters; "
          f"{cfg.steps} steps x {cfg.meta_batch} architectures; output -> {out_dir}")
    t0 = time.time()
    hist = train_ghn(hn, data, steps=cfg.steps, meta_batch=cfg.meta_batch, batch_size=cfg.batch_size, lr=cfg.lr,
                     weight_decay=cfg.weight_decay, clip=cfg.clip, log_every=cfg.log_every,
                     generator=torch.Generator().manual_seed(cfg.seed),
                     time_limit=None if cfg.minutes is None else 60 * float(cfg.minutes),
                     callback=lambda rec: logger.log({"loss": rec["loss"], "acc": rec["acc"]}, int(rec["step"])))
    minutes = (time.time() - t0) / 60
    acc = None
    if cfg.eval_archs:
        torch.manual_seed(1234)
        test = sample_architectures(int(cfg.eval_archs), "test", torch.Generator().manual_seed(1234))
        acc = statistics.fmean(evaluate_predicted(hn, test, data))
        logger.log({"test_arch_acc": acc}, int(hist[-1]["step"]) if hist else 0)
    logger.finish()
    meta = {"trained_on": "sklearn load_digits (1x8x8, 10 classes), wsl.hyper.sampler train split",
            "steps": hist[-1]["step"] if hist else 0, "minutes": round(minutes, 1),
            "final_train_loss": hist[-1]["loss"] if hist else None,
            "test_arch_mean_acc": None if acc is None else round(acc, 4),
            "config": OmegaConf.to_container(cfg, resolve=True)}
    save_pretrained(hn, out_dir / "hypernet", metadata=meta)
    if cfg.package:
        save_pretrained(hn, PRETRAINED_DIR, metadata=meta, name=str(cfg.package))
        print(f"[wsl train-ghn] packaged as {cfg.package!r} in {PRETRAINED_DIR}")
    result = {**meta, "history": hist, "hypernet": str(out_dir / "hypernet")}
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    shown = "n/a" if acc is None else f"{acc:.3f}"
    print(f"[wsl train-ghn] {meta['steps']} steps in {minutes:.1f} min; final loss "
          f"{meta['final_train_loss']:.3f}; held-out architectures: mean accuracy with predicted parameters "
          f"{shown}; saved -> {out_dir / 'hypernet'}")
    return result


def main(argv: list[str] | None = None) -> None:
    """Run with Hydra; ``argv`` are Hydra overrides (``hypernet=ghn3 steps=300``, ``-m`` for sweeps)."""
    hydra_main("wsl train-ghn", "ghn", run, argv)


if __name__ == "__main__":
    main()
