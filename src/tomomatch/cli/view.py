"""``tomomatch view``: the tomogram, its picks and its score map in napari (layers: :mod:`tomomatch.view`)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from ..errors import InputError
from ..view import view_layers

NO_NAPARI = "napari is not installed: pip install 'tomomatch[view]'"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "view",
        help="show a tomogram with its picks (coloured by score, with orientations) and score map in napari",
        description=(
            "Open napari with the tomogram (image, scaled by the voxel size: world units are Angstrom), "
            "the particles of a STAR file (points coloured by score, features holding score and RELION "
            "angles, and arrows along each pose's template z axis) and the score map (additive). Needs "
            "napari: pip install 'tomomatch[view]'."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("tomogram", metavar="TOMO", help="tomogram MRC")
    p.add_argument("-p", "--particles", metavar="STAR", help="particle STAR (RELION 5, RELION 4 or Warp)")
    p.add_argument("-s", "--scores", metavar="MAP", help="score map MRC of this tomogram (<name>_scores.mrc)")
    p.add_argument(
        "--job",
        metavar="JOB",
        help="match job file whose geometry converts the STAR coordinates (default: the geometry tomomatch "
        "writes into its STAR header, else this tomogram as the unbinned reference)",
    )
    p.add_argument("--tomo-name", metavar="NAME", help="show the particles of this tomogram of a multi-tomogram STAR")
    p.add_argument("--voxel-size", type=float, metavar="A", help="override the tomogram's header voxel size")
    p.add_argument("--point-size", type=float, default=6.0, metavar="VOXELS", help="point diameter")
    p.add_argument("--vector-length", type=float, default=8.0, metavar="VOXELS", help="orientation arrow length")
    p.add_argument("--dry-run", action="store_true", help="build the layers and list them, without napari (no window)")
    p.set_defaults(func=run)


def _summary(layers) -> list[str]:
    out = []
    for data, kw, kind in layers:
        shape = "x".join(str(s) for s in getattr(data, "shape", ()))
        extra = f", coloured by {kw['metadata']['color_by']}" if kind == "points" and kw["metadata"]["color_by"] else ""
        out.append(f"{kind} {kw['name']!r}: {shape}, scale {kw['scale'][0]:g} A{extra}")
    return out


def run(args) -> int:
    for name in ("point_size", "vector_length"):
        if not getattr(args, name) > 0:
            raise InputError(f"{getattr(args, name):g}; expected > 0 voxels", None, "--" + name.replace("_", "-"))
    napari: Any = None
    if not args.dry_run:
        try:
            napari = importlib.import_module("napari")  # optional dependency, imported only here
        except ImportError:
            raise InputError(NO_NAPARI) from None
    layers = view_layers(
        args.tomogram,
        args.particles,
        args.scores,
        job=args.job,
        tomo_name=args.tomo_name,
        voxel_size_angstrom=args.voxel_size,
        point_size=args.point_size,
        vector_length=args.vector_length,
    )
    if napari is None:
        print("\n".join(_summary(layers)))
        return 0
    try:
        viewer = napari.Viewer(title=f"tomomatch view {args.tomogram}")
    except Exception as exc:  # noqa: BLE001 - no display, no Qt binding: one line
        print(f"tomomatch view: error: cannot open a napari window ({' '.join(str(exc).split())})", file=sys.stderr)
        return 2
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    # the scale bar (units: the layers' "angstrom"); napari >= 0.9 keeps it among the canvas overlays
    canvas = getattr(viewer, "canvas", None)
    (canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar).visible = True
    napari.run()
    return 0
