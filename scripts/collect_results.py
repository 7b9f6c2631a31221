"""Summarize a `wsl train -m ...` sweep: mean ± std of each test metric per model over seeds, as Markdown.

    wsl train -m model=gmn,nggnn,transformer,scalegmn,nfn_np,statnn seed=0,1,2 hydra.sweep.dir=multirun/inr
    python scripts/collect_results.py multirun/inr            # one row per model
    python scripts/collect_results.py multirun/inr --metric accuracy --by model
    python scripts/collect_results.py multirun/inr multirun/aug --by augment --model gmn   # augmentation table
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(sweep: Path) -> list[dict]:
    runs = []
    for path in sorted(sweep.glob("**/result.json")):
        r = json.loads(path.read_text())
        cfg = r.get("config", {})
        r["_model"] = cfg.get("model", {}).get("_target_", "?").rsplit(".", 1)[-1]
        if cfg.get("model", {}).get("mode"):
            r["_model"] += "-" + str(cfg["model"]["mode"])
        r["_augment"] = cfg.get("augment", {}).get("_target_", "none").rsplit(".", 1)[-1] if cfg.get("augment") else "none"
        hydra_file = path.parent / ".hydra" / "hydra.yaml"  # the config-group choices of the run
        if hydra_file.is_file():
            from omegaconf import OmegaConf

            choices = OmegaConf.load(hydra_file).hydra.runtime.choices
            for key in ("model", "augment"):
                if choices.get(key):
                    r[f"_{key}"] = choices[key]
        r["_seed"] = cfg.get("seed")
        r["_path"] = str(path.parent)
        runs.append(r)
    if not runs:
        raise SystemExit(f"no result.json under {sweep}")
    return runs


def fmt(values: list[float], scale: float) -> str:
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, nargs="+", help="one or more sweep directories")
    ap.add_argument("--model", help="only runs of this model choice (e.g. gmn)")
    ap.add_argument("--metric", action="append", help="test metrics to show (default: all)")
    ap.add_argument("--by", default="model", choices=["model", "augment"], help="row key")
    ap.add_argument("--percent", action="store_true", help="show accuracy-like metrics ×100")
    args = ap.parse_args()
    runs = [r for sweep in args.sweep for r in load(sweep)]
    if args.model:
        runs = [r for r in runs if r["_model"] == args.model]
    metrics = args.metric or sorted({k for r in runs for k in r["test"]})
    rows: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        rows[r[f"_{args.by}"]].append(r)
    print(f"| {args.by} | seeds | " + " | ".join(f"test {m}" for m in metrics) + " | epochs | s/run |")
    print("|---" * (len(metrics) + 4) + "|")
    for key, rs in rows.items():
        cells = []
        for m in metrics:
            scale = 100.0 if args.percent and m == "accuracy" else 1.0
            cells.append(fmt([r["test"][m] for r in rs if m in r["test"]], scale))
        epochs = statistics.mean(r["epochs_run"] for r in rs)
        secs = statistics.mean(r["seconds"] for r in rs)
        print(f"| {key} | {len(rs)} | " + " | ".join(cells) + f" | {epochs:.0f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
