"""Tilt-series metadata readers and writers.

Every reader returns values in tomomatch units (:mod:`tomomatch.conventions`): tilt angles in
degrees with the IMOD/RELION sign (Warp's negated; RELION 5's x tilt in ``x_tilt_deg``), dose
accumulated before each tilt in e/A^2, defocus in micrometres (positive = underfocus),
astigmatism angle and phase shift in degrees. Structured
sources return a :class:`tomomatch.tiltseries.TiltSeries`; :func:`load_tilt_series` combines a
primary source with extra files and scalar overrides. All writers are atomic. See
``docs/metadata.md``.
"""

from __future__ import annotations

from .aln import read_aln
from .combine import load_tilt_series, read_defocus_any
from .mdoc import read_mdoc
from .relion import (
    angles_from_projection_matrices,
    list_relion5_tomograms,
    read_relion5,
    relion5_projection_matrices,
    write_relion5,
)
from .text import (
    read_defocus_text,
    read_dose,
    read_imod_defocus,
    read_tilt_angles,
    write_dose,
    write_imod_defocus,
    write_tilt_angles,
)
from .warp import read_warp_xml

__all__ = [
    "read_tilt_angles",
    "read_dose",
    "read_defocus_text",
    "read_imod_defocus",
    "read_defocus_any",
    "read_relion5",
    "list_relion5_tomograms",
    "relion5_projection_matrices",
    "angles_from_projection_matrices",
    "read_warp_xml",
    "read_mdoc",
    "read_aln",
    "load_tilt_series",
    "write_tilt_angles",
    "write_dose",
    "write_imod_defocus",
    "write_relion5",
]
