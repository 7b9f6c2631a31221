"""A DeepNets-1M-like architecture sampler sized for 8×8 digits (``1×8×8`` input, 10 classes).

GHN-2 (Knyazev et al. 2021) trains on DeepNets-1M, a million sampled image-classification architectures,
and evaluates on held-out architectures of the same distribution and on out-of-distribution ones (wider,
deeper, denser, other families). :func:`sample_architectures` does the same at digits scale: it draws an
:class:`ArchConfig` (family, depth, widths, kernel, normalization, activation, ...) from a
``torch.Generator`` and builds a real ``nn.Module`` from it.

Splits (fixed, independent of the generator):

* ``"train"`` / ``"test"``: families ``mlp``, ``cnn``, ``resnet``, ``vit``; a configuration belongs to
  ``test`` when the CRC32 of its description is divisible by 5, so test architectures are never sampled
  for training;
* ``"ood"``: families never seen in training: ``densenet`` (concatenation of all earlier feature maps) and
  ``deep_resnet`` (more and wider blocks than the training range).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..activations import ACTIVATIONS

IN_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
FAMILIES = {"train": ("mlp", "cnn", "resnet", "vit"), "test": ("mlp", "cnn", "resnet", "vit"),
            "ood": ("densenet", "deep_resnet")}
WIDTHS = (8, 12, 16, 24, 32, 48, 64)
ACTS = ("relu", "gelu", "silu", "tanh")  # sampled in this order (changing it changes every sampled architecture)


@dataclass(frozen=True)
class ArchConfig:
    """One sampled architecture. ``widths`` has one entry per layer / block / transformer layer."""

    family: str
    widths: tuple[int, ...]
    kernel: int = 3
    norm: str = "none"  # none | bn | gn | ln
    act: str = "relu"
    pool: tuple[int, ...] = ()  # CNN: indices of layers followed by 2×2 max pooling
    heads: int = 2
    patch: int = 2

    @property
    def name(self) -> str:
        w = "-".join(map(str, self.widths))
        return f"{self.family}[{w}]k{self.kernel}-{self.norm}-{self.act}" + (
            f"-h{self.heads}p{self.patch}" if self.family == "vit" else "")

    def split(self) -> str:
        if self.family in FAMILIES["ood"]:
            return "ood"
        return "test" if zlib.crc32(self.name.encode()) % 5 == 0 else "train"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self) -> nn.Module:
        """The ``nn.Module`` (PyTorch default initialization; seed torch's global RNG for reproducible init)."""
        builders = {"mlp": MLP, "cnn": CNN, "resnet": ResNet, "deep_resnet": ResNet, "vit": ViT,
                    "densenet": DenseNet}
        if self.family not in builders:
            raise ValueError(f"unknown architecture family {self.family!r}; known: {sorted(builders)}")
        return builders[self.family](self)


def _norm(kind: str, c: int, dim: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c) if dim == 2 else nn.BatchNorm1d(c)
    if kind == "gn":
        return nn.GroupNorm(4 if c % 4 == 0 else 1, c) if dim == 2 else nn.LayerNorm(c)
    if kind == "ln":
        return nn.GroupNorm(1, c) if dim == 2 else nn.LayerNorm(c)
    return nn.Identity()


class MLP(nn.Sequential):
    def __init__(self, cfg: ArchConfig) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        prev = IN_SHAPE[0] * IN_SHAPE[1] * IN_SHAPE[2]
        for w in cfg.widths:
            layers += [nn.Linear(prev, w), _norm(cfg.norm, w, 1), ACTIVATIONS[cfg.act]()]
            prev = w
        layers.append(nn.Linear(prev, NUM_CLASSES))
        super().__init__(*layers)


class CNN(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = IN_SHAPE[0]
        for i, w in enumerate(cfg.widths):
            layers += [nn.Conv2d(prev, w, cfg.kernel, padding=cfg.kernel // 2, bias=cfg.norm != "bn"),
                       _norm(cfg.norm, w, 2), ACTIVATIONS[cfg.act]()]
            if i in cfg.pool:
                layers.append(nn.MaxPool2d(2))
            prev = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(prev, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: ArchConfig) -> None:
        super().__init__()
        k = cfg.kernel
        self.conv1 = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.n1 = _norm(cfg.norm, cout, 2)
        self.conv2 = nn.Conv2d(cout, cout, k, padding=k // 2, bias=False)
        self.n2 = _norm(cfg.norm, cout, 2)
        self.act = ACTIVATIONS[cfg.act]()
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.n2(self.conv2(self.act(self.n1(self.conv1(x)))))
        return self.act(h + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(IN_SHAPE[0], w0, 3, padding=1, bias=False), _norm(cfg.norm, w0, 2),
                                  ACTIVATIONS[cfg.act]())
        blocks, prev = [], w0
        for w in cfg.widths[1:]:
            blocks.append(Block(prev, w, cfg))
            prev = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class DenseNet(nn.Module):
    """Each layer sees the concatenation of the input stem and all earlier layers (out of distribution)."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN_SHAPE[0], cfg.widths[0], 3, padding=1)
        layers, total = [], cfg.widths[0]
        for w in cfg.widths[1:]:
            layers.append(nn.Sequential(_norm(cfg.norm, total, 2), ACTIVATIONS[cfg.act](),
                                        nn.Conv2d(total, w, cfg.kernel, padding=cfg.kernel // 2)))
            total += w
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(total, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return self.head(torch.cat(feats, 1).mean(dim=(2, 3)))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, act: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), ACTIVATIONS[act](), nn.Linear(2 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        d = cfg.widths[0]
        n = (IN_SHAPE[1] // cfg.patch) * (IN_SHAPE[2] // cfg.patch)
        self.patch = nn.Conv2d(IN_SHAPE[0], d, cfg.patch, stride=cfg.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(d, cfg.heads, cfg.act) for _ in cfg.widths])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.ln(self.layers(t))[:, 0])


def _choice(seq: tuple | list, g: torch.Generator) -> Any:
    return seq[int(torch.randint(len(seq), (1,), generator=g))]


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    """Uniform integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def sample_config(family: str, g: torch.Generator) -> ArchConfig:
    """One random configuration of ``family``."""
    act = _choice(ACTS, g)
    if family == "mlp":
        return ArchConfig("mlp", tuple(_choice(WIDTHS, g) for _ in range(_randint(1, 4, g))),
                          kernel=1, norm=_choice(("none", "ln", "bn"), g), act=act)
    if family == "cnn":
        depth = _randint(2, 6, g)
        pool = tuple(i for i in range(depth) if float(torch.rand((), generator=g)) < 0.25)[:2]
        return ArchConfig("cnn", tuple(_choice(WIDTHS[:6], g) for _ in range(depth)), kernel=_choice((1, 3, 5), g),
                          norm=_choice(("none", "bn", "gn"), g), act=act, pool=pool)
    if family in ("resnet", "deep_resnet"):
        n = _randint(2, 4, g) if family == "resnet" else _randint(6, 8, g)
        widths = WIDTHS[:5] if family == "resnet" else WIDTHS[3:]
        return ArchConfig(family, tuple(sorted(_choice(widths, g) for _ in range(n))), kernel=_choice((3, 5), g),
                          norm=_choice(("bn", "gn"), g) if family == "resnet" else "bn", act=act)
    if family == "vit":
        d = _choice((16, 24, 32, 48), g)
        return ArchConfig("vit", (d,) * _randint(1, 3, g), kernel=1, norm="ln", act=_choice(("gelu", "relu"), g),
                          heads=_choice((2, 4), g), patch=_choice((2, 4), g))
    if family == "densenet":
        return ArchConfig("densenet", tuple(_choice(WIDTHS[:4], g) for _ in range(_randint(3, 5, g))),
                          kernel=3, norm="bn", act=act)
    raise ValueError(f"unknown architecture family {family!r}")


def sample_architectures(n: int, split: str = "train", generator: torch.Generator | None = None,
                         *, families: tuple[str, ...] | None = None,
                         build: bool = True) -> list[nn.Module] | list[ArchConfig]:
    """``n`` architectures of ``split`` (``"train"`` | ``"test"`` | ``"ood"``), as modules (or configs).

    Modules carry their :class:`ArchConfig` as ``module.arch_config`` and a tracing input as
    ``module.example_inputs``. Deterministic in ``generator``.
    """
    if split not in FAMILIES:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(FAMILIES)}")
    fams = families or FAMILIES[split]
    bad = [f for f in fams if f not in FAMILIES[split]]
    if bad:
        raise ValueError(f"families {bad} are not in split {split!r} (which has {FAMILIES[split]})")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    out: list[ArchConfig] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * max(n, 1):
            raise RuntimeError(f"could not sample {n} architectures of split {split!r}")
        cfg = sample_config(_choice(fams, g), g)
        if cfg.split() == split:
            out.append(cfg)
    if not build:
        return out
    models = []
    for cfg in out:
        m = cfg.build()
        m.arch_config = cfg  # type: ignore[assignment]
        m.example_inputs = (torch.zeros(1, *IN_SHAPE),)  # type: ignore[assignment]
        models.append(m)
    return models


def demo_cnn() -> nn.Module:
    """A small digits CNN (``module:wsl.hyper.sampler:demo_cnn`` for the CLI)."""
    cfg = ArchConfig("cnn", (16, 32), kernel=3, norm="bn", act="relu", pool=(0,))
    m = cfg.build()
    m.arch_config = cfg  # type: ignore[assignment]
    m.example_inputs = (torch.zeros(1, *IN_SHAPE),)  # type: ignore[assignment]
    return m
