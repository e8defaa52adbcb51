"""The options of a match job, typed and validated in one place.

:class:`MatchOptions` is what ``tomomatch match`` and ``tomomatch batch`` parse from the command
line (:func:`add_match_arguments`, :func:`match_options_from_args`), what
:func:`tomomatch.job.plan_match` / :func:`~tomomatch.job.run_match` and
:func:`tomomatch.distributed.run_batch` take, what a :class:`~tomomatch.job.MatchPlan` holds
(resolved against the tomogram and its metadata) and what the job file records under
``"options"`` (:meth:`MatchOptions.to_json` / :meth:`MatchOptions.from_json`). ``hand``'s coarse
search is ``dataclasses.replace`` of it.

Every value is checked when the object is made, before any file is read or written; the error
names the command-line flag.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .conventions import HandMode, check_hand
from .errors import InputError, positive_number

__all__ = [
    "WeightingOptions",
    "MatchOptions",
    "DEFAULT_MAX_MEMORY_GB",
    "add_match_arguments",
    "match_options_from_args",
    "parse_tiles",
    "parse_search_range",
    "ctf_for_reconstruction",
    "phase_flip_note",
]

DEFAULT_MAX_MEMORY_GB = 4.0

_WEDGES = ("none", "binary", "per_tilt")
_CTFS = ("signed", "abs")
_METHODS = ("fast", "resample", "exact")
_HAND_MODES = ("full", "pytom")


def _positive(value, flag: str, *, allow_none: bool = True, zero: bool = False) -> float | None:
    return None if value is None and allow_none else positive_number(value, flag, zero=zero)


def parse_tiles(values) -> tuple[int, int, int] | str:
    """``"auto"`` or three tile counts ``(nx, ny, nz)`` >= 1 from strings or ints."""
    if isinstance(values, str):
        values = [values]
    values = list(values)
    if len(values) == 1 and str(values[0]).lower() == "auto":
        return "auto"
    if len(values) != 3:
        raise InputError(f"--tiles takes NX NY NZ or 'auto', got {' '.join(map(str, values))!r}", None, "--tiles")
    try:
        counts = tuple(int(v) for v in values)
        if any(float(v) != c for v, c in zip(values, counts)):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(
            f"--tiles counts must be integers, got {' '.join(map(str, values))!r}", None, "--tiles"
        ) from None
    if min(counts) < 1:
        raise InputError(f"--tiles counts must be >= 1, got {counts}", None, "--tiles")
    return counts  # type: ignore[return-value]


def parse_search_range(values, axis: str) -> tuple[int, int] | None:
    """``--search-x/-y/-z START END``: two integers ``0 <= START < END`` (voxel indices of the
    full tomogram, END exclusive as a Python slice and pytom-match-pick's ``--search-x``), or
    None. The upper bound (END <= the tomogram's size) is checked by the plan."""
    flag = f"--search-{axis}"
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split()
    values = list(values)
    text = " ".join(map(str, values))
    if len(values) != 2:
        raise InputError(f"{text!r}; expected START END (two voxel indices)", None, flag)
    try:
        out = []
        for v in values:
            if isinstance(v, bool):
                raise ValueError
            f = float(v)
            if not math.isfinite(f) or f != int(f):
                raise ValueError
            out.append(int(f))
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{text!r}; expected two integer voxel indices START END", None, flag) from None
    start, end = out
    if start < 0:
        raise InputError(f"START {start} < 0; expected voxel indices >= 0", None, flag)
    if start >= end:
        raise InputError(
            f"START {start} >= END {end}; expected START < END (END exclusive: voxels START..END-1)", None, flag
        )
    return start, end


@dataclass(frozen=True, kw_only=True)
class WeightingOptions:
    """How the template (and the tomogram) are weighted.

    ``wedge``: ``"none"``, ``"binary"``, ``"per_tilt"`` or None (per-tilt with tilt metadata,
    else none; resolved in the plan). ``ctf``: ``"signed"``, ``"abs"`` (phase-flipped tomogram)
    or None. ``dose`` and ``cos_weighting``: exposure filter and the beam's z component in the
    per-tilt wedge. Band pass in Angstrom; ``whiten``: spectral whitening from the tomogram.
    """

    wedge: str | None = None
    ctf: str | None = "signed"
    dose: bool = True
    cos_weighting: bool = True
    low_pass_angstrom: float | None = None
    high_pass_angstrom: float | None = None
    whiten: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        if self.wedge is not None:
            w = str(self.wedge).replace("-", "_")
            if w not in _WEDGES:
                raise InputError(f"wedge {self.wedge!r}; expected none, binary or per-tilt", None, "--wedge")
            set_(self, "wedge", w)
        ctf = None if self.ctf in (None, "none") else self.ctf
        if ctf is not None and ctf not in _CTFS:
            raise InputError(f"ctf {self.ctf!r}; expected signed, abs or none", None, "--ctf")
        set_(self, "ctf", ctf)
        set_(self, "low_pass_angstrom", _positive(self.low_pass_angstrom, "--low-pass"))
        set_(self, "high_pass_angstrom", _positive(self.high_pass_angstrom, "--high-pass"))
        if (
            self.low_pass_angstrom is not None
            and self.high_pass_angstrom is not None
            and self.low_pass_angstrom >= self.high_pass_angstrom
        ):
            raise InputError(
                f"low pass {self.low_pass_angstrom:g} A must be a finer resolution (smaller "
                f"number) than high pass {self.high_pass_angstrom:g} A",
                None,
                "--low-pass",
            )
        for name in ("dose", "cos_weighting", "whiten"):
            set_(self, name, bool(getattr(self, name)))


#: flat keyword names accepted by :meth:`MatchOptions.from_flat` for the weighting part
_WEIGHTING_KEYS = tuple(f.name for f in fields(WeightingOptions))


@dataclass(frozen=True, kw_only=True)
class MatchOptions:
    """The options of one match job (see :func:`tomomatch.job.run_match` for each meaning).

    Data (the tomogram, template, mask, tilt series, an explicit rotation list) and how the
    job is executed (processes, work-unit size, progress) are not options: they are arguments
    of :func:`~tomomatch.job.run_match`.
    """

    name: str | None = None
    voxel_size_angstrom: float | None = None
    angular_step_deg: float | None = None
    particle_diameter_angstrom: float | None = None
    symmetry: str = "C1"
    angle_list: str | None = None
    weighting: WeightingOptions = field(default_factory=WeightingOptions)
    defocus_handedness: int | None = None
    hand_mode: HandMode = "full"
    tiles: tuple[int, int, int] | str = (1, 1, 1)
    device: str = "cpu"
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB
    random_phase: bool = False
    method: str = "fast"
    checkpoint_interval_s: float = 60.0
    batch_size: int | None = None
    tomogram_mask: str | None = None
    search_x: tuple[int, int] | None = None
    search_y: tuple[int, int] | None = None
    search_z: tuple[int, int] | None = None

    def __post_init__(self):
        from .angles import format_angle_list, parse_angle_list, parse_symmetry

        set_ = object.__setattr__
        if isinstance(self.weighting, dict):
            set_(self, "weighting", WeightingOptions(**self.weighting))
        elif not isinstance(self.weighting, WeightingOptions):
            raise InputError(f"weighting {self.weighting!r}; expected WeightingOptions", None, "weighting")
        if self.name is not None:
            name = str(self.name)
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise InputError(f"{name!r}; expected a file base name without folders", None, "--name")
            set_(self, "name", name)
        set_(self, "voxel_size_angstrom", _positive(self.voxel_size_angstrom, "--voxel-size"))
        set_(self, "angular_step_deg", _positive(self.angular_step_deg, "--angular-step"))
        if self.angular_step_deg is not None and self.angular_step_deg > 180:
            raise InputError(f"{self.angular_step_deg:g} degrees; expected at most 180", None, "--angular-step")
        set_(self, "particle_diameter_angstrom", _positive(self.particle_diameter_angstrom, "--particle-diameter"))
        set_(self, "symmetry", parse_symmetry(self.symmetry))  # canonical; InputError naming --symmetry
        if self.angle_list is not None:
            # the file is read by plan_match; here only what needs no reading
            set_(self, "angle_list", format_angle_list(*parse_angle_list(self.angle_list)))
            if self.angular_step_deg is not None:
                raise InputError(
                    f"{self.angle_list} and --angular-step {self.angular_step_deg:g} both "
                    "give the rotations; expected one of them",
                    None,
                    "--angle-list",
                )
        if self.defocus_handedness is not None:
            try:
                set_(self, "defocus_handedness", check_hand(self.defocus_handedness))
            except ValueError as exc:
                raise InputError(str(exc), None, "--defocus-handedness") from None
        if self.hand_mode not in _HAND_MODES:
            raise InputError(f"hand mode {self.hand_mode!r}; expected full or pytom", None, "--hand-mode")
        set_(self, "tiles", parse_tiles(self.tiles))
        if self.method not in _METHODS:
            raise InputError(f"method {self.method!r}; expected fast, resample or exact", None, "--method")
        mem = _positive(self.max_memory_gb, "--max-memory", allow_none=False)
        set_(self, "max_memory_gb", mem)
        set_(
            self,
            "checkpoint_interval_s",
            _positive(self.checkpoint_interval_s, "--checkpoint-interval", allow_none=False, zero=True),
        )
        if self.batch_size is not None:
            if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
                raise InputError(f"batch size {self.batch_size!r}; expected an integer >= 1", None, "--batch-size")
            set_(self, "batch_size", int(self.batch_size))
        set_(self, "device", str(self.device))
        set_(self, "random_phase", bool(self.random_phase))
        if self.tomogram_mask is not None:
            tm = str(self.tomogram_mask)
            if not tm:
                raise InputError("empty path; expected an MRC file", None, "--tomogram-mask")
            set_(self, "tomogram_mask", tm)
        for axis in "xyz":
            set_(self, f"search_{axis}", parse_search_range(getattr(self, f"search_{axis}"), axis))

    @property
    def has_search_region(self) -> bool:
        """Whether a tomogram mask or a search range restricts the search."""
        return self.tomogram_mask is not None or any(getattr(self, f"search_{a}") is not None for a in "xyz")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_flat(cls, base: "MatchOptions | None" = None, **values) -> "MatchOptions":
        """Options from flat keywords (weighting fields such as ``low_pass_angstrom`` or
        ``wedge`` at the top level), applied on top of ``base`` (default: the defaults)."""
        base = base if base is not None else cls()
        values = dict(values)
        weighting = {k: values.pop(k) for k in list(values) if k in _WEIGHTING_KEYS}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown match option(s): {', '.join(unknown)}")
        if weighting:
            values["weighting"] = replace(base.weighting, **weighting)
        return replace(base, **values)

    def with_(self, **values) -> "MatchOptions":
        """:meth:`from_flat` on top of these options (``opts.with_(low_pass_angstrom=30)``)."""
        return MatchOptions.from_flat(self, **values)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``tiles`` as a list or ``"auto"``); :meth:`from_json` inverts it."""
        d = asdict(self)
        d["tiles"] = self.tiles if isinstance(self.tiles, str) else list(self.tiles)
        for a in "xyz":
            r = getattr(self, f"search_{a}")
            d[f"search_{a}"] = None if r is None else list(r)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any], source=None) -> "MatchOptions":
        """Options from :meth:`to_json`'s dict (e.g. a job file's ``"options"``)."""
        if not isinstance(data, dict):
            raise InputError(f"options {data!r}; expected an object", source, "options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown option(s) {', '.join(unknown)}", source, "options")
        d = dict(data)
        w = d.get("weighting", {})
        if not isinstance(w, dict) or set(w) - set(_WEIGHTING_KEYS):
            raise InputError(
                f"weighting {w!r}; expected an object with {', '.join(_WEIGHTING_KEYS)}", source, "options.weighting"
            )
        d["weighting"] = WeightingOptions(**w)
        try:
            return cls(**d)
        except InputError as exc:
            raise InputError(exc.detail, source, f"options {exc.field or ''}".strip()) from None
        except TypeError as exc:
            raise InputError(f"malformed options ({exc})", source, "options") from None


# --------------------------------------------------------------------------- command line


def add_match_arguments(p: argparse.ArgumentParser, *, batch: bool = False) -> None:
    """The match options as command-line flags, shared by ``match`` and ``batch``.

    ``batch=True``: no ``--name``/``--voxel-size`` (they come from the tomogram list), no
    ``--device`` (a cluster option there), and the angular flags are not mutually exclusive
    (``--particle-diameter`` is also the extraction's exclusion diameter).
    """
    if not batch:
        p.add_argument("--name", help="output base name (default: tomogram file stem)")
        p.add_argument("--voxel-size", type=float, metavar="A", help="override the tomogram's voxel size (Angstrom)")
        ang = p.add_mutually_exclusive_group(required=True)
        ang.add_argument("--angular-step", type=float, metavar="DEG", help="angular step in degrees")
        ang.add_argument(
            "--particle-diameter",
            type=float,
            metavar="A",
            help="particle diameter (Angstrom): Crowther step = resolution / diameter",
        )
    else:
        p.add_argument(
            "--angular-step",
            type=float,
            metavar="DEG",
            help="angular step in degrees (default: Crowther step from --particle-diameter)",
        )
        p.add_argument(
            "--particle-diameter",
            type=float,
            metavar="A",
            help="particle diameter (Angstrom): the extraction's exclusion diameter and, without "
            "--angular-step, the Crowther step",
        )
    if not batch:
        ang.add_argument(
            "--angle-list",
            metavar="FILE",
            help="search these rotations: RELION rot tilt psi in degrees per line (e.g. a "
            "_rotations.txt), or pytom:FILE for a pytom-match-pick angle list (ZXZ radians)",
        )
    else:
        p.add_argument(
            "--angle-list",
            metavar="FILE",
            help="search these rotations instead of a uniform grid: RELION rot tilt psi in degrees "
            "per line, or pytom:FILE (pytom-match-pick ZXZ radians)",
        )
    p.add_argument(
        "--symmetry",
        default="C1",
        help="template point group in RELION's orientation: Cn (n-fold along z), Dn (2-fold along x), "
        "T, O, I (= I2) or I1-I4; one asymmetric unit is searched",
    )
    p.add_argument("--low-pass", type=float, metavar="A", help="low-pass resolution (Angstrom)")
    p.add_argument("--high-pass", type=float, metavar="A", help="high-pass resolution (Angstrom)")
    p.add_argument("--whiten", action="store_true", help="spectral whitening estimated from the tomogram")
    p.add_argument(
        "--wedge",
        choices=["none", "binary", "per-tilt"],
        default=None,
        help="template weighting (default: per-tilt with tilt metadata, else none)",
    )
    p.add_argument(
        "--ctf",
        choices=["signed", "abs", "none"],
        default=None,
        help="CTF in the wedge: signed, abs (phase-flipped tomogram) or none (default: signed; "
        "abs with --warp-xml, as Warp reconstructs tomograms phase-flipped)",
    )
    p.add_argument("--no-dose", action="store_true", help="no exposure (dose) filter in the per-tilt wedge")
    p.add_argument(
        "--defocus-handedness",
        type=int,
        choices=[1, -1, 0],
        default=None,
        help="defocus hand h = RELION rlnTomoHand (default: from RELION/Warp metadata, else 0 = no gradient)",
    )
    p.add_argument(
        "--hand-mode",
        choices=["full", "pytom"],
        default="full",
        help="full: h*(-x sin t + z cos t), h = RELION rlnTomoHand; pytom: pytom-match-pick's z cos(h t) + x sin(h t)",
    )
    p.add_argument(
        "--tiles",
        nargs="+",
        default=["1", "1", "1"],
        metavar="N",
        help="tile counts NX NY NZ, or 'auto' (residual defocus below d^2/(4 lambda))",
    )
    if not batch:
        p.add_argument(
            "--device",
            default="cpu",
            help="cpu, cuda or cuda:N; several GPUs: cuda:0,1,2,3 or cuda:all (one worker per GPU, outputs"
            " identical to one GPU; a GPU listed twice gets two workers)",
        )
    p.add_argument(
        "--max-memory",
        type=float,
        default=DEFAULT_MAX_MEMORY_GB,
        metavar="GB",
        help="memory budget (per worker) for rotation batches",
    )
    p.add_argument(
        "--random-phase", action="store_true", help="subtract the per-voxel max of a phase-randomised template"
    )
    p.add_argument(
        "--method",
        choices=["fast", "resample", "exact"],
        default="fast",
        help="fast: rotate the template in Fourier space (exact transform onto the tile); "
        "resample: cheaper, ~1%% approximate; exact: real-space reference path",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between rotation-chunk checkpoints",
    )
    p.add_argument(
        "--tomogram-mask",
        metavar="MRC",
        help="search only voxels where this mask (the tomogram's shape) is > 0; tiles outside it are"
        " skipped and tiles are cropped to it" + ("; applies to every tomogram of the batch" if batch else ""),
    )
    for axis in "xyz":
        p.add_argument(
            f"--search-{axis}",
            nargs=2,
            metavar=("START", "END"),
            help=f"search only {axis} voxel indices START..END-1 of the full tomogram (END exclusive,"
            " as pytom-match-pick's)",
        )
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)


def match_options_from_args(args: argparse.Namespace) -> MatchOptions:
    """:class:`MatchOptions` from flags added by :func:`add_match_arguments`."""
    return MatchOptions(
        name=getattr(args, "name", None),
        voxel_size_angstrom=getattr(args, "voxel_size", None),
        angular_step_deg=args.angular_step,
        particle_diameter_angstrom=args.particle_diameter,
        symmetry=args.symmetry,
        angle_list=getattr(args, "angle_list", None),
        weighting=WeightingOptions(
            wedge=args.wedge,
            ctf="signed" if args.ctf is None else args.ctf,  # None: not given (match may pick abs)
            dose=not args.no_dose,
            low_pass_angstrom=args.low_pass,
            high_pass_angstrom=args.high_pass,
            whiten=args.whiten,
        ),
        defocus_handedness=args.defocus_handedness,
        hand_mode=args.hand_mode,
        tiles=args.tiles,
        device=getattr(args, "device", "cpu") or "cpu",
        max_memory_gb=args.max_memory,
        random_phase=args.random_phase,
        method=args.method,
        checkpoint_interval_s=args.checkpoint_interval,
        batch_size=args.batch_size,
        tomogram_mask=getattr(args, "tomogram_mask", None),
        search_x=getattr(args, "search_x", None),
        search_y=getattr(args, "search_y", None),
        search_z=getattr(args, "search_z", None),
    )


def ctf_for_reconstruction(options: MatchOptions, tilt_series, ctf_given: bool) -> tuple[MatchOptions, str | None]:
    """The options with the CTF mode the tomogram's reconstruction calls for, and the line to say.

    Warp always reconstructs phase-flipped (``TiltSeries.ReconstructFull`` divides by |CTF|),
    which its XML reader records as ``extra["reconstruction_phase_flipped"]``: such a tomogram
    is matched with ``--ctf abs`` unless the user chose a CTF mode (``ctf_given``). Used by
    ``match``, by ``batch`` per row and by ``hand``'s own search, so all three agree.
    """
    note = None if ctf_given else phase_flip_note(tilt_series)
    if note is None:
        return options, None
    return replace(options, weighting=replace(options.weighting, ctf="abs")), note


def phase_flip_note(tilt_series) -> str | None:
    """None, or the line saying the tomogram was reconstructed phase-flipped (so ``ctf="abs"``)."""
    if tilt_series is None or not tilt_series.extra.get("reconstruction_phase_flipped"):
        return None
    by = tilt_series.extra.get("reconstruction_phase_flipped_by", "the reconstruction")
    return (
        f"{tilt_series.source}: {by} phase-flips the tomogram: using --ctf abs"
        " (give --ctf signed for a tomogram reconstructed elsewhere)"
    )
