"""Rotation sets for the template search: global near-uniform grids, local grids, files.

Every rotation is a pose matrix in the sense of :mod:`tomomatch.conventions`: the active
rotation ``R`` (3x3, acting on column vectors ``(x, y, z)``) that carries the template onto
the particle, ``particle(r) = template(R^T (r - p))``.

Global grid (:func:`uniform_rotations`)
    ``R = Rz(phi) @ Ry(theta) @ Rz(psi)``. ``(theta, phi)`` are the centres of an equal-area
    HEALPix tessellation of the sphere (RING scheme, any ``nside``), i.e. the direction the
    template's z axis is carried to; ``psi`` is the in-plane angle, applied to the template
    first, about its own z axis, on a uniform grid. Because the HEALPix pixels have equal area
    and ``psi`` is uniform, the grid samples the Haar measure ``sin(theta) dtheta dphi dpsi``
    evenly (the HEALPix + circle construction of Yershova et al. 2010, Int. J. Robot. Res.
    29:801, and of pytom-match-pick). ``nside`` is the smallest integer with
    ``12 nside^2 >= 4 pi / step^2`` and ``n_psi = ceil(360 / step)``, so the rotation count
    equals pytom-match-pick's for the same step (248,400 at 3.92 degrees).

Symmetry ``Cn``
    A template with an n-fold axis along its z axis satisfies ``template(Rz(2 pi k/n)^T r) =
    template(r)``, so the poses ``R`` and ``R @ Rz(2 pi k / n)`` place identical particles. With
    ``R = Rz(phi) Ry(theta) Rz(psi)`` the right factor only shifts ``psi`` by ``2 pi k / n``;
    keeping ``psi in [0, 360/n)`` therefore covers SO(3)/Cn. The ``psi`` grid is made
    commensurate with the symmetry (``n_psi = n * ceil(360 / (n * step))``), so every rotation of
    the full grid is *exactly* a kept rotation times a symmetry operation.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .conventions import matrix_to_relion, pytom_to_matrix, relion_to_matrix
from .errors import InputError
from .mrcio import atomic_path

__all__ = [
    "crowther_step_deg",
    "parse_symmetry",
    "healpix_nside",
    "uniform_rotations",
    "uniform_rotation_count",
    "local_rotations",
    "geodesic_distance_deg",
    "rotations_to_relion",
    "write_rotations",
    "read_rotations",
    "ROTATION_FILE_HEADER",
]

ROTATION_FILE_HEADER = "# tomomatch rotations: RELION ZYZ degrees"


# --------------------------------------------------------------------------- step size


def crowther_step_deg(particle_diameter_angstrom: float, voxel_size_angstrom: float,
                      low_pass_angstrom: float | None = None) -> float:
    """Angular step from the Crowther criterion, in degrees.

    ``step = degrees(resolution / diameter)`` with ``resolution = max(2 * voxel, low_pass)``:
    the angle by which a point on the particle's rim moves one resolution element.

    Parameters
    ----------
    particle_diameter_angstrom
        Particle diameter (Angstrom), > 0.
    voxel_size_angstrom
        Voxel size of the tomogram (Angstrom), > 0.
    low_pass_angstrom
        Low-pass resolution applied to template and tomogram (Angstrom), or None.

    Examples
    --------
    >>> round(crowther_step_deg(250, 8.56), 4)
    3.9236
    """
    d = float(particle_diameter_angstrom)
    v = float(voxel_size_angstrom)
    if not (math.isfinite(d) and d > 0):
        raise InputError(f"particle diameter {d!r} A; expected a positive number", None,
                         "particle diameter")
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"voxel size {v!r} A; expected a positive number", None, "voxel size")
    res = 2.0 * v
    if low_pass_angstrom is not None:
        lp = float(low_pass_angstrom)
        if not (math.isfinite(lp) and lp > 0):
            raise InputError(f"low pass {lp!r} A; expected a positive number", None, "low pass")
        res = max(res, lp)
    return math.degrees(res / d)


# --------------------------------------------------------------------------- symmetry


def parse_symmetry(symmetry: str | int) -> int:
    """Order ``n`` of a cyclic symmetry ``"Cn"`` (case-insensitive; an int is taken as ``n``)."""
    if isinstance(symmetry, (int, np.integer)):
        n = int(symmetry)
    else:
        m = re.fullmatch(r"\s*[cC]\s*(\d+)\s*", str(symmetry))
        if m is None:
            raise InputError(f"symmetry {symmetry!r} not supported; expected Cn, e.g. C1, C2, C6",
                             None, "symmetry")
        n = int(m.group(1))
    if n < 1:
        raise InputError(f"symmetry order {n}; expected n >= 1 (C1 = no symmetry)", None, "symmetry")
    return n


def _check_step(step_deg: float) -> float:
    s = float(step_deg)
    if not (math.isfinite(s) and 0 < s <= 180):
        raise InputError(f"angular step {step_deg!r} degrees; expected 0 < step <= 180", None,
                         "angular step")
    return s


# --------------------------------------------------------------------------- global grid


def healpix_nside(step_deg: float) -> int:
    """Smallest HEALPix ``nside`` with ``12 nside^2 >= 4 pi / step^2`` (any integer, RING)."""
    step = math.radians(_check_step(step_deg))
    target = 4.0 * math.pi / step ** 2
    nside = max(1, int(math.floor(math.sqrt(target / 12.0))))
    while 12 * nside * nside < target:
        nside += 1
    return nside


def _n_psi(step_deg: float, n_sym: int) -> int:
    """Number of in-plane angles in ``[0, 360/n)``; the full grid then has ``n`` times as many."""
    return max(1, int(math.ceil((360.0 / n_sym) / step_deg - 1e-9)))


def uniform_rotation_count(step_deg: float, symmetry: str | int = "C1") -> int:
    """Number of rotations :func:`uniform_rotations` returns, without building them."""
    n = parse_symmetry(symmetry)
    step = _check_step(step_deg)
    return 12 * healpix_nside(step) ** 2 * _n_psi(step, n)


def _healpix_directions(nside: int) -> tuple[np.ndarray, np.ndarray]:
    import healpix  # C extension; imported lazily so the rest of the module works without it

    theta, phi = healpix.pix2ang(int(nside), np.arange(12 * nside * nside), nest=False)
    # healpix issue 99: guard against tiny negative angles
    return np.mod(np.asarray(theta, float), np.pi), np.mod(np.asarray(phi, float), 2 * np.pi)


def uniform_rotations(step_deg: float, symmetry: str | int = "C1") -> np.ndarray:
    """Near-uniform rotations of SO(3) (or SO(3)/Cn) at angular spacing ``step_deg``.

    Parameters
    ----------
    step_deg
        Target angular spacing in degrees (e.g. from :func:`crowther_step_deg`). Both the
        direction spacing ``sqrt(4 pi / N_pix)`` and the in-plane spacing are ``<= step_deg``.
    symmetry
        ``"C1"`` (default) or ``"Cn"``: cyclic symmetry of the template about its own z axis.
        Only in-plane angles ``psi in [0, 360/n)`` are kept (see module docstring).

    Returns
    -------
    numpy.ndarray
        ``(N, 3, 3)`` float64 pose matrices ``Rz(phi) Ry(theta) Rz(psi)``, ordered by
        direction (HEALPix RING index) then ``psi``. ``N = 12 nside^2 * n_psi``.
    """
    step = _check_step(step_deg)
    n_sym = parse_symmetry(symmetry)
    nside = healpix_nside(step)
    theta, phi = _healpix_directions(nside)
    n_psi = _n_psi(step, n_sym)
    psi = np.arange(n_psi) * (2.0 * np.pi / (n_sym * n_psi))
    return _zyz_matrices(np.repeat(phi, n_psi), np.repeat(theta, n_psi), np.tile(psi, theta.size))


def _zyz_matrices(phi: np.ndarray, theta: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """``Rz(phi) @ Ry(theta) @ Rz(psi)`` for arrays of angles (radians), vectorised."""
    ca, sa = np.cos(phi), np.sin(phi)
    cb, sb = np.cos(theta), np.sin(theta)
    cg, sg = np.cos(psi), np.sin(psi)
    out = np.empty(phi.shape + (3, 3))
    out[..., 0, 0] = ca * cb * cg - sa * sg
    out[..., 0, 1] = -ca * cb * sg - sa * cg
    out[..., 0, 2] = ca * sb
    out[..., 1, 0] = sa * cb * cg + ca * sg
    out[..., 1, 1] = -sa * cb * sg + ca * cg
    out[..., 1, 2] = sa * sb
    out[..., 2, 0] = -sb * cg
    out[..., 2, 1] = sb * sg
    out[..., 2, 2] = cb
    return out


# --------------------------------------------------------------------------- local grid


def geodesic_distance_deg(a, b) -> np.ndarray:
    """Rotation angle of ``a^T b`` in degrees (the geodesic distance on SO(3)); broadcasts."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    tr = np.einsum("...ji,...ji->...", a, b)  # trace(a^T b)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def local_rotations(center_matrix, max_angle_deg: float, step_deg: float) -> np.ndarray:
    """Rotations within ``max_angle_deg`` of a centre pose, for local refinement.

    The perturbations are rotation vectors on a cubic lattice of spacing ``step_deg`` (the
    exponential map is a near-isometry at small angles, so the set is near-uniform) inside a
    ball of radius ``max_angle_deg``; each is applied on the particle side:
    ``R = exp(v) @ center``, so ``geodesic_distance(R, center) = |v|``.

    Parameters
    ----------
    center_matrix
        ``(3, 3)`` pose matrix.
    max_angle_deg
        Largest geodesic distance from the centre, degrees (0 < max < 180).
    step_deg
        Lattice spacing, degrees (> 0).

    Returns
    -------
    numpy.ndarray
        ``(N, 3, 3)``; index 0 is the centre itself, the rest sorted by distance to it.
    """
    c = np.asarray(center_matrix, float)
    if c.shape != (3, 3) or not np.allclose(c @ c.T, np.eye(3), atol=1e-6) or np.linalg.det(c) < 0:
        raise InputError("centre must be a 3x3 rotation matrix", None, "center_matrix")
    max_angle = float(max_angle_deg)
    if not (math.isfinite(max_angle) and 0 <= max_angle < 180):
        raise InputError(f"max angle {max_angle_deg!r}; expected 0 <= max < 180 degrees", None,
                         "max angle")
    step = _check_step(step_deg)
    m = int(math.floor(max_angle / step + 1e-9))
    ax = np.arange(-m, m + 1) * step
    v = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    r = np.linalg.norm(v, axis=1)
    keep = r <= max_angle + 1e-9
    v, r = v[keep], r[keep]
    order = np.argsort(r, kind="stable")  # the zero vector (r = 0) comes first
    v = v[order]
    delta = Rotation.from_rotvec(np.deg2rad(v)).as_matrix()
    return delta @ c


# --------------------------------------------------------------------------- files


def rotations_to_relion(mats) -> np.ndarray:
    """Pose matrices ``(N, 3, 3)`` -> RELION ``(rot, tilt, psi)`` degrees ``(N, 3)``."""
    return matrix_to_relion(mats)


def write_rotations(path, mats) -> Path:
    """Write pose matrices as RELION ``rot tilt psi`` degrees, one per line, atomically.

    The first line is ``# tomomatch rotations: RELION ZYZ degrees``.
    """
    m = np.asarray(mats, float)
    if m.ndim != 3 or m.shape[1:] != (3, 3):
        raise InputError(f"expected (N, 3, 3) rotation matrices, got shape {m.shape}", path, "rotations")
    angles = rotations_to_relion(m)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(ROTATION_FILE_HEADER + "\n")
            np.savetxt(fh, angles, fmt="%.8f")
    return path


def read_rotations(path, convention: str = "relion") -> np.ndarray:
    """Read a rotation file into ``(N, 3, 3)`` pose matrices.

    Parameters
    ----------
    path
        Text file with three numbers per line; blank lines and ``#`` comments are ignored.
    convention
        ``"relion"``: ``rot tilt psi`` in degrees (what :func:`write_rotations` writes);
        ``"pytom"``: pytom-match-pick angle list, anticlockwise ZXZ ``phi theta psi`` radians.
    """
    conv = str(convention).lower()
    if conv not in ("relion", "pytom"):
        raise InputError(f"unknown rotation convention {convention!r}; expected relion or pytom",
                         path, "convention")
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"cannot read rotation file ({exc.strerror or exc})", path) from None
    rows = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 3:
            raise InputError(f"{len(parts)} values; expected 3 angles per line", path, f"line {lineno}")
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            raise InputError(f"not a number in {line!r}; expected 3 angles", path, f"line {lineno}") from None
        if not all(math.isfinite(x) for x in vals):
            raise InputError("NaN or Inf angle", path, f"line {lineno}")
        rows.append(vals)
    if not rows:
        raise InputError("no rotations in file", path)
    a = np.asarray(rows, float)
    return relion_to_matrix(a) if conv == "relion" else pytom_to_matrix(a)
