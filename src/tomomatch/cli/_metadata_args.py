"""Shared command-line options for tilt-series metadata (used by match, hand, simulate, metadata)."""
from __future__ import annotations

import argparse

from ..metadata import load_tilt_series
from ..tiltseries import TiltSeries

__all__ = ["add_tilt_metadata_arguments", "tilt_series_from_args", "TILT_SOURCE_DESTS"]

# Options that name a tilt-series source; with none of them there is no tilt series.
TILT_SOURCE_DESTS = ("tilt_angles", "relion5_tomograms", "warp_xml", "mdoc", "aln")


def add_tilt_metadata_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the tilt-series metadata options to ``parser`` (as one argument group)."""
    g = parser.add_argument_group(
        "tilt-series metadata",
        "One source of tilt angles (--tilt-angles, --relion5-tomograms, --warp-xml, --mdoc or --aln), "
        "optionally with --dose/--defocus files and scalar overrides. Units: degrees, accumulated "
        "e/A^2, micrometres (+ = underfocus).")
    g.add_argument("-a", "--tilt-angles", metavar="FILE",
                   help=".rawtlt/.tlt file, one angle (degrees) per line; with another source it replaces its angles")
    g.add_argument("--dose", metavar="FILE",
                   help="text file, one dose per line: accumulated e/A^2 before each tilt (pytom's format)")
    g.add_argument("--dose-per-tilt", action="store_true",
                   help="--dose holds the dose of each exposure; accumulate it in file order "
                        "(file order must be the acquisition order)")
    g.add_argument("--defocus", metavar="FILE_OR_UM",
                   help="IMOD ctfplotter .defocus (nm, v2/v3), a text file in micrometres, or one value in micrometres")
    g.add_argument("--relion5-tomograms", metavar="STAR", help="RELION 5 tomograms.star (data_global)")
    g.add_argument("--tomo-name", metavar="NAME", help="rlnTomoName to read from --relion5-tomograms")
    g.add_argument("--warp-xml", metavar="XML", help="Warp/WarpTools tilt-series XML")
    g.add_argument("--mdoc", metavar="MDOC", help="SerialEM tilt-series .mdoc")
    g.add_argument("--aln", metavar="ALN", help="AreTomo .aln (dark frames become excluded tilts)")
    g.add_argument("--voltage", type=float, metavar="KV", help="override acceleration voltage (kV)")
    g.add_argument("--cs", type=float, metavar="MM", help="override spherical aberration (mm)")
    g.add_argument("--amplitude-contrast", type=float, metavar="FRACTION", help="override amplitude contrast")
    g.add_argument("--phase-shift", type=float, metavar="DEG", help="override phase shift (degrees) for every tilt")
    return g


def tilt_series_from_args(args: argparse.Namespace) -> TiltSeries | None:
    """The TiltSeries the metadata options describe, or None if no tilt-series source was given."""
    if all(getattr(args, dest, None) is None for dest in TILT_SOURCE_DESTS):
        return None
    return load_tilt_series(
        tilt_angles=getattr(args, "tilt_angles", None),
        dose=getattr(args, "dose", None),
        dose_per_tilt=bool(getattr(args, "dose_per_tilt", False)),
        defocus=getattr(args, "defocus", None),
        relion5=getattr(args, "relion5_tomograms", None),
        tomo_name=getattr(args, "tomo_name", None),
        warp_xml=getattr(args, "warp_xml", None),
        mdoc=getattr(args, "mdoc", None),
        aln=getattr(args, "aln", None),
        voltage_kv=getattr(args, "voltage", None),
        cs_mm=getattr(args, "cs", None),
        amplitude_contrast=getattr(args, "amplitude_contrast", None),
        phase_shift_deg=getattr(args, "phase_shift", None),
    )
