"""Templates for matching: atomic model -> potential map, Fourier resampling, template boxes.

Conventions (see :mod:`tomomatch.conventions`): arrays are ``[z, y, x]``, coordinates and
shifts ``(x, y, z)``, lengths in Angstrom, and the centre of an axis of ``n`` voxels is index
``n // 2``. Every function here keeps that centre fixed: resampling maps input index
``n_in // 2`` onto output index ``n_out // 2``, boxing pads/crops around it, and mirroring
reflects about it.

Units of :func:`density_from_model`
    The map is the electrostatic (Coulomb) potential in **volts**, point-sampled on the grid:
    gemmi's electron scattering factors (International Tables C 4.3.2.2, Peng's 5-Gaussian
    fits) give ``rho(r)`` in 1/Angstrom^2, and the Mott-Bethe constant
    ``h^2 / (2 pi m0 e) = 47.878 V A^2`` turns it into volts. The integral is independent of
    the voxel size: ``vol.sum() * v**3 = 47.878 * sum_atoms(occ * f_e(0))`` (V A^3). For the
    weak-phase approximation the projected phase is ``sigma_e * sum_z(V) * v`` radians.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from scipy import fft as sfft

from .conventions import centre_index
from .errors import InputError
from .mrcio import read_volume

__all__ = [
    "align_symmetry",
    "remove_radial_average",
    "symmetry_agreement",
    "self_correlation",
    "MOTT_BETHE_VOLT_ANGSTROM2",
    "MODEL_EXTENSIONS",
    "MAP_EXTENSIONS",
    "is_model_path",
    "density_from_model",
    "resample_fourier",
    "fourier_shift",
    "low_pass",
    "centre_of_mass",
    "recentre_volume",
    "pad_or_crop",
    "mirror_x",
    "object_extent_voxels",
    "create_template",
]

#: h^2 / (2 pi m0 e) in V*Angstrom^2: scattering factor density (1/A^2) -> potential (V).
MOTT_BETHE_VOLT_ANGSTROM2 = 47.878

MODEL_EXTENSIONS = (".pdb", ".ent", ".cif", ".mmcif", ".pdbx")
MAP_EXTENSIONS = (".mrc", ".map", ".rec", ".ccp4", ".mrcs", ".st", ".ali")

# Fraction of the maximum above which a map voxel counts as "object" (box checks).
_SUPPORT_FRACTION = 0.05

#: Working copies of the output box held at once while a template is made (resampling one axis
#: at a time, the Fourier low-pass, the centring shift and padding): the estimate of
#: :func:`_check_template_size` is this many float32 arrays of the largest box.
TEMPLATE_WORK_COPIES = 4


# --------------------------------------------------------------------------- helpers


def _suffix(path) -> str:
    name = Path(path).name.lower()
    for comp in (".gz", ".bz2"):
        if name.endswith(comp):
            name = name[: -len(comp)]
    return Path(name).suffix


def is_model_path(path) -> bool:
    """True if ``path`` names an atomic model (PDB/mmCIF, optionally ``.gz``) by extension."""
    return _suffix(path) in MODEL_EXTENSIONS


def _check_voxel(voxel_size_angstrom, field="voxel size") -> float:
    try:
        v = float(voxel_size_angstrom)
    except (TypeError, ValueError):
        raise InputError(f"{voxel_size_angstrom!r} is not a number", field=field) from None
    if not (v > 0 and math.isfinite(v)):
        raise InputError(f"{v} must be a positive number of Angstrom", field=field)
    return v


def _check_box(box_size) -> int | None:
    if box_size is None:
        return None
    try:
        b = int(box_size)
    except (TypeError, ValueError):
        raise InputError(f"{box_size!r} is not an integer", field="box size") from None
    if b != box_size or b < 2:
        raise InputError(f"{box_size!r} must be an integer >= 2 voxels", field="box size")
    return b


def _check_template_size(shape, option: str, value, path=None) -> None:
    """Refuse, before allocating, a template whose largest array ``shape`` (voxels ``[z, y, x]``)
    would need more memory than the machine has (:func:`tomomatch.resources.memory_limit_bytes`).

    The estimate is :data:`TEMPLATE_WORK_COPIES` float32 arrays of ``shape``; the message names
    ``option`` (``--voxel-size``, ``--box-size``) and its ``value`` (text, with its unit).
    """
    from .resources import gib, memory_limit_bytes

    dims = [float(n) for n in shape]
    voxels = math.prod(dims)
    need = voxels * 4.0 * TEMPLATE_WORK_COPIES
    limit = memory_limit_bytes()
    if need <= limit:
        return
    if all(n < 1e15 for n in dims):
        box = f"a template of {'x'.join(f'{n:.0f}' for n in dims)} voxels: about {gib(need)}"
    else:
        box = "a template of more than 1e15 voxels per axis: more memory than exists"
    raise InputError(
        f"{value} gives {box} to compute, more than the "
        f"{gib(limit)} allowed (this machine's memory, or tomomatch.resources.MAX_MEMORY_BYTES); "
        "expected the tomogram's voxel size and a box of a few hundred voxels at most",
        path,
        option,
    )


# --------------------------------------------------------------------------- resampling


def _interp_matrix(
    n_in: int, n_out: int, positions: np.ndarray, cutoff_cycles_per_voxel: float | None, dtype=np.float64
) -> np.ndarray:
    """Trigonometric (band-limited, periodic) interpolation matrix ``(n_out, n_in)``.

    Row ``j`` evaluates at input coordinate ``positions[j]`` (input voxel units) the
    periodic band-limited interpolant of the ``n_in`` samples, keeping only frequencies
    ``|k / n_in| <= cutoff`` (cycles per input voxel). For even ``n_in`` the Nyquist term is
    split half to ``+n/2`` and half to ``-n/2`` so the result is real.
    """
    k = np.arange(-(n_in // 2), n_in // 2 + 1, dtype=np.float64)  # symmetric range
    w = np.ones_like(k)
    if n_in % 2 == 0:
        w[0] = w[-1] = 0.5
    if cutoff_cycles_per_voxel is not None:
        f = np.abs(k) / n_in
        w[f > cutoff_cycles_per_voxel * (1 + 1e-9)] = 0.0
    x = np.asarray(positions, dtype=np.float64)
    i = np.arange(n_in, dtype=np.float64)
    # M[j, i] = 1/n sum_k w_k cos(2 pi k (x_j - i) / n) = Re(E diag(w) F)
    e_out = np.exp(2j * np.pi * np.outer(x, k) / n_in)  # (n_out, K)
    f_in = np.exp(-2j * np.pi * np.outer(k, i) / n_in) / n_in  # (K, n_in)
    m = (e_out * w[None, :]) @ f_in
    return np.ascontiguousarray(m.real, dtype=dtype)


def _apply_axis(vol: np.ndarray, m: np.ndarray, axis: int) -> np.ndarray:
    out = np.tensordot(m, vol, axes=([1], [axis]))  # new axis first
    return np.moveaxis(out, 0, axis)


def _work_dtype(size: int):
    return np.float64 if size <= 2**24 else np.float32


def resample_fourier(volume: np.ndarray, voxel_in: float, voxel_out: float) -> np.ndarray:
    """Resample a volume to a new voxel size by Fourier cropping (or zero padding).

    The output has ``round(n * voxel_in / voxel_out)`` voxels along each axis (the same field
    of view up to half an output voxel) and exactly ``voxel_out`` spacing. Input index
    ``n_in // 2`` and output index ``n_out // 2`` are the same point. The output samples the
    periodic band-limited (trigonometric) interpolant of the input, with the spectrum cut at
    the output Nyquist frequency when downsampling. When ``n_out * voxel_out`` equals
    ``n_in * voxel_in`` this is exactly Fourier cropping/padding; otherwise it is the same
    interpolant evaluated on the new grid (an exact DFT, not an FFT). Even sizes split the
    Nyquist term in half between +N/2 and -N/2, so the result is real and symmetric.

    Values are preserved (not sums): a constant stays the same constant, a band-limited
    signal keeps its values at every point, so the mean and ``sum * voxel**3`` (the integral)
    are preserved.

    Parameters
    ----------
    volume
        ``[z, y, x]`` (any number of dimensions; every axis is resampled).
    voxel_in, voxel_out
        Input and output voxel sizes in Angstrom.

    Returns
    -------
    numpy.ndarray
        float32 volume with ``voxel_out`` spacing.
    """
    vin = _check_voxel(voxel_in, "input voxel size")
    vout = _check_voxel(voxel_out, "output voxel size")
    vol = np.asarray(volume)
    if abs(vin - vout) <= 1e-9 * vout:
        return np.array(vol, dtype=np.float32)
    ratio = vout / vin
    cutoff = 0.5 / ratio if ratio > 1 else None  # output Nyquist, cycles per input voxel
    work = vol.astype(_work_dtype(vol.size))
    for axis in range(vol.ndim):
        n_in = vol.shape[axis]
        n_out = max(1, int(round(n_in / ratio)))
        pos = centre_index(n_in) + (np.arange(n_out) - centre_index(n_out)) * ratio
        m = _interp_matrix(n_in, n_out, pos, cutoff, dtype=work.dtype)
        work = _apply_axis(work, m, axis)
    return work.astype(np.float32)


def fourier_shift(volume: np.ndarray, shift_xyz) -> np.ndarray:
    """Shift a volume by ``shift_xyz`` voxels (x, y, z; sub-voxel allowed), circularly.

    ``out[p + shift] = in[p]``: a feature at index ``p`` moves to ``p + shift``. Uses the
    same band-limited interpolant as :func:`resample_fourier` (a Fourier phase shift), so
    content moved past an edge wraps to the other side: pad first if that matters.
    """
    vol = np.asarray(volume)
    shift_zyx = np.asarray(shift_xyz, dtype=float)[::-1]
    work = vol.astype(_work_dtype(vol.size))
    for axis, d in enumerate(shift_zyx):
        if d == 0:
            continue
        n = vol.shape[axis]
        if float(d).is_integer():
            work = np.roll(work, int(d), axis=axis)
            continue
        m = _interp_matrix(n, n, np.arange(n) - d, None, dtype=work.dtype)
        work = _apply_axis(work, m, axis)
    return work.astype(np.float32)


def _frequency_radius(shape, voxel_size_angstrom: float) -> np.ndarray:
    """|f| in 1/Angstrom on the rfftn grid (unshifted, last axis halved) of ``shape``."""
    axes = [np.fft.fftfreq(n, d=voxel_size_angstrom) for n in shape[:-1]]
    axes.append(np.fft.rfftfreq(shape[-1], d=voxel_size_angstrom))
    f2: float | np.ndarray = 0.0
    for i, a in enumerate(axes):
        sh = [1] * len(axes)
        sh[i] = a.size
        f2 = f2 + (a * a).reshape(sh)
    return np.sqrt(f2)


def low_pass(
    volume: np.ndarray, voxel_size_angstrom: float, resolution_angstrom: float, edge_fraction: float = 0.2
) -> np.ndarray:
    """Low-pass filter with a raised-cosine (soft) edge centred on ``1/resolution``.

    The filter is 1 below ``fc - w/2``, 0 above ``fc + w/2`` and ``(1 + cos)/2`` in between,
    with ``fc = 1 / resolution_angstrom`` (where the filter is exactly 0.5) and
    ``w = max(edge_fraction * fc, 2 / (n * voxel))`` (never narrower than two Fourier
    samples, to limit ringing). The filter is applied by FFT, so it is circular.
    """
    v = _check_voxel(voxel_size_angstrom)
    res = _check_voxel(resolution_angstrom, "low-pass resolution")
    vol = np.asarray(volume)
    vol = vol.astype(_work_dtype(vol.size))
    fc = 1.0 / res
    w = max(edge_fraction * fc, 2.0 / (min(vol.shape) * v))
    f = _frequency_radius(vol.shape, v)
    t = np.clip((f - (fc - w / 2)) / w, 0.0, 1.0)
    filt = 0.5 * (1 + np.cos(np.pi * t))
    out = sfft.irfftn(sfft.rfftn(vol) * filt, s=vol.shape, axes=tuple(range(vol.ndim)))
    return out.astype(np.float32)


# --------------------------------------------------------------------------- boxes, centring


def _dominant_sign(volume: np.ndarray) -> float:
    """-1 for a map whose dominant extreme is negative (``|min| > max``: dark-protein contrast), else +1."""
    return -1.0 if -volume.min() > volume.max() else 1.0


def _support(volume: np.ndarray, fraction: float = _SUPPORT_FRACTION) -> tuple[np.ndarray, ...]:
    """Indices ``(z, y, x)`` of the object's voxels: ``s * map > fraction * max(s * map)`` with ``s``
    the dominant sign (:func:`_dominant_sign`); InputError for an empty map."""
    vol = np.asarray(volume)
    sv = _dominant_sign(vol) * vol
    idx = np.nonzero(sv > fraction * sv.max())
    if not idx[0].size:
        raise InputError("map is empty (no density above background)", field="template")
    return idx


def centre_of_mass(volume: np.ndarray, weights: str = "auto") -> np.ndarray:
    """Centre of mass ``(x, y, z)`` in voxel indices.

    ``weights="auto"`` uses the positive part of the map, or of ``-map`` when the map is
    mostly negative (``|min| > max``, i.e. dark-protein contrast); ``"positive"`` always the
    positive part.
    """
    vol = np.asarray(volume)
    vol = vol.astype(_work_dtype(vol.size))
    sign = _dominant_sign(vol) if weights == "auto" else 1.0
    wts = np.clip(sign * vol, 0.0, None)
    total = wts.sum()
    if not total > 0:
        raise InputError("map has no positive density to centre on", field="template")
    com_zyx = []
    for axis, n in enumerate(vol.shape):
        marginal = wts.sum(axis=tuple(a for a in range(vol.ndim) if a != axis))
        com_zyx.append(float((np.arange(n) * marginal).sum() / total))
    return np.array(com_zyx[::-1])


def pad_or_crop(volume: np.ndarray, box_size) -> np.ndarray:
    """Zero-pad or crop to ``box_size`` (int for a cube, or ``(z, y, x)``) keeping ``n // 2`` fixed."""
    vol = np.asarray(volume)
    if np.isscalar(box_size):
        # np.isscalar's guard admits str/bytes/memoryview; int() rejects what is not a number
        shape = (int(box_size),) * vol.ndim  # type: ignore[arg-type]
    else:
        shape = tuple(int(b) for b in box_size)
    out = np.zeros(shape, dtype=vol.dtype)
    src, dst = [], []
    for n_in, n_out in zip(vol.shape, shape):
        off = centre_index(n_out) - centre_index(n_in)  # out index = in index + off
        lo_in = max(0, -off)
        hi_in = min(n_in, n_out - off)
        src.append(slice(lo_in, hi_in))
        dst.append(slice(lo_in + off, hi_in + off))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def mirror_x(volume: np.ndarray) -> np.ndarray:
    """Mirror along x (the last array axis) about the centre index ``n // 2``.

    Index ``i`` goes to ``2 * (n // 2) - i`` (mod ``n``), so the centre voxel stays put for
    odd and even ``n`` (for even ``n`` index 0 maps onto itself). A mirror changes the
    handedness of the object: no rotation undoes it.
    """
    vol = np.asarray(volume)
    n = vol.shape[-1]
    out = np.flip(vol, axis=-1)
    if n % 2 == 0:
        out = np.roll(out, 1, axis=-1)
    return np.ascontiguousarray(out)


def object_extent_voxels(volume: np.ndarray, fraction: float = _SUPPORT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Support of a map: ``(low, high)`` offsets ``(x, y, z)`` in voxels from the centre index.

    A voxel belongs to the object where ``s * map > fraction * max(s * map)``, with ``s`` the
    sign of the dominant extreme (as in :func:`centre_of_mass`).
    """
    vol = np.asarray(volume)
    idx = _support(vol, fraction)
    low, high = [], []
    for axis in range(vol.ndim):
        c = centre_index(vol.shape[axis])
        low.append(idx[axis].min() - c)
        high.append(idx[axis].max() - c)
    return np.array(low[::-1]), np.array(high[::-1])


def _fits(low_xyz, high_xyz, box: int) -> bool:
    c = centre_index(box)
    return bool(np.all(np.asarray(low_xyz) >= -c) and np.all(np.asarray(high_xyz) <= box - 1 - c))


def _min_box(low_xyz, high_xyz) -> int:
    need = int(max(np.max(-np.asarray(low_xyz)), np.max(np.asarray(high_xyz)) + 1))
    return 2 * need  # box b has c = b//2 voxels below and b - 1 - c above


def recentre_volume(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the centre of mass to index ``n // 2`` with a sub-voxel Fourier shift.

    The volume is zero-padded first by the shift (plus one voxel) on every side so nothing
    wraps around; the result is that padded volume (centre still at ``n // 2``). Returns the
    volume and the applied shift ``(x, y, z)`` in voxels.
    """
    vol = np.asarray(volume, dtype=np.float32)
    com = centre_of_mass(vol)
    centre = np.array([centre_index(n) for n in vol.shape[::-1]], dtype=float)
    shift = centre - com
    pad = int(np.ceil(np.max(np.abs(shift)))) + 1
    padded = pad_or_crop(vol, tuple(n + 2 * pad for n in vol.shape))
    return fourier_shift(padded, shift), shift


# --------------------------------------------------------------------------- atomic models


def _read_model(path):
    import gemmi

    p = Path(path)
    if not p.exists():
        raise InputError("atomic model file not found", p)
    try:
        st = gemmi.read_structure(os.fspath(p))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError/IOError variants
        raise InputError(f"not a readable PDB/mmCIF model ({exc.__class__.__name__}: {exc})", p) from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError("model contains no atoms", p)
    return st


def _model_arrays(model):
    """Positions (N, 3) x,y,z A, occupancies, B_iso and element numbers of a gemmi model."""
    xyz, occ, b, z = [], [], [], []
    for cra in model.all():
        a = cra.atom
        p = a.pos
        xyz.append((p.x, p.y, p.z))
        occ.append(a.occ)
        b.append(a.b_iso)
        z.append(a.element.atomic_number)
    return (
        np.array(xyz, dtype=np.float64).reshape(-1, 3),
        np.array(occ, dtype=np.float64),
        np.array(b, dtype=np.float64),
        np.array(z, dtype=np.int64),
    )


def density_from_model(
    path,
    voxel_size_angstrom: float,
    box_size: int | None = None,
    blur_angstrom2: float | None = None,
    resolution_angstrom: float | None = None,
) -> np.ndarray:
    """Electrostatic potential map (volts) of an atomic model, centred in a cubic box.

    The first model of the PDB/mmCIF file (``.gz`` is fine) goes through
    ``gemmi.DensityCalculatorE`` (electron scattering factors, per-atom occupancy and B,
    ANISOU if present, plus ``blur_angstrom2``). Crystal symmetry is dropped (space group
    ``P 1``) and the model gets its own unit cell, padded so that no periodic image reaches
    into the box. Units: see the module docstring (volts; ``sum * v**3`` is voxel-size
    independent).

    The scattering-weighted centre of the atoms (weights ``occ * f_e(0)``) lands on box
    index ``n // 2``, so the map's centre of mass is there to a small fraction of a voxel.

    Atoms are point-sampled as Gaussians directly on the output grid, so the map is
    positive everywhere (no Fourier cropping, no ringing); the default blur keeps the
    aliasing moderate (each atom at least a Gaussian of sigma ``v/2``: transfer 0.29 at
    Nyquist).

    Parameters
    ----------
    path
        PDB or mmCIF file.
    voxel_size_angstrom
        Output voxel size (A).
    box_size
        Cubic box in voxels. ``None``: the smallest even box holding every atom plus a
        margin for the atomic blur. A box that does not contain every atom raises
        :class:`InputError`.
    blur_angstrom2
        Extra B factor (A^2) added to every atom. ``None``: ``8 pi^2 (v/2)^2`` (``v`` the voxel
        size: a Gaussian of sigma v/2, against aliasing). Use 0 for none.
    resolution_angstrom
        If given, :func:`low_pass` at this resolution afterwards.

    Returns
    -------
    numpy.ndarray
        float32 ``[z, y, x]`` potential in volts, positive.
    """
    import gemmi

    v = _check_voxel(voxel_size_angstrom)
    box = _check_box(box_size)
    if blur_angstrom2 is not None and not float(blur_angstrom2) >= 0:
        raise InputError(f"{blur_angstrom2} must be >= 0", field="blur (A^2)")
    st = _read_model(path)
    model = st[0]
    xyz, occ, b_iso, znum = _model_arrays(model)

    blur = 8 * np.pi**2 * (v / 2) ** 2 if blur_angstrom2 is None else float(blur_angstrom2)

    # scattering weights and the largest Gaussian width present
    f0 = {}
    bmax_coef = 0.0
    for zz in np.unique(znum):
        coefs = gemmi.Element(int(zz)).c4322.get_coefs()
        f0[int(zz)] = float(sum(coefs[:5]))
        bmax_coef = max(bmax_coef, max(coefs[5:]))
    wts = occ * np.array([f0[int(zz)] for zz in znum])
    if not wts.sum() > 0:
        raise InputError("model has zero total occupancy", path)
    centroid = (xyz * wts[:, None]).sum(0) / wts.sum()
    rel = xyz - centroid
    sigma_max = math.sqrt((bmax_coef + max(float(b_iso.max()), 0.0) + blur) / (8 * np.pi**2))
    margin_a = 4.0 * sigma_max + 2 * v  # density negligible beyond this from an atom

    # internal box (coarse voxels), even, big enough for atoms + margin on both sides
    reach = np.max(np.abs(rel)) + margin_a
    n_int_f = 2.0 * math.ceil(reach / v) + 2.0 if math.isfinite(reach / v) else math.inf
    _check_template_size((max(n_int_f, box or 0),) * 3, "--voxel-size", f"{v:g} A", path)
    n_int = int(n_int_f)
    if box is not None:
        low = np.floor(rel.min(0) / v + 1e-9)
        high = np.ceil(rel.max(0) / v - 1e-9)
        if not _fits(low, high, box):
            need = _min_box(low, high)
            raise InputError(
                f"box of {box} voxels is smaller than the model (needs at least {need} voxels at {v:g} A)",
                path,
                "box size",
            )
    length = n_int * v
    centre_a = centre_index(n_int) * v

    st.spacegroup_hm = "P 1"
    st.cell = gemmi.UnitCell(length, length, length, 90, 90, 90)
    shift = centre_a - centroid
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    st.setup_cell_images()

    dc = gemmi.DensityCalculatorE()
    dc.d_min = 0.0
    dc.blur = blur
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_unit_cell(st.cell)
    dc.grid.set_size(n_int, n_int, n_int)
    dc.put_model_density_on_grid(model)
    vol = np.array(dc.grid, copy=True).transpose(2, 1, 0) * MOTT_BETHE_VOLT_ANGSTROM2  # [z, y, x]

    if resolution_angstrom is not None:
        vol = low_pass(vol, v, resolution_angstrom)
    if box is not None:
        vol = pad_or_crop(vol, box)
    return np.ascontiguousarray(vol, dtype=np.float32)


# --------------------------------------------------------------------------- template


def create_template(
    source,
    voxel_size_angstrom: float,
    *,
    box_size: int | None = None,
    input_voxel_size_angstrom: float | None = None,
    low_pass_angstrom: float | None = None,
    invert: bool = False,
    mirror: bool = False,
    recentre: bool = True,
) -> tuple[np.ndarray, float]:
    """Make a matching template from a density map or an atomic model.

    Steps, in order:

    1. **Read.** ``.pdb/.ent/.cif/.mmcif/.pdbx`` (optionally ``.gz``): an atomic model,
       turned into a potential map at ``voxel_size_angstrom`` by :func:`density_from_model`
       (already centred). Anything else is read as MRC (``input_voxel_size_angstrom``
       overrides the header; a header voxel size of 0 without override is an error).
    2. **Resample** maps to ``voxel_size_angstrom`` with :func:`resample_fourier` (Fourier
       cropping/padding; values preserved).
    3. **Low-pass** (optional) with :func:`low_pass`: raised-cosine edge, 0.5 at
       ``1/low_pass_angstrom``, width 20 % of that frequency.
    4. **Re-centre** (maps, default on): the centre of mass of the positive density (of the
       negative density for a dark-on-light map) goes to index ``n // 2`` by a sub-voxel
       Fourier shift, after zero padding so nothing wraps.
    5. **Box**: pad/crop to a cube of ``box_size`` around ``n // 2``. ``None``: the larger of
       the current size and the smallest cube holding the object. The object (every atom;
       for maps, voxels above 5 % of the maximum) must fit, else :class:`InputError`.
    6. **Mirror** (optional): :func:`mirror_x`, reflection along x about ``n // 2``; this
       changes the hand, e.g. to fix a map deposited with the wrong handedness.
    7. **Invert** (optional): multiply by -1 (dark protein, as in the tomogram).

    Returns
    -------
    (numpy.ndarray, float)
        float32 ``[z, y, x]`` cubic template and its voxel size in Angstrom.
    """
    v = _check_voxel(voxel_size_angstrom)
    box = _check_box(box_size)
    if box is not None:
        _check_template_size((box,) * 3, "--box-size", f"{box} voxels")
    src = Path(source)
    if is_model_path(src):
        if input_voxel_size_angstrom is not None:
            raise InputError("an input voxel size applies only to maps, not atomic models", src, "input voxel size")
        if not src.exists():
            raise InputError("atomic model file not found", src)
        vol = density_from_model(src, v, box_size=box, resolution_angstrom=low_pass_angstrom)
    else:
        vol, vin = read_volume(src, input_voxel_size_angstrom, what="template map")
        if vol.shape[0] == 1:
            raise InputError("is a 2D image; expected a 3D density map", src)
        if abs(vin - v) > 1e-9 * v:
            # the resampled map (round(n * vin / v) per axis), then the cubic box around it
            out_shape = [max(1.0, float(round(x)) if math.isfinite(x) else x) for x in (n * vin / v for n in vol.shape)]
            cube = max(max(out_shape), float(box or 0))
            _check_template_size((cube,) * 3, "--voxel-size", f"{v:g} A (the map's is {vin:g} A)", src)
            if vin > v:
                warnings.warn(f"upsampling the map from {vin:g} A to {v:g} A adds no information", stacklevel=2)
            vol = resample_fourier(vol, vin, v)
        if low_pass_angstrom is not None:
            vol = low_pass(vol, v, low_pass_angstrom)
        if recentre:
            vol, _ = recentre_volume(vol)
        low, high = object_extent_voxels(vol)
        if box is None:
            box = max(max(vol.shape), _min_box(low, high))
        elif not _fits(low, high, box):
            raise InputError(
                f"box of {box} voxels is smaller than the object in the map (needs at least "
                f"{_min_box(low, high)} voxels at {v:g} A)",
                src,
                "box size",
            )
        vol = pad_or_crop(vol, box)
    if mirror:
        vol = mirror_x(vol)
    if invert:
        vol = -vol
    return np.ascontiguousarray(vol, dtype=np.float32), v


#: below this correlation with its own symmetry mate, a template is not in the point group's
#: RELION orientation: a symmetry search would skip orientations it needs
SYMMETRY_AGREEMENT_MIN = 0.9


def symmetry_agreement(template: np.ndarray, mask: np.ndarray, symmetry: str) -> float:
    """The lowest correlation, inside ``mask > 0.5``, of the template with itself turned by each
    operation of ``symmetry`` in RELION's orientation (n-fold axis along z, 2-folds of Dn along
    x, ...; :func:`tomomatch.angles.symmetry_matrices`). Near 1 for a template in that
    orientation; an off-axis template (e.g. the PolNet 20S map, whose 7-fold axis is not z)
    gives much less. 1.0 for C1."""
    from .angles import symmetry_matrices

    return min((self_correlation(template, mask, r) for r in symmetry_matrices(symmetry)[1:]), default=1.0)


def self_correlation(template: np.ndarray, mask: np.ndarray, rotation: np.ndarray) -> float:
    """Correlation, inside ``mask > 0.5``, of the template with itself turned by ``rotation``
    (a pose matrix on ``(x, y, z)``) about the box centre ``n // 2``: the engine's
    :func:`tomomatch.matching.rotate_volume`, trilinear."""
    from .matching import rotate_volume

    t = np.asarray(template, float)
    inside = np.asarray(mask, float) > 0.5
    a = t[inside] - t[inside].mean()
    b = rotate_volume(t, rotation, order=1)[inside]
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


# --------------------------------------------------------------------------- symmetry alignment

#: largest work cube (voxels) of the coarse stage of :func:`align_symmetry` (the axis directions
#: and the angle about the axis on a grid) and of its refinement; larger maps are Fourier-cropped
_ALIGN_COARSE_BOX = 24
_ALIGN_REFINE_BOX = 40
#: directions of the coarse axis search: a Fibonacci half-sphere, about 7 degrees apart
_ALIGN_DIRECTIONS = 400
#: axes of the coarse stage refined (besides duplicates within this many degrees)
_ALIGN_STARTS, _ALIGN_DISTINCT_DEG = 4, 15.0


def _alignment_group(symmetry) -> str:
    """``parse_symmetry``, with the option named ``--align-symmetry`` in the message."""
    from .angles import parse_symmetry

    try:
        return parse_symmetry(symmetry)
    except InputError as exc:
        raise InputError(exc.detail.replace("--symmetry", "--align-symmetry"), None, exc.field) from None


def _rotation_about(axis, angle: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    a = np.asarray(axis, float)
    return Rotation.from_rotvec(a / np.linalg.norm(a) * angle).as_matrix()


def _frame_z_to(axis) -> np.ndarray:
    """The smallest rotation carrying z onto the direction ``axis`` (its columns: the images of x, y, z)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    v = np.cross([0.0, 0.0, 1.0], a)
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        return np.eye(3) if a[2] > 0 else np.diag([1.0, -1.0, -1.0])
    return _rotation_about(v, math.atan2(s, float(a[2])))


def _principal_axis(name: str) -> tuple[np.ndarray, int]:
    """``(v, m)``: an axis ``v`` of the highest order ``m`` of the group (RELION's orientation), the
    one nearest z: z for ``Cn``, ``Dn``, ``T``, ``O``, ``I3``; a 5-fold of ``I``/``I1``/``I2``/``I4``."""
    from scipy.spatial.transform import Rotation

    from .angles import symmetry_matrices

    rv = Rotation.from_matrix(symmetry_matrices(name)[1:]).as_rotvec()
    ang = np.linalg.norm(rv, axis=1)
    m = int(round(2.0 * math.pi / ang.min()))
    axes = rv[ang < ang.min() + 1e-6] / ang.min()
    v = axes[int(np.argmax(np.round(np.abs(axes[:, 2]), 9)))]
    return v * (1.0 if v[2] >= 0 else -1.0), m


def _fibonacci_half_sphere(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors ``(x, y, z)`` with ``z > 0`` (one of each antipodal pair)."""
    i = np.arange(n) + 0.5
    z = i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _inertia_axes(volume: np.ndarray, sign: float) -> np.ndarray:
    """Eigenvectors (rows, ``(x, y, z)``, each with ``z >= 0``) of the inertia tensor about the box
    centre of the density above 5 % of its maximum; a symmetric top's axis is the non-degenerate one."""
    sv = sign * np.asarray(volume, float)
    w = np.clip(sv - _SUPPORT_FRACTION * sv.max(), 0.0, None)
    z, y, x = np.indices(volume.shape, dtype=float)
    pts = np.stack(
        [x - centre_index(volume.shape[2]), y - centre_index(volume.shape[1]), z - centre_index(volume.shape[0])], -1
    )
    pts = pts.reshape(-1, 3)
    second = (pts * w.reshape(-1, 1)).T @ pts
    vecs = np.linalg.eigh(np.trace(second) * np.eye(3) - second)[1].T
    return vecs * np.where(vecs[:, 2] < 0, -1.0, 1.0)[:, None]


def _object_mask(volume: np.ndarray) -> np.ndarray:
    """The default mask of :func:`align_symmetry`: a sphere about the box centre holding the object
    (voxels above 5 % of the maximum) with 1.5 voxels to spare, no larger than the box."""
    from .mask import spherical_mask

    vol = np.asarray(volume)
    d2 = sum((i - centre_index(n)) ** 2 for i, n in zip(_support(vol), vol.shape))
    return spherical_mask(vol.shape, min(math.sqrt(float(d2.max())) + 1.5, min(vol.shape) // 2 - 0.5))


def _nelder_mead(fun, n_params: int, step: float, max_evals: int) -> np.ndarray:
    from scipy.optimize import minimize

    simplex = np.vstack([np.zeros(n_params), step * np.eye(n_params)])
    res = minimize(
        fun,
        np.zeros(n_params),
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-4, "maxfev": max_evals},
    )
    return np.asarray(res.x, float)


def align_symmetry(
    template: np.ndarray, symmetry: str, mask: np.ndarray | None = None, *, box_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Turn a template into RELION's orientation for its point group (``relion_align_symmetry``).

    ``tomomatch match --symmetry`` searches one asymmetric unit, valid only for a template whose
    symmetry axes are RELION's (:func:`tomomatch.angles.symmetry_matrices`: ``Cn`` n-fold along z;
    ``Dn`` and a 2-fold along x; ``T``, ``O``, ``I``/``I1``-``I4`` as there). This finds them:

    1. **Centre.** The centre of mass (:func:`centre_of_mass`; dark-on-light maps too), which lies
       on every symmetry axis, goes to ``n // 2`` (sub-voxel Fourier shift, zero-padded first).
    2. **Axis.** Candidates for an axis of the group's highest order ``m`` (the n-fold; a 5-fold
       for ``I``): the eigenvectors of the inertia tensor of the density (a symmetric top's
       unique one is its axis) and the best of 400 directions on the half sphere (7 degrees
       apart), scored by the template's correlation with itself turned about the direction by
       ``360 * (m // 2) / m`` degrees, the turn nearest 180 (:func:`self_correlation`: the
       engine's :func:`tomomatch.matching.rotate_volume`, trilinear, inside a sphere holding the
       object). The best four are refined by a Nelder-Mead search of the direction, scored by
       that turn and by ``360/m`` degrees.
    3. **Angle about the axis** (all groups but ``Cn``): a 1 degree grid over ``360/m`` degrees
       scored by the operations that move the axis (for ``Dn`` the 2-folds), then the whole
       rotation refined by Nelder-Mead under both kinds of operation.
    4. **Turn** with :func:`tomomatch.matching.rotate_volume` (cubic B-spline) by the rotation
       that takes the axes onto RELION's, of all equivalent ones (times the group; for ``Cn`` any
       angle about z, also upside down; for ``Dn`` also ``180/n`` about z) the smallest, so an
       aligned template stays as it is.

    The coarse stage works on a Fourier-cropped copy of at most 24 voxels across the object, the
    refinement on at most 40 (a 42^3 template aligns in about a second).

    Parameters
    ----------
    template
        ``[z, y, x]`` map, bright or dark protein.
    symmetry
        The group, as ``--symmetry`` (``C7``, ``D7``, ``O``, ...). ``C1``: nothing to align
        (the identity; the template is only boxed).
    mask
        Mask of the same shape as ``template`` in which the agreement before and after is
        measured (:func:`symmetry_agreement`, as ``match`` does with its mask; padded or cropped
        with the template). Give one that does not depend on the orientation (a sphere). Default:
        a sphere about the box centre holding the object.
    box_size
        Cubic output box. Default: the input's box, larger when the turned object needs it
        (as :func:`create_template`'s default box); a box too small for it is an error.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, dict)
        The aligned float32 cubic template; the rotation ``R`` (pose matrix on ``(x, y, z)``)
        applied after centring (a point ``p`` from the centre of mass goes to ``R p`` from
        ``n // 2``); and ``info``: ``symmetry``, ``agreement_before``, ``agreement_after``,
        ``axis_xyz`` (the ``axis_order``-fold axis found, a unit vector in the input's frame),
        ``axis_relion_xyz`` (where ``R`` turns it: z, or a 5-fold of ``I``), ``twofold_xyz``
        (``Dn``: the 2-fold turned onto x), ``agreement_half_step`` (a control: the aligned
        template with itself turned by ``180/m`` degrees about the axis; 0.9 or more means it is
        nearly a cylinder about the axis, so the order ``m`` is not told apart), ``rotation``
        (``R``), ``rotation_relion_deg`` (``R`` as RELION rot, tilt, psi), ``shift_xyz`` (the
        centring shift, voxels), ``box`` and ``seconds``.

    Raises
    ------
    InputError
        An unknown group, an empty map, a mask of another shape, a ``box_size`` too small, or a
        map without the symmetry: the agreement reached stays below :data:`SYMMETRY_AGREEMENT_MIN`.
    """
    import time

    from .conventions import matrix_to_relion
    from .matching import rotate_volume

    t0 = time.perf_counter()
    name = _alignment_group(symmetry)
    vol = np.asarray(template, dtype=np.float64)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise InputError(f"expected a 3D map, got an array of shape {vol.shape}", field="template")
    if not np.all(np.isfinite(vol)):
        raise InputError("map has NaN or infinite values", field="template")
    if mask is not None and np.shape(mask) != vol.shape:
        raise InputError(f"mask of shape {np.shape(mask)} for a template of shape {vol.shape}", field="mask")
    box = _check_box(box_size)
    if box is not None:
        _check_template_size((box,) * 3, "--box-size", f"{box} voxels")
    mask_in = _object_mask(vol) if mask is None else np.asarray(mask, np.float32)
    before = symmetry_agreement(vol, mask_in, name)

    rotation, order, axis_xyz, shift = np.eye(3), 1, np.array([0.0, 0.0, 1.0]), np.zeros(3)
    if name == "C1":
        aligned = pad_or_crop(vol, (max(vol.shape),) * 3)
    else:
        # 1. centre of mass -> n // 2, in a cube with room for the shift and for any turn
        com = centre_of_mass(vol)
        shift = np.array([centre_index(n) for n in vol.shape[::-1]], float) - com
        sign = _dominant_sign(vol)
        radius = math.sqrt(float(sum((i - c) ** 2 for i, c in zip(_support(vol), com[::-1])).max()))
        work_box = 2 * int(math.ceil(radius + 2.0)) + 1
        big_box = max(max(vol.shape), work_box) + 2 * (int(math.ceil(np.abs(shift).max())) + 1)
        big = fourier_shift(pad_or_crop(vol, (big_box,) * 3), shift).astype(np.float64)
        # 2.-3. the rotation; 4. the turn
        rotation, order, axis_xyz = _find_alignment(pad_or_crop(big, work_box), radius, name, sign)
        aligned = rotate_volume(big, rotation, order=3)

    # box: the input's (or the one asked for), larger when the turned object needs it
    low, high = object_extent_voxels(aligned)
    need = _min_box(low, high)
    if box is None:
        box = max(max(vol.shape), need)
        _check_template_size((box,) * 3, "--box-size", f"{box} voxels (the turned object's)")
    elif not _fits(low, high, box):
        raise InputError(
            f"box of {box} voxels is smaller than the aligned object (needs at least {need} voxels)",
            field="box size",
        )
    out = np.ascontiguousarray(pad_or_crop(aligned, box), dtype=np.float32)
    mask_out = _object_mask(out) if mask is None else pad_or_crop(mask_in, box)
    after = symmetry_agreement(out, mask_out, name)
    # control: half a step about the principal axis (near 1 for a map nearly cylindrical about it)
    v0 = _principal_axis(name)[0] if name != "C1" else axis_xyz
    half = self_correlation(out, mask_out, _rotation_about(v0, math.pi / order)) if order > 1 else None
    info: dict = {
        "symmetry": name,
        "agreement_before": round(float(before), 4),
        "agreement_after": round(float(after), 4),
        "axis_order": int(order),
        "axis_xyz": [round(float(a), 4) for a in axis_xyz],
        "axis_relion_xyz": [round(float(a), 6) + 0.0 for a in v0],
        "agreement_half_step": None if half is None else round(float(half), 4),
        "rotation": np.round(rotation, 6).tolist(),
        "rotation_relion_deg": [round(float(a), 3) for a in matrix_to_relion(rotation)],
        "shift_xyz": [round(float(s), 3) for s in shift],
        "box": int(box),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if name[0] == "D":
        info["twofold_xyz"] = [round(float(a), 4) for a in rotation.T @ [1.0, 0.0, 0.0]]
    if after < SYMMETRY_AGREEMENT_MIN:
        raise InputError(
            f"the map is not {name}-symmetric: turned into the best {name} orientation found it correlates "
            f"only {after:.2f} with its own {name} mates (before {before:.2f}; expected >= {SYMMETRY_AGREEMENT_MIN})",
            None,
            "--align-symmetry",
        )
    return out, rotation, info


def _find_alignment(work: np.ndarray, radius: float, name: str, sign: float) -> tuple[np.ndarray, int, np.ndarray]:
    """Steps 2-3 of :func:`align_symmetry` on ``work`` (a cube, centre of mass at ``n // 2``, the
    object within ``radius`` voxels of it). Returns ``(R, m, axis)``: the rotation into RELION's
    orientation, the order of the principal axis and that axis in the input's frame."""
    from scipy.spatial.transform import Rotation

    from .angles import symmetry_matrices

    group = symmetry_matrices(name)
    v0, m = _principal_axis(name)
    b = _frame_z_to(v0)  # RELION's principal axis is b @ z

    from .mask import spherical_mask

    def level(target: int) -> tuple[np.ndarray, np.ndarray]:
        n = work.shape[0]
        if n <= target:
            return work, spherical_mask(work.shape, radius + 1.5)
        small = resample_fourier(work, 1.0, n / target).astype(np.float64)
        return small, spherical_mask(small.shape, (radius + 1.5) * small.shape[0] / n)

    coarse, fine = level(_ALIGN_COARSE_BOX), level(_ALIGN_REFINE_BOX)

    def score(lv, ops) -> float:
        return min(self_correlation(lv[0], lv[1], g) for g in ops)

    def turns(axis) -> list[np.ndarray]:  # about the axis by 360/m and 360 (m // 2) / m degrees
        return [_rotation_about(axis, 2.0 * math.pi * k / m) for k in sorted({1, m // 2})]

    # 2. the principal axis: inertia eigenvectors and a half-sphere of directions, then refined
    dirs = np.vstack([_inertia_axes(work, sign), _fibonacci_half_sphere(_ALIGN_DIRECTIONS)])
    coarse_scores = np.array([score(coarse, turns(a)[-1:]) for a in dirs])  # the largest turn only
    starts: list[np.ndarray] = []
    for i in np.argsort(-coarse_scores, kind="stable"):
        if all(abs(float(dirs[i] @ s)) < math.cos(math.radians(_ALIGN_DISTINCT_DEG)) for s in starts):
            starts.append(dirs[i])
        if len(starts) == _ALIGN_STARTS:
            break
    found: list[tuple[float, np.ndarray]] = []
    for a0 in starts:
        e = _frame_z_to(a0)

        def axis_at(p, a0=a0, e=e):
            a = a0 + p[0] * e[:, 0] + p[1] * e[:, 1]
            return a / np.linalg.norm(a)

        a = axis_at(_nelder_mead(lambda p, axis_at=axis_at: -score(fine, turns(axis_at(p))), 2, 0.05, 80))
        found.append((score(fine, turns(a)), a))
    found.sort(key=lambda t: -t[0])

    if len(group) == m:  # Cn: the axis is all there is; the smallest turn taking it onto z
        r = b @ _frame_z_to(found[0][1]).T
        best = None
        for flip in (np.eye(3), np.diag([1.0, -1.0, -1.0])):
            fr = flip @ r
            theta = math.atan2(fr[0, 1] - fr[1, 0], fr[0, 0] + fr[1, 1])
            cand = _rotation_about([0.0, 0.0, 1.0], theta) @ fr
            if best is None or np.trace(cand) > np.trace(best) + 1e-9:
                best = cand
        assert best is not None
        return best, m, best.T @ v0

    # 3. the angle about the axis (operations that move it), then the whole rotation
    moving = [g for g in group[1:] if float(v0 @ g @ v0) < 1.0 - 1e-6]
    # two that move it least and one that moves it most: a turn about the axis by a fraction of
    # 360/m that keeps some operations (O by 45 degrees about z keeps D4) still changes these
    by_move = np.argsort([-float(v0 @ g @ v0) for g in moving], kind="stable")
    moving = [moving[i] for i in sorted({int(by_move[0]), int(by_move[1 % len(by_move)]), int(by_move[-1])})]
    ops = [b @ turns([0.0, 0.0, 1.0])[-1] @ b.T] + moving  # in RELION's frame
    results: list[tuple[float, np.ndarray]] = []
    for _, a in [f for f in found[:2] if f[0] >= found[0][0] - 0.05]:  # the best axis, and a close second
        qa = _frame_z_to(a)
        qs = [qa @ _rotation_about([0.0, 0.0, 1.0], psi) @ b.T for psi in np.radians(np.arange(0.0, 360.0 / m, 1.0))]
        q0 = qs[int(np.argmax([score(coarse, [q @ g @ q.T for g in moving]) for q in qs]))]

        def turned(d, q0=q0):
            return Rotation.from_rotvec(d).as_matrix() @ q0

        q = turned(
            _nelder_mead(
                lambda d, turned=turned: -score(fine, [turned(d) @ g @ turned(d).T for g in ops]), 3, 0.03, 100
            )
        )
        results.append((score(fine, [q @ g @ q.T for g in group[1:]]), q))  # the whole group decides
    results.sort(key=lambda t: -t[0])
    r = results[0][1].T
    # of the equivalent rotations g R (and, for Dn, Rz(180/n) g R: its 2-folds onto the next ones) the smallest
    ext = list(group)
    if name[0] == "D":
        ext += [_rotation_about([0.0, 0.0, 1.0], math.pi / m) @ g for g in group]
    r = max((g @ r for g in ext), key=lambda x: float(np.trace(x)))
    return r, m, r.T @ v0


def remove_radial_average(template: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The template minus its radial average about the box centre ``n // 2``: the part that depends
    on orientation.

    The radial average (the mean over each shell of voxels at the same rounded distance from the
    centre) is what any dense object of the template's size and radial profile matches, whatever
    its shape and orientation: gold beads, other complexes, a thick edge. Subtracted, the template
    keeps only what tells the particle from such look-alikes and its orientations apart, so the
    scores of a crowded sample lose their structured background. The subtraction is the
    orthogonal projection off the shell-constant volumes, so the result is uncorrelated with every
    radially symmetric density within the box and its radial average is 0.

    Measured on the ``hard`` simulation (docs/extraction.md, "Picking on the hard simulation"):
    70S ribosomes, which outscored a third of the 20S particles with the full template, no longer
    reach the best threshold, and the default tail cut-off moved from above every peak to within
    0.05-0.14 F1 of the best threshold.

    Parameters
    ----------
    template
        ``[z, y, x]`` cubic box (either contrast).
    mask
        Optional mask of the same shape, only to measure ``info["correlation_with_radial_average"]``
        inside it (``mask > 0.5``; default the whole box).

    Returns
    -------
    volume, info
        float32 volume; ``info``: ``correlation_with_radial_average`` of the input (the fraction of
        its variance removed is its square) and ``radial_profile`` (the subtracted shell means,
        from the centre outwards).
    """
    t = np.asarray(template, dtype=np.float64)
    if t.ndim != 3 or len(set(t.shape)) != 1:
        raise InputError(f"template shape {t.shape}; expected a cubic box", field="template")
    n = t.shape[0]
    c = n // 2
    r = np.rint(np.sqrt(((np.indices(t.shape) - c) ** 2).sum(axis=0))).astype(np.int64)
    counts = np.bincount(r.ravel())
    profile = np.bincount(r.ravel(), weights=t.ravel()) / np.maximum(counts, 1)
    radial = profile[r]
    inside = np.ones(t.shape, bool) if mask is None else np.asarray(mask, float) > 0.5
    if mask is not None and np.asarray(mask).shape != t.shape:
        raise InputError(f"mask shape {np.asarray(mask).shape} differs from template shape {t.shape}", field="mask")
    a = t[inside] - t[inside].mean()
    b = radial[inside] - radial[inside].mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    info = {
        "correlation_with_radial_average": float((a * b).sum() / den) if den > 0 else 0.0,
        "radial_profile": [float(v) for v in profile],
    }
    return (t - radial).astype(np.float32), info
