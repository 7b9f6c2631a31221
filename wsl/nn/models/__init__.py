from .base import MetaNetwork
from .gmn import GMN
from .nggnn import NGGNN
from .scalegmn import ScaleGMN
from .transformer import RelationalTransformer

__all__ = ["GMN", "NGGNN", "MetaNetwork", "RelationalTransformer", "ScaleGMN"]
