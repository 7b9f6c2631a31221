"""Deterministic, resumable generators of local model zoos (cached outside git, see :mod:`.common`)."""

from .cnn_arch import DigitsCNN
from .common import ZooDir, cache_root
from .digits_cnn import DigitsCNNConfig, generate_digits_cnn
from .digits_inr import DigitsINRConfig, generate_digits_inr, siren

__all__ = ["DigitsCNN", "DigitsCNNConfig", "DigitsINRConfig", "ZooDir", "cache_root", "generate_digits_cnn",
           "generate_digits_inr", "siren"]
