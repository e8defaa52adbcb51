"""Simulator of cryo-ET tilt series and tomograms with known particles, poses and defocus hand.

Weak-phase image formation with a CTF per particle and per tilt whose defocus includes the
gradient of the TRUE hand (:mod:`tomomatch.conventions`), dose filter, Poisson shot noise,
and weighted back-projection. See ``docs/simulation.md``.

>>> from tomomatch.simulate import simulate
>>> res = simulate("ci", out_dir="sim_ci", seed=1, hand=-1)   # doctest: +SKIP
"""

from .config import PRESETS, SimulationConfig, Structure, preset_config
from .core import LoadedStructure, SimulationResult, load_structure, run_simulation, simulate
from .physics import (
    FourierProjector,
    fourier_bin_2d,
    interaction_constant,
    poisson_counts,
    ramp_filter_1d,
    tilt_scheme,
    weighted_back_projection,
)

__all__ = [
    "simulate",
    "run_simulation",
    "preset_config",
    "PRESETS",
    "SimulationConfig",
    "SimulationResult",
    "Structure",
    "load_structure",
    "LoadedStructure",
    "FourierProjector",
    "fourier_bin_2d",
    "interaction_constant",
    "poisson_counts",
    "ramp_filter_1d",
    "tilt_scheme",
    "weighted_back_projection",
]
