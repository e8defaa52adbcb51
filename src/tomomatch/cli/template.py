"""``tomomatch template``: make a matching template from a density map or an atomic model."""

from __future__ import annotations

from ..mrcio import write_volume
from ..template import create_template
from ._outputs import output_file


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "template",
        help="make a template from an MRC map or a PDB/mmCIF model",
        description=(
            "Make a cubic template at the matching voxel size. A PDB/mmCIF model (.pdb, .ent, "
            ".cif, .mmcif, .pdbx, optionally .gz) becomes an electrostatic potential map in volts "
            "(gemmi electron scattering factors), centred at voxel n//2. An MRC map is Fourier-"
            "resampled, optionally low-passed, and its centre of mass moved to n//2. Then the box "
            "is padded/cropped, and the result optionally mirrored along x and inverted. "
            "Mirroring changes the hand; inverting gives dark protein as in a tomogram."
        ),
    )
    p.add_argument(
        "-i",
        "--input",
        required=True,
        metavar="MAP_OR_MODEL",
        help="input MRC map, or PDB/mmCIF atomic model (chosen by extension)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.mrc", help="output template MRC")
    p.add_argument(
        "--voxel-size", type=float, required=True, metavar="A", help="output voxel size in Angstrom (the tomogram's)"
    )
    p.add_argument(
        "--input-voxel-size",
        type=float,
        default=None,
        metavar="A",
        help="voxel size of the input map in Angstrom (default: from its header; maps only)",
    )
    p.add_argument(
        "-b",
        "--box-size",
        type=int,
        default=None,
        metavar="BOX",
        help="output cubic box in voxels (default: the smallest that holds the object, "
        "at least the resampled map size)",
    )
    p.add_argument(
        "--low-pass",
        type=float,
        default=None,
        metavar="A",
        help="low-pass resolution in Angstrom (soft raised-cosine edge, 0.5 at 1/A)",
    )
    p.add_argument("--invert", action="store_true", help="multiply by -1 (dark protein)")
    p.add_argument("--mirror", action="store_true", help="mirror along x about the box centre (changes handedness)")
    p.add_argument(
        "--no-recentre",
        dest="recentre",
        action="store_false",
        help="do not move a map's centre of mass to the box centre",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    output_file(args.output, "--output")
    vol, voxel = create_template(
        args.input,
        args.voxel_size,
        box_size=args.box_size,
        input_voxel_size_angstrom=args.input_voxel_size,
        low_pass_angstrom=args.low_pass,
        invert=args.invert,
        mirror=args.mirror,
        recentre=args.recentre,
    )
    write_volume(args.output, vol, voxel)
    n = vol.shape[0]
    print(f"wrote {args.output}: {n}x{n}x{n} voxels at {voxel:g} A")
    return 0
