"""tomomatch: defocus-gradient-aware 3D template matching for cryo-ET.

Conventions (axis order, centre, Euler angles, units, defocus handedness) live in
:mod:`tomomatch.conventions` and are stated in ``docs/conventions.md``.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tomomatch")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

from .errors import InputError

__all__ = ["InputError", "__version__"]
