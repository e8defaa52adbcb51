"""Shared command-line options for tilt-series metadata (used by match, hand, simulate, metadata)."""

from __future__ import annotations

import argparse

from ..metadata import load_tilt_series
from ..metadata.combine import _as_number, _check_overrides
from ..metadata.plausibility import (
    DEFOCUS_MAX_UM,
    DEFOCUS_MIN_PHASE_PLATE_UM,
    DEFOCUS_MIN_UM,
    MAX_TOTAL_DOSE,
    OPTION_UM,
    check_defocus,
    has_phase_plate,
)
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
        "e/A^2, micrometres (+ = underfocus).",
    )
    g.add_argument(
        "-a",
        "--tilt-angles",
        metavar="FILE",
        help=".rawtlt/.tlt file, one angle (degrees) per line; with another source it replaces its angles",
    )
    g.add_argument(
        "--dose",
        metavar="FILE",
        help="text file, one dose per line: accumulated e/A^2 before each tilt (pytom's format)",
    )
    g.add_argument(
        "--dose-per-tilt",
        action="store_true",
        help="--dose holds the dose of each exposure; accumulate it in file order "
        "(file order must be the acquisition order)",
    )
    g.add_argument(
        "--defocus",
        metavar="FILE_OR_UM",
        help="IMOD ctfplotter .defocus (nm, v2/v3), a text file in micrometres, or one value in micrometres",
    )
    g.add_argument("--relion5-tomograms", metavar="STAR", help="RELION 5 tomograms.star (data_global)")
    g.add_argument("--tomo-name", metavar="NAME", help="rlnTomoName to read from --relion5-tomograms")
    g.add_argument("--warp-xml", metavar="XML", help="Warp/WarpTools tilt-series XML")
    g.add_argument("--mdoc", metavar="MDOC", help="SerialEM tilt-series .mdoc")
    g.add_argument("--aln", metavar="ALN", help="AreTomo .aln (dark frames become excluded tilts)")
    g.add_argument("--voltage", type=float, metavar="KV", help="override acceleration voltage (kV)")
    g.add_argument("--cs", type=float, metavar="MM", help="override spherical aberration (mm)")
    g.add_argument("--amplitude-contrast", type=float, metavar="FRACTION", help="override amplitude contrast")
    g.add_argument("--phase-shift", type=float, metavar="DEG", help="override phase shift (degrees) for every tilt")
    g.add_argument(
        "--allow-missing-dose",
        action="store_true",
        help="read a RELION 5, Warp or mdoc tilt series without dose (no rlnMicrographPreExposure, <Dose> "
        "or ExposureDose, or 0 for every tilt) as dose 0, i.e. no exposure filter; without it that "
        "is an error (match's --no-dose implies it)",
    )
    g.add_argument(
        "--allow-unusual-defocus",
        action="store_true",
        help=f"accept defocus outside {DEFOCUS_MIN_UM:g}-{DEFOCUS_MAX_UM:g} um underfocus "
        f"({DEFOCUS_MIN_PHASE_PLATE_UM:g}-{DEFOCUS_MAX_UM:g} um with a phase shift); such values "
        "are usually a unit mistake (nm vs Angstrom vs um), so use it only for unusual data",
    )
    g.add_argument(
        "--allow-unusual-dose",
        action="store_true",
        help=f"accept an accumulated dose of {MAX_TOTAL_DOSE:g} e/A^2 or more (usually e/nm^2 given for e/A^2)",
    )
    return g


# keyword of load_tilt_series -> the option that sets it, for messages that blame the option
_OPTION_NAMES = {
    "voltage_kv": "--voltage",
    "cs_mm": "--cs",
    "amplitude_contrast": "--amplitude-contrast",
    "phase_shift_deg": "--phase-shift",
}


def tilt_series_from_args(args: argparse.Namespace) -> TiltSeries | None:
    """The TiltSeries the metadata options describe, or None if no tilt-series source was given."""
    if all(getattr(args, dest, None) is None for dest in TILT_SOURCE_DESTS):
        return None
    # scalar options are checked here so that an error names the option, not a metadata file
    _check_overrides(
        voltage_kv=getattr(args, "voltage", None),
        cs_mm=getattr(args, "cs", None),
        amplitude_contrast=getattr(args, "amplitude_contrast", None),
        phase_shift_deg=getattr(args, "phase_shift", None),
        pixel_size_angstrom=None,
        names=_OPTION_NAMES,
    )
    allow_unusual_defocus = bool(getattr(args, "allow_unusual_defocus", False))
    number = _as_number(getattr(args, "defocus", None))
    if number is not None:
        phase = getattr(args, "phase_shift", None)
        check_defocus(
            [number],
            None,
            "--defocus",
            OPTION_UM,
            phase_plate=has_phase_plate([phase or 0.0]),
            allow_unusual=allow_unusual_defocus,
        )
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
        allow_missing_dose=bool(getattr(args, "allow_missing_dose", False) or getattr(args, "no_dose", False)),
        allow_unusual_defocus=allow_unusual_defocus,
        allow_unusual_dose=bool(getattr(args, "allow_unusual_dose", False)),
    )
