"""Deterministic, resumable generators of local model zoos (cached outside git, see :mod:`.common`)."""

from .common import ZooDir, cache_root
from .digits_inr import DigitsINRConfig, generate_digits_inr, siren

__all__ = ["DigitsINRConfig", "ZooDir", "cache_root", "generate_digits_inr", "siren"]
