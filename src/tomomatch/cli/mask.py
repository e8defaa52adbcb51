"""``tomomatch mask``: spherical or ellipsoidal mask with an optional soft Gaussian edge."""

from __future__ import annotations

from ..errors import InputError
from ..mask import ellipsoid_mask, spherical_mask
from ..mrcio import write_volume
from ._outputs import output_file


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mask",
        help="make a spherical or ellipsoidal mask",
        description=(
            "Make a mask centred on voxel n//2 of a cubic box. Radii and sigma are in VOXELS "
            "(as in pytom-match-pick) unless given with the -angstrom variants, which are "
            "divided by --voxel-size. The mask is 1 inside the radius and exp(-e^2/(2 sigma^2)) "
            "at a distance e outside it (0 beyond 3 sigma); sigma 0 gives a hard edge."
        ),
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.mrc", help="output mask MRC")
    p.add_argument(
        "-b", "--box-size", type=int, required=True, metavar="BOX", help="cubic box in voxels (same as the template)"
    )
    p.add_argument(
        "--voxel-size",
        type=float,
        required=True,
        metavar="A",
        help="voxel size in Angstrom (written to the header; converts -angstrom values)",
    )
    shape = p.add_mutually_exclusive_group(required=True)
    shape.add_argument("--radius", type=float, metavar="R", help="sphere radius in voxels")
    shape.add_argument("--radius-angstrom", type=float, metavar="R_A", help="sphere radius in Angstrom")
    shape.add_argument(
        "--radii", type=float, nargs=3, metavar=("RX", "RY", "RZ"), help="ellipsoid semi-axes x y z in voxels"
    )
    shape.add_argument(
        "--radii-angstrom",
        type=float,
        nargs=3,
        metavar=("RX", "RY", "RZ"),
        help="ellipsoid semi-axes x y z in Angstrom",
    )
    edge = p.add_mutually_exclusive_group()
    edge.add_argument(
        "--sigma", type=float, default=0.0, metavar="S", help="Gaussian edge width in voxels (0: hard edge)"
    )
    edge.add_argument(
        "--sigma-angstrom", type=float, default=None, metavar="S_A", help="Gaussian edge width in Angstrom"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    output_file(args.output, "--output")
    v = args.voxel_size
    if not (v is not None and v > 0):
        raise InputError(f"{v} must be a positive number of Angstrom", field="--voxel-size")
    sigma = args.sigma if args.sigma_angstrom is None else args.sigma_angstrom / v
    if args.radius is not None or args.radius_angstrom is not None:
        r = args.radius if args.radius is not None else args.radius_angstrom / v
        vol = spherical_mask(args.box_size, r, sigma)
        what = f"sphere r={r:g} voxels"
    else:
        radii = args.radii if args.radii is not None else [a / v for a in args.radii_angstrom]
        vol = ellipsoid_mask(args.box_size, radii, sigma)
        what = "ellipsoid radii " + " ".join(f"{a:g}" for a in radii) + " voxels"
    write_volume(args.output, vol, v)
    print(f"wrote {args.output}: {args.box_size}^3 mask at {v:g} A, {what}, sigma {sigma:g} voxels")
    return 0
