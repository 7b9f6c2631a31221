"""Benchmarks of parameter prediction: ResNet-50 and GPT-2 small on CPU, decoder sizes tiled vs low-rank.

    nice -n 10 python scripts/bench_predict.py [--hypernet ghn2-digits] [--skip-gpt2]

* ResNet-50 (torchvision, 25.6 M parameters, 224×224 input): time of ``predict_parameters`` (cold: with
  tracing the computational graph; warm: graph cached), target < 1 s on CPU; measured with ``check=False``
  (the prediction itself, without the eval-mode forward of the warnings check);
* GPT-2 small (HF ``GPT2Config()`` defaults, 124 M parameters, built locally, nothing downloaded): time,
  every tensor shape-valid, peak resident memory during prediction vs the model's own size;
* decoder parameter counts for layers of width 64 ... 1024: ``TiledDecoder`` (GHN-2/3) vs ``LowRankDecoder``
  (LoGAH) at a fixed hidden size and with a hidden size growing with width (``d = w / 4``; then the tiled decoder grows like ``w³``, the low-rank one like ``w²``).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from wsl.hyper.api import load_hypernet, predict_parameters
from wsl.hyper.decoders import decoder_parameter_count


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_resnet50(hn, repeats: int = 3) -> None:
    import torchvision

    model = torchvision.models.resnet50()
    x = torch.zeros(1, 3, 224, 224)
    t = time.perf_counter()
    _, report = predict_parameters(model, hn, example_inputs=x, inplace=True, check=False)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict_parameters(model, hn, example_inputs=x, inplace=True, check=False)
        warm.append(time.perf_counter() - t)
    n = report.num_predicted_elements(model)
    print(f"ResNet-50: {len(report.predicted)} tensors, {n:,} parameters predicted; cold {cold:.2f}s "
          f"(incl. tracing), warm {min(warm):.2f}s (best of {repeats}); threads={torch.get_num_threads()}; "
          f"report complete: {report.complete}")


def bench_gpt2(hn) -> None:
    import transformers

    cfg = transformers.GPT2Config()
    model = transformers.GPT2LMHeadModel(cfg)
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    rss0 = _rss_mb()
    t = time.perf_counter()
    model, report = predict_parameters(model, hn, inplace=True, check=False)
    dt = time.perf_counter() - t
    ok = all(model.state_dict()[k].shape == s for k, s in shapes.items())
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    print(f"GPT-2 small: {len(report.predicted)} tensors ({report.num_predicted_elements(model):,} parameters, "
          f"{size_mb:.0f} MiB) in {dt:.2f}s; shapes valid {ok}, finite {finite}, not predicted "
          f"{len(report.not_predicted)}; peak RSS grew by {max(_rss_mb() - rss0, 0):.0f} MiB during prediction")


def bench_decoders() -> None:
    print("decoder parameters (kernel 3, rank 8): width | tiled, low-rank at hidden 64 | tiled, low-rank at "
          "hidden w/4 (tiled: 1x1-conv channels = hidden, as in GHN-3)")
    for w in (64, 256, 1024):
        t64, l64 = decoder_parameter_count("tiled", w), decoder_parameter_count("lowrank", w)
        h = max(w // 4, 16)
        tw = decoder_parameter_count("tiled", w, hidden=h, channels=h)
        lw = decoder_parameter_count("lowrank", w, hidden=h)
        print(f"  {w:5d} | {t64:>12,} {l64:>11,} (x{t64 / l64:.1f}) | {tw:>12,} {lw:>11,} (x{tw / lw:.1f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hypernet", default="ghn2-digits")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-gpt2", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    hn = load_hypernet(a.hypernet)
    bench_resnet50(hn)
    if not a.skip_gpt2:
        bench_gpt2(hn)
    bench_decoders()


if __name__ == "__main__":
    main()
