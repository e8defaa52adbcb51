"""``tomomatch compare-hands`` (defined in :mod:`tomomatch.cli.hand`)."""

from .hand import register_compare_hands as register

__all__ = ["register"]
