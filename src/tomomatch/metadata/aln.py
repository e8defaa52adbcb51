"""AreTomo ``.aln`` reader (via teamtomo ``alnfile``)."""
from __future__ import annotations

import numpy as np
from alnfile.data_model import AlnData

from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import check_tilt_angles, read_text, require_file

__all__ = ["read_aln"]


def read_aln(path) -> TiltSeries:
    """Read an AreTomo / AreTomo2 / AreTomo3 ``.aln`` alignment file.

    The global table gives, per kept section, ``SEC`` (its index in the raw input stack),
    ``ROT`` (tilt-axis angle, degrees) and ``TILT`` (tilt angle, degrees). ``# DarkFrame =
    a b tilt`` header lines list the sections AreTomo dropped: ``a`` is the position in the
    tilt-sorted stack and ``b`` the index in the raw input stack (AreTomo ``CSaveAlignFile``
    writes ``iFrmIdx iSecIdx``; RELION's importer reads the second number as the input
    order). Dark frames are inserted as *excluded* tilts at their raw positions: all
    sections (kept ``SEC`` and dark ``b``) are sorted by that raw index, which works for
    0- and 1-based numbering alike. The result therefore has one tilt per raw-stack image
    (``RawSize`` z) when the file lists all dark frames.

    ``tilt_axis_angle_deg`` is the mean ROT; ``extra`` has ``raw_size``, ``alpha_offset``,
    ``beta_offset``, ``section_index``, ``shifts_px`` (TX, TY of kept tilts, NaN for dark)
    and ``rot_deg``. The .aln holds no dose or defocus.
    """
    p = require_file(path, "AreTomo .aln")
    text = read_text(p, "AreTomo .aln")
    # alnfile 0.1.1 rejects files without these header lines (older AreTomo2 writes no
    # Alpha/BetaOffset); supply AreTomo's defaults for the missing ones.
    defaults = [("# AreTomo Alignment", "# AreTomo Alignment / Priims bprmMn"), ("# NumPatches", "# NumPatches = 0"),
                ("# AlphaOffset", "# AlphaOffset = 0.00"), ("# BetaOffset", "# BetaOffset = 0.00")]
    present = {line.split("=")[0].strip() for line in text.splitlines() if line.startswith("#")}
    missing = [line for key, line in defaults if not any(x.startswith(key) for x in present)]
    try:
        aln = AlnData.from_string("\n".join(missing + [text]))
    except Exception as exc:  # pydantic / int() / float() parse errors
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InputError(f"not a readable AreTomo .aln file ({msg})", p) from None
    rows = aln.GlobalAlignments
    if not rows:
        raise InputError("no global alignment rows (# SEC ROT ... TILT table); expected an AreTomo .aln", p)
    sec = [r.sec for r in rows] + [d.val2 for d in aln.DarkFrames]
    if len(set(sec)) != len(sec):
        raise InputError("a section index appears twice in the table and DarkFrame lines", p, "SEC")
    tilt = [r.tilt for r in rows] + [d.angle for d in aln.DarkFrames]
    rot = [r.rot for r in rows] + [np.nan] * len(aln.DarkFrames)
    tx = [r.tx for r in rows] + [np.nan] * len(aln.DarkFrames)
    ty = [r.ty for r in rows] + [np.nan] * len(aln.DarkFrames)
    dark = [False] * len(rows) + [True] * len(aln.DarkFrames)
    order = np.argsort(np.asarray(sec), kind="stable")
    angles = check_tilt_angles(np.asarray(tilt, dtype=float)[order], p, None, "TILT")
    raw_size = tuple(aln.RawSize) if aln.RawSize else None
    if raw_size and raw_size[2] and aln.DarkFrames and raw_size[2] != len(sec):
        raise InputError(f"{len(rows)} sections + {len(aln.DarkFrames)} dark frames != RawSize z {raw_size[2]}",
                         p, "RawSize")
    rot_arr = np.asarray(rot, dtype=float)[order]
    return TiltSeries(
        tilt_angles_deg=angles,
        excluded=np.asarray(dark)[order],
        tilt_axis_angle_deg=float(np.nanmean(rot_arr)),
        name=p.stem,
        source=str(p),
        extra={
            "raw_size": raw_size,
            "alpha_offset": aln.AlphaOffset,
            "beta_offset": aln.BetaOffset,
            "section_index": np.asarray(sec)[order],
            "rot_deg": rot_arr,
            "shifts_px": np.stack([np.asarray(tx, float)[order], np.asarray(ty, float)[order]], axis=1),
        },
    )
