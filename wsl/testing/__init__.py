"""Reusable property checks for parameter graphs (used by wsl's own tests; handy for user rules too)."""

from .checks import (
    assert_roundtrip,
    inconsistent_graph,
    max_output_diff,
    randomize_,
    symmetry_output_diff,
)

__all__ = ["assert_roundtrip", "inconsistent_graph", "max_output_diff", "randomize_", "symmetry_output_diff"]
