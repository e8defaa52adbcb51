"""The engine configuration: the ``TOMOMATCH_*`` switches, read once, passed down explicitly.

:class:`EngineConfig` holds every environment switch that changes how the engine computes (FFT
grid sizes, FFT library, packed or unpacked path, fold kernel). It is read from the environment
once, where a search starts (:func:`tomomatch.job.plan_match`, :func:`~tomomatch.matching.match_volume`,
a :class:`~tomomatch.matching.TileCorrelator` built without one), and handed to the code that
uses it; nothing below reads ``os.environ``. A job's plan carries it, so it enters the checkpoint
key and the job file, and a resumed or distributed job cannot mix two configurations.

:func:`configure_allocator` sets torch's allocator switch (huge pages) where the engine starts.

Importing the engine (torch included) allocates no tensor, so the command line imports it and
calls :func:`configure_allocator` first thing, before any tensor exists.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Mapping

from ..errors import InputError

__all__ = ["EngineConfig", "configure_allocator"]

_FFT_SIZES = ("5-smooth", "cuda")
_FUSED = ("auto", "0", "1", "triton")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine computes; the defaults are what a plain run does.

    Attributes (environment variable, values)
    -----------------------------------------
    fft_sizes
        ``TOMOMATCH_FFT_SIZES``: ``"5-smooth"`` (default: the smallest 2-3-5-smooth length per
        axis, on every device, so CPU and GPU runs use one grid) or ``"cuda"`` (on CUDA only:
        lengths ``2^a 3^b 5^c`` with ``b <= 2``, ``c <= 1``, which cuFFT runs in one kernel per
        axis; the CPU keeps 5-smooth).
    fftw
        ``TOMOMATCH_FFTW`` (``1`` default, ``0``): pyFFTW does the CPU transforms where installed
        (the unpacked path's inverse transforms and pruned forward transforms, the packed path's
        x pass); off: scipy.fft and torch.
    fftw_min_voxels
        ``TOMOMATCH_FFTW_MIN_VOXELS`` (integer >= 0, default ``2**21``): grids at least this large
        use an FFTW plan for the packed path's x pass on the CPU.
    packed
        ``TOMOMATCH_PACKED`` (``1`` default, ``0``): the fast path with a spherical mask packs
        two rotations into one complex transform (:class:`~tomomatch.matching.PairPacker`).
    fused
        ``TOMOMATCH_FUSED``: how packed pairs are folded into the running maximum: ``"auto"``
        (default: the Triton kernel on CUDA, the ``torch.compile``\\ d fold on CPU tiles of at
        least ~4 M voxels, else separate kernels), ``"0"`` (separate torch kernels), ``"1"``
        (the compiled fold), ``"triton"`` (the Triton kernel).
    triton_interpret
        ``TRITON_INTERPRET`` (Triton's own switch, ``1``: its CPU interpreter): the Triton fold
        may then run on the CPU (the tests).

    Invalid values raise ``ValueError`` here and :class:`~tomomatch.errors.InputError` naming
    the variable in :meth:`from_environment`; nothing falls back silently.
    """

    fft_sizes: str = "5-smooth"
    fftw: bool = True
    fftw_min_voxels: int = 1 << 21
    packed: bool = True
    fused: str = "auto"
    triton_interpret: bool = False

    def __post_init__(self):
        if self.fft_sizes not in _FFT_SIZES:
            raise ValueError(f"fft_sizes {self.fft_sizes!r}; expected one of {', '.join(_FFT_SIZES)}")
        if self.fused not in _FUSED:
            raise ValueError(f"fused {self.fused!r}; expected one of {', '.join(_FUSED)}")
        for name in ("fftw", "packed", "triton_interpret"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} {getattr(self, name)!r}; expected True or False")
        if (
            isinstance(self.fftw_min_voxels, bool)
            or not isinstance(self.fftw_min_voxels, int)
            or self.fftw_min_voxels < 0
        ):
            raise ValueError(f"fftw_min_voxels {self.fftw_min_voxels!r}; expected an integer >= 0")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "EngineConfig":
        """The configuration the environment asks for (``environ``: default ``os.environ``).

        Raises :class:`~tomomatch.errors.InputError` naming the variable for a value it does not
        know (``TOMOMATCH_FFTW=yes`` is an error, not "on").
        """
        env = os.environ if environ is None else environ

        def choice(var, allowed, default):
            v = env.get(var, "")
            if v == "":
                return default
            if v not in allowed:
                raise InputError(f"{var}={v!r}; expected one of {', '.join(allowed)} (or unset)", None, var)
            return v

        def flag(var, default):
            return choice(var, ("0", "1"), "1" if default else "0") == "1"

        raw = env.get("TOMOMATCH_FFTW_MIN_VOXELS", "")
        try:
            min_voxels = cls.fftw_min_voxels if raw == "" else int(raw)
            if min_voxels < 0:
                raise ValueError
        except ValueError:
            raise InputError(
                f"TOMOMATCH_FFTW_MIN_VOXELS={raw!r}; expected an integer >= 0 (or unset)",
                None,
                "TOMOMATCH_FFTW_MIN_VOXELS",
            ) from None
        return cls(
            fft_sizes=choice("TOMOMATCH_FFT_SIZES", _FFT_SIZES, cls.fft_sizes),
            fftw=flag("TOMOMATCH_FFTW", cls.fftw),
            fftw_min_voxels=min_voxels,
            packed=flag("TOMOMATCH_PACKED", cls.packed),
            fused=choice("TOMOMATCH_FUSED", _FUSED, cls.fused),
            triton_interpret=env.get("TRITON_INTERPRET") == "1",
        )

    def to_json(self) -> dict:
        """Plain dict of the fields (the checkpoint key's and the job file's ``engine.config``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "EngineConfig":
        """Inverse of :meth:`to_json` (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        extra = set(d) - names
        if extra:
            raise ValueError(f"unknown engine configuration fields {sorted(extra)}")
        return cls(**dict(d))


def configure_allocator() -> None:
    """Put large CPU tensors on transparent huge pages: ``THP_MEM_ALLOC_ENABLE=1`` unless set.

    Called where the engine starts: first thing in the command line's ``main``, and at the start
    of :func:`tomomatch.job.run_match`, :func:`~tomomatch.job.plan_match`,
    :func:`~tomomatch.job.run_unit` and :func:`~tomomatch.matching.match_volume`. A user's own
    value wins (``THP_MEM_ALLOC_ENABLE=0`` turns it off).

    When it takes effect: torch reads the variable once, at the process's first CPU allocation
    through its allocator, *whatever its size*, and keeps the answer. Measured with torch 2.13
    (256 MB tensor, kernel THP ``madvise``): set after ``import torch`` with no tensor made
    yet, 254 MB landed on huge pages; set after a single 40 kB ``torch.randn``, none did (a
    ``torch.from_numpy`` view allocates nothing and does not count). So a script that makes
    torch tensors before calling the engine should call this function (or set the variable in
    the shell) first; otherwise the search runs correctly, only without huge pages.

    Why: each rotation batch allocates multi-100-MB maps, and first-touch faults on 4 KB pages
    cost as much as the arithmetic: at the seed's size one 3-D inverse FFT took 182 ms with 4 KB
    pages and 121 ms with huge pages on 2 cores.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
