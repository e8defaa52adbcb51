"""``tomomatch template``: make a matching template from a density map or an atomic model."""

from __future__ import annotations

from ..mrcio import write_volume
from ..template import (
    SYMMETRY_AGREEMENT_MIN,
    _alignment_group,
    _check_box,
    _check_template_size,
    align_symmetry,
    remove_radial_average,
    create_template,
)
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
            "Mirroring changes the hand; inverting gives dark protein as in a tomogram. Last, "
            "--align-symmetry turns the template into RELION's orientation for its point group, as "
            "match --symmetry needs."
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
    p.add_argument(
        "--align-symmetry",
        default=None,
        metavar="GROUP",
        help="last, turn the template into RELION's orientation for its point group GROUP (Cn, Dn, T, O, "
        "I, I1-I4; as relion_align_symmetry), as match --symmetry GROUP needs: centre of mass to n//2, "
        "n-fold axis along z (Dn: a 2-fold along x). An error if the map does not have that symmetry "
        "(agreement with its own symmetry mates below 0.9). Centres the map even with --no-recentre",
    )
    p.add_argument(
        "--remove-radial-average",
        action="store_true",
        help="last, subtract the template's radial average about the box centre: what any dense object "
        "of its size matches (gold, other complexes, edges) goes, the orientation-specific detail stays; "
        "for crowded samples (docs/templates.md)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    output_file(args.output, "--output")
    group = None
    if args.align_symmetry is not None:
        group = _alignment_group(args.align_symmetry)  # a bad name or box fails before the work
        if args.box_size is not None:
            _check_template_size((_check_box(args.box_size),) * 3, "--box-size", f"{args.box_size} voxels")
    vol, voxel = create_template(
        args.input,
        args.voxel_size,
        box_size=None if group else args.box_size,  # with --align-symmetry the box is chosen after the turn
        input_voxel_size_angstrom=args.input_voxel_size,
        low_pass_angstrom=args.low_pass,
        invert=args.invert,
        mirror=args.mirror,
        recentre=args.recentre,
    )
    label = "tomomatch"
    if group is not None:
        vol, _, info = align_symmetry(vol, group, box_size=args.box_size)
        before, after, half = info["agreement_before"], info["agreement_after"], info["agreement_half_step"]
        if group == "C1":
            print("aligned to C1: nothing to turn (no symmetry)")
        else:
            axis = "({:.3f}, {:.3f}, {:.3f})".format(*info["axis_xyz"])
            onto = (
                "z"
                if info["axis_relion_xyz"] == [0.0, 0.0, 1.0]
                else "({:.3f}, {:.3f}, {:.3f})".format(*info["axis_relion_xyz"])
            )
            m = info["axis_order"]
            if half >= SYMMETRY_AGREEMENT_MIN:  # a near-cylinder about the axis: any order agrees
                control = f"; turned by half a step about it, it agrees {half:.2f} too, so the order {m} is not checked"
            else:
                control = f" (half a step about it: {half:.2f})"
            print(
                f"aligned to {group}: symmetry agreement {before:.3f} -> {after:.3f}; "
                f"its {m}-fold axis {axis} turned onto {onto}{control}"
            )
        label = f"tomomatch template --align-symmetry {group} (agreement {before:.3f} -> {after:.3f})"
    if args.remove_radial_average:
        vol, rinfo = remove_radial_average(vol)
        corr = rinfo["correlation_with_radial_average"]
        print(f"removed the radial average: it held {100 * corr**2:.0f} % of the template's variance")
        # one 80-character header label: the agreement figures give way to the second step
        steps = f"--align-symmetry {group} " if group is not None else ""
        label = f"tomomatch template {steps}--remove-radial-average"
    write_volume(args.output, vol, voxel, label=label)
    n = vol.shape[0]
    print(f"wrote {args.output}: {n}x{n}x{n} voxels at {voxel:g} A")
    return 0
