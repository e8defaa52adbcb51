"""``tomomatch metadata``: read tilt-series metadata and print what was read, per tilt."""

from __future__ import annotations

import json
import os
import sys

from ..errors import InputError
from ..tiltseries import TiltSeries
from ._metadata_args import add_tilt_metadata_arguments, tilt_series_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "metadata",
        help="show the tilt-series metadata tomomatch reads (per-tilt table or JSON)",
        description="Load tilt-series metadata with the same options as 'tomomatch match' and print the "
        "per-tilt values in tomomatch units, to check what was read.",
    )
    add_tilt_metadata_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def tilt_series_to_dict(ts: TiltSeries) -> dict:
    """Plain-JSON view of a TiltSeries (per-tilt lists plus series values)."""
    return {
        "name": ts.name,
        "source": ts.source,
        "n_tilts": ts.n_tilts,
        "voltage_kv": ts.voltage_kv,
        "cs_mm": ts.cs_mm,
        "amplitude_contrast": ts.amplitude_contrast,
        "pixel_size_angstrom": ts.pixel_size_angstrom,
        "hand": ts.hand,
        "tilt_axis_angle_deg": ts.tilt_axis_angle_deg,
        "tilt_angles_deg": ts.tilt_angles_deg.tolist(),
        "accumulated_dose": ts.accumulated_dose.tolist(),
        "defocus_u_um": None if ts.defocus_u_um is None else ts.defocus_u_um.tolist(),
        "defocus_v_um": None if ts.defocus_v_um is None else ts.defocus_v_um.tolist(),
        "astigmatism_angle_deg": ts.astigmatism_angle_deg.tolist(),
        "phase_shift_deg": ts.phase_shift_deg.tolist(),
        "excluded": ts.excluded.tolist(),
    }


def format_table(ts: TiltSeries) -> str:
    """Human-readable header and per-tilt table."""
    px = "-" if ts.pixel_size_angstrom is None else f"{ts.pixel_size_angstrom:g} A"
    hand = "not stated" if ts.hand is None else f"{ts.hand:+d}"
    lines = [
        f"tilt series {ts.name or '-'}  ({ts.source or '-'})",
        f"  {ts.n_tilts} tilts ({int(ts.excluded.sum())} excluded), voltage {ts.voltage_kv:g} kV, "
        f"Cs {ts.cs_mm:g} mm, amplitude contrast {ts.amplitude_contrast:g}, pixel {px}, hand {hand}, "
        f"tilt axis {ts.tilt_axis_angle_deg:g} deg",
        f"{'#':>4} {'tilt_deg':>9} {'dose_e/A2':>10} {'defU_um':>8} {'defV_um':>8} {'astig_deg':>9} "
        f"{'phase_deg':>9}  excluded",
    ]
    for i in range(ts.n_tilts):
        du = "-" if ts.defocus_u_um is None else f"{ts.defocus_u_um[i]:.4f}"
        dv = "-" if ts.defocus_v_um is None else f"{ts.defocus_v_um[i]:.4f}"
        lines.append(
            f"{i:>4} {ts.tilt_angles_deg[i]:>9.3f} {ts.accumulated_dose[i]:>10.3f} {du:>8} {dv:>8} "
            f"{ts.astigmatism_angle_deg[i]:>9.2f} {ts.phase_shift_deg[i]:>9.2f}  "
            f"{'yes' if ts.excluded[i] else ''}"
        )
    return "\n".join(lines)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader went away


def run(args) -> int:
    ts = tilt_series_from_args(args)
    if ts is None:
        raise InputError(
            "no tilt-series metadata given; expected --tilt-angles, --relion5-tomograms, --warp-xml, --mdoc or --aln"
        )
    text = (json.dumps(tilt_series_to_dict(ts), indent=1, allow_nan=False) if args.json else format_table(ts)) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader closed the pipe (`tomomatch metadata ... | head -1`): stop quietly. Point stdout
        # at devnull so that the interpreter's final flush does not raise again (Python docs,
        # "Note on SIGPIPE").
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_BROKEN_PIPE
    return 0
