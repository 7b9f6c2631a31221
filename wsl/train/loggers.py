"""Metric loggers for training runs: CSV (always works), wandb (offline by default), none."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class NullLogger:
    """Logs nothing."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def truncate(self, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class CSVLogger(NullLogger):
    """Appends one row per ``log`` call to ``<dir>/metrics.csv`` (columns grow as new metrics appear)."""

    def __init__(self, dir: str | Path = ".", filename: str = "metrics.csv") -> None:
        self.path = Path(dir) / filename
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():  # resumed run: keep the history
            with self.path.open() as f:
                self.rows = list(csv.DictReader(f))

    def truncate(self, step: int) -> None:
        """Forget rows logged at ``step`` or later (a resumed run repeats them)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) < step]

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append({"step": step, **metrics})
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)


class WandbLogger(NullLogger):
    """Weights & Biases; ``mode="offline"`` by default (no account, no network; sync later with
    ``wandb sync``), ``"disabled"`` to turn it off, ``"online"`` when you have an account."""

    def __init__(self, project: str = "wsl", mode: str = "offline", dir: str | Path = ".",
                 name: str | None = None, config: dict[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the wandb logger needs wandb: pip install wandb (or 'wsl[train]'), "
                              "or choose logger=csv / logger=none") from e
        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, mode=mode, dir=str(dir), name=name, config=config or {},
                              reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()
