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

Symmetry (``--symmetry``: ``Cn``, ``Dn``, ``T``, ``O``, ``I``/``I1``-``I4``)
    The symmetry is the template's own point group ``G``, in RELION's orientation (3dem/relion
    ``src/symmetries.cpp``, ``SymList::fill_symmetry_class``; the axes are the template box's
    x, y, z, the same as RELION's map axes): ``Cn`` an n-fold axis along z; ``Dn`` that and a
    2-fold along x; ``T`` a 3-fold along z and a 2-fold along ``(0, 0.816496, 0.577350)``;
    ``O`` a 3-fold along ``(1, 1, 1)/sqrt 3`` and a 4-fold along z (4-folds along x, y, z);
    ``I`` = ``I2`` (RELION's default ``I``: 2-fold along z, 5-fold along
    ``(0.525731, 0, 0.850651)``, 3-fold along ``(0, 0.356822, 0.934172)``, i.e. 2-folds along
    x, y, z with a 5-fold in the xz plane), and ``I1`` (2-folds along x, y, z, 5-fold along
    ``(0.850651, 0, -0.525731)``), ``I3`` and ``I4`` (a 5-fold along z) as RELION defines them
    (:data:`RELION_GENERATORS`). Groups with mirrors (``Cnv``, ``Dnh``, ``Oh``, ...) are not
    rotations and are refused. A template with ``template(g^T r) = template(r)`` for every
    ``g`` in ``G`` makes the poses ``R`` and ``R @ g`` identical, so one asymmetric unit of
    SO(3)/G is searched: ``|G|`` times fewer rotations (:func:`symmetry_matrices` gives ``G``).

    ``Cn``: with ``R = Rz(phi) Ry(theta) Rz(psi)`` the right factor ``Rz(2 pi k / n)`` only
    shifts ``psi``; keeping ``psi in [0, 360/n)`` covers SO(3)/Cn. The ``psi`` grid is made
    commensurate with the symmetry (``n_psi = n * ceil(360 / (n * step))``), so every rotation of
    the full grid is *exactly* a kept rotation times a symmetry operation.

    ``Dn`` (and any group with a 2-fold ``Rz(beta) Rx(pi)`` perpendicular to its z axis, when
    ``beta`` is a multiple of the ``psi`` spacing): ``R Rz(beta) Rx(pi) = Rz(phi + pi)
    Ry(pi - theta) Rz(-psi - beta)``, and the HEALPix centres are symmetric under
    ``(theta, phi) -> (pi - theta, phi + pi)``; keeping the ``Cn`` grid's directions with
    ``z > 0`` (and half of the equator, ``phi < pi``) is again exact: the ``Dn`` set is half of
    the ``Cn`` set, ``2n`` times smaller than C1's up to the ``psi`` rounding above.

    ``T``, ``O``, ``I``: no Euler-angle structure holds the whole group. The part ``H`` that
    the C1 grid itself respects is reduced exactly as above: rotations about z by multiples of
    ``360/m`` with ``m = gcd(order about z, C1's n_psi)``, and the 2-folds perpendicular to z
    when ``beta`` qualifies (e.g. ``D4`` for ``O`` at 15 degrees, ``D2`` for ``I``/``I1``/``I2``,
    ``C3`` for ``T`` at 10 degrees). Of that grid the rotations ``R`` are kept whose orbit
    point nearest to a fixed generic rotation ``C`` (largest ``trace(C^T R g)``, ``g`` in
    ``G``) has ``g`` in ``H``: a Dirichlet fundamental domain of the cosets ``G / H``. The kept
    rotations are rotations of the C1 grid; their orbit covers SO(3) at about the step (every
    C1 grid rotation lies within the step of it; tested with nearest-neighbour distances) and
    the count is C1's ``/ |G|`` within a few per cent at steps of 15 degrees and finer (within
    20 % at 20-30 degrees, where a unit holds only some tens of rotations).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from .conventions import matrix_to_relion, pytom_to_matrix, relion_to_matrix
from .errors import InputError
from .mrcio import atomic_path

__all__ = [
    "crowther_step_deg",
    "parse_symmetry",
    "symmetry_matrices",
    "symmetry_order",
    "RELION_GENERATORS",
    "healpix_nside",
    "uniform_rotations",
    "uniform_rotation_count",
    "MAX_ROTATIONS",
    "local_rotations",
    "geodesic_distance_deg",
    "rotations_to_relion",
    "write_rotations",
    "read_rotations",
    "parse_angle_list",
    "format_angle_list",
    "read_angle_list",
    "AngleList",
    "ROTATION_FILE_HEADER",
]

ROTATION_FILE_HEADER = "# tomomatch rotations: RELION ZYZ degrees"


# --------------------------------------------------------------------------- step size


def crowther_step_deg(
    particle_diameter_angstrom: float, voxel_size_angstrom: float, low_pass_angstrom: float | None = None
) -> float:
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
        raise InputError(f"particle diameter {d!r} A; expected a positive number", None, "particle diameter")
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

#: RELION's point groups as the generator axes of ``SymList::fill_symmetry_class`` in
#: 3dem/relion ``src/symmetries.cpp`` (``rot_axis FOLD X Y Z``); the group is their closure.
#: ``Cn``: ``rot_axis n 0 0 1``; ``Dn``: that and ``rot_axis 2 1 0 0``.
RELION_GENERATORS: dict[str, tuple[tuple[int, tuple[float, float, float]], ...]] = {
    "T": ((3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))),
    "O": ((3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))),
    "I1": (
        (2, (1.0, 0.0, 0.0)),
        (5, (0.85065080702670, 0.0, -0.5257311142635)),
        (3, (0.9341723640, 0.3568220765, 0.0)),
    ),
    "I2": ((2, (0.0, 0.0, 1.0)), (5, (0.525731114, 0.0, 0.850650807)), (3, (0.0, 0.356822076, 0.934172364))),
    "I3": (
        (2, (-0.5257311143, 0.0, 0.8506508070)),
        (5, (0.0, 0.0, 1.0)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
    "I4": (
        (2, (0.5257311143, 0.0, 0.8506508070)),
        (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
}

_PHI = (1.0 + 5.0**0.5) / 2.0  # golden ratio: 5-fold axes of I along (0, 1, phi) and permutations
_SYMMETRY_HELP = (
    "expected Cn or Dn (n >= 1), T, O, I (= I2) or I1-I4, RELION's point groups in RELION's "
    "orientation (groups with mirrors, e.g. D7h, are not rotations)"
)


def parse_symmetry(symmetry: str | int) -> str:
    """Canonical name of a ``--symmetry`` value: ``"C1"``, ``"C7"``, ``"D7"``, ``"T"``, ``"O"``,
    ``"I"`` or ``"I1"``-``"I4"`` (case-insensitive; an int ``n`` is ``"Cn"``).

    ``"I"`` is RELION's default icosahedral orientation, the same group as ``"I2"`` (the name is
    kept as given). Raises :class:`~tomomatch.errors.InputError` (field ``symmetry``) otherwise.

    Examples
    --------
    >>> parse_symmetry("d7"), parse_symmetry(3), parse_symmetry(" o ")
    ('D7', 'C3', 'O')
    """
    if isinstance(symmetry, (bool, np.bool_)):
        raise InputError(f"--symmetry {symmetry!r}; {_SYMMETRY_HELP}", None, "symmetry")
    if isinstance(symmetry, (int, np.integer)):
        kind, digits = "C", str(int(symmetry)) if int(symmetry) >= 0 else "-"
    else:
        m = re.fullmatch(r"\s*([A-Za-z])\s*(\d*)\s*", str(symmetry))
        if m is None:
            raise InputError(f"--symmetry {symmetry!r} not supported; {_SYMMETRY_HELP}", None, "symmetry")
        kind, digits = m.group(1).upper(), m.group(2)
    if kind in ("C", "D"):
        if not digits.isdigit() or int(digits) < 1:
            raise InputError(
                f"--symmetry {symmetry!r}: {kind}n needs an order n >= 1 (C1 = no symmetry)", None, "symmetry"
            )
        return f"{kind}{int(digits)}"
    if (kind in ("T", "O") and not digits) or (kind == "I" and digits in ("", "1", "2", "3", "4")):
        return kind + digits
    raise InputError(f"--symmetry {symmetry!r} not supported; {_SYMMETRY_HELP}", None, "symmetry")


def symmetry_order(symmetry: str | int) -> int:
    """``|G|``, the number of rotations of the point group (C1 -> 1, D7 -> 14, O -> 24, I -> 60)."""
    name = parse_symmetry(symmetry)
    if name[0] in "CD":
        return int(name[1:]) * (2 if name[0] == "D" else 1)
    return {"T": 12, "O": 24}.get(name, 60)


def _align(a1, a2, b1, b2) -> np.ndarray:
    """The rotation carrying direction ``a1`` onto ``b1`` and ``a2`` onto ``b2`` (equal angles)."""

    def frame(u, v):
        u = np.asarray(u, float) / np.linalg.norm(u)
        v = np.asarray(v, float)
        w = v - np.dot(v, u) * u
        w /= np.linalg.norm(w)
        return np.stack([u, w, np.cross(u, w)], axis=1)

    return frame(b1, b2) @ frame(a1, a2).T


def _scipy_to_relion(name: str) -> np.ndarray:
    """``M`` with ``G_relion = M G_scipy M^T`` (scipy ``Rotation.create_group`` orientation).

    scipy: ``Cn`` about z; ``Dn`` with a 2-fold along x; ``O`` with 4-folds along x, y, z;
    ``T`` with 2-folds along x, y, z and 3-folds along ``(+-1, +-1, +-1)``; ``I`` with 2-folds
    along x, y, z and 5-folds along ``(0, 1, phi)`` and its cyclic permutations, which is
    RELION's ``I1``. The others: ``I2`` is ``I1`` turned by 90 degrees about z; ``T`` carries
    scipy's 3-fold ``(1, 1, 1)`` onto z and its 2-fold x onto ``(0, sqrt(2/3), sqrt(1/3))``;
    ``I3``/``I4`` carry scipy's 5-fold ``(0, 1, phi)`` onto z / ``(2, 0, 1)`` and its 2-fold z
    onto ``(-1, 0, phi)`` / ``(1, 0, phi)``. ``tests/test_angles.py`` checks every group
    against the closure of RELION's generator axes.
    """
    if name[0] in "CD" or name in ("O", "I1"):
        return np.eye(3)
    if name in ("I", "I2"):
        return np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    if name == "T":
        return _align((1, 1, 1), (1, 0, 0), (0, 0, 1), (0, math.sqrt(2 / 3), math.sqrt(1 / 3)))
    five, two = (0.0, 1.0, _PHI), (0.0, 0.0, 1.0)
    if name == "I3":
        return _align(five, two, (0, 0, 1), (-1.0, 0.0, _PHI))
    return _align(five, two, (2, 0, 1), (1.0, 0.0, _PHI))  # I4


_GROUP_CACHE: dict[str, np.ndarray] = {}


def symmetry_matrices(symmetry: str | int) -> np.ndarray:
    """The rotations ``(|G|, 3, 3)`` of the point group in RELION's orientation, identity first.

    Built from scipy's ``Rotation.create_group`` and turned into RELION's orientation
    (:func:`_scipy_to_relion`); see the module docstring for the axes of each group.
    """
    name = parse_symmetry(symmetry)
    if name not in _GROUP_CACHE:
        scipy_name = "I" if name[0] == "I" else name
        m = _scipy_to_relion(name)
        g = m @ Rotation.create_group(scipy_name).as_matrix() @ m.T
        g[np.abs(g) < 1e-12] = 0.0
        keys = np.round(g.reshape(len(g), 9), 9) + 0.0  # + 0.0: no -0.0 in the sort keys
        ident = np.all(np.abs(g - np.eye(3)) < 1e-9, axis=(1, 2))
        order = np.lexsort(np.vstack([keys.T[::-1], ~ident]))  # identity first, then lexicographic
        g = g[order]
        g[0] = np.eye(3)
        g.setflags(write=False)
        _GROUP_CACHE[name] = g
    return _GROUP_CACHE[name].copy()


def _exact_subgroup(name: str, step: float) -> tuple[int, float | None, np.ndarray]:
    """The part ``H`` of the group that the grid's Euler structure reduces exactly.

    Returns ``(n, beta, in_h)``: ``H`` holds the rotations ``Rz(2 pi k / n)`` and, when ``beta``
    is not None, the 2-folds ``Rz(beta + 2 pi k / n) Rx(pi)``; ``in_h`` marks them in
    :func:`symmetry_matrices`. For ``Cn`` and ``Dn``, ``H`` is the whole group and ``n`` its
    order about z (today's ``Cn`` grid). Otherwise ``n`` divides both the group's order about z
    and C1's in-plane count, so the grid is a subset of C1's (no in-plane rounding). ``beta`` is
    kept only when it is a multiple of the in-plane spacing (``psi -> -psi - beta`` maps the grid
    onto itself).
    """
    g = symmetry_matrices(name)
    about_z = np.abs(g[:, 2, 2] - 1.0) < 1e-9
    flips = np.abs(g[:, 2, 2] + 1.0) < 1e-9
    n_z = int(about_z.sum())
    whole = n_z * (2 if flips.any() else 1) == len(g)
    n = n_z if whole else math.gcd(n_z, _n_psi(step, 1))
    dpsi = 2.0 * math.pi / (n * _n_psi(step, n))
    angle = np.arctan2(g[:, 1, 0], g[:, 0, 0])  # Rz(angle) or Rz(angle) Rx(pi)
    beta = None
    for a in angle[flips]:
        r = a / dpsi
        if abs(r - round(r)) < 1e-6:
            beta = round(r) * dpsi
            break

    def multiple(x):  # of 2 pi / n
        r = x * n / (2.0 * math.pi)
        return np.abs(r - np.round(r)) < 1e-6

    in_h = (about_z & multiple(angle)) | (flips & (beta is not None) & multiple(angle - (beta or 0.0)))
    return n, beta, in_h


#: Centre of the Dirichlet domain that picks one rotation per orbit for ``T``, ``O``, ``I``: a
#: generic rotation, so that no grid rotation is equidistant from two orbit points.
_DOMAIN_CENTRE = Rotation.from_rotvec([0.3, -0.2, 0.45]).as_matrix()


def _asymmetric_unit_mask(rots: np.ndarray, group: np.ndarray, in_h: np.ndarray) -> np.ndarray:
    """True where the orbit point ``R g`` nearest to :data:`_DOMAIN_CENTRE` has ``g`` in ``H``."""
    gflat = np.transpose(group, (0, 2, 1)).reshape(len(group), 9)  # trace(A g) = A.ravel() @ g.T.ravel()
    keep = np.empty(len(rots), bool)
    chunk = 1 << 16
    for i in range(0, len(rots), chunk):
        a = (_DOMAIN_CENTRE.T @ rots[i : i + chunk]).reshape(-1, 9)
        keep[i : i + chunk] = in_h[np.argmax(a @ gflat.T, axis=1)]
    return keep


def _check_step(step_deg: float) -> float:
    s = float(step_deg)
    if not (math.isfinite(s) and 0 < s <= 180):
        raise InputError(f"angular step {step_deg!r} degrees; expected 0 < step <= 180", None, "angular step")
    return s


# --------------------------------------------------------------------------- global grid

#: Largest rotation set :func:`uniform_rotations` builds (the grid before the asymmetric-unit
#: selection of ``T``, ``O``, ``I``). 5 million rotations are about 360 MB of pose matrices
#: (and as much again while building them), a C1 step of 1.46 degrees; a finer global search
#: would take days per tomogram. A finer step from ``--angular-step`` or a very large
#: ``--particle-diameter`` (the Crowther step shrinks with it) is refused before anything is
#: allocated; a larger set can still be searched from a file (``--angle-list``).
MAX_ROTATIONS = 5_000_000


def _grid_count(step: float, name: str) -> int:
    """Rotations the grid of ``uniform_rotations(step, name)`` holds before the asymmetric-unit
    selection of ``T``, ``O``, ``I`` (integer arithmetic, nothing allocated)."""
    n_sym, beta, _ = _exact_subgroup(name, step)
    nside = healpix_nside(step)
    return (6 if beta is not None else 12) * nside * nside * _n_psi(step, n_sym)


def _check_rotation_count(step: float, name: str) -> int:
    """:func:`_grid_count`, or InputError naming ``--angular-step``/``--particle-diameter`` when
    it is above :data:`MAX_ROTATIONS`.

    A lower bound first, in floats (``4 pi / step^2`` directions times ``360 / step`` in-plane
    angles over the group order: the grid never holds fewer), so that a step of 1e-300 degrees
    neither overflows nor allocates; the exact count only when that bound is below the limit.
    """
    limit = int(MAX_ROTATIONS)
    order = symmetry_order(name)
    rad = math.radians(step)
    try:
        bound = 4.0 * math.pi / (rad * rad) * (360.0 / step) / order
    except (ZeroDivisionError, OverflowError):
        bound = math.inf
    count: int | float = bound if bound > limit else _grid_count(step, name)
    if count <= limit:
        return int(count)
    # the finest step within the limit, from the same bound, then checked exactly
    finest = math.degrees((8.0 * math.pi**2 / (limit * order)) ** (1.0 / 3.0))
    for _ in range(1000):
        finest = math.ceil(finest * 100.0) / 100.0
        if _grid_count(finest, name) <= limit:
            break
        finest *= 1.01
    if isinstance(count, int):
        shown = f"{count:,}"
    else:
        shown = f"more than {count:.3g}" if math.isfinite(count) else "more than 1e308"
    raise InputError(
        f"an angular step of {step:.3g} degrees ({name}) means a grid of {shown} rotations; at most {limit:,} are "
        f"built (tomomatch.angles.MAX_ROTATIONS); expected a step of at least {finest:g} degrees (a "
        "coarser --angular-step or a smaller --particle-diameter), or the rotations in a file (--angle-list)",
        None,
        "--angular-step/--particle-diameter",
    )


def healpix_nside(step_deg: float) -> int:
    """Smallest HEALPix ``nside`` with ``12 nside^2 >= 4 pi / step^2`` (any integer, RING)."""
    step = math.radians(_check_step(step_deg))
    target = 4.0 * math.pi / step**2
    nside = max(1, int(math.floor(math.sqrt(target / 12.0))))
    while 12 * nside * nside < target:
        nside += 1
    return nside


def _n_psi(step_deg: float, n_sym: int) -> int:
    """Number of in-plane angles in ``[0, 360/n)``; the full grid then has ``n`` times as many."""
    return max(1, int(math.ceil((360.0 / n_sym) / step_deg - 1e-9)))


def uniform_rotation_count(step_deg: float, symmetry: str | int = "C1") -> int:
    """Number of rotations :func:`uniform_rotations` returns (without building them for
    ``Cn`` and ``Dn``; ``T``, ``O`` and ``I`` build the set, a fraction of a second). Refuses
    what :func:`uniform_rotations` refuses (:data:`MAX_ROTATIONS`)."""
    name = parse_symmetry(symmetry)
    step = _check_step(step_deg)
    _check_rotation_count(step, name)
    n, beta, in_h = _exact_subgroup(name, step)
    if in_h.all():
        return (6 if beta is not None else 12) * healpix_nside(step) ** 2 * _n_psi(step, n)
    return len(uniform_rotations(step, name))


def _healpix_directions(nside: int) -> tuple[np.ndarray, np.ndarray]:
    import healpix  # C extension; imported lazily so the rest of the module works without it

    theta, phi = healpix.pix2ang(int(nside), np.arange(12 * nside * nside), nest=False)
    # healpix issue 99: guard against tiny negative angles
    return np.mod(np.asarray(theta, float), np.pi), np.mod(np.asarray(phi, float), 2 * np.pi)


def uniform_rotations(step_deg: float, symmetry: str | int = "C1") -> np.ndarray:
    """Near-uniform rotations of SO(3) (or of one asymmetric unit SO(3)/G) at spacing ``step_deg``.

    Parameters
    ----------
    step_deg
        Target angular spacing in degrees (e.g. from :func:`crowther_step_deg`). Both the
        direction spacing ``sqrt(4 pi / N_pix)`` and the in-plane spacing are ``<= step_deg``.
    symmetry
        The template's point group (:func:`parse_symmetry`): ``"C1"`` (default), ``"Cn"``,
        ``"Dn"``, ``"T"``, ``"O"``, ``"I"``/``"I1"``-``"I4"`` in RELION's orientation. Only one
        asymmetric unit is returned (see the module docstring).

    Returns
    -------
    numpy.ndarray
        ``(N, 3, 3)`` float64 pose matrices ``Rz(phi) Ry(theta) Rz(psi)``, ordered by
        direction (HEALPix RING index) then ``psi``. ``N = 12 nside^2 * n_psi`` for ``Cn``,
        half of that for ``Dn``, about ``N(C1) / |G|`` for ``T``, ``O``, ``I``.

    Raises
    ------
    InputError
        The grid would hold more than :data:`MAX_ROTATIONS` rotations (checked from the step
        before anything is allocated; the message names the finest step allowed).
    """
    step = _check_step(step_deg)
    name = parse_symmetry(symmetry)
    _check_rotation_count(step, name)  # before anything the size of the grid is allocated
    n_sym, beta, in_h = _exact_subgroup(name, step)
    nside = healpix_nside(step)
    theta, phi = _healpix_directions(nside)
    if beta is not None:  # a 2-fold perpendicular to z: the upper hemisphere and half the equator
        z = np.cos(theta)
        keep = (z > 1e-9) | ((np.abs(z) <= 1e-9) & (phi < np.pi - 1e-9))
        theta, phi = theta[keep], phi[keep]
    n_psi = _n_psi(step, n_sym)
    psi = np.arange(n_psi) * (2.0 * np.pi / (n_sym * n_psi))
    rots = _zyz_matrices(np.repeat(phi, n_psi), np.repeat(theta, n_psi), np.tile(psi, theta.size))
    if in_h.all():
        return rots
    return rots[_asymmetric_unit_mask(rots, symmetry_matrices(name), in_h)]


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
        raise InputError(f"max angle {max_angle_deg!r}; expected 0 <= max < 180 degrees", None, "max angle")
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


def _parse_rotations(text: str, path, convention: str, expected: str = "", field_prefix: str = "") -> np.ndarray:
    """Rows of three angles (``#`` comments, blank lines, commas allowed) -> pose matrices."""
    rows = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{field_prefix}line {lineno}"
        parts = line.replace(",", " ").split()
        if len(parts) != 3:
            raise InputError(f"{len(parts)} values; expected 3 angles per line{expected}", path, where)
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            raise InputError(f"not a number in {line!r}; expected 3 angles{expected}", path, where) from None
        if not all(math.isfinite(x) for x in vals):
            raise InputError(f"NaN or Inf angle; expected 3 finite angles{expected}", path, where)
        rows.append(vals)
    if not rows:
        raise InputError(
            f"no rotations in file; expected 3 angles per line{expected}", path, field_prefix.strip() or None
        )
    a = np.asarray(rows, float)
    return relion_to_matrix(a) if convention == "relion" else pytom_to_matrix(a)


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
    if conv not in ANGLE_LIST_CONVENTIONS:
        raise InputError(f"unknown rotation convention {convention!r}; expected relion or pytom", path, "convention")
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"cannot read rotation file ({exc.strerror or exc})", path) from None
    return _parse_rotations(text, path, conv)


# --------------------------------------------------------------------------- --angle-list

#: what each ``--angle-list`` convention holds, per line
ANGLE_LIST_CONVENTIONS = {
    "relion": "RELION ZYZ rot tilt psi in degrees",
    "pytom": "pytom-match-pick anticlockwise ZXZ phi theta psi in radians",
}


#: memory estimate per line of a ``--angle-list`` file while it is parsed (the line's string, a
#: row of three Python floats, and the float64 angles and pose matrices made from them)
ANGLE_LIST_BYTES_PER_LINE = 800


class AngleList(NamedTuple):
    """A ``--angle-list`` file as read: pose matrices, the file's SHA-256 and its resolved name."""

    rotations: np.ndarray
    sha256: str
    spec: str  #: ``"/abs/path"`` (RELION degrees) or ``"pytom:/abs/path"``
    path: Path
    convention: str


def parse_angle_list(spec) -> tuple[str, Path]:
    """``(convention, path)`` of a ``--angle-list`` value, without reading the file.

    ``FILE`` or ``relion:FILE``: RELION ``rot tilt psi`` in degrees (ZYZ; tomomatch's own
    ``<name>_rotations.txt`` is such a file). ``pytom:FILE``: a pytom-match-pick angle list
    (``--angular-search FILE.txt``; its ``angle_lists/info.txt``: "Each row ... contains a
    anti-clockwise ZXZ rotation in radians"), read with
    :func:`tomomatch.conventions.pytom_to_matrix`. Raises :class:`InputError` naming
    ``--angle-list``.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise InputError(f"{spec!r}; expected a file name (FILE or pytom:FILE)", None, "--angle-list")
    s = spec.strip()
    conv = "relion"
    head, sep, tail = s.partition(":")
    if sep and head.lower() in ANGLE_LIST_CONVENTIONS:
        conv, s = head.lower(), tail.strip()
    if not s:
        raise InputError(f"{spec!r}; expected a file name (FILE or pytom:FILE)", None, "--angle-list")
    return conv, Path(s)


def format_angle_list(convention: str, path) -> str:
    """The ``--angle-list`` value that :func:`parse_angle_list` reads back as ``(convention, path)``."""
    plain = str(path)
    return plain if convention == "relion" and parse_angle_list(plain)[0] == "relion" else f"{convention}:{plain}"


def read_angle_list(spec) -> AngleList:
    """Read a ``--angle-list`` file (:func:`parse_angle_list`) into pose matrices.

    One rotation per line, three angles separated by blanks or commas; blank lines and ``#``
    comments are ignored. The rotations are searched as given, in file order (no symmetry
    reduction: a list for a symmetric template should already cover one asymmetric unit).
    A malformed file raises :class:`InputError` with the file, the line and what was expected.
    """
    conv, path = parse_angle_list(spec)
    from .resources import check_fits

    try:
        if path.is_file():  # the file itself must fit before it is read
            check_fits(
                2.0 * path.stat().st_size, "reading the file", path, "--angle-list", "expected a list of rotations"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(
            f"cannot read the angle list ({exc.strerror or exc}); expected a text file of "
            f"{ANGLE_LIST_CONVENTIONS[conv]}",
            path,
            "--angle-list",
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"not a text file; expected {ANGLE_LIST_CONVENTIONS[conv]}, 3 per line", path, "--angle-list"
        ) from None
    n_lines = data.count(b"\n") + 1
    check_fits(
        2.0 * len(data) + ANGLE_LIST_BYTES_PER_LINE * n_lines,
        f"reading {n_lines:,} lines (rotations)",
        path,
        "--angle-list",
        "expected a list of rotations that fits in memory",
    )
    rots = _parse_rotations(text, path, conv, f" ({ANGLE_LIST_CONVENTIONS[conv]})", "--angle-list ")
    resolved = path.absolute()
    return AngleList(rots, hashlib.sha256(data).hexdigest(), format_angle_list(conv, resolved), resolved, conv)
