"""tomomatch: defocus-gradient-aware 3D template matching for cryo-ET.

Conventions (axis order, centre, Euler angles, units, defocus handedness) live in
:mod:`tomomatch.conventions` and are stated in ``docs/conventions.md``.
"""
import os
from importlib.metadata import PackageNotFoundError, version

# Large CPU tensors on transparent huge pages. torch's allocator reads this variable at its first
# large allocation, so it is set here, before any engine code runs ("madvise" is the common
# kernel default; a user's own setting wins). Why: each rotation batch allocates multi-100-MB
# maps, and first-touch faults on 4 KB pages cost as much as the arithmetic: at the seed's size
# one 3-D inverse FFT took 182 ms with 4 KB pages and 121 ms with huge pages on 2 cores.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

try:
    __version__ = version("tomomatch")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

from .errors import InputError

__all__ = ["InputError", "__version__"]
