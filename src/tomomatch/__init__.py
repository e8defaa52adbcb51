"""tomomatch: defocus-gradient-aware 3D template matching for cryo-ET.

Conventions (axis order, centre, Euler angles, units, defocus handedness) live in
:mod:`tomomatch.conventions` and are stated in ``docs/conventions.md``.

Importing the package changes nothing in the process (no environment variables, no torch
import); the engine's process settings are made where a search starts
(:func:`tomomatch.matching.configure_allocator`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tomomatch")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

from .errors import InputError

__all__ = ["InputError", "__version__"]
